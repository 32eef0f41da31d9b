//! The decision at one look: promote, abort (with the criterion that failed) or continue.
//!
//! In order: users who changed variant (broken stickiness) or a broken split (SRM) abort; then the guardrails (p99 latency, failure rate) abort;
//! nothing is decided before the minimum sample and duration; then the always-valid confidence
//! sequence on conversion decides — entirely below zero: abort (the nightly is worse); above
//! `-margin`: promote (the nightly is not worse than main by more than the margin); at the
//! maximum duration without either: abort as inconclusive.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::online::VariantNumbers;
use crate::stats::{self, Comparison, Srm};

/// What a release must show (defaults stated; every one is a flag of `lazyrec-release`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    /// Level of the conversion test and its confidence sequence (0.05).
    pub alpha: f64,
    /// mSPRT mixing scale: the effect size the test is tuned for, in conversion points (0.02).
    pub tau: f64,
    /// Non-inferiority margin: promote when nightly − main > −margin with confidence (0.01).
    pub margin: f64,
    /// Responses each variant needs before any conversion decision (1,000).
    pub min_responses: u64,
    /// Time before any conversion decision (10 min).
    pub min_duration: Duration,
    /// Longest experiment; inconclusive by then → abort (2 h).
    pub max_duration: Duration,
    /// Largest tolerated increase of the failure rate, nightly − main (0.01).
    pub max_failure_increase: f64,
    /// Largest tolerated increase of p99 latency, ms (100).
    pub max_p99_increase_ms: f64,
    /// Responses each variant needs before the guardrails and SRM are judged (200).
    pub min_guardrail_responses: u64,
    /// SRM p-value threshold (0.001).
    pub srm_threshold: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            tau: 0.02,
            margin: 0.01,
            min_responses: 1_000,
            min_duration: Duration::from_secs(600),
            max_duration: Duration::from_secs(7_200),
            max_failure_increase: 0.01,
            max_p99_increase_ms: 100.0,
            min_guardrail_responses: 200,
            srm_threshold: 0.001,
        }
    }
}

/// Which criterion ended an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Users changed variant during the experiment (stickiness broke).
    Assignment,
    /// The split is not the configured one.
    SampleRatio,
    /// The nightly fails (errors, fail-overs) more than allowed.
    Failures,
    /// The nightly is slower than allowed.
    Latency,
    /// The nightly converts worse.
    Conversion,
    /// No decision within the maximum duration.
    Inconclusive,
}

/// The outcome of a look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    /// Make the nightly main.
    Promote {
        /// Why, with the numbers.
        reason: String,
    },
    /// Stop the experiment.
    Abort {
        /// The failed criterion.
        criterion: Criterion,
        /// Why, with the numbers.
        reason: String,
    },
    /// Look again later.
    Continue {
        /// What is missing.
        reason: String,
    },
}

/// A look: the numbers, the tests and the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Main's numbers.
    pub main: VariantNumbers,
    /// Nightly's numbers.
    pub nightly: VariantNumbers,
    /// Nightly against main on conversion.
    pub comparison: Comparison,
    /// The split check (distinct users).
    pub srm: Srm,
    /// Users whose assigned variant changed during the experiment (must be 0).
    #[serde(default)]
    pub switched_users: u64,
    /// How long the experiment has run.
    #[serde(deserialize_with = "stats::null_as_nan")]
    pub elapsed_s: f64,
    /// The decision.
    pub decision: Decision,
    /// The criteria it was judged by (absent in looks recorded before they were stored).
    #[serde(default)]
    pub criteria: Option<Criteria>,
}

