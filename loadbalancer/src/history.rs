//! The response log: exactly one `recommendations_history` row per response sent, written
//! ahead of the response.
//!
//! The request path hands its row to [`HistoryLog::record`], which appends it to the
//! [`Journal`] (one `write(2)`; with `fsync = "always"` it also waits for the group commit)
//! *before* the response leaves: a response whose row is not on local disk is never sent, so
//! a crash of the process — SIGKILL included — loses no row. A journal record is the row in
//! `COPY` text format already (tagged [`RECORD_TAG`], the user's bucket appended), so shipping
//! decodes only the few columns a sighting needs (journals written before hold JSON lines,
//! still read). One [`Shipper`] moves journaled rows to Postgres in batches — by `COPY`; a
//! batch that hits the primary key (shipped again after a crash) goes again through a
//! temporary table and `INSERT … ON CONFLICT (request_id, ts) DO NOTHING`, so it is stored
//! once — together with the first sightings of users for `user_model_map`, in one transaction,
//! then releases them from the journal. While
//! Postgres is away the rows simply wait in the journal; [`Shipper::step`] is the one unit of
//! work (tests drive it), [`Shipper::run`] loops it until shutdown and then drains.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proto::contract::DataVersions;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::journal::{Journal, JournalError, MAX_ROW_BYTES, Reader};
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
    group: Arc<Mutex<Group>>,
}

/// The rows of the requests that finish in one turn of the runtime, gathered for one append.
#[derive(Debug, Default)]
struct Group {
    lines: Vec<u8>,
    rows: u64,
    /// A request of this group waits to append it.
    led: bool,
    batch: Arc<GroupBatch>,
}

/// One group's append, awaited by every request in it.
#[derive(Debug, Default)]
struct GroupBatch {
    /// The journal position after the group, or why the journal refused it.
    result: OnceLock<Result<u64, Refusal>>,
    done: tokio::sync::Notify,
}

/// The first request of a group: appends the group when dropped.
struct Lead<'a> {
    log: &'a HistoryLog,
    batch: Arc<GroupBatch>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.log.append_group(&self.batch);
    }
}

/// Why the journal refused a row: the metric label and the message.
#[derive(Debug, Clone)]
struct Refusal {
    label: &'static str,
    message: String,
}

impl Refusal {
    fn of(e: &JournalError) -> Self {
        let label = match e {
            JournalError::Full(_) => "full",
            JournalError::RowTooLong(_) => "too_long",
            JournalError::Io { .. } | JournalError::Locked(_) => "io",
        };
        Self { label, message: e.to_string() }
    }
}

impl HistoryLog {
    /// The log over `journal`.
    pub fn new(journal: Arc<Journal>, metrics: Metrics) -> Self {
        Self { journal, metrics, group: Arc::default() }
    }

    /// Journals `row` before the response is sent: on local disk when this returns (and synced,
    /// under `fsync = "always"`). A row the journal refuses (full, disk error) is counted as
    /// dropped and logged; the response still goes out.
    ///
    /// Group append: the rows of requests that finish in the same turn of the runtime are
    /// appended with one `write(2)`. The first of them yields once (the others of that turn
    /// add their rows meanwhile), appends them all, then every one of them returns — no row's
    /// response leaves before its row is in the journal. A group the journal refuses (full,
    /// disk error) drops every row in it.
    pub async fn record(&self, row: &Row<'_>) {
        let (batch, lead) = {
            let mut g = self.group.lock().unwrap_or_else(|p| p.into_inner());
            let start = g.lines.len();
            encode_record(&mut g.lines, row);
            let len = g.lines.len() - start - 1;
            if len > MAX_ROW_BYTES {
                g.lines.truncate(start);
                drop(g);
                return self.refused(&Refusal::of(&JournalError::RowTooLong(len)), &row.request_id);
            }
            g.rows += 1;
            let lead = !std::mem::replace(&mut g.led, true);
            (g.batch.clone(), lead)
        };
        if lead {
            // The append is in the guard's drop: a request dropped while it yields (its client
            // went away) still appends its group, so the others never wait for ever.
            let lead = Lead { log: self, batch: batch.clone() };
            tokio::task::yield_now().await;
            drop(lead);
        } else {
            let notified = batch.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if batch.result.get().is_none() {
                notified.await;
            }
        }
        match batch.result.get() {
            Some(Ok(position)) => self.journal.durable(*position).await,
            Some(Err(refusal)) => self.refused(refusal, &row.request_id),
            None => self.refused(
                &Refusal { label: "io", message: "the group's append never finished".into() },
                &row.request_id,
            ),
        }
    }

