//! What an `#[operator]` function's signature means.
//!
//! Owns: sorting the parameters into the one input record, the `#[state]`
//! parameters and the optional emitter; reading the return type; and
//! deciding the operator's shape from both. Also strips the `#[state]`
//! markers from the parameters, since they are not real attributes.
//!
//! The shapes, decided by the signature alone:
//!
//! | signature                                   | shape      | `Out` |
//! |---------------------------------------------|------------|-------|
//! | `fn f(x: A, out: &mut Emitter<B>)`          | emit       | `B`   |
//! | `fn f(x: A) -> B`                           | map        | `B`   |
//! | `fn f(x: &A) -> bool`                       | filter     | `A`   |
//! | `fn f(x: A) -> Option<B>`                   | filter_map | `B`   |
//!
//! A return type spelled `Result<R, E>` is always fallible: the error is
//! returned from `process` (failing the task), and `R` is read as above.
//!
//! Does not own the code generated from the analysis ([`mod@super::expand`])
//! or how a type is recognised by its spelling ([`crate::types`]).

use quote::{ToTokens, quote_spanned};
use syn::ext::IdentExt;
use syn::{Attribute, FnArg, Ident, Meta, Pat, PatIdent, PatType, ReturnType, Signature, Type};

use crate::ctxt::Ctxt;
use crate::types::{self, Unowned};

/// `StateSet` is implemented for tuples of up to this many states.
const MAX_STATES: usize = 8;

/// What one parameter is, in parameter order.
pub(super) enum Role {
    /// The input record.
    Input,
    /// The `#[state]` parameter with this index in [`Analysis::states`].
    State(usize),
    /// The `&mut Emitter<T>`.
    Emitter,
}

/// A `#[state] name: &mut T` parameter.
pub(super) struct StateParam {
    /// The parameter's name, which names the state in checkpoints.
    pub(super) name: Ident,
    /// `T`.
    pub(super) ty: Type,
}

/// How `process` turns the function's result into outputs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// The function emits through its emitter and returns `()`.
    Emit,
    /// The function returns the one output.
    Map,
    /// The function takes `&In` and returns whether to pass the input on.
    Filter,
    /// The function returns `Option<Out>`; `None` emits nothing.
    FilterMap,
}

/// Everything the expansion needs to know about the signature. Fields that
/// could not be determined because of an error are `None`.
#[derive(Default)]
pub(super) struct Analysis {
    /// Whether the function takes `self`, i.e. is a method.
    pub(super) is_method: bool,
    /// Whether the fallback must keep the function as written rather than
    /// turn its name into a struct: inside an `impl` block (a method), or
    /// when a parameter has the function's name.
    pub(super) keep_function: bool,
    /// Each typed parameter's role, in parameter order.
    pub(super) roles: Vec<Role>,
    /// The `#[state]` parameters, in parameter order.
    pub(super) states: Vec<StateParam>,
    /// The input record's type (`A` also when the input is taken as `&A`).
    pub(super) input: Option<Type>,
    /// The output type.
    pub(super) output: Option<Type>,
    /// The operator's shape.
    pub(super) shape: Option<Shape>,
    /// For a function returning `Result`: the error type (or the whole
    /// `Result` when it does not name one), where a failed conversion into
    /// `BoxError` is reported.
    pub(super) error: Option<Type>,
}

/// The input parameter as found, before the return type is known.
struct Input {
    ty: Type,
    by_ref: Option<Type>,
}

/// The return type, read by its spelling.
enum Value {
    Unit,
    Bool(Type),
    Option(Type),
    Other(Type),
}

/// The parameters as read, before the return type is known.
#[derive(Default)]
struct Params {
    /// The input parameter, if it was found and is valid.
    input: Option<Input>,
    /// Whether a parameter was taken as the input, valid or not (a `&mut`
    /// parameter without `#[state]` is not).
    has_input: bool,
    /// `Some` if there is an emitter parameter, holding its output type if
    /// that is valid.
    emitter: Option<Option<Type>>,
}

