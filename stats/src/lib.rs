//! The statistics every report and decision uses, once: [`Share`] (a rate with its Wilson 95 %
//! interval), [`pooled_z`] (the fixed-horizon two-proportion z), and in [`sequential`] the mSPRT
//! always-valid comparison and the sample-ratio-mismatch check of the release controller.
//! Pure functions, each checked against a hand-computed value.

pub mod sequential;

pub use sequential::{Comparison, Counts, Srm, compare, sample_ratio};
use serde::{Deserialize, Serialize};

/// Reads a number written by serde_json, which writes NaN and ±∞ as `null`, back as NaN: a
/// record with an undefined number (a p99 of no responses) reads back instead of failing.
/// `#[serde(deserialize_with = "stats::null_as_nan")]`.
pub fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// z for a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A share with its Wilson 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// Successes.
    pub hits: u64,
    /// Trials.
    pub n: u64,
    /// hits / n (0 without trials).
    pub rate: f64,
    /// Lower bound of the Wilson 95 % interval.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

impl Share {
    /// `hits` of `n`, with the Wilson score interval at 95 % (`[0, 1]` without trials).
    pub fn wilson(hits: u64, n: u64) -> Self {
        if n == 0 {
            return Self { hits, n, rate: 0.0, low: 0.0, high: 1.0 };
        }
        let (k, n_f) = (hits as f64, n as f64);
        let p = k / n_f;
        let z2 = Z95 * Z95;
        let denominator = 1.0 + z2 / n_f;
        let centre = (p + z2 / (2.0 * n_f)) / denominator;
        let half = Z95 * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denominator;
        Self { hits, n, rate: p, low: (centre - half).max(0.0), high: (centre + half).min(1.0) }
    }
}

/// The two-proportion z statistic of `a − b` with the pooled variance (0 when it cannot be
/// computed: no trials on a side, or no variance).
pub fn pooled_z(a: Counts, b: Counts) -> f64 {
    let (na, nb) = (a.n as f64, b.n as f64);
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    let pooled = (a.hits + b.hits) as f64 / (na + nb);
    let se0 = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if se0 > 0.0 { (a.rate() - b.rate()) / se0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 of 100: p = 0.2, centre = (0.2 + 1.9208/100) / 1.038415 = 0.21110, half =
    /// 1.96 · √(0.0016 + 0.0000960) / 1.038415 = 0.07774 → [0.1334, 0.2888].
    #[test]
    fn the_wilson_interval_matches_a_hand_computed_value() {
        let s = Share::wilson(20, 100);
        assert!((s.low - 0.13344).abs() < 1e-4 && (s.high - 0.28876).abs() < 1e-4, "{s:?}");
        assert_eq!((Share::wilson(0, 0).low, Share::wilson(0, 0).high), (0.0, 1.0));
    }

    /// 60/100 against 40/100: pooled 0.5, z = 0.2 / √(0.25 · 0.02) = 2.828.
    #[test]
    fn the_pooled_z_matches_a_hand_computed_value() {
        let z = pooled_z(Counts { hits: 60, n: 100 }, Counts { hits: 40, n: 100 });
        assert!((z - 2.828_427).abs() < 1e-5, "{z}");
        assert_eq!(pooled_z(Counts { hits: 0, n: 0 }, Counts { hits: 1, n: 2 }), 0.0);
    }
}