    /// Appends the current group (under the group's lock, so groups reach the journal in order)
    /// and wakes its requests.
    fn append_group(&self, batch: &GroupBatch) {
        let mut g = self.group.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.journal.append(&g.lines, g.rows).map_err(|e| Refusal::of(&e));
        self.metrics.history_group_rows.observe(g.rows as f64);
        g.lines.clear();
        g.rows = 0;
        g.led = false;
        g.batch = Arc::default();
        drop(g);
        let _set = batch.result.set(result);
        batch.done.notify_waiters();
    }

    fn refused(&self, refusal: &Refusal, request_id: &str) {
        self.metrics.history_dropped.inc();
        self.metrics.history_refused.with_label_values(&[refusal.label]).inc();
        tracing::error!(error = %refusal.message, %request_id, "response-log row dropped");
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

/// A user's first sighting, for `user_model_map`.
#[derive(Debug, Serialize)]
struct Sighting {
    user_id: i64,
    experiment: String,
    bucket: u32,
    variant: String,
    /// The row's `ts` in COPY text form (Postgres reads it as timestamptz).
    first_seen: String,
}

/// Journaled rows decoded for one transaction.
#[derive(Debug, Default)]
struct Batch {
    /// The rows in COPY text format.
    copy: Vec<u8>,
    rows: usize,
    /// Lines that did not decode.
    skipped: u64,
    /// Users seen for the first time (not in [`SeenUsers`], once per batch).
    fresh: Vec<Sighting>,
    in_batch: SeenUsers,
    /// The earliest and latest `ts` (text; the fixed format orders as time does).
    ts_range: Option<(String, String)>,
}

impl Batch {
    fn add(&mut self, fields: RecordFields<'_>, seen: &SeenUsers) {
        self.rows += 1;
        let ts = fields.ts;
        match &mut self.ts_range {
            Some((lo, hi)) => {
                if ts < lo.as_str() {
                    *lo = ts.to_string();
                }
                if ts > hi.as_str() {
                    *hi = ts.to_string();
                }
            }
            None => self.ts_range = Some((ts.to_string(), ts.to_string())),
        }
        if let (Some(user_id), Some(experiment), Some(variant), Some(bucket)) =
            (fields.user_id, fields.experiment, fields.assigned_variant, fields.bucket)
            && !seen.contains(&experiment, user_id)
            && !self.in_batch.contains(&experiment, user_id)
        {
            self.in_batch.insert(experiment.to_string(), user_id);
            self.fresh.push(Sighting {
                user_id,
                experiment: experiment.into_owned(),
                bucket,
                variant: variant.into_owned(),
                first_seen: ts.to_string(),
            });
        }
    }
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
        let mut batch = Batch { skipped: chunk.torn, ..Batch::default() };
        batch.copy.reserve(chunk.lines.iter().map(|l| l.len() + 1).sum());
        for line in &chunk.lines {
            // A JSON line (written before records were COPY rows) is turned into a record first:
            // one decoding path for both.
            let converted;
            let record: &[u8] = if line.starts_with(RECORD_TAG) {
                line
            } else if let Ok(row) = serde_json::from_slice::<Row>(line) {
                let mut buf = Vec::with_capacity(line.len());
                encode_record(&mut buf, &row);
                converted = buf;
                converted.strip_suffix(b"\n").unwrap_or(&converted)
            } else {
                batch.skipped += 1;
                continue;
            };
            match RecordFields::decode(record) {
                Some(fields) => {
                    batch.copy.extend_from_slice(fields.columns);
                    batch.copy.push(b'\n');
                    batch.add(fields, &self.seen);
                }
                None => batch.skipped += 1,
            }
        }
        if batch.rows > 0
            && let Err(e) = self.insert(&batch).await
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
        let skipped = batch.skipped;
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
        Ok(Shipped { rows: batch.rows, skipped })
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
    async fn insert(&mut self, batch: &Batch) -> Result<(), String> {
        let sightings_json = if batch.fresh.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&batch.fresh).map_err(|e| e.to_string())?)
        };
        let sightings_json = sightings_json.as_deref();
        let timeout = self.options.insert_timeout;
        let late = || format!("insert took longer than {timeout:?}");
        // The fast path is a plain COPY; a batch that was (partly) stored before — shipped again
        // after a crash, or after an insert that timed out but committed — makes it fail on the
        // primary key, and goes again through the idempotent insert.
        let mut attempt = tokio::time::timeout(timeout, self.store(&batch.copy, sightings_json, true)).await;
        // A row whose month has no partition yet (the migration and `prune` keep three months
        // ahead; a clock far off, or a long-idle database): the partitions are made, once.
        if matches!(&attempt, Ok(Err(e)) if is_missing_partition(e))
            && let Some((from, until)) = &batch.ts_range
        {
            sqlx::query("SELECT history_ensure_partitions($1::text::timestamptz, $2::text::timestamptz)")
                .bind(from)
                .bind(until)
                .execute(&self.pool)
                .await
                .map_err(|e| format!("making history partitions: {e}"))?;
            tracing::info!(%from, %until, "history partitions made for rows that had none");
            attempt = tokio::time::timeout(timeout, self.store(&batch.copy, sightings_json, true)).await;
        }
        let (written, sighted) = match attempt {
            Ok(Err(e)) if is_unique_violation(&e) => {
                tokio::time::timeout(timeout, self.store(&batch.copy, sightings_json, false))
                    .await
                    .map_err(|_| late())?
                    .map_err(|e| e.to_string())?
            }
            other => other.map_err(|_| late())?.map_err(|e| e.to_string())?,
        };
        for s in &batch.fresh {
            self.seen.insert(s.experiment.clone(), s.user_id);
        }
        // Rows already present (a batch shipped again after a crash) are not counted twice.
        self.metrics.history_written.inc_by(written);
        self.metrics.sightings.inc_by(sighted);
        Ok(())
    }

    /// One transaction: the rows (`copy`: COPY rows) — straight into the table (`direct`), or
    /// through a temporary table and an insert that skips rows already present — and the users'
    /// first sightings. Returns (rows stored, sightings stored).
    async fn store(&self, copy: &[u8], sightings_json: Option<&str>, direct: bool) -> Result<(u64, u64), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let written = if direct {
            let mut copy_in =
                tx.copy_in_raw(&format!("COPY recommendations_history ({HISTORY_COLUMNS}) FROM STDIN")).await?;
            copy_in.send(copy).await?;
            copy_in.finish().await?
        } else {
            sqlx::query("CREATE TEMP TABLE history_incoming (LIKE recommendations_history) ON COMMIT DROP")
                .execute(&mut *tx)
                .await?;
            let mut copy_in = tx.copy_in_raw(&format!("COPY history_incoming ({HISTORY_COLUMNS}) FROM STDIN")).await?;
            copy_in.send(copy).await?;
            copy_in.finish().await?;
            sqlx::query(&format!(
                "INSERT INTO recommendations_history ({HISTORY_COLUMNS}) SELECT {HISTORY_COLUMNS} FROM history_incoming
                 ON CONFLICT (request_id, ts) DO NOTHING"
            ))
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        let sighted = match sightings_json {
            None => 0,
            Some(json) => sqlx::query(
                "INSERT INTO user_model_map (user_id, experiment, bucket, variant, first_seen)
                 SELECT user_id, experiment, bucket, variant, first_seen
                 FROM jsonb_to_recordset($1::text::jsonb) AS s(user_id bigint, experiment text, bucket integer, variant text, first_seen timestamptz)
                 ON CONFLICT (user_id, experiment) DO NOTHING",
            )
            .bind(json)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
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

/// The columns of a journal record, in order (the COPY statements name them).
const HISTORY_COLUMNS: &str = "request_id, ts, user_id, experiment, assigned_variant, served_variant, backend, \
    release_id, model_version, data_watermark, status, latency_us, movie_ids, degraded, error, inputs";

/// The start of a journal record: `R1`, a tab, the row's [`HISTORY_COLUMNS`] in COPY text
/// format, a tab, the user's bucket (or `\N`), a newline. Lines without it are JSON rows.
pub const RECORD_TAG: &[u8] = b"R1\t";
/// Tab-separated fields of a record: the tag, 16 columns, the bucket.
const RECORD_FIELDS: usize = 18;

/// `row` as one journal record (see [`RECORD_TAG`]).
pub fn encode_record(out: &mut Vec<u8>, row: &Row<'_>) {
    out.extend_from_slice(RECORD_TAG);
    encode_columns(out, row);
    db::copy::tab(out);
    match row.bucket {
        Some(b) => db::copy::int(out, b),
        None => db::copy::null(out),
    }
    db::copy::end_row(out);
}

/// What the shipper reads of a record beyond its COPY columns.
#[derive(Debug)]
struct RecordFields<'a> {
    /// The COPY row (without its newline).
    columns: &'a [u8],
    ts: &'a str,
    user_id: Option<i64>,
    experiment: Option<Cow<'a, str>>,
    assigned_variant: Option<Cow<'a, str>>,
    bucket: Option<u32>,
}

impl<'a> RecordFields<'a> {
    /// Decodes a record, checking what COPY would otherwise refuse for the whole batch (field
    /// count, UTF-8, numbers, the timestamp, the boolean): None for a damaged line.
    fn decode(line: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(line.strip_prefix(RECORD_TAG)?).ok()?;
        let (columns, bucket) = text.rsplit_once('\t')?;
        let mut fields = [""; RECORD_FIELDS - 2];
        let mut split = columns.split('\t');
        for field in &mut fields {
            *field = split.next()?;
        }
        if split.next().is_some() {
            return None;
        }
        fn int<T: std::str::FromStr>(f: &str) -> Option<Option<T>> {
            if f == "\\N" { Some(None) } else { f.parse().ok().map(Some) }
        }
        let ts = fields[1];
        chrono::NaiveDateTime::parse_from_str(ts.strip_suffix("+00")?, "%Y-%m-%d %H:%M:%S%.f").ok()?;
        let user_id = int::<i64>(fields[2])?;
        for i in [7, 9] {
            int::<i64>(fields[i])?;
        }
        for i in [10, 11] {
            int::<i64>(fields[i])?.is_some().then_some(())?;
        }
        if !matches!(fields[13], "t" | "f") {
            return None;
        }
        let text_field = |f: &'a str| (f != "\\N").then(|| unescape(f));
        Some(Self {
            columns: columns.as_bytes(),
            ts,
            user_id,
            experiment: text_field(fields[3]),
            assigned_variant: text_field(fields[4]),
            bucket: int::<u32>(bucket)?,
        })
    }
}

/// A COPY text value unescaped.
fn unescape(f: &str) -> Cow<'_, str> {
    if !f.contains('\\') {
        return Cow::Borrowed(f);
    }
    let mut out = String::with_capacity(f.len());
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    Cow::Owned(out)
}

