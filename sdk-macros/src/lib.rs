//! Procedural macros for `exactly`. Use them through the `exactly` crate.
use proc_macro::TokenStream;

/// Marks a function as a pipeline operator.
#[proc_macro_attribute]
pub fn operator(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}

/// Marks a struct as checkpointed state.
#[proc_macro_attribute]
pub fn state(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
