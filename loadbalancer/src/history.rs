//! The response log: exactly one `recommendations_history` row per response sent, written
//! ahead of the response.
//!
//! The request path hands its row to [`HistoryLog::record`], which appends it to the
//! [`Journal`] (one `write(2)`; with `fsync = "always"` it also waits for the group commit)
//! *before* the response leaves: a response whose row is not on local disk is never sent, so
//! a crash of the process — SIGKILL included — loses no row. One [`Shipper`] moves journaled
//! rows to Postgres in batches — by `COPY`; a batch that hits the primary key (shipped again
//! after a crash) goes again as `INSERT … ON CONFLICT (request_id, ts) DO NOTHING`, so it is stored
//! once — together with the first sightings of users for `user_model_map`, in one transaction,
//! then releases them from the journal. While
//! Postgres is away the rows simply wait in the journal; [`Shipper::step`] is the one unit of
//! work (tests drive it), [`Shipper::run`] loops it until shutdown and then drains.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proto::contract::DataVersions;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::journal::{Journal, JournalError, Reader};
use crate::metrics::Metrics;

/// One response, as logged. Field names are the table's column names. Text borrows where it
/// can (`Cow`): the request path builds a row from its answer without copying it, and the
/// shipper decodes journal lines without allocating a string per field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row<'a> {
    /// The load balancer's request id (also sent to the backend and to the client).
    #[serde(borrow)]
    pub request_id: Cow<'a, str>,
    /// When the request arrived.
    pub ts: DateTime<Utc>,
    /// None when the path had no valid user id.
    pub user_id: Option<i64>,
    /// The experiment (assignment salt).
    #[serde(borrow)]
    pub experiment: Option<Cow<'a, str>>,
    /// The variant the user is assigned to.
    #[serde(borrow)]
    pub assigned_variant: Option<Cow<'a, str>>,
    /// The variant that answered: main, nightly, fallback (none for rejected requests).
    #[serde(borrow)]
    pub served_variant: Cow<'a, str>,
    /// The backend that answered.
    #[serde(borrow)]
    pub backend: Option<Cow<'a, str>>,
    /// The release of the served variant.
    pub release_id: Option<i64>,
    /// The model version that answered.
    #[serde(borrow)]
    pub model_version: Option<Cow<'a, str>>,
    /// The data watermark the answer was computed at.
    pub data_watermark: Option<i64>,
    /// The HTTP status sent (gRPC: the equivalent).
    pub status: i32,
    /// Time from arrival to the answer.
    pub latency_us: i64,
    /// The ids returned, in order.
    #[serde(borrow)]
    pub movie_ids: Vec<Cow<'a, str>>,
    /// The backend flagged its answer as degraded (or the answer is the fallback list).
    pub degraded: bool,
    /// Why the request failed, or what failed before the answer.
    #[serde(borrow)]
    pub error: Option<Cow<'a, str>>,
    /// What the answer depended on beyond the columns (protocol, limit, kind, client's id).
    #[serde(borrow)]
    pub inputs: Option<Inputs<'a>>,
    /// The user's bucket (for `user_model_map`; not a history column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
}

/// The `inputs` column: what the answer depended on beyond the other columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs<'a> {
    /// http or grpc.
    #[serde(borrow)]
    pub protocol: Cow<'a, str>,
    /// Movies asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// personal, cold_start, degraded, fallback (as the answer said).
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// The client's own request id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub client_request_id: Option<Cow<'a, str>>,
    /// What the backend's answer was computed from beyond the watermark (its
    /// `x-data-versions`), stored as the object SQL reads (journal lines written before it was
    /// typed hold the text form; both deserialise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_versions: Option<Cow<'a, DataVersions>>,
}

/// The request path's side of the log.
#[derive(Debug, Clone)]
pub struct HistoryLog {
    journal: Arc<Journal>,
    metrics: Metrics,
}

impl HistoryLog {
    /// The log over `journal`.
    pub fn new(journal: Arc<Journal>, metrics: Metrics) -> Self {
        Self { journal, metrics }
    }

