//! History rows written by hand for tests that need a known telemetry (one builder, the one
//! place that spells `recommendations_history`'s columns outside the load balancer).

use chrono::{DateTime, Utc};
use proto::contract::DataVersions;

/// One `recommendations_history` row: a 200 from main for no user, with no movies, unless set.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    request_id: String,
    ts: DateTime<Utc>,
    user_id: Option<i64>,
    experiment: Option<String>,
    assigned_variant: Option<String>,
    served_variant: String,
    status: i32,
    latency_us: i64,
    movie_ids: Vec<String>,
    inputs: serde_json::Value,
}

impl HistoryRow {
    /// A row `request_id` answered at `ts`.
    pub fn new(request_id: &str, ts: DateTime<Utc>) -> Self {
        Self {
            request_id: request_id.to_string(),
            ts,
            user_id: None,
            experiment: None,
            assigned_variant: None,
            served_variant: "main".into(),
            status: 200,
            latency_us: 1,
            movie_ids: Vec::new(),
            inputs: serde_json::json!({"protocol": "http"}),
        }
    }

    /// The user asked about.
    pub fn user(mut self, user_id: i64) -> Self {
        self.user_id = Some(user_id);
        self
    }

    /// The experiment and the assigned and served variants.
    pub fn experiment(mut self, experiment: &str, assigned: &str, served: &str) -> Self {
        self.experiment = Some(experiment.to_string());
        self.assigned_variant = Some(assigned.to_string());
        self.served_variant = served.to_string();
        self
    }

    /// The HTTP status answered.
    pub fn status(mut self, status: i32) -> Self {
        self.status = status;
        self
    }

    /// The latency at the load balancer, µs.
    pub fn latency_us(mut self, latency_us: i64) -> Self {
        self.latency_us = latency_us;
        self
    }

    /// The movies answered.
    pub fn movies(mut self, movies: &[&str]) -> Self {
        self.movie_ids = movies.iter().map(|m| m.to_string()).collect();
        self
    }

    /// `inputs.kind` (personal, cold_start, degraded, fallback).
    pub fn kind(mut self, kind: &str) -> Self {
        self.inputs["kind"] = serde_json::json!(kind);
        self
    }

    /// `inputs.data_versions`.
    pub fn data_versions(mut self, versions: &DataVersions) -> Self {
        self.inputs["data_versions"] = serde_json::to_value(versions).unwrap_or_default();
        self
    }

    /// Inserts the row (its month's partition made first when missing: a test's row may lie
    /// outside the months the migration made).
    pub async fn insert(&self, pool: &sqlx::PgPool) {
        sqlx::query("SELECT history_ensure_partitions($1, $1)")
            .bind(self.ts)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("partition for {}: {e}", self.ts));
        sqlx::query(
            "INSERT INTO recommendations_history (request_id, ts, user_id, experiment, assigned_variant,
                                                  served_variant, status, latency_us, movie_ids, inputs)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&self.request_id)
        .bind(self.ts)
        .bind(self.user_id)
        .bind(&self.experiment)
        .bind(&self.assigned_variant)
        .bind(&self.served_variant)
        .bind(self.status)
        .bind(self.latency_us)
        .bind(&self.movie_ids)
        .bind(&self.inputs)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("history row {}: {e}", self.request_id));
    }
}
