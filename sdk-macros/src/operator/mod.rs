//! `#[operator]`: turns a free function into a pipeline operator.
//!
//! Owns: the expansion of `#[operator]`. The function's name becomes a unit
//! struct (so the operator is passed to the pipeline by name, as actix-web's
//! route macros do), the function itself becomes that struct's associated
//! `call`, and the struct implements `exactly::Operator` (plus
//! `exactly::UnkeyedOperator` when the function keeps no `#[state]`).
//!
//! Split into [`args`] (the `#[operator(...)]` arguments), [`signature`]
//! (what the function's parameters and return type mean) and [`mod@expand`]
//! (the generated code, and the fallback emitted when there are errors).
//!
//! Does not own `#[state]` ([`mod@crate::state`]) or what the generated impls
//! do when run: that is the `exactly` crate's runtime.

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

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::{TokenStream, expand};

    fn expand_to_string(args: TokenStream, item: TokenStream) -> String {
        expand(args, item).to_string()
    }

    #[test]
    fn stateful_operator_is_keyed_only() {
        let out = expand_to_string(
            quote!(),
            quote! {
                pub fn count(word: String, #[state] counts: &mut WordCount, out: &mut Emitter<(String, u64)>) {
                    counts.count += 1;
                    out.emit((word, counts.count));
                }
            },
        );
        assert!(out.contains("pub struct count ;"), "{out}");
        assert!(
            out.contains("pub fn call (word : String , counts : & mut WordCount ,"),
            "{out}"
        );
        assert!(out.contains("type In = String ;"), "{out}");
        assert!(out.contains("type Out = (String , u64) ;"), "{out}");
        assert!(out.contains("type State = (WordCount ,) ;"), "{out}");
        assert!(
            out.contains("const NAME : & 'static str = \"count\" ;"),
            "{out}"
        );
        assert!(
            out.contains("STATE_NAMES : & 'static [& 'static str] = & [\"counts\"] ;"),
            "{out}"
        );
        assert!(
            out.contains("Self :: call (input , __state0 , out)"),
            "{out}"
        );
        assert!(!out.contains("UnkeyedOperator"), "{out}");
        assert!(!out.contains("# [state]"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn stateless_shapes_are_unkeyed() {
        let map = expand_to_string(
            quote!(name = "len"),
            quote!(
                fn len(s: String) -> usize {
                    s.len()
                }
            ),
        );
        assert!(map.contains("type Out = usize ;"), "{map}");
        assert!(map.contains("out . emit (value)"), "{map}");
        assert!(map.contains("\"len\""), "{map}");
        assert!(
            map.contains("impl :: exactly :: UnkeyedOperator for len"),
            "{map}"
        );

        let filter = expand_to_string(
            quote!(),
            quote!(
                fn keep(s: &String) -> bool {
                    true
                }
            ),
        );
        assert!(filter.contains("type In = String ;"), "{filter}");
        assert!(filter.contains("type Out = String ;"), "{filter}");
        assert!(filter.contains("Self :: call (& input)"), "{filter}");

        let filter_map = expand_to_string(
            quote!(),
            quote!(
                fn parse(s: String) -> Option<u8> {
                    None
                }
            ),
        );
        assert!(filter_map.contains("type Out = u8 ;"), "{filter_map}");
        assert!(filter_map.contains("Some (value)"), "{filter_map}");
    }

    #[test]
    fn fallible_result_converts_the_error() {
        let out = expand_to_string(
            quote!(),
            quote!(
                fn parse(s: String) -> Result<u64, std::num::ParseIntError> {
                    s.parse()
                }
            ),
        );
        assert!(out.contains("type Out = u64 ;"), "{out}");
        assert!(
            out.contains("OperatorError :: into_box_error (error)"),
            "{out}"
        );
    }

    #[test]
    fn errors_are_collected_and_the_name_stays_defined() {
        let out = expand_to_string(
            quote!(nmae = "x"),
            quote!(
                async fn f(a: String, b: String) -> String {
                    a + &b
                }
            ),
        );
        assert_eq!(out.matches("compile_error").count(), 3, "{out}");
        assert!(out.contains("struct f ;"), "{out}");
        assert!(out.contains("type In = String ;"), "{out}");
        assert!(
            out.contains("impl :: exactly :: UnkeyedOperator for f"),
            "{out}"
        );
    }

    #[test]
    fn a_method_falls_back_to_itself() {
        let out = expand_to_string(
            quote!(),
            quote!(
                fn scale(&self, n: u64) -> u64 {
                    n
                }
            ),
        );
        assert!(!out.contains("struct"), "{out}");
        assert!(out.contains("fn scale (& self , n : u64) -> u64"), "{out}");
        assert!(out.contains("not methods"), "{out}");
    }

    #[test]
    fn only_functions_are_operators() {
        let out = expand_to_string(
            quote!(),
            quote!(
                struct NotAFunction;
            ),
        );
        assert!(out.contains("applies to free functions"), "{out}");
        assert!(out.contains("struct NotAFunction ;"), "{out}");
    }
}
