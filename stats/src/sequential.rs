//! The sequential statistics of an online experiment, pure functions checked against
//! hand-computed values.
//!
//! **Why a sequential test.** The release controller looks at a running experiment again and
//! again (every `evaluate`) and stops as soon as it can decide. A fixed-horizon two-proportion
//! z test read at every look inflates the false-positive rate far above its α (with enough
//! looks, almost any A/A experiment crosses p < 0.05 once). The mixture sequential probability
//! ratio test (mSPRT; Johari, Koomen, Pekelis & Walsh, "Peeking at A/B tests", KDD 2017, the
//! test behind Optimizely's stats engine) gives an *always-valid* p-value and confidence
//! sequence: valid at every look, whenever the controller stops. It is used for decisions; the
//! fixed-horizon z and its interval are reported beside it, for reference.
//!
//! For the difference θ = p_nightly − p_main of two conversion rates with the plug-in variance
//! V = p̂₁(1−p̂₁)/n₁ + p̂₂(1−p̂₂)/n₂ and a normal mixing distribution N(0, τ²) on θ:
//!
//! Λ = √(V / (V + τ²)) · exp(θ̂² τ² / (2 V (V + τ²))),  p = min over looks of 1/Λ,
//! confidence sequence θ̂ ± √(V (V + τ²) / τ² · (ln((V + τ²) / V) + 2 ln(1/α))).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// Successes out of trials for one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Successes (converted responses).
    pub hits: u64,
    /// Trials (responses).
    pub n: u64,
}

impl Counts {
    /// hits / n (0 when there are no trials).
    pub fn rate(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.hits as f64 / self.n as f64 }
    }

    fn variance_of_rate(&self) -> f64 {
        let p = self.rate();
        if self.n == 0 { 0.0 } else { p * (1.0 - p) / self.n as f64 }
    }
}

/// The comparison of a treatment (nightly) against a control (main).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// p̂_treatment − p̂_control.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub diff: f64,
    /// The plug-in variance of `diff`.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub variance: f64,
    /// mSPRT likelihood ratio Λ.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub likelihood_ratio: f64,
    /// Always-valid p-value at this look (`min(previous, 1/Λ)`).
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub p_always_valid: f64,
    /// Always-valid (1 − α) confidence sequence on the difference.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub cs_low: f64,
    /// Upper end.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub cs_high: f64,
    /// Fixed-horizon two-proportion z (pooled variance), for reference.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub z: f64,
    /// Its two-sided p-value (valid only for a single, pre-planned look).
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub p_fixed: f64,
    /// Fixed-horizon (1 − α) Wald interval, for reference.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub ci_low: f64,
    /// Upper end.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub ci_high: f64,
}

fn standard_normal() -> Normal {
    // N(0, 1) is a valid distribution: the constructor cannot fail for these arguments.
    Normal::new(0.0, 1.0).unwrap_or_else(|_| unreachable!("N(0, 1)"))
}

/// Compares `treatment` against `control` at level `alpha` with mixing scale `tau` (the size of
/// effect the test is tuned to find, in conversion points: 0.02 = 2 points). `previous_p` is
/// the always-valid p-value of the previous look (1.0 at the first).
pub fn compare(control: Counts, treatment: Counts, alpha: f64, tau: f64, previous_p: f64) -> Comparison {
    let diff = treatment.rate() - control.rate();
    let variance = control.variance_of_rate() + treatment.variance_of_rate();
    let tau2 = tau * tau;
    let (likelihood_ratio, cs_half) = if variance > 0.0 {
        let lr =
            (variance / (variance + tau2)).sqrt() * (diff * diff * tau2 / (2.0 * variance * (variance + tau2))).exp();
        let half = (variance * (variance + tau2) / tau2
            * (((variance + tau2) / variance).ln() + 2.0 * (1.0 / alpha).ln()))
        .sqrt();
        (lr, half)
    } else {
        // No variance yet (no trials, or all-or-nothing rates): no evidence either way.
        (1.0, f64::INFINITY)
    };
    let p_always_valid = previous_p.min(1.0 / likelihood_ratio).clamp(0.0, 1.0);
    let z = crate::pooled_z(treatment, control);
    let p_fixed = if z == 0.0 { 1.0 } else { 2.0 * (1.0 - standard_normal().cdf(z.abs())) };
    let zq = standard_normal().inverse_cdf(1.0 - alpha / 2.0);
    let se = variance.sqrt();
    Comparison {
        diff,
        variance,
        likelihood_ratio,
        p_always_valid,
        cs_low: diff - cs_half,
        cs_high: diff + cs_half,
        z,
        p_fixed,
        ci_low: diff - zq * se,
        ci_high: diff + zq * se,
    }
}

/// A sample-ratio-mismatch check: are the units split as configured?
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Srm {
    /// Units in control (main).
    pub control: u64,
    /// Units in treatment (nightly).
    pub treatment: u64,
    /// The configured treatment share.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub expected_share: f64,
    /// The observed treatment share.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub observed_share: f64,
    /// Pearson's χ² (1 degree of freedom).
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub chi2: f64,
    /// Its p-value.
    #[serde(deserialize_with = "crate::null_as_nan")]
    pub p: f64,
    /// `p < threshold`: the split is broken and the experiment's numbers cannot be trusted.
    pub mismatch: bool,
}

