//! What the storage benches share: their settings from the environment
//! and the median of their rounds. Included with `#[path]`, since each
//! bench is a binary of its own.

/// The number in the environment variable `name`, or `default`.
///
/// # Panics
///
/// When the variable is set to something that is not a number.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
        })
        .unwrap_or(default)
}

/// The median of `values` (the upper one of an even count).
///
/// # Panics
///
/// When `values` is empty or holds values that do not compare (NaN).
pub fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    sorted[sorted.len() / 2]
}
