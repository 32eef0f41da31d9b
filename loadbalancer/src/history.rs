//! The response log: exactly one `recommendations_history` row per response sent.
//!
//! The request path hands its row to [`HistoryLog::record`] (a bounded in-memory queue; it waits
//! only if the writer is a whole queue behind). One writer task batches rows into multi-row
//! inserts (`jsonb_populate_recordset`, `ON CONFLICT DO NOTHING`, so replaying a batch never
//! duplicates a row) together with the first sightings of users for `user_model_map`, in one
//! transaction. When Postgres fails, the batch goes to the durable [`Spool`] instead, and the
//! writer keeps spooling until a retry drains the spool into Postgres. On shutdown the writer
//! drains the queue (to Postgres, or else to the spool) before it returns.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolError};

/// One response, as logged. Field names are the table's column names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The load balancer's request id (also sent to the backend and to the client).
    pub request_id: String,
    /// When the request arrived.
    pub ts: DateTime<Utc>,
    /// None when the path had no valid user id.
    pub user_id: Option<i64>,
    /// The experiment (assignment salt).
    pub experiment: Option<String>,
    /// The variant the user is assigned to.
    pub assigned_variant: Option<String>,
    /// The variant that answered: main, nightly, fallback (none for rejected requests).
    pub served_variant: String,
    /// The backend that answered.
    pub backend: Option<String>,
    /// The release of the served variant.
    pub release_id: Option<i64>,
    /// The model version that answered.
    pub model_version: Option<String>,
    /// The data watermark the answer was computed at.
    pub data_watermark: Option<i64>,
    /// The HTTP status sent (gRPC: the equivalent).
    pub status: i32,
    /// Time from arrival to the answer.
    pub latency_us: i64,
    /// The ids returned, in order.
    pub movie_ids: Vec<String>,
    /// The backend flagged its answer as degraded (or the answer is the fallback list).
    pub degraded: bool,
    /// Why the request failed, or what failed before the answer.
    pub error: Option<String>,
    /// What the answer depended on beyond the columns (protocol, limit, kind, client's id).
    pub inputs: Option<Inputs>,
    /// The user's bucket (for `user_model_map`; not a history column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<u32>,
}

/// The `inputs` column: what the answer depended on beyond the other columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// http or grpc.
    pub protocol: String,
    /// Movies asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// personal, cold_start, degraded, fallback (as the answer said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The client's own request id, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
}

/// The sending side of the log, held by the request path.
#[derive(Debug, Clone)]
pub struct HistoryLog {
    // Boxed: a queue slot is a pointer, not a 400-byte row.
    tx: mpsc::Sender<Box<Row>>,
    metrics: Metrics,
}

impl HistoryLog {
    /// Queues `row`. Waits only while the queue is full (the writer is far behind).
    pub async fn record(&self, row: Row) {
        if self.tx.send(Box::new(row)).await.is_err() {
            // Only after shutdown began: nothing will write it.
            self.metrics.history_dropped.inc();
            tracing::error!("response-log row dropped: the writer has stopped");
        }
    }

    /// Rows waiting in memory.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Rows per insert.
    pub batch_rows: usize,
    /// Longest wait before a partial batch is written.
    pub flush: Duration,
    /// Queue capacity.
    pub queue_rows: usize,
    /// Time between attempts to drain the spool (and to retry Postgres after a failure).
    pub retry: Duration,
    /// Longest an insert may take before the batch is spooled instead.
    pub insert_timeout: Duration,
}

/// Starts the writer. It stops after `stop` turns true, once everything queued is stored.
pub fn start(
    pool: PgPool,
    spool: Spool,
    metrics: Metrics,
    options: WriterOptions,
    stop: watch::Receiver<bool>,
) -> (HistoryLog, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(options.queue_rows);
    metrics.history_spool_bytes.set(spool.bytes() as i64);
    let writer = Writer {
        pool,
        spool: Arc::new(Mutex::new(spool)),
        metrics: metrics.clone(),
        options,
        seen: HashMap::new(),
        postgres_failed_at: None,
    };
    let handle = tokio::spawn(writer.run(rx, stop));
    (HistoryLog { tx, metrics }, handle)
}