/// The row's [`HISTORY_COLUMNS`] in COPY text format, without the newline.
fn encode_columns(out: &mut Vec<u8>, row: &Row<'_>) {
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
    copy::timestamp(out, row.ts);
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
    match row.inputs.as_ref().and_then(|i| serde_json::to_string(i).ok()) {
        Some(json) => copy::text(out, &json),
        None => copy::null(out),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{Inputs, RecordFields, Row, SeenUsers, encode_record};

    fn row() -> Row<'static> {
        Row {
            request_id: "r-1".into(),
            ts: chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 12, 6, 16, 5, 1).unwrap()
                + chrono::Duration::microseconds(123_456),
            user_id: Some(42),
            experiment: Some("exp\twith tab".into()),
            assigned_variant: Some("nightly".into()),
            served_variant: "main".into(),
            backend: None,
            release_id: Some(7),
            model_version: Some("m@1".into()),
            data_watermark: None,
            status: 200,
            latency_us: 1234,
            movie_ids: vec!["a\nb".into()],
            degraded: true,
            error: None,
            inputs: Some(Inputs {
                protocol: "http".into(),
                limit: Some(20),
                kind: None,
                client_request_id: None,
                data_versions: None,
            }),
            bucket: Some(9),
        }
    }

    #[test]
    fn a_record_decodes_to_the_fields_a_sighting_needs_and_its_copy_row() {
        let row = row();
        let mut line = Vec::new();
        encode_record(&mut line, &row);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line, escapes inside");
        let line = line.strip_suffix(b"\n").unwrap();
        let fields = RecordFields::decode(line).expect("decodes");
        assert_eq!(fields.user_id, Some(42));
        assert_eq!(fields.experiment, Some(Cow::Borrowed("exp\twith tab")));
        assert_eq!(fields.assigned_variant.as_deref(), Some("nightly"));
        assert_eq!(fields.bucket, Some(9));
        let columns = std::str::from_utf8(fields.columns).unwrap();
        assert_eq!(columns.split('\t').count(), 16, "the bucket is not a column");
        assert!(columns.starts_with("r-1\t"));
        assert_eq!(columns.split('\t').nth(1), Some(fields.ts));
    }

    #[test]
    fn a_damaged_record_is_refused_not_sent_to_copy() {
        let mut line = Vec::new();
        encode_record(&mut line, &row());
        let line = String::from_utf8(line).unwrap();
        let line = line.trim_end_matches('\n');
        assert!(RecordFields::decode(line.as_bytes()).is_some());
        let damaged = [
            line.replacen("\tmain\t", "\tmain", 1), // a field lost (not the tag's tab)
            line.replacen("42", "4x", 1),           // a number that is not one
            line.replacen("2026-", "20z6-", 1),     // a bad timestamp
            format!("{line}\textra"),               // a field too many
            line.replacen("\tt\t", "\tyes\t", 1),   // not a boolean
        ];
        for d in &damaged {
            assert!(RecordFields::decode(d.as_bytes()).is_none(), "accepted: {d}");
        }
        assert!(RecordFields::decode(b"R1\t\xff\xfe").is_none(), "not UTF-8");
    }

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

    fn log() -> (tempfile::TempDir, super::HistoryLog) {
        let dir = tempfile::tempdir().expect("dir");
        let journal = crate::journal::Journal::open(
            dir.path(),
            1 << 30,
            crate::journal::FsyncPolicy::Never,
            std::time::Duration::from_millis(200),
        )
        .expect("journal");
        (dir, super::HistoryLog::new(journal, crate::metrics::Metrics::new().expect("metrics")))
    }

    fn journaled(log: &super::HistoryLog) -> Vec<String> {
        let mut reader = crate::journal::Reader::new(log.journal());
        let chunk = reader.read(log.journal(), 1_000).expect("read");
        chunk.lines.iter().map(|l| String::from_utf8(l.clone()).expect("utf-8")).collect()
    }

    #[test]
    fn requests_finishing_together_share_one_append_and_each_waits_for_it() {
        let (_dir, log) = log();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let rows: Vec<Row<'static>> =
            (0..50).map(|i| Row { request_id: Cow::Owned(format!("r-{i}")), ..row() }).collect();
        let before = log.journal().committed();
        rt.block_on(futures_util::future::join_all(rows.iter().map(|r| log.record(r))));
        let lines = journaled(&log);
        assert_eq!(lines.len(), 50, "every row journaled");
        assert_eq!(log.journal().pending_rows(), 50);
        for (i, line) in lines.iter().enumerate() {
            assert!(line.starts_with(&format!("R1\tr-{i}\t")), "in order, whole: {line}");
        }
        assert!(log.journal().committed() > before);
        // One turn: the 50 rows went in one append, and the group is empty again.
        assert_eq!(log.metrics.history_group_rows.get_sample_count(), 1, "one write(2)");
        assert_eq!(log.metrics.history_group_rows.get_sample_sum(), 50.0);
        let g = log.group.lock().expect("group");
        assert!(g.lines.is_empty() && g.rows == 0 && !g.led);
    }

    #[test]
    fn a_group_whose_first_request_is_dropped_is_still_appended() {
        use std::future::Future;
        let (_dir, log) = log();
        let (a, b) = (Row { request_id: "first".into(), ..row() }, Row { request_id: "second".into(), ..row() });
        let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let _guard = rt.enter();
        let mut first = Box::pin(log.record(&a));
        let mut second = Box::pin(log.record(&b));
        assert!(first.as_mut().poll(&mut cx).is_pending(), "the first yields before appending");
        assert!(second.as_mut().poll(&mut cx).is_pending(), "the second waits for the group");
        assert!(journaled(&log).is_empty());
        drop(first); // its client went away mid-yield
        assert!(second.as_mut().poll(&mut cx).is_ready(), "the group was appended all the same");
        let lines = journaled(&log);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("R1\tsecond\t"));
    }
}
