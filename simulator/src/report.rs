//! The end-of-run report: availability as the course measures it, latency, answers and
//! conversion per variant with confidence intervals, cold-start service, log lines by kind.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use stats::{Share, Z95};

/// The difference `a − b` of two shares with a 95 % (Wald, unpooled) interval and the pooled
/// two-proportion z statistic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// a.rate − b.rate.
    pub diff: f64,
    /// Lower end of the 95 % interval.
    pub low: f64,
    /// Upper end.
    pub high: f64,
    /// The two-proportion z statistic (pooled variance).
    pub z: f64,
}

impl Difference {
    /// Compares two shares.
    pub fn between(a: &Share, b: &Share) -> Self {
        let diff = a.rate - b.rate;
        let (na, nb) = (a.n.max(1) as f64, b.n.max(1) as f64);
        let se = (a.rate * (1.0 - a.rate) / na + b.rate * (1.0 - b.rate) / nb).sqrt();
        let counts = |s: &Share| stats::Counts { hits: s.hits, n: s.n };
        let z = stats::pooled_z(counts(a), counts(b));
        Self { diff, low: diff - Z95 * se, high: diff + Z95 * se, z }
    }
}

/// Latency percentiles of the responses, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// From latencies in microseconds (sorted here).
    pub fn from_micros(mut values: Vec<u32>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let at =
            |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1] as f64 / 1000.0;
        Self { p50: at(0.50), p95: at(0.95), p99: at(0.99), max: at(1.0) }
    }
}

/// Per answering variant (`x-variant`: main, nightly, fallback; `unknown` without the header;
/// `none` for requests without a response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantReport {
    /// Requests answered by this variant (valid or not).
    pub answers: u64,
    /// Requests followed by a watch of a recommended movie (out of valid answers).
    pub conversion: Share,
    /// Of which the watched movie was in the user's future (not noise).
    pub liked: u64,
}

/// Log lines written, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lines {
    /// `recommendation request` lines.
    pub recommendation: u64,
    /// `GET /data/m/…` lines.
    pub watch: u64,
    /// `GET /rate/…` lines.
    pub rate: u64,
    /// `GET /create_account` lines.
    pub create_account: u64,
    /// Movies watched (a watch is several minute lines).
    pub movies_watched: u64,
}

/// Cold-start service: requests of new users.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdStart {
    /// New users in the population.
    pub users: u64,
    /// Their requests.
    pub requests: u64,
    /// Of which answered with a valid list in time.
    pub served: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The target.
    pub target: String,
    /// The seed.
    pub seed: u64,
    /// Requested rate (req/s).
    pub rate: f64,
    /// Wall time (s).
    pub elapsed_s: f64,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests not sent because `max_in_flight` were outstanding (the simulator or the target
    /// could not keep up).
    pub not_sent: u64,
    /// Requests sent.
    pub requests: u64,
    /// Sent per second of wall time.
    pub achieved_rate: f64,
    /// Status 200 with a valid list within the budget, out of requests (the course's measure).
    pub availability: Share,
    /// Responses with status 200.
    pub status_200: u64,
    /// Responses with another status.
    pub status_other: u64,
    /// No response within the timeout.
    pub timeouts: u64,
    /// Connection failures.
    pub failed: u64,
    /// 200 responses whose body is not a valid list.
    pub invalid: u64,
    /// Latency of responses.
    pub latency_ms: Latency,
    /// Per answering variant.
    pub variants: BTreeMap<String, VariantReport>,
    /// All valid answers together.
    pub conversion: Share,
    /// Watches of movies not recommended.
    pub organic_watches: u64,
    /// New users.
    pub cold_start: ColdStart,
    /// Log lines.
    pub lines: Lines,
    /// Kafka messages not acknowledged.
    pub undelivered: u64,
    /// Whether the run ended early (Ctrl-C / stop).
    pub interrupted: bool,
}