/// χ² goodness-of-fit of the split against `expected_share`; a mismatch when p < `threshold`
/// (0.001 is the usual choice: SRM checks run on every look and must not cry wolf).
pub fn sample_ratio(control: u64, treatment: u64, expected_share: f64, threshold: f64) -> Srm {
    let total = (control + treatment) as f64;
    let observed_share = if total > 0.0 { treatment as f64 / total } else { 0.0 };
    let (chi2, p) = if total > 0.0 && expected_share > 0.0 && expected_share < 1.0 {
        let et = total * expected_share;
        let ec = total - et;
        let chi2 = (treatment as f64 - et).powi(2) / et + (control as f64 - ec).powi(2) / ec;
        let dist = ChiSquared::new(1.0).unwrap_or_else(|_| unreachable!("χ²(1)"));
        (chi2, 1.0 - dist.cdf(chi2))
    } else {
        (0.0, 1.0)
    };
    Srm { control, treatment, expected_share, observed_share, chi2, p, mismatch: p < threshold }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// The worked example (README): 10,000 responses each, main converts 10 %, nightly 11 %,
    /// α = 0.05, τ = 0.02. By hand: V = 0.09/10⁴ + 0.0979/10⁴ = 1.879e-5;
    /// Λ = √(1.879e-5 / 4.1879e-4) · exp(1e-4 · 4e-4 / (2 · 1.879e-5 · 4.1879e-4)) = 0.21182 ·
    /// e^2.54160 = 2.6901, so the always-valid p = 0.3717 and the confidence sequence
    /// 0.01 ± √(1.96731e-5 · (ln 22.2879 + 2 ln 20)) = [−0.00338, +0.02338]: not significant —
    /// while the fixed-horizon z = 2.307 (p = 0.0211) would call it, which is exactly the error
    /// repeated looks make.
    #[test]
    fn the_sequential_test_matches_the_worked_example() {
        let c = compare(Counts { hits: 1_000, n: 10_000 }, Counts { hits: 1_100, n: 10_000 }, 0.05, 0.02, 1.0);
        assert!(close(c.variance, 1.879e-5, 1e-9), "{c:?}");
        assert!(close(c.likelihood_ratio, 2.69009, 1e-4), "{c:?}");
        assert!(close(c.p_always_valid, 0.371734, 1e-5), "{c:?}");
        assert!(close(c.cs_low, -0.0033766, 1e-6) && close(c.cs_high, 0.0233766, 1e-6), "{c:?}");
        assert!(close(c.z, 2.306635, 1e-5) && close(c.p_fixed, 0.021075, 1e-5), "{c:?}");
        // The p-value never goes back up: a later, weaker look keeps the earlier one.
        let later =
            compare(Counts { hits: 1_000, n: 10_000 }, Counts { hits: 1_000, n: 10_000 }, 0.05, 0.02, c.p_always_valid);
        assert_eq!(later.p_always_valid, c.p_always_valid);
    }

    #[test]
    fn a_large_effect_is_significant_and_no_data_is_no_evidence() {
        let c = compare(Counts { hits: 900, n: 10_000 }, Counts { hits: 1_490, n: 10_000 }, 0.05, 0.02, 1.0);
        assert!(c.p_always_valid < 1e-6 && c.cs_low > 0.04, "{c:?}");
        let none = compare(Counts { hits: 0, n: 0 }, Counts { hits: 0, n: 0 }, 0.05, 0.02, 1.0);
        assert_eq!((none.p_always_valid, none.cs_low.is_infinite()), (1.0, true));
    }

    /// SRM on a skewed split: 1,000 users at a 20 % share expect 200 on nightly. 250 gives
    /// χ² = 50²/200 + 50²/800 = 15.625, p = 7.72e-5: a mismatch. 210 gives χ² = 0.625,
    /// p = 0.429: fine.
    #[test]
    fn sample_ratio_mismatch_on_a_skewed_split() {
        let skewed = sample_ratio(750, 250, 0.2, 0.001);
        assert!(close(skewed.chi2, 15.625, 1e-9) && close(skewed.p, 7.7227e-5, 1e-8) && skewed.mismatch, "{skewed:?}");
        let fine = sample_ratio(790, 210, 0.2, 0.001);
        assert!(close(fine.chi2, 0.625, 1e-9) && close(fine.p, 0.429195, 1e-5) && !fine.mismatch, "{fine:?}");
    }

    /// The reason for the sequential test, checked: 200 A/A experiments looked at 20 times each.
    /// Stopping at the first fixed-horizon p < 0.05 "finds" an effect far more often than 5 %;
    /// the always-valid p stays under α.
    #[test]
    fn peeking_inflates_the_fixed_test_but_not_the_sequential_one() {
        // A deterministic LCG: the test must not depend on a random crate's stream.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut fixed_false, mut sequential_false) = (0, 0);
        for _ in 0..200 {
            let (mut a, mut b) = (Counts { hits: 0, n: 0 }, Counts { hits: 0, n: 0 });
            let (mut fixed_hit, mut p) = (false, 1.0);
            for _look in 0..20 {
                for _ in 0..500 {
                    a.n += 1;
                    a.hits += u64::from(uniform() < 0.1);
                    b.n += 1;
                    b.hits += u64::from(uniform() < 0.1);
                }
                let c = compare(a, b, 0.05, 0.02, p);
                p = c.p_always_valid;
                fixed_hit |= c.p_fixed < 0.05;
            }
            fixed_false += u32::from(fixed_hit);
            sequential_false += u32::from(p < 0.05);
        }
        assert!(fixed_false > 25, "peeking at the fixed test: {fixed_false} / 200 false positives");
        assert!(sequential_false <= 10, "always-valid: {sequential_false} / 200 false positives");
    }
}
