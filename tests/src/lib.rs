//! Workspace-level test suites for `exactly`; the tests live in `tests/`.