impl Report {
    /// The aligned text form.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let pct = |s: &Share| format!("{:.2} % [{:.2}, {:.2}]", 100.0 * s.rate, 100.0 * s.low, 100.0 * s.high);
        let _ = writeln!(
            out,
            "simulation of {} (seed {}): {} requests in {:.1} s ({:.0}/s, asked {:.0}/s){}",
            self.target,
            self.seed,
            self.requests,
            self.elapsed_s,
            self.achieved_rate,
            self.rate,
            if self.interrupted { ", interrupted" } else { "" }
        );
        if self.not_sent > 0 {
            let _ = writeln!(out, "  not sent (too many in flight): {}", self.not_sent);
        }
        let _ = writeln!(out, "  availability (200, valid list, in time): {}", pct(&self.availability));
        let _ = writeln!(
            out,
            "  responses: {} × 200 ({} invalid), {} other status, {} timeouts, {} failed",
            self.status_200, self.invalid, self.status_other, self.timeouts, self.failed
        );
        let l = &self.latency_ms;
        let _ = writeln!(out, "  latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}", l.p50, l.p95, l.p99, l.max);
        let _ = writeln!(out, "  {:<10} {:>9} {:>32} {:>8}", "variant", "answers", "conversion [95 % CI]", "liked");
        for (name, v) in &self.variants {
            let _ = writeln!(out, "  {:<10} {:>9} {:>32} {:>8}", name, v.answers, pct(&v.conversion), v.liked);
        }
        let _ = writeln!(out, "  {:<10} {:>9} {:>32}", "all", self.conversion.n, pct(&self.conversion));
        let _ = writeln!(
            out,
            "  cold start: {} new users, {} requests, {} served",
            self.cold_start.users, self.cold_start.requests, self.cold_start.served
        );
        let _ = writeln!(
            out,
            "  log lines: {} recommendation, {} watch ({} movies, {} organic), {} rate, {} create_account{}",
            self.lines.recommendation,
            self.lines.watch,
            self.lines.movies_watched,
            self.organic_watches,
            self.lines.rate,
            self.lines.create_account,
            if self.undelivered > 0 { format!(", {} NOT delivered to kafka", self.undelivered) } else { String::new() }
        );
        out
    }
}

/// Compares the conversion of two runs (same seed and population, different models):
/// `a − b` with its interval, as text.
pub fn compare(a: &Report, b: &Report, a_name: &str, b_name: &str) -> (Difference, String) {
    let d = Difference::between(&a.conversion, &b.conversion);
    let text = format!(
        "conversion {a_name} {:.2} % (n {}) vs {b_name} {:.2} % (n {}): difference {:+.2} points, 95 % CI [{:+.2}, {:+.2}], z = {:.2}",
        100.0 * a.conversion.rate,
        a.conversion.n,
        100.0 * b.conversion.rate,
        b.conversion.n,
        100.0 * d.diff,
        100.0 * d.low,
        100.0 * d.high,
        d.z
    );
    (d, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_matches_a_hand_computed_value() {
        // 10 of 100: Wilson 95 % = [0.0552, 0.1744] (e.g. Newcombe 1998, table I style).
        let s = Share::wilson(10, 100);
        assert!((s.low - 0.0552).abs() < 5e-4 && (s.high - 0.1744).abs() < 5e-4, "{s:?}");
        let d = Difference::between(&Share::wilson(60, 100), &Share::wilson(40, 100));
        // se = sqrt(.24/100 + .24/100) = 0.06928; 0.2 ± 0.1358; pooled z = 0.2 / sqrt(.25·.02) = 2.828.
        assert!((d.low - 0.0642).abs() < 5e-4 && (d.high - 0.3358).abs() < 5e-4 && (d.z - 2.828).abs() < 1e-3, "{d:?}");
    }

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        let l = Latency::from_micros((1..=100).map(|ms| ms * 1000).collect());
        assert_eq!((l.p50, l.p95, l.p99, l.max), (50.0, 95.0, 99.0, 100.0));
    }
}
