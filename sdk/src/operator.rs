//! The operator contract that `#[operator]` functions compile to.
//!
//! Owns: [`Operator`], [`UnkeyedOperator`] and the [`Emitter`] an operator
//! writes its outputs to. Does not own how operators are run, chained or
//! snapshotted: that is `runtime::chain`.

use crate::error::BoxError;
use crate::state::StateSet;

/// One step of a pipeline: takes one input element, may read and update its
/// [`StateSet`], and emits zero or more outputs.
///
/// Do not implement this by hand: write a plain function and mark it
/// `#[exactly::operator]`. The macro turns the function name into a unit
/// struct that implements this trait, so the function is passed to the
/// pipeline by name: `.operator(split_words)`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an operator",
    label = "expected a function marked `#[operator]`",
    note = "mark the function with `#[exactly::operator]` and pass it by name: `.operator(my_fn)`"
)]
pub trait Operator: Copy + Send + Sync + 'static {
    /// The input element.
    type In: Send + 'static;
    /// The output element.
    type Out: Send + 'static;
    /// The operator's `#[state]` parameters, as a tuple in parameter order.
    type State: StateSet;
    /// The operator's name, used in task names, logs and checkpoint ids.
    const NAME: &'static str;
    /// The names of the `#[state]` parameters, in the order of [`Self::State`].
    const STATE_NAMES: &'static [&'static str];

    /// Processes one element.
    ///
    /// # Errors
    ///
    /// An error fails the task; the job restarts from its last checkpoint as
    /// its restart strategy allows.
    fn process(
        &self,
        input: Self::In,
        state: &mut Self::State,
        out: &mut Emitter<Self::Out>,
    ) -> Result<(), BoxError>;
}

/// An operator that keeps no `#[state]` and so may run on any stream.
///
/// `#[operator]` implements it for functions without `#[state]` parameters.
/// Operators with state only run after `key_by`, where their state is scoped
/// to the current key, as Flink's keyed state is.
#[diagnostic::on_unimplemented(
    message = "operator `{Self}` keeps keyed `#[state]`, so it needs a keyed stream",
    label = "this stream has no `key_by`",
    note = "call `.key_by(|record| key)` before `.operator(...)`: each key gets its own state, as in Flink's keyed state"
)]
pub trait UnkeyedOperator: Operator {}

/// Where an operator writes its outputs: `out.emit(value)` once per output.
///
/// Outputs are buffered and handed downstream as one batch after the input
/// batch is processed.
#[derive(Debug)]
pub struct Emitter<T> {
    buffer: Vec<T>,
}

impl<T> Emitter<T> {
    /// An emitter that collects into a new buffer. Useful to unit-test an
    /// operator function directly.
    pub fn new() -> Self {
        Emitter { buffer: Vec::new() }
    }

    /// Emits one output.
    #[inline]
    pub fn emit(&mut self, value: T) {
        self.buffer.push(value);
    }

    /// The outputs emitted so far.
    pub fn emitted(&self) -> &[T] {
        &self.buffer
    }

    /// Takes the outputs emitted so far, leaving the emitter empty.
    pub fn take(&mut self) -> Vec<T> {
        std::mem::take(&mut self.buffer)
    }

    /// The buffer itself, for the runtime to hand down and refill.
    pub(crate) fn buffer(&mut self) -> &mut Vec<T> {
        &mut self.buffer
    }
}

impl<T> Default for Emitter<T> {
    fn default() -> Self {
        Self::new()
    }
}
