//! Error collection shared by both macros.
//!
//! Owns: [`Ctxt`], which gathers every problem found in one macro input (in
//! the style of serde_derive's `Ctxt`) so that the user sees all of them in
//! one build instead of fixing them one compile at a time.

use std::fmt::Display;

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

/// The errors found so far while expanding one macro invocation.
#[derive(Default)]
pub(crate) struct Ctxt {
    errors: Vec<syn::Error>,
}

impl Ctxt {
    /// An empty error list.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records an error that covers `tokens`, from their first to their last
    /// token.
    pub(crate) fn error_spanned_by<T: ToTokens>(&mut self, tokens: T, message: impl Display) {
        self.errors.push(syn::Error::new_spanned(tokens, message));
    }

    /// Records an error at one span.
    pub(crate) fn error_at(&mut self, span: Span, message: impl Display) {
        self.errors.push(syn::Error::new(span, message));
    }

    /// Records an error that `syn` produced.
    pub(crate) fn syn_error(&mut self, error: syn::Error) {
        self.errors.push(error);
    }

    /// Whether any error has been recorded.
    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// One `compile_error!` per recorded error, each at its own span.
    pub(crate) fn into_compile_errors(self) -> TokenStream {
        self.errors
            .into_iter()
            .map(|error| error.into_compile_error())
            .collect()
    }
}