    /// Journals `row` before the response is sent: on local disk when this returns (and synced,
    /// under `fsync = "always"`). A row the journal refuses (full, disk error) is counted as
    /// dropped and logged; the response still goes out.
    pub async fn record(&self, row: &Row<'_>) {
        let mut line = Vec::with_capacity(512);
        if let Err(e) = serde_json::to_writer(&mut line, row) {
            self.metrics.history_dropped.inc();
            self.metrics.history_refused.with_label_values(&["unencodable"]).inc();
            tracing::error!(error = %e, request_id = %row.request_id, "response-log row dropped: unencodable");
            return;
        }
        line.push(b'\n');
        match self.journal.append(&line, 1) {
            Ok(position) => self.journal.durable(position).await,
            Err(e) => {
                self.metrics.history_dropped.inc();
                let reason = match e {
                    JournalError::Full(_) => "full",
                    JournalError::RowTooLong(_) => "too_long",
                    JournalError::Io { .. } | JournalError::Locked(_) => "io",
                };
                self.metrics.history_refused.with_label_values(&[reason]).inc();
                tracing::error!(error = %e, request_id = %row.request_id, "response-log row dropped");
            }
        }
    }

    /// Rows journaled and not yet in Postgres.
    pub fn queued(&self) -> usize {
        self.journal.pending_rows() as usize
    }

    /// The journal.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }
}

/// Settings of the shipper.
#[derive(Debug, Clone)]
pub struct ShipperOptions {
    /// Rows per insert.
    pub batch_rows: usize,
    /// Longest wait before a partial batch is shipped.
    pub flush: Duration,
    /// Wait before retrying after Postgres failed.
    pub retry: Duration,
    /// Longest an insert may take before it counts as failed.
    pub insert_timeout: Duration,
    /// Longest the final drain at shutdown may take (the rest waits in the journal).
    pub drain_timeout: Duration,
}

/// Why a step stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// Reading the journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Postgres refused or did not answer in time; the rows wait in the journal.
    #[error("postgres: {0}")]
    Postgres(String),
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Rows read from the journal and stored (or already present).
    pub rows: usize,
    /// Lines that could not be decoded (torn or corrupt), skipped and counted.
    pub skipped: u64,
}

/// Moves journaled rows to Postgres.
pub struct Shipper {
    pool: PgPool,
    journal: Arc<Journal>,
    reader: Reader,
    metrics: Metrics,
    options: ShipperOptions,
    /// Users recently sent to `user_model_map`, per experiment (bounded).
    seen: SeenUsers,
    /// Pending rows already counted as deferred during the current outage.
    deferred_counted: u64,
    failed_since: Option<Instant>,
}

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("position", &self.reader.position()).finish()
    }
}

/// Users whose first sighting is already stored, so that their next rows do not send it again.
/// Only a saving (the insert skips users already present), so it is bounded: at
/// [`SeenUsers::CAPACITY`] entries it starts over, and a flood of distinct user ids costs a few
/// megabytes and some repeated sightings, never unbounded memory.
#[derive(Debug, Default)]
struct SeenUsers {
    by_experiment: HashMap<String, HashSet<i64>>,
    len: usize,
}

impl SeenUsers {
    const CAPACITY: usize = 200_000;

    fn contains(&self, experiment: &str, user: i64) -> bool {
        self.by_experiment.get(experiment).is_some_and(|s| s.contains(&user))
    }

    fn insert(&mut self, experiment: String, user: i64) {
        if self.len >= Self::CAPACITY {
            self.by_experiment.clear();
            self.len = 0;
        }
        if self.by_experiment.entry(experiment).or_default().insert(user) {
            self.len += 1;
        }
    }
}

#[derive(Serialize)]
struct Sighting<'a> {
    user_id: i64,
    experiment: &'a str,
    bucket: u32,
    variant: &'a str,
    first_seen: DateTime<Utc>,
}

impl Shipper {
    /// A shipper from the journal's shipped position.
    pub fn new(pool: PgPool, journal: Arc<Journal>, metrics: Metrics, options: ShipperOptions) -> Self {
        let reader = Reader::new(&journal);
        metrics.history_journal_bytes.set(journal.pending_bytes() as i64);
        Self {
            pool,
            journal,
            reader,
            metrics,
            options,
            seen: SeenUsers::default(),
            deferred_counted: 0,
            failed_since: None,
        }
    }

