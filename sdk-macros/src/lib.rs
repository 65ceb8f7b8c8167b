//! Procedural macros for `exactly`. Use them through the `exactly` crate:
//! `#[exactly::operator]` and `#[exactly::state]`.
//!
//! Owns: the two attribute macros. Each module owns one concern:
//! `state` expands `#[state]`, `operator` expands `#[operator]`,
//! `ctxt` collects errors and `types` reads types by their spelling.
//! The generated code names everything by absolute path (`::exactly::...`)
//! and reaches serde through `::exactly::__private`, so users need neither
//! imports nor a direct serde dependency.
//!
//! Does not own any runtime behaviour: what the generated code calls (the
//! `Operator` and `State` traits, the state codec) is the `exactly`
//! crate's. This crate depends on `syn`, `quote` and `proc-macro2` only.

mod ctxt;
mod operator;
mod state;
mod types;

use proc_macro::TokenStream;

/// Marks a free function as a pipeline operator.
///
/// The function's name becomes a unit struct implementing
/// `exactly::Operator`, so the operator is passed to the pipeline by name,
/// `.operator(count)`, and the function itself stays callable as
/// `count::call(...)`, e.g. from a unit test.
///
/// The function takes exactly one input record, any number of
/// `#[state] name: &mut T` parameters (where `T` is a `#[state]` struct) and
/// at most one `out: &mut Emitter<T>`, in any order. Its shape follows from
/// the signature:
///
/// - `fn f(x: A, out: &mut Emitter<B>)`: emits zero or more `B`s;
/// - `fn f(x: A) -> B`: emits the returned value;
/// - `fn f(x: &A) -> bool`: a filter, emits the input when it returns `true`;
/// - `fn f(x: A) -> Option<B>`: emits the value when it returns `Some`.
///
/// A return type spelled `Result<R, E>` is always treated as fallible: an
/// `Err` fails the task (which restarts from the last checkpoint), so `E`
/// must convert into `exactly::BoxError`, and `R` is read as above.
///
/// An operator without `#[state]` parameters also implements
/// `exactly::UnkeyedOperator` and may run on any stream; one with state
/// runs only after `key_by`, where its state is kept per key.
///
/// The only argument is `#[operator(name = "...")]`, which overrides the name
/// used in task names, logs and checkpoint ids (by default the function's
/// name).
///
/// ```text
/// #[exactly::operator]
/// pub fn count(word: String, #[state] counts: &mut WordCount, out: &mut Emitter<(String, u64)>) {
///     counts.count += 1;
///     out.emit((word, counts.count));
/// }
/// ```
#[proc_macro_attribute]
pub fn operator(args: TokenStream, item: TokenStream) -> TokenStream {
    operator::expand(args.into(), item.into()).into()
}

/// Marks a struct as checkpointed state.
///
/// Derives serde's `Serialize` and `Deserialize` (do not derive them
/// yourself) and implements `exactly::State`. The struct must also
/// implement `Default`, which is the state of a key seen for the first time,
/// and every field must be serializable, or be marked `#[serde(skip)]`.
///
/// ```text
/// #[exactly::state]
/// #[derive(Default)]
/// struct WordCount {
///     count: u64,
/// }
/// ```
#[proc_macro_attribute]
pub fn state(args: TokenStream, item: TokenStream) -> TokenStream {
    state::expand(args.into(), item.into()).into()
}
