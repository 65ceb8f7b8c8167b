//! Error collection shared by both macros.
//!
//! Owns: [`Ctxt`], which gathers every problem found in one macro input (in
//! the style of serde_derive's `Ctxt`) so that the user sees all of them in
//! one build instead of fixing them one compile at a time. Like serde's, it
//! must be consumed: a context dropped before
//! [`into_compile_errors`](Ctxt::into_compile_errors) panics, so that no
//! path through a macro can lose the errors it recorded. Does not own what
//! is an error: each macro's checks decide that.

use std::fmt::Display;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

/// The errors found so far while expanding one macro invocation. Consume
/// it with [`Ctxt::into_compile_errors`]; dropping it unconsumed panics.
pub(crate) struct Ctxt {
    /// `None` once the errors were taken.
    errors: Option<Vec<syn::Error>>,
}

impl Ctxt {
    /// An empty error list.
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: Some(Vec::new()),
        }
    }

    fn push(&mut self, error: syn::Error) {
        self.errors
            .as_mut()
            .expect("the errors were already taken")
            .push(error);
    }

    /// Records an error that covers `tokens`, from their first to their last
    /// token.
    pub(crate) fn error_spanned_by<T: ToTokens>(&mut self, tokens: T, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error at one span.
    pub(crate) fn error_at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    /// Records an error that `syn` produced.
    pub(crate) fn syn_error(&mut self, error: syn::Error) {
        self.push(error);
    }

    /// Whether any error has been recorded.
    pub(crate) fn has_errors(&self) -> bool {
        self.errors
            .as_ref()
            .is_some_and(|errors| !errors.is_empty())
    }

    /// One `compile_error!` per recorded error, each at its own span.
    /// Consumes the context: this is the check its drop insists on.
    pub(crate) fn into_compile_errors(mut self) -> TokenStream {
        self.errors
            .take()
            .into_iter()
            .flatten()
            .map(|error| error.into_compile_error())
            .collect()
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        if self.errors.is_some() && !std::thread::panicking() {
            panic!(
                "a macro's error context was dropped without into_compile_errors: its errors would be lost"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "dropped without into_compile_errors")]
    fn a_context_dropped_unchecked_panics() {
        let mut cx = Ctxt::new();
        cx.error_at(Span::call_site(), "this error must reach the user");
    }

    #[test]
    fn a_consumed_context_yields_every_error() {
        let mut cx = Ctxt::new();
        cx.error_at(Span::call_site(), "first");
        cx.error_at(Span::call_site(), "second");
        assert!(cx.has_errors());
        let errors = cx.into_compile_errors().to_string();
        assert!(
            errors.contains("first") && errors.contains("second"),
            "{errors}"
        );
    }
}