struct Writer {
    pool: PgPool,
    spool: Arc<Mutex<Spool>>,
    metrics: Metrics,
    options: WriterOptions,
    /// Users already sent to `user_model_map`, per experiment.
    seen: HashMap<String, HashSet<i64>>,
    postgres_failed_at: Option<Instant>,
}

#[derive(Serialize)]
struct Sighting<'a> {
    user_id: i64,
    experiment: &'a str,
    bucket: u32,
    variant: &'a str,
    first_seen: DateTime<Utc>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Box<Row>>, mut stop: watch::Receiver<bool>) {
        let mut batch: Vec<Row> = Vec::with_capacity(self.options.batch_rows);
        let mut retry = tokio::time::interval(self.options.retry);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            let flush_at = tokio::time::sleep(self.options.flush);
            tokio::pin!(flush_at);
            // Collect a batch: until full, the flush interval passes, or the channel closes.
            let mut closed = false;
            loop {
                tokio::select! {
                    biased;
                    row = rx.recv() => match row {
                        Some(row) => {
                            batch.push(*row);
                            if batch.len() >= self.options.batch_rows { break; }
                        }
                        None => { closed = true; break; }
                    },
                    () = &mut flush_at, if !batch.is_empty() => break,
                    _ = retry.tick(), if batch.is_empty() => { self.drain_spool().await; }
                    changed = stop.changed(), if !stopping => {
                        if changed.is_err() || *stop.borrow() {
                            // No new rows once the fronts have stopped; take what is queued.
                            stopping = true;
                            rx.close();
                        }
                    }
                }
            }
            self.metrics.history_queue.set(rx.len() as i64);
            if !batch.is_empty() {
                let rows = std::mem::take(&mut batch);
                self.store(rows).await;
            }
            if closed {
                self.drain_spool().await;
                tracing::info!("response log drained");
                return;
            }
        }
    }

    /// Writes a batch to Postgres, or to the spool when Postgres fails or failed recently.
    async fn store(&mut self, rows: Vec<Row>) {
        let recently_failed = self.postgres_failed_at.is_some_and(|at| at.elapsed() < self.options.retry);
        if !recently_failed && !self.spool_pending() {
            match self.insert(&rows).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, rows = rows.len(), "Postgres unavailable: spooling response-log rows");
                    self.postgres_failed_at = Some(Instant::now());
                }
            }
        }
        self.spool_rows(rows).await;
    }

    fn spool_pending(&self) -> bool {
        self.spool.lock().map(|s| !s.is_empty()).unwrap_or(true)
    }

    async fn spool_rows(&self, rows: Vec<Row>) {
        let n = rows.len() as u64;
        let spool = self.spool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut spool = spool.lock().map_err(|_| "spool lock poisoned".to_string())?;
            spool.append(&rows).map_err(|e| e.to_string())?;
            Ok::<u64, String>(spool.bytes())
        })
        .await
        .unwrap_or_else(|e| Err(format!("spool task: {e}")));
        match result {
            Ok(bytes) => {
                self.metrics.history_spooled.inc_by(n);
                self.metrics.history_spool_bytes.set(bytes as i64);
            }
            Err(e) => {
                self.metrics.history_dropped.inc_by(n);
                tracing::error!(error = %e, rows = n, "response-log rows dropped: the spool refused them");
            }
        }
    }

    /// Moves spooled rows into Postgres, oldest segment first, until the spool is empty or
    /// Postgres fails.
    async fn drain_spool(&mut self) {
        loop {
            if !self.spool_pending() {
                return;
            }
            let spool = self.spool.clone();
            let read = tokio::task::spawn_blocking(move || {
                spool.lock().map_err(|_| "spool lock poisoned".to_string())?.oldest::<Row>().map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("spool task: {e}")));
            let segment = match read {
                Ok(Some(segment)) => segment,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "reading the spool");
                    return;
                }
            };
            for chunk in segment.rows.chunks(self.options.batch_rows.max(1)) {
                if let Err(e) = self.insert(chunk).await {
                    tracing::debug!(error = %e, "Postgres still unavailable; the spool waits");
                    self.postgres_failed_at = Some(Instant::now());
                    return;
                }
            }
            let (rows, corrupt) = (segment.rows.len(), segment.corrupt);
            if corrupt > 0 {
                self.metrics.history_spool_corrupt.inc_by(corrupt);
                tracing::warn!(corrupt, "spool segment had torn lines (a crash mid-append)");
            }
            let spool = self.spool.clone();
            let acked = tokio::task::spawn_blocking(move || {
                let mut spool = spool.lock().map_err(|_| "spool lock poisoned".to_string())?;
                spool.ack(segment).map_err(|e: SpoolError| e.to_string())?;
                Ok::<u64, String>(spool.bytes())
            })
            .await
            .unwrap_or_else(|e| Err(format!("spool task: {e}")));
            match acked {
                Ok(bytes) => {
                    self.metrics.history_spool_bytes.set(bytes as i64);
                    tracing::info!(rows, remaining_bytes = bytes, "spooled response-log rows stored in Postgres");
                }
                Err(e) => {
                    tracing::error!(error = %e, "removing a drained spool segment");
                    return;
                }
            }
        }
    }

    /// One transaction: the rows (idempotent) and the users' first sightings.
    async fn insert(&mut self, rows: &[Row]) -> Result<(), String> {
        let mut fresh: Vec<Sighting<'_>> = Vec::new();
        let mut in_batch: HashSet<(&str, i64)> = HashSet::new();
        for row in rows {
            if let (Some(user_id), Some(experiment), Some(variant), Some(bucket)) =
                (row.user_id, row.experiment.as_deref(), row.assigned_variant.as_deref(), row.bucket)
                && !self.seen.get(experiment).is_some_and(|s| s.contains(&user_id))
                && in_batch.insert((experiment, user_id))
            {
                fresh.push(Sighting { user_id, experiment, bucket, variant, first_seen: row.ts });
            }
        }
        // Column arrays, sent in Postgres' binary format: far cheaper for the server to take
        // apart than a JSON document (ids are joined: arrays of arrays must be rectangular).
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
            request_id.push(row.request_id.as_str());
            ts.push(row.ts);
            user_id.push(row.user_id);
            experiment.push(row.experiment.as_deref());
            assigned.push(row.assigned_variant.as_deref());
            served.push(row.served_variant.as_str());
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
        let sightings_json = serde_json::to_string(&fresh).map_err(|e| e.to_string())?;
        let work = async {
            let mut tx = self.pool.begin().await?;
            let written = sqlx::query(
                "INSERT INTO recommendations_history
                 SELECT r, t, u, e, a, s, b, rel, m, w, st, l,
                        CASE WHEN ids = '' THEN '{}'::text[] ELSE string_to_array(ids, E'\\n') END,
                        d, err, i::jsonb
                 FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::text[], $5::text[], $6::text[],
                             $7::text[], $8::int8[], $9::text[], $10::int8[], $11::int4[], $12::int8[],
                             $13::text[], $14::bool[], $15::text[], $16::text[])
                      AS x(r, t, u, e, a, s, b, rel, m, w, st, l, ids, d, err, i)
                 ON CONFLICT (request_id) DO NOTHING",
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
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let sighted = if fresh.is_empty() {
                0
            } else {
                sqlx::query(
                    "INSERT INTO user_model_map (user_id, experiment, bucket, variant, first_seen)
                     SELECT user_id, experiment, bucket, variant, first_seen
                     FROM jsonb_to_recordset($1::text::jsonb) AS s(user_id bigint, experiment text, bucket integer, variant text, first_seen timestamptz)
                     ON CONFLICT (user_id, experiment) DO NOTHING",
                )
                .bind(&sightings_json)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            tx.commit().await?;
            Ok::<(u64, u64), sqlx::Error>((written, sighted))
        };
        let (written, sighted) = tokio::time::timeout(self.options.insert_timeout, work)
            .await
            .map_err(|_| format!("insert took longer than {:?}", self.options.insert_timeout))?
            .map_err(|e| e.to_string())?;
        let new_seen: Vec<(String, i64)> = fresh.iter().map(|s| (s.experiment.to_string(), s.user_id)).collect();
        for (experiment, user) in new_seen {
            self.seen.entry(experiment).or_default().insert(user);
        }
        // Rows already present (a replayed spool segment) are not counted twice.
        self.metrics.history_written.inc_by(written);
        self.metrics.sightings.inc_by(sighted);
        self.postgres_failed_at = None;
        Ok(())
    }
}
