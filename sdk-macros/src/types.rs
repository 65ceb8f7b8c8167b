//! Syntactic questions about types, answered without name resolution.
//!
//! Owns: recognising `Emitter<T>`, `Result<T, E>`, `Option<T>`, `bool` and
//! `()` by their spelling, and finding the parts of a type an operator
//! cannot carry (borrows and `impl Trait`). A proc macro sees tokens, not
//! resolved types, so these checks go by the last path segment; a renamed
//! import (`use std::result::Result as Res`) is not recognised.
//!
//! Does not own what a recognised type means for an operator:
//! [`mod@crate::operator`] decides that.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{GenericArgument, PathArguments, PathSegment, Type};

/// `ty` without the invisible groups and parentheses macros wrap types in.
pub(crate) fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// The last segment of a path type such as `exactly::Emitter<T>`.
pub(crate) fn last_segment(ty: &Type) -> Option<&PathSegment> {
    match ungroup(ty) {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    }
}

/// Whether the last segment of `ty` is spelled `name`.
pub(crate) fn is_named(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|segment| segment.ident == name)
}

/// The type arguments of `segment`, in order: `[T, E]` for `Result<T, E>`.
pub(crate) fn type_args(segment: &PathSegment) -> Vec<&Type> {
    match &segment.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether `ty` is the unit type `()`.
pub(crate) fn is_unit(ty: &Type) -> bool {
    matches!(ungroup(ty), Type::Tuple(tuple) if tuple.elems.is_empty())
}

/// A part of a type that a record or a state value cannot contain.
pub(crate) enum Unowned {
    /// A reference or lifetime other than `'static`: the value would borrow
    /// from something that does not outlive it.
    Borrow(TokenStream),
    /// `impl Trait`: the runtime needs a nameable, concrete type.
    ImplTrait(TokenStream),
}

/// The first borrow or `impl Trait` inside `ty`, if any.
pub(crate) fn find_unowned(ty: &Type) -> Option<Unowned> {
    match ty {
        Type::Reference(reference) => match &reference.lifetime {
            Some(lifetime) if lifetime.ident == "static" => find_unowned(&reference.elem),
            _ => Some(Unowned::Borrow(reference.to_token_stream())),
        },
        Type::ImplTrait(impl_trait) => Some(Unowned::ImplTrait(impl_trait.to_token_stream())),
        Type::Group(group) => find_unowned(&group.elem),
        Type::Paren(paren) => find_unowned(&paren.elem),
        Type::Array(array) => find_unowned(&array.elem),
        Type::Slice(slice) => find_unowned(&slice.elem),
        Type::Ptr(ptr) => find_unowned(&ptr.elem),
        Type::Tuple(tuple) => tuple.elems.iter().find_map(find_unowned),
        Type::Path(path) => {
            let qself = path
                .qself
                .as_ref()
                .and_then(|qself| find_unowned(&qself.ty));
            qself.or_else(|| {
                path.path
                    .segments
                    .iter()
                    .find_map(|segment| match &segment.arguments {
                        PathArguments::AngleBracketed(args) => {
                            args.args.iter().find_map(|arg| match arg {
                                GenericArgument::Type(ty) => find_unowned(ty),
                                GenericArgument::Lifetime(lifetime)
                                    if lifetime.ident != "static" =>
                                {
                                    Some(Unowned::Borrow(lifetime.to_token_stream()))
                                }
                                _ => None,
                            })
                        }
                        _ => None,
                    })
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syn::parse_quote;

    #[test]
    fn recognises_types_by_their_last_segment() {
        let emitter: Type = parse_quote!(exactly::Emitter<(String, u64)>);
        assert!(is_named(&emitter, "Emitter"));
        let args = type_args(last_segment(&emitter).unwrap());
        assert_eq!(args.len(), 1);
        assert!(!is_named(&parse_quote!(Vec<u8>), "Emitter"));
        assert!(is_unit(&parse_quote!(())));
        assert!(!is_unit(&parse_quote!((u8,))));
    }

    #[test]
    fn finds_borrows_and_impl_trait() {
        let owned: Type = parse_quote!(Vec<(String, &'static str, [u8; 4])>);
        assert!(find_unowned(&owned).is_none());
        let borrowed: Type = parse_quote!(Vec<&str>);
        assert!(
            matches!(find_unowned(&borrowed), Some(Unowned::Borrow(tokens)) if tokens.to_string() == "& str")
        );
        let elided: Type = parse_quote!(std::borrow::Cow<'_, str>);
        assert!(matches!(find_unowned(&elided), Some(Unowned::Borrow(_))));
        let opaque: Type = parse_quote!(Option<impl Iterator<Item = u8>>);
        assert!(matches!(find_unowned(&opaque), Some(Unowned::ImplTrait(_))));
    }
}
