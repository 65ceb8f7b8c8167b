//! The code `#[operator]` generates.
//!
//! Owns: the unit struct named after the function, its `call` associated
//! function (the original function, renamed and without `#[state]`
//! markers), the `Operator`/`UnkeyedOperator` impls, and the fallback
//! emitted when the signature has errors.
//!
//! Does not own reading the signature ([`super::signature`]) or reporting
//! errors ([`crate::ctxt`]): it generates code from a finished analysis.

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Ident, ItemFn, LitStr, Type};

use super::signature::{Analysis, Role, Shape};

/// Where an attribute of the function goes in the expansion.
enum Placement {
    /// On the unit struct: docs and `#[deprecated]`, which describe the
    /// operator as users name it.
    Struct,
    /// On the `call` function: everything that affects the body or the
    /// signature (`#[inline]`, `#[must_use]`, `#[expect]`, ...).
    Call,
    /// On both: lint levels, so that they hold for the whole expansion.
    Both,
    /// On every generated item: `#[cfg]`.
    Everywhere,
}

fn placement(attr: &Attribute) -> Placement {
    let path = attr.path();
    if path.is_ident("doc") || path.is_ident("deprecated") {
        Placement::Struct
    } else if path.is_ident("cfg") {
        Placement::Everywhere
    } else if ["allow", "warn", "deny", "forbid"]
        .iter()
        .any(|lint| path.is_ident(lint))
    {
        Placement::Both
    } else {
        Placement::Call
    }
}

/// The function's attributes, sorted by where they go.
struct Attrs<'a> {
    on_struct: Vec<&'a Attribute>,
    on_call: Vec<&'a Attribute>,
    on_impls: Vec<&'a Attribute>,
}

impl<'a> Attrs<'a> {
    fn sort(attrs: &'a [Attribute]) -> Self {
        let mut sorted = Attrs {
            on_struct: Vec::new(),
            on_call: Vec::new(),
            on_impls: Vec::new(),
        };
        for attr in attrs {
            match placement(attr) {
                Placement::Struct => sorted.on_struct.push(attr),
                Placement::Call => sorted.on_call.push(attr),
                Placement::Both => {
                    sorted.on_struct.push(attr);
                    sorted.on_call.push(attr);
                }
                Placement::Everywhere => {
                    sorted.on_struct.push(attr);
                    sorted.on_impls.push(attr);
                }
            }
        }
        sorted
    }
}

/// The unit struct and its `call` function, shared by the full expansion and
/// the fallback.
fn struct_and_call(function: &ItemFn, attrs: &Attrs<'_>) -> TokenStream {
    let ItemFn {
        vis, sig, block, ..
    } = function;
    let ident = &sig.ident;
    let mut call_sig = sig.clone();
    call_sig.ident = Ident::new("call", ident.span());
    let Attrs {
        on_struct,
        on_call,
        on_impls,
    } = attrs;
    // Spanned at the function's name, so that diagnostics about the
    // operator's traits point there rather than at the attribute.
    let definition = quote_spanned!(ident.span()=> #vis struct #ident;);
    // The function's name now names a unit struct, which a `let` or closure
    // parameter of the same name would match against instead of binding.
    // A local item of that name shadows the struct in the body.
    let body = quote! {{
        #[allow(dead_code)]
        fn #ident() {}
        #block
    }};
    quote! {
        #(#on_struct)*
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::fmt::Debug,
            ::core::default::Default
        )]
        #definition

        #(#on_impls)*
        impl #ident {
            /// Calls the operator function directly, e.g. from a unit test.
            // The operator contract dictates how the record is passed: by
            // value, or by reference for a filter of `In = String`, say.
            #[allow(
                clippy::needless_pass_by_value,
                clippy::ptr_arg,
                clippy::trivially_copy_pass_by_ref
            )]
            #(#on_call)*
            #vis #call_sig #body
        }
    }
}

/// What the full expansion and the fallback share: the unit struct with its
/// `call`, the attributes every impl carries, the operator's name, and its
/// element types (`()` where the signature gives none).
struct Frame<'a> {
    struct_and_call: TokenStream,
    on_impls: Vec<&'a Attribute>,
    ident: &'a Ident,
    input: Type,
    output: Type,
}

impl<'a> Frame<'a> {
    fn new(function: &'a ItemFn, analysis: &Analysis) -> Self {
        let attrs = Attrs::sort(&function.attrs);
        let unit = || Type::Verbatim(quote!(()));
        Frame {
            struct_and_call: struct_and_call(function, &attrs),
            on_impls: attrs.on_impls,
            ident: &function.sig.ident,
            input: analysis.input.clone().unwrap_or_else(unit),
            output: analysis.output.clone().unwrap_or_else(unit),
        }
    }