    /// One step: reads up to `batch_rows` journaled rows, stores them in Postgres (one
    /// transaction, idempotent) and releases them from the journal. On failure the rows stay
    /// journaled and the next step reads them again.
    pub async fn step(&mut self) -> Result<Shipped, ShipError> {
        let start = self.reader.position();
        let chunk = self.reader.read(&self.journal, self.options.batch_rows.max(1))?;
        if chunk.lines.is_empty() && chunk.torn == 0 {
            return Ok(Shipped::default());
        }
        let mut rows = Vec::with_capacity(chunk.lines.len());
        let mut skipped = chunk.torn;
        for line in &chunk.lines {
            match serde_json::from_slice::<Row>(line) {
                Ok(row) => rows.push(row),
                Err(_) => skipped += 1,
            }
        }
        if !rows.is_empty()
            && let Err(e) = self.insert(&rows).await
        {
            self.reader.rewind(start);
            let pending = self.journal.pending_rows();
            self.metrics.history_deferred.inc_by(pending.saturating_sub(self.deferred_counted));
            self.deferred_counted = self.deferred_counted.max(pending);
            if self.failed_since.is_none() {
                self.failed_since = Some(Instant::now());
                tracing::warn!(error = %e, pending, "Postgres unavailable: response-log rows wait in the journal");
            }
            return Err(ShipError::Postgres(e));
        }
        if skipped > 0 {
            self.metrics.history_journal_corrupt.inc_by(skipped);
            tracing::warn!(skipped, "journal lines that did not decode were skipped (a crash mid-append)");
        }
        let n = chunk.lines.len() as u64 + chunk.torn;
        self.journal.release(chunk.end, n)?;
        self.deferred_counted = self.deferred_counted.saturating_sub(n);
        if let Some(since) = self.failed_since.take() {
            tracing::info!(down_ms = since.elapsed().as_millis() as u64, "Postgres back: shipping the journal");
        }
        self.metrics.history_journal_bytes.set(self.journal.pending_bytes() as i64);
        Ok(Shipped { rows: rows.len(), skipped })
    }