/// Analyses the signature, recording every problem in `cx`, and removes the
/// `#[state]` markers from its parameters.
pub(super) fn analyze(cx: &mut Ctxt, sig: &mut Signature) -> Analysis {
    check_qualifiers(cx, sig);
    let mut analysis = Analysis::default();
    let params = read_params(cx, sig, &mut analysis);
    let function = &sig.ident;
    if !params.has_input && !analysis.is_method {
        cx.error_spanned_by(
            function,
            format!(
                "`{function}` has no input parameter: an operator takes the record it processes as a plain parameter, e.g. `fn {function}(record: String, ...)`"
            ),
        );
    }
    let value = read_return(cx, &sig.output, &mut analysis.error);
    let by_ref = params.input.as_ref().and_then(|input| input.by_ref.clone());
    analysis.input = params.input.map(|input| input.ty);
    let (shape, output) = match (params.emitter, value) {
        (Some(emitter_output), Some(Value::Unit)) => (Some(Shape::Emit), emitter_output),
        (Some(_), Some(Value::Bool(ty) | Value::Option(ty) | Value::Other(ty))) => {
            cx.error_spanned_by(
                ty,
                "an operator with an emitter returns `()` (or `Result<(), E>`): emit outputs with `out.emit(value)`, or remove the emitter and return the one output",
            );
            (None, None)
        }
        (None, Some(Value::Unit)) => {
            cx.error_spanned_by(
                function,
                format!(
                    "`{function}` emits nothing: add an emitter parameter `out: &mut Emitter<T>` and call `out.emit(value)`, or return a value"
                ),
            );
            (None, None)
        }
        (None, Some(Value::Bool(_))) if by_ref.is_some() => {
            (Some(Shape::Filter), analysis.input.clone())
        }
        (None, Some(Value::Bool(ty) | Value::Other(ty))) => (Some(Shape::Map), Some(ty)),
        (None, Some(Value::Option(ty))) => (Some(Shape::FilterMap), Some(ty)),
        (_, None) => (None, None),
    };
    if let (Some(reference), Some(shape)) = (&by_ref, shape)
        && shape != Shape::Filter
    {
        cx.error_spanned_by(
            reference,
            "only a filter (`fn keep(record: &T) -> bool`) takes its input by reference: take the record by value, `record: T`",
        );
    }
    analysis.shape = shape;
    analysis.output = output;
    analysis
}

/// Sorts the parameters into input, `#[state]` parameters and emitter,
/// filling in `analysis.roles`, `analysis.states` and the method flags.
fn read_params(cx: &mut Ctxt, sig: &mut Signature, analysis: &mut Analysis) -> Params {
    let function = sig.ident.clone();
    let mut params = Params::default();
    for arg in &mut sig.inputs {
        let param = match arg {
            FnArg::Receiver(receiver) => {
                analysis.is_method = true;
                analysis.keep_function = true;
                cx.error_spanned_by(
                    receiver.self_token,
                    "`#[operator]` applies to free functions, not methods: move the function out of the `impl` block and pass what it needs from `self` as `#[state]` or as part of the record",
                );
                continue;
            }
            FnArg::Typed(param) => param,
        };
        if let Pat::Ident(binding) = &*param.pat
            && binding.ident == function
        {
            analysis.keep_function = true;
            cx.error_spanned_by(
                &binding.ident,
                format!(
                    "parameter `{function}` has the name of its operator: `#[operator]` turns `{function}` into a unit struct, which the parameter would match against instead of binding; rename the parameter"
                ),
            );
        }
        if take_state_marker(cx, &mut param.attrs) {
            let index = analysis.states.len();
            if let Some(state) = state_param(cx, param, &analysis.states) {
                analysis.states.push(state);
            }
            analysis.roles.push(Role::State(index));
        } else if is_emitter(&param.ty) {
            if params.emitter.is_some() {
                cx.error_spanned_by(
                    &*param,
                    "an operator has one output: only one `&mut Emitter<T>` parameter is allowed",
                );
            }
            params.emitter = Some(emitter_output(cx, &param.ty));
            analysis.roles.push(Role::Emitter);
        } else {
            if is_mut_reference(&param.ty) {
                let name = param.pat.to_token_stream();
                cx.error_spanned_by(
                    &param.ty,
                    format!(
                        "`{name}` is taken by `&mut`, but only `#[state]` parameters and the emitter are: if `{name}` is the operator's state, mark it `#[state] {name}: &mut T`; if it is the input record, take it by value"
                    ),
                );
            } else if params.has_input {
                cx.error_spanned_by(&*param, second_input_message(&function, &param.pat));
            } else {
                params.input = input_param(cx, param);
                params.has_input = true;
            }
            analysis.roles.push(Role::Input);
        }
    }
    params
}

