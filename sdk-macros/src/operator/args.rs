//! The arguments of `#[operator(...)]`.
//!
//! Owns: parsing and validating them. The only argument is
//! `name = "..."`, which overrides the operator's name (by default the
//! function's name) as it appears in task names, logs and checkpoint ids.
//!
//! Does not own the function's signature ([`super::signature`]) or the
//! generated code ([`mod@super::expand`]).

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::{Expr, ExprLit, Ident, Lit, LitStr};

use crate::ctxt::Ctxt;

/// The parsed arguments.
#[derive(Default)]
pub(super) struct OperatorArgs {
    name: Option<LitStr>,
}

impl OperatorArgs {
    /// The operator's name: the `name` argument, or the function's name.
    pub(super) fn name_or(&self, function: &Ident) -> LitStr {
        self.name
            .clone()
            .unwrap_or_else(|| LitStr::new(&function.unraw().to_string(), function.span()))
    }
}

/// Parses `name = "..."`, recording an error for anything else.
pub(super) fn parse(cx: &mut Ctxt, args: TokenStream) -> OperatorArgs {
    let mut parsed = OperatorArgs::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            if parsed.name.is_some() {
                return Err(meta.error("duplicate `name` argument: give the operator one name"));
            }
            let value: Expr = meta.value()?.parse()?;
            let Expr::Lit(ExprLit {
                lit: Lit::Str(name),
                ..
            }) = value
            else {
                return Err(syn::Error::new_spanned(
                    value,
                    "the operator name must be a string literal: `#[operator(name = \"my-operator\")]`",
                ));
            };
            validate_name(&name)?;
            parsed.name = Some(name);
            Ok(())
        } else {
            let key = meta.path.to_token_stream().to_string().replace(' ', "");
            let hint = if edit_distance(&key, "name") <= 2 {
                " (did you mean `name`?)"
            } else {
                ""
            };
            Err(meta.error(format!(
                "unknown `#[operator]` argument `{key}`{hint}: the only argument is `name = \"...\"`"
            )))
        }
    });
    if let Err(error) = parser.parse2(args) {
        cx.syn_error(error);
    }
    parsed
}

/// Operator names appear in task names, logs and checkpoint ids.
fn validate_name(name: &LitStr) -> syn::Result<()> {
    let value = name.value();
    let valid = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if valid {
        Ok(())
    } else {
        Err(syn::Error::new_spanned(
            name,
            format!(
                "invalid operator name {:?}: the name appears in task names and checkpoint ids, so it must be non-empty and use only ASCII letters, digits, `_`, `-` and `.`",
                value
            ),
        ))
    }
}

/// Levenshtein distance, to suggest `name` for a mistyped argument.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;
    use syn::parse_quote;

    fn parse_ok(args: TokenStream) -> OperatorArgs {
        let mut cx = Ctxt::new();
        let parsed = parse(&mut cx, args);
        assert!(!cx.has_errors());
        assert!(cx.into_compile_errors().is_empty());
        parsed
    }

    fn parse_err(args: TokenStream) -> String {
        let mut cx = Ctxt::new();
        parse(&mut cx, args);
        cx.into_compile_errors().to_string()
    }

    #[test]
    fn name_defaults_to_the_function_name() {
        let function: Ident = parse_quote!(r#count);
        assert_eq!(parse_ok(quote!()).name_or(&function).value(), "count");
        let named = parse_ok(quote!(name = "word-count"));
        assert_eq!(named.name_or(&function).value(), "word-count");
    }

    #[test]
    fn reports_unknown_mistyped_and_invalid_arguments() {
        assert!(
            parse_err(quote!(parallelism = 4))
                .contains("unknown `#[operator]` argument `parallelism`")
        );
        assert!(parse_err(quote!(nmae = "x")).contains("did you mean `name`?"));
        assert!(parse_err(quote!(name = count)).contains("must be a string literal"));
        assert!(parse_err(quote!(name = "a b")).contains("invalid operator name"));
        assert!(parse_err(quote!(name = "a", name = "b")).contains("duplicate `name`"));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("name", "name"), 0);
        assert_eq!(edit_distance("nmae", "name"), 2);
        assert_eq!(edit_distance("names", "name"), 1);
        assert!(edit_distance("parallelism", "name") > 2);
    }
}