/// Judges one look. `previous_p` is the always-valid p-value of the previous look (1.0 first);
/// `switched_users` counts users whose assigned variant changed ([`crate::online::switched_users`]).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    main: VariantNumbers,
    nightly: VariantNumbers,
    switched_users: u64,
    expected_share: f64,
    elapsed: Duration,
    previous_p: f64,
    criteria: &Criteria,
) -> Evaluation {
    let comparison = stats::compare(main.conversion, nightly.conversion, criteria.alpha, criteria.tau, previous_p);
    let srm = stats::sample_ratio(main.users, nightly.users, expected_share, criteria.srm_threshold);
    let guardable =
        main.requests >= criteria.min_guardrail_responses && nightly.requests >= criteria.min_guardrail_responses;
    let pct = |x: f64| 100.0 * x;
    let decision = if switched_users > 0 {
        Decision::Abort {
            criterion: Criterion::Assignment,
            reason: format!("{switched_users} users changed variant during the experiment: the comparison is void"),
        }
    } else if guardable && srm.mismatch {
        Decision::Abort {
            criterion: Criterion::SampleRatio,
            reason: format!(
                "sample ratio mismatch: {:.2} % of users on nightly, {:.2} % configured (χ² = {:.1}, p = {:.2e})",
                pct(srm.observed_share),
                pct(expected_share),
                srm.chi2,
                srm.p
            ),
        }
    } else if let Some((criterion, reason)) = guardrails(&main, &nightly, criteria).filter(|_| guardable) {
        Decision::Abort { criterion, reason }
    } else if main.conversion.n < criteria.min_responses
        || nightly.conversion.n < criteria.min_responses
        || elapsed < criteria.min_duration
    {
        Decision::Continue {
            reason: format!(
                "collecting: {} / {} responses (main / nightly, {} each needed), {:.0} of {:.0} s",
                main.conversion.n,
                nightly.conversion.n,
                criteria.min_responses,
                elapsed.as_secs_f64(),
                criteria.min_duration.as_secs_f64()
            ),
        }
    } else {
        let summary = format!(
            "conversion nightly {:.2} % vs main {:.2} %: difference {:+.2} points, always-valid {:.0} % CS [{:+.2}, {:+.2}], p = {:.3}",
            pct(nightly.conversion.rate()),
            pct(main.conversion.rate()),
            pct(comparison.diff),
            100.0 * (1.0 - criteria.alpha),
            pct(comparison.cs_low),
            pct(comparison.cs_high),
            comparison.p_always_valid
        );
        if comparison.cs_high < 0.0 {
            Decision::Abort { criterion: Criterion::Conversion, reason: format!("nightly converts worse: {summary}") }
        } else if comparison.cs_low > -criteria.margin {
            Decision::Promote {
                reason: format!("nightly not worse than main by {:.2} points: {summary}", pct(criteria.margin)),
            }
        } else if elapsed >= criteria.max_duration {
            Decision::Abort {
                criterion: Criterion::Inconclusive,
                reason: format!("no decision after {:.0} s: {summary}", elapsed.as_secs_f64()),
            }
        } else {
            Decision::Continue { reason: summary }
        }
    };
    Evaluation {
        main,
        nightly,
        comparison,
        srm,
        switched_users,
        elapsed_s: elapsed.as_secs_f64(),
        decision,
        criteria: Some(*criteria),
    }
}

