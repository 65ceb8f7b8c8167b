//! `#[state]`: turns a struct into checkpointed state.
//!
//! Owns: the expansion of `#[state]` and the checks that make a mistake in a
//! state struct a single error on the token that caused it. The expansion
//! derives serde's `Serialize` and `Deserialize` through the re-export in
//! `exactly::__private`, implements `exactly::State`, and asserts, each with
//! its own span and `on_unimplemented` wording, that every field can be
//! serialized and that the struct is `Default` and `Send`.
//!
//! To keep an unserializable field from also failing inside serde's derived
//! code (and inside the `State` impl, whose supertraits would then be unmet),
//! the serde bounds and the `State` impl's where-clause are written with a
//! dummy higher-ranked lifetime: `for<'__state> Field: Serialize`. A
//! where-clause that names a generic lifetime is not checked where it is
//! written, only where the impl is used, so the assertions are the only place
//! that reports the problem.
//!
//! Does not own `#[operator]` ([`mod@crate::operator`]) or how state is encoded
//! in a checkpoint: that is the `exactly` crate's codec.

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Item, ItemStruct, Meta, Path, Token, Type};

use crate::ctxt::Ctxt;

/// Field-level serde attributes after which serde no longer needs the
/// field's type to implement `Serialize` and `Deserialize` itself.
const SERDE_OPT_OUTS: &[&str] = &[
    "skip",
    "skip_serializing",
    "skip_deserializing",
    "with",
    "serialize_with",
    "deserialize_with",
];

