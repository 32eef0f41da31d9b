//! What the experiment measured, per assigned variant, from `recommendations_history` and the
//! ingested watches (`user_watched.first_ts`): one query, read-only.
//!
//! Conversion: a 200 response followed, within the conversion window, by the user's first watch
//! of one of its movies. Variants are the *assigned* ones (intention to treat: a nightly request
//! that failed over to main or to the fallback list still counts against nightly), and a
//! response only counts once its window has closed, so a look never sees half-finished windows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::stats::Counts;

/// The slice of history to measure.
#[derive(Debug, Clone)]
pub struct Window {
    /// The experiment (salt) the responses were assigned under.
    pub experiment: String,
    /// Responses from this time on.
    pub since: DateTime<Utc>,
    /// Up to this time (exclusive; typically now).
    pub until: DateTime<Utc>,
    /// How long after a response a watch still counts as its conversion.
    pub conversion_window: chrono::Duration,
}

/// One variant's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantNumbers {
    /// `main` or `nightly` (assigned).
    pub variant: String,
    /// Responses whose conversion window closed.
    pub requests: u64,
    /// Distinct users among them.
    pub users: u64,
    /// Status-200 responses and those converted.
    pub conversion: Counts,
    /// Responses with a status other than 200.
    pub errors: u64,
    /// Responses served by another variant or the fallback list (the assigned one failed).
    pub failed_over: u64,
    /// Degraded answers (a stage of the server gave up).
    pub degraded: u64,
    /// Latency at the load balancer, ms.
    #[serde(deserialize_with = "stats::null_as_nan")]
    pub p50_ms: f64,
    /// 99th percentile, ms.
    #[serde(deserialize_with = "stats::null_as_nan")]
    pub p99_ms: f64,
}

impl VariantNumbers {
    /// Errors and fail-overs per request (0 without requests).
    pub fn failure_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { (self.errors + self.failed_over) as f64 / self.requests as f64 }
    }

    fn empty(variant: &str) -> Self {
        Self {
            variant: variant.into(),
            requests: 0,
            users: 0,
            conversion: Counts { hits: 0, n: 0 },
            errors: 0,
            failed_over: 0,
            degraded: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
        }
    }
}

type Row = (String, i64, i64, i64, i64, i64, i64, i64, Option<f64>, Option<f64>);

/// Measures `main` and `nightly` over `window` (a variant without responses comes back empty).
pub async fn measure(pool: &PgPool, window: &Window) -> Result<(VariantNumbers, VariantNumbers), sqlx::Error> {
    let closed_before = window.until - window.conversion_window;
    let rows: Vec<Row> = sqlx::query_as(
        "WITH h AS (
           SELECT * FROM recommendations_history
           WHERE experiment = $1 AND ts >= $2 AND ts < $3
             AND assigned_variant IN ('main', 'nightly') AND user_id IS NOT NULL
         )
         SELECT assigned_variant,
                count(*),
                count(DISTINCT user_id),
                count(*) FILTER (WHERE status = 200),
                count(*) FILTER (WHERE status = 200 AND EXISTS (
                  SELECT 1 FROM user_watched w
                  WHERE w.user_id = h.user_id AND w.movie_id = ANY (h.movie_ids)
                    AND watch_converts(h.ts, w.first_ts, $4 * interval '1 millisecond'))),
                count(*) FILTER (WHERE status <> 200),
                count(*) FILTER (WHERE status = 200 AND served_variant <> assigned_variant),
                count(*) FILTER (WHERE degraded),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_us) / 1000.0,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us) / 1000.0
         FROM h GROUP BY assigned_variant",
    )
    .bind(&window.experiment)
    .bind(window.since)
    .bind(closed_before)
    .bind(window.conversion_window.num_milliseconds() as f64)
    .fetch_all(pool)
    .await?;
    let (mut main, mut nightly) = (VariantNumbers::empty("main"), VariantNumbers::empty("nightly"));
    for (variant, requests, users, answered, converted, errors, failed_over, degraded, p50, p99) in rows {
        let numbers = VariantNumbers {
            variant: variant.clone(),
            requests: requests as u64,
            users: users as u64,
            conversion: Counts { hits: converted as u64, n: answered as u64 },
            errors: errors as u64,
            failed_over: failed_over as u64,
            degraded: degraded as u64,
            p50_ms: p50.unwrap_or(0.0),
            p99_ms: p99.unwrap_or(0.0),
        };
        match variant.as_str() {
            "main" => main = numbers,
            _ => nightly = numbers,
        }
    }
    Ok((main, nightly))
}

/// Users of the experiment whose assigned variant changed within `window` (stickiness says 0:
/// a user who saw both models makes the comparison meaningless).
pub async fn switched_users(pool: &PgPool, window: &Window) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
           SELECT user_id FROM recommendations_history
           WHERE experiment = $1 AND ts >= $2 AND ts < $3
             AND assigned_variant IN ('main', 'nightly') AND user_id IS NOT NULL
           GROUP BY user_id HAVING count(DISTINCT assigned_variant) > 1
         ) s",
    )
    .bind(&window.experiment)
    .bind(window.since)
    .bind(window.until)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}