    /// Ships until `stop` turns true, then drains what is journaled (bounded by
    /// `drain_timeout`; what is left waits in the journal for the next start) and closes the
    /// journal.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            let pause = match self.step().await {
                Ok(s) if s.rows + s.skipped as usize >= self.options.batch_rows => continue,
                Ok(_) => self.options.flush,
                Err(ShipError::Postgres(_)) => self.options.retry,
                Err(e @ ShipError::Journal(_)) => {
                    tracing::error!(error = %e, "reading the response-log journal");
                    self.options.retry
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
        }
        let deadline = Instant::now() + self.options.drain_timeout;
        while Instant::now() < deadline {
            match self.step().await {
                Ok(s) if s.rows == 0 && s.skipped == 0 => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, pending = self.journal.pending_rows(),
                        "response log not drained at shutdown: the rows stay in the journal for the next start");
                    break;
                }
            }
        }
        self.journal.close();
        tracing::info!(pending = self.journal.pending_rows(), "response log drained");
    }

    /// One transaction: the rows (idempotent) and the users' first sightings.
    async fn insert(&mut self, rows: &[Row<'_>]) -> Result<(), String> {
        let mut fresh: Vec<Sighting<'_>> = Vec::new();
        let mut in_batch: HashSet<(&str, i64)> = HashSet::new();
        for row in rows {
            if let (Some(user_id), Some(experiment), Some(variant), Some(bucket)) =
                (row.user_id, row.experiment.as_deref(), row.assigned_variant.as_deref(), row.bucket)
                && !self.seen.contains(experiment, user_id)
                && in_batch.insert((experiment, user_id))
            {
                fresh.push(Sighting { user_id, experiment, bucket, variant, first_seen: row.ts });
            }
        }
        let sightings_json = serde_json::to_string(&fresh).map_err(|e| e.to_string())?;
        let timeout = self.options.insert_timeout;
        let late = || format!("insert took longer than {timeout:?}");
        // The fast path is a plain COPY; a batch that was (partly) stored before — shipped again
        // after a crash, or after an insert that timed out but committed — makes it fail on the
        // primary key, and goes again through the idempotent insert.
        let mut attempt = tokio::time::timeout(timeout, self.store(rows, &sightings_json, true)).await;
        // A row whose month has no partition yet (the migration and `prune` keep three months
        // ahead; a clock far off, or a long-idle database): the partitions are made, once.
        if matches!(&attempt, Ok(Err(e)) if is_missing_partition(e)) {
            let (from, until) = (rows.iter().map(|r| r.ts).min(), rows.iter().map(|r| r.ts).max());
            sqlx::query("SELECT history_ensure_partitions($1, $2)")
                .bind(from)
                .bind(until)
                .execute(&self.pool)
                .await
                .map_err(|e| format!("making history partitions: {e}"))?;
            tracing::info!(?from, ?until, "history partitions made for rows that had none");
            attempt = tokio::time::timeout(timeout, self.store(rows, &sightings_json, true)).await;
        }
        let (written, sighted) = match attempt {
            Ok(Err(e)) if is_unique_violation(&e) => {
                tokio::time::timeout(timeout, self.store(rows, &sightings_json, false))
                    .await
                    .map_err(|_| late())?
                    .map_err(|e| e.to_string())?
            }
            other => other.map_err(|_| late())?.map_err(|e| e.to_string())?,
        };
        let new_seen: Vec<(String, i64)> = fresh.iter().map(|s| (s.experiment.to_string(), s.user_id)).collect();
        for (experiment, user) in new_seen {
            self.seen.insert(experiment, user);
        }
        // Rows already present (a batch shipped again after a crash) are not counted twice.
        self.metrics.history_written.inc_by(written);
        self.metrics.sightings.inc_by(sighted);
        Ok(())
    }

    /// One transaction: the rows — by COPY (`copy`), or by an insert that skips rows already
    /// present — and the users' first sightings. Returns (rows stored, sightings stored).
    async fn store(&self, rows: &[Row<'_>], sightings_json: &str, copy: bool) -> Result<(u64, u64), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let written = if copy {
            let mut data = Vec::with_capacity(rows.len() * 640);
            for row in rows {
                encode_copy_row(&mut data, row);
            }
            let mut copy_in = tx
                .copy_in_raw(
                    "COPY recommendations_history (request_id, ts, user_id, experiment, assigned_variant,
                       served_variant, backend, release_id, model_version, data_watermark, status, latency_us,
                       movie_ids, degraded, error, inputs) FROM STDIN",
                )
                .await?;
            copy_in.send(data.as_slice()).await?;
            copy_in.finish().await?
        } else {
            insert_skipping_present(&mut tx, rows).await?
        };
        let sighted = if sightings_json == "[]" {
            0
        } else {
            sqlx::query(
                "INSERT INTO user_model_map (user_id, experiment, bucket, variant, first_seen)
                 SELECT user_id, experiment, bucket, variant, first_seen
                 FROM jsonb_to_recordset($1::text::jsonb) AS s(user_id bigint, experiment text, bucket integer, variant text, first_seen timestamptz)
                 ON CONFLICT (user_id, experiment) DO NOTHING",
            )
            .bind(sightings_json)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        tx.commit().await?;
        Ok((written, sighted))
    }
}

/// `no partition of relation … found for row` (a check violation on a partitioned table).
fn is_missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23514") && d.message().contains("no partition"))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// One row in COPY text format (the column order of the COPY statement in `Shipper::store`).
fn encode_copy_row(out: &mut Vec<u8>, row: &Row<'_>) {
    use db::copy;
    fn opt_text(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(v) => copy::text(out, v),
            None => copy::null(out),
        }
    }
    fn opt_int(out: &mut Vec<u8>, v: Option<i64>) {
        match v {
            Some(v) => copy::int(out, v),
            None => copy::null(out),
        }
    }
    copy::text(out, &row.request_id);
    copy::tab(out);
    copy::text(out, &row.ts.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string());
    copy::tab(out);
    opt_int(out, row.user_id);
    copy::tab(out);
    opt_text(out, row.experiment.as_deref());
    copy::tab(out);
    opt_text(out, row.assigned_variant.as_deref());
    copy::tab(out);
    copy::text(out, &row.served_variant);
    copy::tab(out);
    opt_text(out, row.backend.as_deref());
    copy::tab(out);
    opt_int(out, row.release_id);
    copy::tab(out);
    opt_text(out, row.model_version.as_deref());
    copy::tab(out);
    opt_int(out, row.data_watermark);
    copy::tab(out);
    copy::int(out, row.status);
    copy::tab(out);
    copy::int(out, row.latency_us);
    copy::tab(out);
    copy::text_array(out, row.movie_ids.iter().map(|m| m.as_ref()));
    copy::tab(out);
    out.push(if row.degraded { b't' } else { b'f' });
    copy::tab(out);
    opt_text(out, row.error.as_deref());
    copy::tab(out);
    opt_text(out, row.inputs.as_ref().and_then(|i| serde_json::to_string(i).ok()).as_deref());
    copy::end_row(out);
}