/// Rejects the function qualifiers an operator cannot have. `const` is
/// allowed: it only restricts the body.
fn check_qualifiers(cx: &mut Ctxt, sig: &Signature) {
    if let Some(asyncness) = &sig.asyncness {
        cx.error_spanned_by(
            asyncness,
            "`#[operator]` functions cannot be `async`: the runtime calls the operator synchronously for every record; remove `async` and do I/O in a source or sink",
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.error_spanned_by(
            unsafety,
            "`#[operator]` functions cannot be `unsafe`: the runtime calls them and cannot uphold a safety contract; make the function safe and use an `unsafe` block inside it",
        );
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(
            abi,
            "`#[operator]` functions cannot have an `extern` ABI: remove it; the runtime calls the operator as a Rust function",
        );
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(
            &sig.generics,
            "`#[operator]` functions cannot be generic: an operator has one concrete input, output and state type; remove the generic parameters (write one operator per type)",
        );
    } else if let Some(where_clause) = &sig.generics.where_clause {
        cx.error_spanned_by(
            where_clause,
            "`#[operator]` functions cannot have a `where` clause: an operator has concrete types; remove it",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "`#[operator]` functions cannot be variadic");
    }
}

/// Removes the `#[state]` markers from a parameter's attributes, reporting
/// any arguments given to them. Returns whether there was one.
fn take_state_marker(cx: &mut Ctxt, attrs: &mut Vec<Attribute>) -> bool {
    let mut found = false;
    attrs.retain(|attr| {
        if !is_state_marker(attr) {
            return true;
        }
        let message = "a parameter's `#[state]` takes no arguments: the state is named after the parameter; write `#[state] name: &mut T`";
        match &attr.meta {
            Meta::Path(_) => {}
            Meta::List(list) if list.tokens.is_empty() => {
                cx.error_at(list.delimiter.span().join(), message);
            }
            Meta::List(list) => cx.error_spanned_by(&list.tokens, message),
            Meta::NameValue(name_value) => cx.error_spanned_by(&name_value.value, message),
        }
        found = true;
        false
    });
    found
}

/// `#[state]` or `#[exactly::state]`.
fn is_state_marker(attr: &Attribute) -> bool {
    let path = attr.path();
    match path.segments.len() {
        1 => path.is_ident("state"),
        2 => path.segments[0].ident == "exactly" && path.segments[1].ident == "state",
        _ => false,
    }
}

/// Reads a `#[state] name: &mut T` parameter.
fn state_param(cx: &mut Ctxt, param: &mut PatType, states: &[StateParam]) -> Option<StateParam> {
    let name = match &*param.pat {
        Pat::Ident(PatIdent {
            by_ref: None,
            subpat: None,
            ident,
            ..
        }) => Some(ident.clone()),
        pat => {
            cx.error_spanned_by(
                pat,
                "a `#[state]` parameter must be a plain name such as `counts`: the name identifies the state in checkpoints",
            );
            None
        }
    };
    let ty = match types::ungroup(&param.ty) {
        Type::Reference(reference) if reference.mutability.is_some() => {
            Some((*reference.elem).clone())
        }
        other => {
            let inner = match other {
                Type::Reference(reference) => &*reference.elem,
                other => other,
            };
            cx.error_spanned_by(
                &param.ty,
                format!(
                    "a `#[state]` parameter must be a mutable reference, `&mut {}`: the runtime owns the state, keeps one value per key and lends it to each call",
                    inner.to_token_stream()
                ),
            );
            None
        }
    };
    if let Some(ty) = &ty {
        report_unowned(cx, ty, "state");
    }
    let name = name?;
    let key = name.unraw().to_string();
    if states.iter().any(|state| state.name.unraw() == key) {
        cx.error_spanned_by(
            &name,
            format!(
                "duplicate state name `{key}`: each `#[state]` parameter needs its own name, which identifies it in checkpoints"
            ),
        );
        // Unbind the duplicate so that rustc does not report it again.
        *param.pat = Pat::Verbatim(quote_spanned!(name.span()=> _));
        return None;
    }
    if states.len() == MAX_STATES {
        cx.error_spanned_by(
            &*param,
            format!(
                "an operator keeps at most {MAX_STATES} `#[state]` parameters: group related values into one `#[state]` struct"
            ),
        );
        return None;
    }
    Some(StateParam { name, ty: ty? })
}

/// Whether a parameter's type is `&mut T`.
fn is_mut_reference(ty: &Type) -> bool {
    matches!(types::ungroup(ty), Type::Reference(reference) if reference.mutability.is_some())
}

/// Whether a parameter's type is an emitter, by the spelling `Emitter` of
/// its last path segment (behind any reference).
fn is_emitter(ty: &Type) -> bool {
    match types::ungroup(ty) {
        Type::Reference(reference) => types::is_named(&reference.elem, "Emitter"),
        other => types::is_named(other, "Emitter"),
    }
}

/// The `T` of a `&mut Emitter<T>` parameter.
fn emitter_output(cx: &mut Ctxt, ty: &Type) -> Option<Type> {
    let Type::Reference(reference) = types::ungroup(ty) else {
        cx.error_spanned_by(
            ty,
            "take the emitter by mutable reference, `out: &mut Emitter<T>`: the operator writes its outputs into the runtime's emitter",
        );
        return None;
    };
    if reference.mutability.is_none() {
        cx.error_spanned_by(
            ty,
            "take the emitter by mutable reference, `out: &mut Emitter<T>`: emitting writes to it",
        );
        return None;
    }
    let segment = types::last_segment(&reference.elem)?;
    match types::type_args(segment).as_slice() {
        [output] => report_unowned(cx, output, "output").then(|| (*output).clone()),
        _ => {
            cx.error_spanned_by(
                &reference.elem,
                "name the output type: `&mut Emitter<T>`, where `T` is what the operator emits",
            );
            None
        }
    }
}

/// Reads the input parameter: `A`, or `&A` for a filter.
fn input_param(cx: &mut Ctxt, param: &PatType) -> Option<Input> {
    let (ty, by_ref) = match types::ungroup(&param.ty) {
        Type::Reference(reference) => ((*reference.elem).clone(), Some((*param.ty).clone())),
        other => (other.clone(), None),
    };
    report_unowned(cx, &ty, "input").then_some(Input { ty, by_ref })
}

fn second_input_message(function: &Ident, pat: &Pat) -> String {
    let name = pat.to_token_stream();
    format!(
        "`{function}` takes a second input `{name}`: an operator processes one record at a time, from one stream. To process two streams, `union` them into one stream of a common type first; if `{name}` is state, mark it `#[state]` and take it as `&mut T`"
    )
}

/// Reads the return type. Records the error type of a `Result` in `error`.
fn read_return(cx: &mut Ctxt, output: &ReturnType, error: &mut Option<Type>) -> Option<Value> {
    let ReturnType::Type(_, ty) = output else {
        return Some(Value::Unit);
    };
    let ty = &**ty;
    let value_ty = match types::last_segment(ty) {
        Some(segment) if segment.ident == "Result" => {
            let args = types::type_args(segment);
            *error = Some(args.get(1).map_or(ty, |error| *error).clone());
            match args.first() {
                Some(value) => *value,
                // An alias such as `fmt::Result`: its value is `()`.
                None => return Some(Value::Unit),
            }
        }
        _ => ty,
    };
    let value = if types::is_unit(value_ty) {
        Value::Unit
    } else if types::last_segment(value_ty)
        .is_some_and(|s| s.ident == "bool" && s.arguments.is_none())
    {
        Value::Bool(value_ty.clone())
    } else {
        match types::last_segment(value_ty) {
            Some(segment) if segment.ident == "Option" => {
                match types::type_args(segment).as_slice() {
                    [inner] => Value::Option((*inner).clone()),
                    _ => Value::Other(value_ty.clone()),
                }
            }
            _ => Value::Other(value_ty.clone()),
        }
    };
    match &value {
        Value::Option(ty) | Value::Other(ty) => report_unowned(cx, ty, "output").then_some(value),
        Value::Unit | Value::Bool(_) => Some(value),
    }
}

/// Reports a borrow or `impl Trait` inside a record or state type. Returns
/// whether the type is fine.
fn report_unowned(cx: &mut Ctxt, ty: &Type, what: &str) -> bool {
    match types::find_unowned(ty) {
        None => true,
        Some(Unowned::Borrow(tokens)) => {
            cx.error_spanned_by(
                tokens,
                format!(
                    "an operator's {what} must own its data: records move between tasks and state outlives each call, so they cannot borrow; use an owned type (`String` for `&str`, `Vec<T>` for `&[T]`)"
                ),
            );
            false
        }
        Some(Unowned::ImplTrait(tokens)) => {
            let hint = if what == "output" {
                "; to emit several values, take `out: &mut Emitter<T>` instead of returning an iterator"
            } else {
                ""
            };
            cx.error_spanned_by(
                tokens,
                format!(
                    "`impl Trait` cannot be an operator's {what}: the pipeline needs a concrete type; name the type{hint}"
                ),
            );
            false
        }
    }
}
