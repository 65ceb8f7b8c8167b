//! Checkpointed state: the traits `#[state]` structs implement.
//!
//! Owns: [`State`], the contract a user struct meets to be snapshotted, and
//! [`StateSet`], the tuple of states one operator keeps. Does not own where
//! state lives at run time (per key, per subtask): that is
//! `runtime::chain`, nor how it is encoded: that is [`crate::codec`].

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A struct whose value is part of every checkpoint.
///
/// Do not implement this by hand: put `#[exactly::state]` on the struct, which
/// derives serde's `Serialize`/`Deserialize` and this trait. The value is
/// created with `Default` the first time a key is seen.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not checkpointed state",
    label = "not marked `#[state]`",
    note = "add `#[exactly::state]` (and `#[derive(Default)]`) to the struct so that it is snapshotted at every checkpoint"
)]
pub trait State: Serialize + DeserializeOwned + Default + Send + 'static {}

/// All the `#[state]` values one operator keeps, as a tuple in parameter
/// order: `()` for a stateless operator, `(A,)`, `(A, B)`, and so on up to
/// eight. The `#[operator]` macro names this type; users never write it.
pub trait StateSet: Serialize + DeserializeOwned + Default + Send + 'static {}

impl StateSet for () {}

macro_rules! state_set_for_tuples {
    ($(($($name:ident),+)),+ $(,)?) => {
        $(impl<$($name: State),+> StateSet for ($($name,)+) {})+
    };
}

state_set_for_tuples!(
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
    (A, B, C, D, E, F),
    (A, B, C, D, E, F, G),
    (A, B, C, D, E, F, G, H),
);