/// Inserts `rows`, skipping those already present (`ON CONFLICT DO NOTHING`); column arrays in
/// Postgres' binary format (ids are joined: arrays of arrays must be rectangular).
async fn insert_skipping_present(tx: &mut sqlx::PgConnection, rows: &[Row<'_>]) -> Result<u64, sqlx::Error> {
    let mut request_id = Vec::with_capacity(rows.len());
    let mut ts = Vec::with_capacity(rows.len());
    let mut user_id = Vec::with_capacity(rows.len());
    let mut experiment = Vec::with_capacity(rows.len());
    let mut assigned = Vec::with_capacity(rows.len());
    let mut served = Vec::with_capacity(rows.len());
    let mut backend = Vec::with_capacity(rows.len());
    let mut release_id = Vec::with_capacity(rows.len());
    let mut model_version = Vec::with_capacity(rows.len());
    let mut watermark = Vec::with_capacity(rows.len());
    let mut status = Vec::with_capacity(rows.len());
    let mut latency_us = Vec::with_capacity(rows.len());
    let mut movie_ids = Vec::with_capacity(rows.len());
    let mut degraded = Vec::with_capacity(rows.len());
    let mut error = Vec::with_capacity(rows.len());
    let mut inputs = Vec::with_capacity(rows.len());
    for row in rows {
        request_id.push(row.request_id.as_ref());
        ts.push(row.ts);
        user_id.push(row.user_id);
        experiment.push(row.experiment.as_deref());
        assigned.push(row.assigned_variant.as_deref());
        served.push(row.served_variant.as_ref());
        backend.push(row.backend.as_deref());
        release_id.push(row.release_id);
        model_version.push(row.model_version.as_deref());
        watermark.push(row.data_watermark);
        status.push(row.status);
        latency_us.push(row.latency_us);
        movie_ids.push(row.movie_ids.join("\n"));
        degraded.push(row.degraded);
        error.push(row.error.as_deref());
        inputs.push(row.inputs.as_ref().and_then(|i| serde_json::to_string(i).ok()));
    }
    Ok(sqlx::query(
        "INSERT INTO recommendations_history
         SELECT r, t, u, e, a, s, b, rel, m, w, st, l,
                CASE WHEN ids = '' THEN '{}'::text[] ELSE string_to_array(ids, E'\\n') END,
                d, err, i::jsonb
         FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::int8[], $9::text[], $10::int8[], $11::int4[], $12::int8[],
                     $13::text[], $14::bool[], $15::text[], $16::text[])
              AS x(r, t, u, e, a, s, b, rel, m, w, st, l, ids, d, err, i)
         ON CONFLICT (request_id, ts) DO NOTHING",
    )
    .bind(&request_id)
    .bind(&ts)
    .bind(&user_id)
    .bind(&experiment)
    .bind(&assigned)
    .bind(&served)
    .bind(&backend)
    .bind(&release_id)
    .bind(&model_version)
    .bind(&watermark)
    .bind(&status)
    .bind(&latency_us)
    .bind(&movie_ids)
    .bind(&degraded)
    .bind(&error)
    .bind(&inputs)
    .execute(tx)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::SeenUsers;

    #[test]
    fn the_seen_users_stay_bounded_under_a_flood_of_distinct_ids() {
        let mut seen = SeenUsers::default();
        for user in 0..(3 * SeenUsers::CAPACITY as i64) {
            seen.insert("exp".into(), user);
            assert!(seen.len <= SeenUsers::CAPACITY);
        }
        assert!(seen.contains("exp", 3 * SeenUsers::CAPACITY as i64 - 1), "the newest are remembered");
        assert!(!seen.contains("other", 1));
    }
}
