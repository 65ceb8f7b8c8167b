//! Runnable examples for `exactly`: see the `[[example]]` targets.
