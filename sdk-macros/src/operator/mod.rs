//! `#[operator]`: turns a free function into a pipeline operator.
//!
//! Owns: the expansion of `#[operator]`. The function's name becomes a unit
//! struct (so the operator is passed to the pipeline by name, as actix-web's
//! route macros do), the function itself becomes that struct's associated
//! `call`, and the struct implements `exactly::Operator` (plus
//! `exactly::UnkeyedOperator` when the function keeps no `#[state]`).
//!
//! Split into [`args`] (the `#[operator(...)]` arguments), [`signature`]
//! (what the function's parameters and return type mean) and [`expand`]
//! (the generated code, and the fallback emitted when there are errors).

mod args;
mod expand;
mod signature;

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::Item;

use crate::ctxt::Ctxt;

/// Expands `#[operator]`. Every problem found is reported, each on its own
/// token; with any error the fallback expansion keeps the function's name
/// defined so that code using it reports nothing more.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    let args = args::parse(&mut cx, args);
    let item = match syn::parse2::<Item>(item) {
        Ok(item) => item,
        Err(error) => {
            cx.syn_error(error);
            return cx.into_compile_errors();
        }
    };
    let Item::Fn(mut function) = item else {
        let keyword = match &item {
            Item::Struct(item) => item.struct_token.to_token_stream(),
            Item::Enum(item) => item.enum_token.to_token_stream(),
            Item::Impl(item) => item.impl_token.to_token_stream(),
            other => other.to_token_stream(),
        };
        cx.error_spanned_by(
            keyword,
            "`#[operator]` applies to free functions: write the operator as `fn name(record: In, ...)`",
        );
        let errors = cx.into_compile_errors();
        return quote!(#item #errors);
    };
    let analysis = signature::analyze(&mut cx, &mut function.sig);
    let name = args.name_or(&function.sig.ident);
    let expansion = if cx.has_errors() {
        expand::fallback(&function, &analysis, &name)
    } else {
        expand::operator(&function, &analysis, &name)
    };
    let errors = cx.into_compile_errors();
    quote!(#expansion #errors)
}
