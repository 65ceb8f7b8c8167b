//! Compile tests of `#[operator]` and `#[state]`.
//!
//! `ui/pass/*.rs` must compile and run: each uses the macros and asserts, in
//! `main`, what the generated code does. `ui/fail/*.rs` must fail to
//! compile with exactly the errors in the `.stderr` beside it, which pins the
//! wording and the span of every error the macros report. To regenerate the
//! snapshots after a deliberate change, run
//! `TRYBUILD=overwrite cargo test -p exactly-macros --test ui` and review the
//! diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
