//! The benchmark's statistics: the median and range of per-round figures,
//! and the shuffled order of each round.
//!
//! Every ratio is taken within a round, where both figures were measured
//! side by side, and only then summarised over the rounds: a ratio of
//! medians would pair figures from different moments of a noisy machine.
//! This module knows nothing of contenders; `report` applies it.

use std::fmt;

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The smallest, median and largest of a figure over the rounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The smallest value.
    pub min: f64,
    /// The median.
    pub median: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        let median = median(&mut values)?;
        Some(Spread {
            min: values[0],
            median,
            max: values[values.len() - 1],
        })
    }

    /// Formats it as `median (min–max)`, each with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(2))
    }
}

/// `items` in the order a generator seeded with `seed` and the round
/// number gives: each round is shuffled on its own, and the same seed
/// repeats every round's order.
pub fn shuffled<T: Clone>(items: &[T], seed: u64, round: usize) -> Vec<T> {
    let mut rng =
        fastrand::Rng::with_seed(seed ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order = items.to_vec();
    rng.shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty_lists() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn a_spread_is_min_median_max_whatever_the_order() {
        let spread = Spread::of(vec![0.98, 1.04, 0.91, 1.20, 0.95]).unwrap();
        assert_eq!(
            spread,
            Spread {
                min: 0.91,
                median: 0.98,
                max: 1.20
            }
        );
        assert_eq!(spread.to_string(), "0.98 (0.91–1.20)");
        assert_eq!(spread.show(0), "1 (1–1)");
        assert_eq!(Spread::of(Vec::new()), None);
    }

    #[test]
    fn each_round_is_shuffled_repeatably_and_differently() {
        let items: Vec<u32> = (0..12).collect();
        let round = |seed, round| shuffled(&items, seed, round);
        assert_eq!(round(7, 1), round(7, 1), "the same seed repeats");
        let mut sorted = round(7, 1);
        sorted.sort_unstable();
        assert_eq!(sorted, items, "a permutation");
        assert_ne!(round(7, 1), round(7, 2), "rounds differ");
        assert_ne!(round(7, 1), round(8, 1), "seeds differ");
    }
}