    /// The struct with its `call`, `impl Operator` (the element types and
    /// `NAME`, then `items`, under `bounds`), and `impl UnkeyedOperator`
    /// when `unkeyed`.
    fn expand(
        &self,
        name: &LitStr,
        bounds: Option<TokenStream>,
        items: TokenStream,
        unkeyed: bool,
    ) -> TokenStream {
        let Frame {
            struct_and_call,
            on_impls,
            ident,
            input,
            output,
        } = self;
        let unkeyed = unkeyed.then(|| {
            quote! {
                #(#on_impls)*
                impl ::exactly::UnkeyedOperator for #ident {}
            }
        });
        quote! {
            #struct_and_call

            #(#on_impls)*
            impl ::exactly::Operator for #ident #bounds {
                type In = #input;
                type Out = #output;
                const NAME: &'static str = #name;
                #items
            }

            #unkeyed
        }
    }
}

/// The full expansion, for a signature without errors.
pub(super) fn operator(function: &ItemFn, analysis: &Analysis, name: &LitStr) -> TokenStream {
    let frame = Frame::new(function, analysis);
    let state_types: Vec<&Type> = analysis.states.iter().map(|state| &state.ty).collect();
    // A state type that is not a `#[state]` struct is reported once, on the
    // parameter's type, by these assertions. The impl's where-clause states
    // the same bounds behind a dummy higher-ranked lifetime, which rustc
    // does not check where it is written, so that `type State` is not
    // reported a second time, on the attribute.
    let state_assertions = state_types
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> ::exactly::__private::assert_state::<#ty>();));
    let state_bounds = (!state_types.is_empty())
        .then(|| quote!(where #(for<'__state> #state_types: ::exactly::State,)*));
    let state_names = analysis
        .states
        .iter()
        .map(|state| LitStr::new(&state.name.unraw().to_string(), state.name.span()));
    let state_bindings: Vec<Ident> = (0..analysis.states.len())
        .map(|index| format_ident!("__state{index}"))
        .collect();
    let state_param = if state_bindings.is_empty() {
        quote!(_state)
    } else {
        quote!(state)
    };
    let unpack_state = if state_bindings.is_empty() {
        quote!()
    } else {
        quote!(let (#(#state_bindings,)*) = state;)
    };
    let shape = analysis.shape.unwrap_or(Shape::Emit);
    let args = analysis.roles.iter().map(|role| match role {
        Role::Input if shape == Shape::Filter => quote!(&input),
        Role::Input => quote!(input),
        Role::State(index) => state_bindings[*index].to_token_stream(),
        Role::Emitter => quote!(out),
    });
    let mut call = quote!(Self::call(#(#args),*));
    if let Some(error) = &analysis.error {
        let into_box_error = quote_spanned! {error.span()=>
            ::exactly::__private::OperatorError::into_box_error(error)
        };
        call = quote! {
            match #call {
                ::core::result::Result::Ok(value) => value,
                ::core::result::Result::Err(error) => {
                    return ::core::result::Result::Err(#into_box_error);
                }
            }
        };
    }
    let body = match shape {
        Shape::Emit => quote!(#call;),
        Shape::Map => quote! {
            let value = #call;
            out.emit(value);
        },
        Shape::Filter => quote! {
            let keep: bool = #call;
            if keep {
                out.emit(input);
            }
        },
        Shape::FilterMap => quote! {
            if let ::core::option::Option::Some(value) = #call {
                out.emit(value);
            }
        },
    };
    let items = quote! {
            type State = (#(#state_types,)*);
            const STATE_NAMES: &'static [&'static str] = &[#(#state_names),*];

            #[inline]
            fn process(
                &self,
                input: Self::In,
                #state_param: &mut Self::State,
                out: &mut ::exactly::Emitter<Self::Out>,
            ) -> ::core::result::Result<(), ::exactly::BoxError> {
                #unpack_state
                #body
                ::core::result::Result::Ok(())
            }
    };
    let expansion = frame.expand(name, state_bounds, items, analysis.states.is_empty());
    let on_impls = &frame.on_impls;
    quote! {
        #expansion

        #(#on_impls)*
        const _: () = {
            #(#state_assertions)*
        };
    }
}

/// The expansion for a signature with errors: keeps the function's name
/// defined, with the types that could be read, so that code using the
/// operator does not report follow-on errors. The function's body is still
/// compiled, so genuine errors in it are reported too.
pub(super) fn fallback(function: &ItemFn, analysis: &Analysis, name: &LitStr) -> TokenStream {
    if analysis.keep_function {
        // A method sits in an `impl` block, where a struct may not go; a
        // parameter with the function's name would not bind if the name
        // were a struct. Keep the function as written.
        let ItemFn {
            attrs,
            vis,
            sig,
            block,
        } = function;
        return quote!(#(#attrs)* #vis #sig #block);
    }
    let items = quote! {
            type State = ();
            const STATE_NAMES: &'static [&'static str] = &[];

            fn process(
                &self,
                _input: Self::In,
                _state: &mut Self::State,
                _out: &mut ::exactly::Emitter<Self::Out>,
            ) -> ::core::result::Result<(), ::exactly::BoxError> {
                ::core::result::Result::Ok(())
            }
    };
    Frame::new(function, analysis).expand(name, None, items, true)
}