/// Expands `#[state]`. On error the struct is still emitted (without the
/// derives that caused the error) so that code using it reports nothing more.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut cx = Ctxt::new();
    if !args.is_empty() {
        cx.error_spanned_by(
            &args,
            "`#[state]` takes no arguments: write `#[exactly::state]` on the struct, and put serde options in a `#[serde(...)]` attribute below it",
        );
    }
    let item = match syn::parse2::<Item>(item) {
        Ok(item) => item,
        Err(error) => {
            cx.syn_error(error);
            return cx.into_compile_errors();
        }
    };
    let mut item = match item {
        Item::Struct(item) => item,
        other => {
            let (keyword, kind) = keyword_of(&other);
            cx.error_spanned_by(keyword, not_a_struct_message(kind));
            let errors = cx.into_compile_errors();
            return quote!(#other #errors);
        }
    };
    if !item.generics.params.is_empty() {
        cx.error_spanned_by(
            &item.generics,
            "`#[state]` structs cannot be generic: a checkpoint is restored into one concrete type; use concrete field types, or one `#[state]` struct per operator",
        );
        let errors = cx.into_compile_errors();
        return quote!(#item #errors);
    }
    remove_serde_derives(&mut cx, &mut item.attrs);
    check_container_attrs(&mut cx, &item.attrs);
    let expansion = generate(&item);
    let errors = cx.into_compile_errors();
    quote!(#expansion #errors)
}

/// The struct with serde's derives, its `State` impl and the assertions.
fn generate(item: &ItemStruct) -> TokenStream {
    let ident = &item.ident;
    let fields: Vec<&Type> = item
        .fields
        .iter()
        .filter(|field| !field.attrs.iter().any(opts_out_of_serde))
        .map(|field| &field.ty)
        .collect();
    let serialize_bounds = bounds(&fields, "::exactly::__private::serde::Serialize");
    let deserialize_bounds = bounds(&fields, "::exactly::__private::serde::Deserialize<'de>");
    let field_assertions = fields
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> ::exactly::__private::assert_state_field::<#ty>();));
    let default_assertion =
        quote_spanned!(ident.span()=> ::exactly::__private::assert_state_default::<#ident>(););
    let send_assertion =
        quote_spanned!(ident.span()=> ::exactly::__private::assert_state_send::<#ident>(););
    quote! {
        #[derive(::exactly::__private::serde::Serialize, ::exactly::__private::serde::Deserialize)]
        #[serde(
            crate = "::exactly::__private::serde",
            bound(serialize = #serialize_bounds, deserialize = #deserialize_bounds)
        )]
        #item

        impl ::exactly::State for #ident
        where
            for<'__state> #ident: ::exactly::__private::serde::Serialize
                + ::exactly::__private::serde::de::DeserializeOwned
                + ::core::default::Default
                + ::core::marker::Send,
        {
        }

        const _: () = {
            #(#field_assertions)*
            #default_assertion
            #send_assertion
        };
    }
}

/// A serde `bound` string requiring `tr` of every field type, each behind a
/// higher-ranked lifetime so that an unmet bound is not reported here.
fn bounds(fields: &[&Type], tr: &str) -> String {
    fields
        .iter()
        .map(|ty| format!("for<'__state> {}: {tr}", ty.to_token_stream()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Removes `Serialize` and `Deserialize` from the user's `#[derive(...)]`
/// lists, with an error on each: `#[state]` derives them itself.
fn remove_serde_derives(cx: &mut Ctxt, attrs: &mut Vec<Attribute>) {
    attrs.retain_mut(|attr| {
        if !attr.path().is_ident("derive") {
            return true;
        }
        let Ok(paths) = attr.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated)
        else {
            // A malformed derive is reported by rustc itself.
            return true;
        };
        let mut kept = Punctuated::<Path, Token![,]>::new();
        for path in paths {
            match path.segments.last() {
                Some(last) if last.ident == "Serialize" || last.ident == "Deserialize" => {
                    cx.error_spanned_by(
                        &path,
                        format!(
                            "`#[state]` already derives `{}`: remove it from this `#[derive(...)]`",
                            last.ident
                        ),
                    );
                }
                _ => kept.push(path),
            }
        }
        if kept.is_empty() {
            return false;
        }
        if let Meta::List(list) = &mut attr.meta {
            list.tokens = kept.into_token_stream();
        }
        true
    });
}

/// Rejects the container-level serde options that `#[state]` sets itself.
fn check_container_attrs(cx: &mut Ctxt, attrs: &[Attribute]) {
    for key in attrs.iter().flat_map(serde_keys) {
        if key == "crate" || key == "bound" {
            cx.error_spanned_by(
                &key,
                format!(
                    "`#[state]` sets `#[serde({key} = ...)]` itself: remove `{key}` from this attribute"
                ),
            );
        }
    }
}

/// Whether a field attribute tells serde not to serialize the field's type
/// directly, so that it need not implement serde's traits.
fn opts_out_of_serde(attr: &Attribute) -> bool {
    serde_keys(attr)
        .iter()
        .any(|key| SERDE_OPT_OUTS.iter().any(|opt_out| key == opt_out))
}

/// The option names of a `#[serde(a, b = "..", c(..))]` attribute: `[a, b, c]`.
/// Empty for any other attribute.
fn serde_keys(attr: &Attribute) -> Vec<proc_macro2::Ident> {
    let Meta::List(list) = &attr.meta else {
        return Vec::new();
    };
    if !list.path.is_ident("serde") {
        return Vec::new();
    }
    let mut keys = Vec::new();
    let mut at_key = true;
    for token in list.tokens.clone() {
        match token {
            TokenTree::Ident(ident) if at_key => keys.push(ident),
            TokenTree::Punct(punct) if punct.as_char() == ',' => {
                at_key = true;
                continue;
            }
            _ => {}
        }
        at_key = false;
    }
    keys
}

/// The keyword that starts a non-struct item, to put the error on, and what
/// to call the item in the message.
fn keyword_of(item: &Item) -> (TokenStream, &'static str) {
    match item {
        Item::Enum(item) => (item.enum_token.to_token_stream(), "an enum"),
        Item::Union(item) => (item.union_token.to_token_stream(), "a union"),
        Item::Fn(item) => (item.sig.fn_token.to_token_stream(), "a function"),
        Item::Trait(item) => (item.trait_token.to_token_stream(), "a trait"),
        Item::Impl(item) => (item.impl_token.to_token_stream(), "an impl block"),
        Item::Type(item) => (item.type_token.to_token_stream(), "a type alias"),
        Item::Mod(item) => (item.mod_token.to_token_stream(), "a module"),
        Item::Const(item) => (item.const_token.to_token_stream(), "a constant"),
        Item::Static(item) => (item.static_token.to_token_stream(), "a static"),
        other => (other.to_token_stream(), "this item"),
    }
}

fn not_a_struct_message(kind: &str) -> String {
    let mut message = format!(
        "`#[state]` applies to structs, not to {kind}: checkpointed state is a struct whose fields are snapshotted"
    );
    if kind == "an enum" {
        message.push_str(
            "; to keep an enum in state, make it a field of a `#[state]` struct and derive serde's `Serialize` and `Deserialize` on the enum",
        );
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    fn expand_to_string(args: TokenStream, item: TokenStream) -> String {
        expand(args, item).to_string()
    }

    #[test]
    fn derives_serde_and_implements_state() {
        let out = expand_to_string(
            TokenStream::new(),
            quote!(
                #[derive(Default)]
                struct WordCount {
                    count: u64,
                }
            ),
        );
        assert!(
            out.contains("serde :: Serialize , :: exactly :: __private :: serde :: Deserialize")
        );
        assert!(out.contains("impl :: exactly :: State for WordCount"));
        assert!(out.contains("assert_state_field :: < u64 >"));
        assert!(out.contains("for<'__state> u64: ::exactly::__private::serde::Serialize"));
        assert!(!out.contains("compile_error"));
    }

    #[test]
    fn skipped_fields_need_no_serde() {
        let out = expand_to_string(
            TokenStream::new(),
            quote!(
                struct S {
                    kept: u64,
                    #[serde(skip)]
                    cache: Cache,
                }
            ),
        );
        assert!(out.contains("assert_state_field :: < u64 >"));
        assert!(!out.contains("Cache >"));
    }

    #[test]
    fn removes_user_serde_derives_with_an_error() {
        let out = expand_to_string(
            TokenStream::new(),
            quote!(
                #[derive(Debug, serde::Serialize, Default)]
                struct S {
                    n: u64,
                }
            ),
        );
        assert!(out.contains("# [derive (Debug , Default)]"));
        assert!(out.contains("already derives `Serialize`"));
    }

    #[test]
    fn rejects_arguments_enums_and_generics() {
        let out = expand_to_string(
            quote!(durable),
            quote!(
                struct S;
            ),
        );
        assert!(out.contains("takes no arguments"));
        let out = expand_to_string(
            TokenStream::new(),
            quote!(
                enum E {
                    A,
                }
            ),
        );
        assert!(out.contains("not to an enum"));
        let out = expand_to_string(
            TokenStream::new(),
            quote!(
                struct S<T> {
                    t: T,
                }
            ),
        );
        assert!(out.contains("cannot be generic"));
    }

    #[test]
    fn reads_serde_option_names() {
        let attr: Attribute =
            parse_quote!(#[serde(rename = "x", skip_serializing_if = "f", with(a, b))]);
        let keys: Vec<String> = serde_keys(&attr).iter().map(ToString::to_string).collect();
        assert_eq!(keys, ["rename", "skip_serializing_if", "with"]);
        assert!(opts_out_of_serde(&attr));
        let attr: Attribute = parse_quote!(#[doc = "skip"]);
        assert!(serde_keys(&attr).is_empty());
    }
}
