//! Telemetry reports over a time range of `recommendations_history` and the ingested events
//! (`lazyrec-report`), the analyses the course asks teams to run on their own telemetry:
//!
//! - [`exposure`]: the feedback loop (movies recommended far more than they are watched
//!   organically) and popularity bias (catalog coverage, the Gini of exposure against the Gini of
//!   organic watching);
//! - [`fairness`]: conversion and exposure to the most popular movies by user group (age band,
//!   gender, occupation from the course's user data), with 95 % intervals;
//! - [`drift`]: the input distributions (watch length, ratings, new users, cold-start answers)
//!   of two windows, with the population stability index.
//!
//! Read-only SQL; every number is derived from what the services logged, nothing is sampled.

pub mod drift;
pub mod exposure;
pub mod fairness;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// A half-open time range `[since, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    /// From (inclusive).
    pub since: DateTime<Utc>,
    /// To (exclusive).
    pub until: DateTime<Utc>,
}

impl Range {
    /// Its two halves (the default drift comparison: first half against second half).
    pub fn halves(&self) -> (Range, Range) {
        let mid = self.since + (self.until - self.since) / 2;
        (Range { since: self.since, until: mid }, Range { since: mid, until: self.until })
    }

    fn render(&self) -> String {
        format!("{} .. {}", self.since.format("%Y-%m-%d %H:%M:%S"), self.until.format("%Y-%m-%d %H:%M:%S"))
    }
}

/// What to compute.
#[derive(Debug, Clone)]
pub struct Params {
    /// The report's range.
    pub range: Range,
    /// Drift compares this window (default: the range's first half) …
    pub baseline: Option<Range>,
    /// … with this one (default: the range's second half).
    pub current: Option<Range>,
    /// A watch this long after an answer that listed the movie counts as the answer's
    /// conversion (and is not organic).
    pub conversion_window: chrono::TimeDelta,
    /// Movies in the feedback-loop table.
    pub top: usize,
    /// "Popular" for the fairness table's exposure: the top this many of the popularity list.
    pub popular: i64,
}

pub use stats::Share;

/// A share as the tables print it: the rate and its interval, in percent.
fn render_share(s: &Share) -> String {
    format!("{:6.2} % [{:.2}, {:.2}]", 100.0 * s.rate, 100.0 * s.low, 100.0 * s.high)
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The range.
    pub range: Range,
    /// Answers (status 200) in the range.
    pub answers: u64,
    /// Feedback loop and popularity bias.
    pub exposure: exposure::Exposure,
    /// By user group.
    pub fairness: fairness::Fairness,
    /// Input drift between two windows.
    pub drift: drift::Drift,
}

impl Report {
    /// Computes every section.
    pub async fn compute(pool: &PgPool, params: &Params) -> Result<Self, sqlx::Error> {
        let answers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM recommendations_history WHERE ts >= $1 AND ts < $2 AND status = 200",
        )
        .bind(params.range.since)
        .bind(params.range.until)
        .fetch_one(pool)
        .await?;
        let (first, second) = params.range.halves();
        let (baseline, current) = (params.baseline.unwrap_or(first), params.current.unwrap_or(second));
        // The sections are independent read-only queries: run side by side (a pool of one
        // connection runs them one after another).
        let (exposure, fairness, drift) = tokio::try_join!(
            exposure::compute(pool, &params.range, params.conversion_window, params.top),
            fairness::compute(pool, &params.range, params.conversion_window, params.popular),
            drift::compute(pool, &baseline, &current),
        )?;
        Ok(Self { range: params.range, answers: answers as u64, exposure, fairness, drift })
    }

    /// Text tables.
    pub fn render(&self) -> String {
        let mut out = format!("telemetry report {}: {} answers\n\n", self.range.render(), self.answers);
        out.push_str(&self.exposure.render());
        out.push('\n');
        out.push_str(&self.fairness.render());
        out.push('\n');
        out.push_str(&self.drift.render());
        out
    }
}

/// The Gini coefficient of non-negative amounts (0: all equal, → 1: one item has everything).
pub fn gini(amounts: &[f64]) -> f64 {
    let total: f64 = amounts.iter().sum();
    let n = amounts.len();
    if n == 0 || total <= 0.0 {
        return 0.0;
    }
    let mut sorted = amounts.to_vec();
    sorted.sort_by(f64::total_cmp);
    let weighted: f64 = sorted.iter().enumerate().map(|(i, x)| (2.0 * (i as f64 + 1.0) - n as f64 - 1.0) * x).sum();
    weighted / (n as f64 * total)
}

/// The Lorenz curve of non-negative amounts at `points + 1` evenly spaced population shares:
/// (share of items, smallest first; share of the total they hold). Empty or all-zero amounts:
/// the diagonal (no inequality to show).
pub fn lorenz(amounts: &[f64], points: usize) -> Vec<(f64, f64)> {
    let points = points.max(1);
    let total: f64 = amounts.iter().sum();
    if amounts.is_empty() || total <= 0.0 {
        return (0..=points).map(|i| (i as f64 / points as f64, i as f64 / points as f64)).collect();
    }
    let mut sorted = amounts.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut cumulative = Vec::with_capacity(sorted.len() + 1);
    cumulative.push(0.0);
    for x in &sorted {
        cumulative.push(cumulative.last().copied().unwrap_or(0.0) + x);
    }
    let n = sorted.len();
    (0..=points)
        .map(|i| {
            let share = i as f64 / points as f64;
            let k = ((share * n as f64).round() as usize).min(n);
            (share, cumulative[k] / total)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lorenz_curve_is_the_diagonal_for_equal_amounts_and_bows_for_a_winner() {
        let equal = lorenz(&[2.0; 10], 10);
        assert!(equal.iter().all(|(x, y)| (x - y).abs() < 1e-12), "{equal:?}");
        let winner = lorenz(&[0.0, 0.0, 0.0, 10.0], 4);
        assert_eq!(winner, vec![(0.0, 0.0), (0.25, 0.0), (0.5, 0.0), (0.75, 0.0), (1.0, 1.0)]);
        assert_eq!(lorenz(&[], 2), vec![(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)]);
    }

    #[test]
    fn gini_of_equal_amounts_is_zero_and_of_one_winner_tends_to_one() {
        assert!(gini(&[5.0, 5.0, 5.0, 5.0]).abs() < 1e-12);
        assert!((gini(&[0.0, 0.0, 0.0, 10.0]) - 0.75).abs() < 1e-12);
        // A textbook case: 1, 2, 3, 4 → Σ(2i−n−1)x / (nΣx) = (−3·1 −1·2 +1·3 +3·4) / (4·10) = 0.25.
        assert!((gini(&[4.0, 1.0, 3.0, 2.0]) - 0.25).abs() < 1e-12);
        assert_eq!(gini(&[]), 0.0);
    }
}