/// The guardrails that trip, latency first (a slow nightly also fails over, and its cause is
/// the latency), then failures; the reason names every one that tripped.
fn guardrails(main: &VariantNumbers, nightly: &VariantNumbers, criteria: &Criteria) -> Option<(Criterion, String)> {
    let pct = |x: f64| 100.0 * x;
    let mut tripped: Vec<(Criterion, String)> = Vec::new();
    if nightly.p99_ms - main.p99_ms > criteria.max_p99_increase_ms {
        tripped.push((
            Criterion::Latency,
            format!(
                "nightly p99 {:.1} ms vs main {:.1} ms (limit +{:.0} ms)",
                nightly.p99_ms, main.p99_ms, criteria.max_p99_increase_ms
            ),
        ));
    }
    if nightly.failure_rate() - main.failure_rate() > criteria.max_failure_increase {
        tripped.push((
            Criterion::Failures,
            format!(
                "nightly failures {:.2} % vs main {:.2} % (limit +{:.2} points)",
                pct(nightly.failure_rate()),
                pct(main.failure_rate()),
                pct(criteria.max_failure_increase)
            ),
        ));
    }
    let first = tripped.first()?.0;
    Some((first, tripped.into_iter().map(|(_, r)| r).collect::<Vec<_>>().join("; also ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Counts;

    fn variant(name: &str, users: u64, n: u64, hits: u64, failures: u64, p99: f64) -> VariantNumbers {
        VariantNumbers {
            variant: name.into(),
            requests: n,
            users,
            conversion: Counts { hits, n },
            errors: failures,
            failed_over: 0,
            degraded: 0,
            p50_ms: p99 / 3.0,
            p99_ms: p99,
        }
    }

    #[test]
    fn a_recorded_look_reads_back_even_with_undefined_numbers() {
        // No response whose window closed: p50/p99 are NaN, written as null.
        let e = decide(
            variant("main", 0, 0, 0, 0, f64::NAN),
            variant("nightly", 0, 0, 0, 0, f64::NAN),
            0,
            0.2,
            Duration::from_secs(5),
            1.0,
            &Criteria::default(),
        );
        let json = serde_json::to_value(&e).expect("encode");
        assert!(json["main"]["p99_ms"].is_null(), "{json}");
        let back: Evaluation = serde_json::from_value(json).expect("decode");
        assert!(back.main.p99_ms.is_nan());
        assert_eq!(back.criteria, Some(Criteria::default()));
        assert_eq!(back.decision, e.decision);
    }

    fn outcome(e: &Evaluation) -> String {
        match &e.decision {
            Decision::Promote { .. } => "promote".into(),
            Decision::Abort { criterion, .. } => format!("abort:{criterion:?}"),
            Decision::Continue { .. } => "continue".into(),
        }
    }

    #[test]
    fn each_bad_nightly_is_aborted_by_its_own_criterion_and_a_better_one_promoted() {
        let c = Criteria::default();
        let hour = Duration::from_secs(3_600);
        let main = || variant("main", 8_000, 40_000, 4_000, 40, 20.0);
        let cases = [
            (variant("nightly", 2_000, 10_000, 1_500, 10, 22.0), "promote"),
            (variant("nightly", 2_000, 10_000, 600, 10, 22.0), "abort:Conversion"),
            (variant("nightly", 2_000, 10_000, 1_500, 10, 240.0), "abort:Latency"),
            (variant("nightly", 2_000, 10_000, 1_500, 500, 22.0), "abort:Failures"),
            (variant("nightly", 2_600, 10_000, 1_500, 10, 22.0), "abort:SampleRatio"),
            (variant("nightly", 2_000, 10_000, 1_000, 10, 22.0), "continue"),
        ];
        for (nightly, want) in cases {
            let e = decide(main(), nightly, 0, 0.2, hour, 1.0, &c);
            assert_eq!(outcome(&e), want, "{:?}", e.decision);
        }
        // Equal models: not decided early, inconclusive at the maximum duration.
        let equal = variant("nightly", 2_000, 1_000, 100, 1, 22.0);
        let early = decide(variant("main", 8_000, 4_000, 400, 4, 20.0), equal.clone(), 0, 0.2, hour, 1.0, &c);
        assert_eq!(outcome(&early), "continue");
        let late = decide(variant("main", 8_000, 4_000, 400, 4, 20.0), equal, 0, 0.2, 3 * hour, 1.0, &c);
        assert_eq!(outcome(&late), "abort:Inconclusive");
        // Too little data or time: no conversion decision.
        let young = decide(
            main(),
            variant("nightly", 2_000, 10_000, 1_500, 10, 22.0),
            0,
            0.2,
            Duration::from_secs(60),
            1.0,
            &c,
        );
        assert_eq!(outcome(&young), "continue");
        // A user who saw both variants voids the comparison, whatever the numbers.
        let switched = decide(main(), variant("nightly", 2_000, 10_000, 1_500, 10, 22.0), 1, 0.2, hour, 1.0, &c);
        assert_eq!(outcome(&switched), "abort:Assignment");
    }
}
