//! The ingester: log lines in, events, summaries and rejected lines out, exactly once.
//!
//! One thread reads and parses a source into batches of pre-encoded `COPY` rows while the async
//! writer commits the previous batch. Each batch is one transaction that
//!
//! 1. checks the watermark and the source position are what the batch was built from,
//! 2. `COPY`s the events (ids `watermark+1 ..`) and the rejected lines,
//! 3. folds the batch into the per-user summaries (`user_watched`, `ratings`),
//! 4. advances the watermark, the source's position and appends an `ingest_batches` row.
//!
//! So a crash loses nothing (the next run resumes at the committed position) and duplicates
//! nothing (a batch is all or nothing), and re-ingesting a finished source reads nothing.
//! A session-level advisory lock admits one ingester per database, which is what keeps event
//! ids gap-free and the watermark meaningful.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rustc_hash::FxHashMap;
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;

use crate::copy;
use crate::event::{Event, RecommendationResult, Timestamp};
use crate::parse::{MAX_LINE_BYTES, ParseConfig, RejectReason, parse_line};
use crate::source::{FINGERPRINT_BYTES, LineSource, ReadOutcome, SourceKind};

/// Advisory-lock key held by the one running ingester of a database.
const INGEST_LOCK_KEY: i64 = 0x6c61_7a79_7265_6301;
/// A batch is committed once its encoded rows reach this size, whatever its line count.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// How much of a line over [`MAX_LINE_BYTES`] `rejected_lines.raw` keeps.
pub const CLIPPED_COPY_BYTES: usize = 1024;

/// Tuning and parsing options.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Lines per batch (= per transaction).
    pub batch_lines: usize,
    /// Parser limits (rating scale, user-id bound).
    pub parse: ParseConfig,
    /// Draw a progress bar on stderr when it is a terminal.
    pub progress: bool,
    /// Resume a stream source (stdin) that was ingested before by skipping as many bytes as were
    /// ingested: right only when the stream replays the same bytes (the same file piped again).
    /// Off, such a stream is refused: a live pipe's bytes are new, skipping them loses lines.
    pub resume_streams: bool,
    /// How long to wait for the ingest lock. A killed ingester's lock lingers until Postgres
    /// notices its dead connection (often only when the backend next touches the socket), so a
    /// restart right after a crash waits a little instead of failing.
    pub lock_wait: std::time::Duration,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            batch_lines: 200_000,
            parse: ParseConfig::default(),
            progress: false,
            resume_streams: false,
            lock_wait: std::time::Duration::from_secs(15),
        }
    }
}

/// Failures of an ingest run. Whatever was committed before the failure stays committed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A database call failed.
    #[error("database error while {context}: {source}")]
    Db {
        /// What we were doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Reading the source failed.
    #[error("reading {source_name}: {error}")]
    Read {
        /// Which source.
        source_name: String,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// Another ingester holds the lock on this database.
    #[error("another ingester is running against this database (advisory lock held); wait for it or stop it")]
    Busy,
    /// A file's first bytes differ from what was ingested under its name.
    #[error(
        "{0} was replaced since it was ingested (its first bytes changed); ingest it under another name with --source-name, or remove its row from ingest_sources"
    )]
    SourceChanged(String),
    /// A stream (stdin) was ingested under this name before and cannot seek back to check it.
    #[error(
        "{name} was ingested up to byte {position} before; a stream cannot be resumed safely (its bytes may be new ones): ingest it under a new --source-name, or pass --resume-stream if it replays the same bytes"
    )]
    StreamResume {
        /// The source's name.
        name: String,
        /// Its committed position.
        position: u64,
    },
    /// The database moved under us (e.g. someone else wrote events without the lock).
    #[error("consistency check failed: {0}")]
    Invariant(String),
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> IngestError {
    move |source| IngestError::Db { context, source }
}

/// Events accepted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// Watched minutes.
    pub watch: u64,
    /// Ratings.
    pub rate: u64,
    /// Recommendation requests.
    pub recommendation: u64,
    /// New accounts.
    pub create_account: u64,
}

impl KindCounts {
    /// All accepted events.
    pub fn total(&self) -> u64 {
        self.watch + self.rate + self.recommendation + self.create_account
    }

    fn add(&mut self, other: &KindCounts) {
        self.watch += other.watch;
        self.rate += other.rate;
        self.recommendation += other.recommendation;
        self.create_account += other.create_account;
    }
}

/// What one run did.
#[derive(Debug, Clone, Default)]
pub struct IngestReport {
    /// Lines read in this run (after the resume point).
    pub lines: u64,
    /// Events committed.
    pub accepted: KindCounts,
    /// Lines rejected, by reason.
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Bytes skipped because an earlier run had committed them.
    pub resumed_bytes: u64,
    /// Bytes read in this run.
    pub bytes: u64,
    /// Transactions committed.
    pub batches: u64,
    /// The watermark after the run.
    pub watermark: i64,
    /// Wall time.
    pub elapsed: Duration,
}

impl IngestReport {
    /// Total rejected lines.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Lines (accepted or rejected) per second of wall time.
    pub fn lines_per_second(&self) -> f64 {
        self.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A human summary, several lines.
    pub fn render(&self) -> String {
        let mut s = format!(
            "read {} lines ({:.1} MB) in {:.2}s: {:.0} lines/s\naccepted {} events (watch {}, rate {}, recommendation {}, create_account {})\nrejected {} lines",
            self.lines,
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.lines_per_second(),
            self.accepted.total(),
            self.accepted.watch,
            self.accepted.rate,
            self.accepted.recommendation,
            self.accepted.create_account,
            self.rejected_total(),
        );
        for (reason, n) in &self.rejected {
            s.push_str(&format!("\n  {reason}: {n}"));
        }
        if self.resumed_bytes > 0 {
            s.push_str(&format!("\nskipped {} bytes committed by earlier runs", self.resumed_bytes));
        }
        s.push_str(&format!("\nwatermark {} after {} batches", self.watermark, self.batches));
        s
    }
}

#[derive(Debug, Clone, Copy)]
struct WatchAgg {
    minute_events: i32,
    max_minute: i32,
    first_ts: Timestamp,
    last_ts: Timestamp,
    first_event_id: i64,
    last_event_id: i64,
}

#[derive(Debug, Clone, Copy)]
struct RatingAgg {
    rating: i16,
    ts: Timestamp,
    event_id: i64,
}

/// `COPY` text rows of the four event tables, in the column order of [`EVENT_COPY_STATEMENTS`].
#[derive(Debug, Default)]
pub struct EventRows {
    /// `watch_events` rows.
    pub watch: Vec<u8>,
    /// `rating_events` rows.
    pub rate: Vec<u8>,
    /// `recommendation_events` rows.
    pub recommendation: Vec<u8>,
    /// `account_events` rows.
    pub account: Vec<u8>,
}

/// The `COPY` statements matching [`EventRows`]' fields, in field order.
pub const EVENT_COPY_STATEMENTS: [&str; 4] = [
    "COPY watch_events (event_id, ts, user_id, movie_id, minute) FROM STDIN",
    "COPY rating_events (event_id, ts, user_id, movie_id, rating, scale) FROM STDIN",
    "COPY recommendation_events (event_id, ts, user_id, server, status, latency_ms, movie_ids, error) FROM STDIN",
    "COPY account_events (event_id, ts, user_id) FROM STDIN",
];

impl EventRows {
    /// The buffers in [`EVENT_COPY_STATEMENTS`] order.
    pub fn tables(&self) -> [&Vec<u8>; 4] {
        [&self.watch, &self.rate, &self.recommendation, &self.account]
    }

    /// Appends `event` with id `id` to its table's rows.
    pub fn push(&mut self, id: i64, event: &Event<'_>, scale: i16) {
        let (out, ts, user) = match event {
            Event::Watch { ts, user_id, .. } => (&mut self.watch, ts, user_id),
            Event::Rate { ts, user_id, .. } => (&mut self.rate, ts, user_id),
            Event::Recommendation { ts, user_id, .. } => (&mut self.recommendation, ts, user_id),
            Event::CreateAccount { ts, user_id } => (&mut self.account, ts, user_id),
        };
        copy::int(out, id);
        copy::tab(out);
        ts.write_pg(out);
        copy::tab(out);
        copy::int(out, *user);
        match event {
            Event::Watch { movie_id, minute, .. } => {
                copy::tab(out);
                copy::text(out, movie_id);
                copy::tab(out);
                copy::int(out, *minute);
            }
            Event::Rate { movie_id, rating, .. } => {
                copy::tab(out);
                copy::text(out, movie_id);
                copy::tab(out);
                copy::int(out, *rating);
                copy::tab(out);
                copy::int(out, scale);
            }
            Event::Recommendation { server, status, result, latency_ms, .. } => {
                copy::tab(out);
                copy::text(out, server);
                copy::tab(out);
                copy::int(out, *status);
                copy::tab(out);
                copy::int(out, *latency_ms);
                copy::tab(out);
                match result {
                    RecommendationResult::Movies(ids) => {
                        copy::text_array(out, ids.iter().map(|id| id.as_ref()));
                        copy::tab(out);
                        copy::null(out);
                    }
                    RecommendationResult::Error(text) => {
                        copy::null(out);
                        copy::tab(out);
                        copy::text(out, text);
                    }
                }
            }
            Event::CreateAccount { .. } => {}
        }
        copy::end_row(out);
    }
}

/// What a batch read from one lane of its source.
#[derive(Debug, Clone, Copy, Default)]
struct LaneSpan {
    /// The lane's position before the batch (checked against `ingest_sources` at commit).
    from: u64,
    /// The lane's position after the batch.
    to: u64,
    lines: u64,
    accepted: u64,
    rejected: u64,
    first_event_id: Option<i64>,
    last_event_id: Option<i64>,
}

/// One transaction's worth of pre-encoded rows.
#[derive(Default)]
struct Batch {
    /// Per lane of the source (one for files and streams, one per Kafka partition).
    lanes: Vec<LaneSpan>,
    lines: u64,
    first_event_id: i64,
    next_event_id: i64,
    accepted: KindCounts,
    rejected: [u64; RejectReason::ALL.len()],
    rows: EventRows,
    rejected_rows: Vec<u8>,
    watched: FxHashMap<(i64, Box<str>), WatchAgg>,
    latest_rating: FxHashMap<(i64, Box<str>), RatingAgg>,
}

impl Batch {
    /// An empty batch starting at `positions` (one per lane).
    fn new(positions: impl IntoIterator<Item = u64>, first_event_id: i64) -> Self {
        let lanes = positions.into_iter().map(|p| LaneSpan { from: p, to: p, ..LaneSpan::default() }).collect();
        Self { lanes, first_event_id, next_event_id: first_event_id, ..Self::default() }
    }

    /// The lanes' positions after this batch.
    fn ends(&self) -> impl Iterator<Item = u64> + '_ {
        self.lanes.iter().map(|l| l.to)
    }

    /// How far the batch moved its source, summed over lanes (bytes for files).
    fn advanced(&self) -> u64 {
        self.lanes.iter().map(|l| l.to - l.from).sum()
    }

    fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The encoded rows' size: a batch is also cut at [`MAX_BATCH_BYTES`], so that lines near
    /// the length limit cannot make a batch of `batch_lines` exhaust memory.
    fn bytes(&self) -> usize {
        self.rows.tables().iter().map(|t| t.len()).sum::<usize>() + self.rejected_rows.len()
    }

    fn events(&self) -> i64 {
        self.next_event_id - self.first_event_id
    }

    fn push_event(&mut self, event: &Event<'_>, scale: i16) {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.rows.push(id, event, scale);
        match event {
            Event::Watch { ts, user_id, movie_id, minute } => {
                self.accepted.watch += 1;
                let agg = self.watched.entry((*user_id, movie_id.as_ref().into())).or_insert(WatchAgg {
                    minute_events: 0,
                    max_minute: *minute,
                    first_ts: *ts,
                    last_ts: *ts,
                    first_event_id: id,
                    last_event_id: id,
                });
                agg.minute_events += 1;
                agg.max_minute = agg.max_minute.max(*minute);
                agg.first_ts = agg.first_ts.min(*ts);
                agg.last_ts = agg.last_ts.max(*ts);
                agg.last_event_id = id;
            }
            Event::Rate { ts, user_id, movie_id, rating } => {
                self.accepted.rate += 1;
                let candidate = RatingAgg { rating: *rating, ts: *ts, event_id: id };
                self.latest_rating
                    .entry((*user_id, movie_id.as_ref().into()))
                    .and_modify(|cur| {
                        if (candidate.ts, candidate.event_id) > (cur.ts, cur.event_id) {
                            *cur = candidate;
                        }
                    })
                    .or_insert(candidate);
            }
            Event::Recommendation { .. } => self.accepted.recommendation += 1,
            Event::CreateAccount { .. } => self.accepted.create_account += 1,
        }
    }

    fn push_rejected(
        &mut self,
        source: &str,
        line_no: u64,
        position: u64,
        raw: &[u8],
        reason: RejectReason,
        detail: &str,
    ) {
        self.rejected[reason as usize] += 1;
        let out = &mut self.rejected_rows;
        copy::text(out, source);
        copy::tab(out);
        copy::int(out, line_no);
        copy::tab(out);
        copy::int(out, position);
        copy::tab(out);
        copy::text(out, reason.code());
        copy::tab(out);
        copy::text(out, &detail.replace('\0', "\u{fffd}"));
        copy::tab(out);
        copy::text(out, &String::from_utf8_lossy(raw).replace('\0', "\u{fffd}"));
        copy::end_row(out);
    }

    fn summary_rows(&self) -> (Vec<u8>, Vec<u8>) {
        let mut watched = Vec::with_capacity(self.watched.len() * 96);
        for ((user, movie), a) in &self.watched {
            copy::int(&mut watched, *user);
            copy::tab(&mut watched);
            copy::text(&mut watched, movie);
            copy::tab(&mut watched);
            copy::int(&mut watched, a.minute_events);
            copy::tab(&mut watched);
            copy::int(&mut watched, a.max_minute);
            copy::tab(&mut watched);
            a.first_ts.write_pg(&mut watched);
            copy::tab(&mut watched);
            a.last_ts.write_pg(&mut watched);
            copy::tab(&mut watched);
            copy::int(&mut watched, a.first_event_id);
            copy::tab(&mut watched);
            copy::int(&mut watched, a.last_event_id);
            copy::end_row(&mut watched);
        }
        let mut ratings = Vec::with_capacity(self.latest_rating.len() * 80);
        for ((user, movie), r) in &self.latest_rating {
            copy::int(&mut ratings, *user);
            copy::tab(&mut ratings);
            copy::text(&mut ratings, movie);
            copy::tab(&mut ratings);
            copy::int(&mut ratings, r.rating);
            copy::tab(&mut ratings);
            r.ts.write_pg(&mut ratings);
            copy::tab(&mut ratings);
            copy::int(&mut ratings, r.event_id);
            copy::end_row(&mut ratings);
        }
        (watched, ratings)
    }
}

/// Per-source state read before a source starts: per lane, its name, position and line count.
struct SourceState {
    lanes: Vec<String>,
    positions: Vec<u64>,
    lines: Vec<u64>,
}

/// The running ingester: one connection holding the ingest lock.
pub struct Ingester {
    conn: PgConnection,
    opts: IngestOptions,
}

impl Ingester {
    /// Takes the database's ingest lock on `conn` (fails with [`IngestError::Busy`] if held).
    pub async fn new(mut conn: PgConnection, opts: IngestOptions) -> Result<Self, IngestError> {
        let deadline = Instant::now() + opts.lock_wait;
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(INGEST_LOCK_KEY)
                .fetch_one(&mut conn)
                .await
                .map_err(db("taking the ingest lock"))?;
            if locked {
                break;
            }
            if Instant::now() >= deadline {
                return Err(IngestError::Busy);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        for ddl in [
            "CREATE TEMP TABLE IF NOT EXISTS batch_watched (user_id bigint, movie_id text, minute_events integer, max_minute integer, first_ts timestamptz, last_ts timestamptz, first_event_id bigint, last_event_id bigint) ON COMMIT DELETE ROWS",
            "CREATE TEMP TABLE IF NOT EXISTS batch_ratings (user_id bigint, movie_id text, rating smallint, ts timestamptz, event_id bigint) ON COMMIT DELETE ROWS",
        ] {
            sqlx::query(ddl).execute(&mut conn).await.map_err(db("creating batch tables"))?;
        }
        Ok(Self { conn, opts })
    }

    /// Takes the lock, ingests every source, releases the lock and closes the connection: the
    /// next ingester can start the moment this returns.
    pub async fn run_once(
        conn: PgConnection,
        opts: IngestOptions,
        sources: Vec<Box<dyn LineSource>>,
    ) -> Result<IngestReport, IngestError> {
        let mut ingester = Self::new(conn, opts).await?;
        let report = ingester.run(sources).await;
        let closed = ingester.close().await;
        let report = report?;
        closed?;
        Ok(report)
    }

    /// Releases the ingest lock and closes the connection politely. (Dropping an ingester also
    /// releases the lock, but only once the server notices the closed socket.)
    pub async fn close(mut self) -> Result<(), IngestError> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(INGEST_LOCK_KEY)
            .execute(&mut self.conn)
            .await
            .map_err(db("releasing the ingest lock"))?;
        sqlx::Connection::close(self.conn).await.map_err(db("closing the connection"))
    }

    /// Ingests every source in order and returns what happened.
    pub async fn run(&mut self, sources: Vec<Box<dyn LineSource>>) -> Result<IngestReport, IngestError> {
        let started = Instant::now();
        let mut report = IngestReport::default();
        let total_bytes: Option<u64> = sources.iter().map(|s| s.len_hint()).sum();
        let progress = self.progress_bar(total_bytes);
        let mut base = 0u64;
        for mut source in sources {
            let state = self.prepare_source(source.as_mut()).await?;
            report.resumed_bytes += state.positions.iter().sum::<u64>();
            let len = source.len_hint().unwrap_or(0);
            let result = self.run_source(source, state, &mut report, &progress, base).await;
            base += len;
            progress.set_position(base);
            result?;
        }
        progress.finish_and_clear();
        report.watermark = self.watermark().await?;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The committed watermark.
    pub async fn watermark(&mut self) -> Result<i64, IngestError> {
        sqlx::query_scalar("SELECT last_event_id FROM ingest_watermark")
            .fetch_one(&mut self.conn)
            .await
            .map_err(db("reading the watermark"))
    }

    fn progress_bar(&self, total: Option<u64>) -> ProgressBar {
        if !self.opts.progress {
            return ProgressBar::hidden();
        }
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template(
                    "{spinner} ingest [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{spinner} ingest [{elapsed_precise}] {bytes} ({bytes_per_sec}) {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    async fn prepare_source(&mut self, source: &mut dyn LineSource) -> Result<SourceState, IngestError> {
        let name = source.name().to_string();
        let lanes = source.lanes();
        let mut state = SourceState { lanes: Vec::new(), positions: Vec::new(), lines: Vec::new() };
        let mut first_lane = None;
        for lane in lanes {
            sqlx::query("INSERT INTO ingest_sources (source, kind) VALUES ($1, $2) ON CONFLICT (source) DO NOTHING")
                .bind(&lane)
                .bind(source.kind().as_str())
                .execute(&mut self.conn)
                .await
                .map_err(db("registering the source"))?;
            let (position, lines, fingerprint, fingerprint_len): (i64, i64, Option<String>, Option<i64>) =
                sqlx::query_as(
                    "SELECT position, lines, fingerprint, fingerprint_len FROM ingest_sources WHERE source = $1",
                )
                .bind(&lane)
                .fetch_one(&mut self.conn)
                .await
                .map_err(db("reading the source position"))?;
            first_lane.get_or_insert((fingerprint, fingerprint_len));
            state.lanes.push(lane);
            state.positions.push(position as u64);
            state.lines.push(lines as u64);
        }
        let Some((fingerprint, fingerprint_len)) = first_lane else {
            return Err(IngestError::Invariant(format!("{name} has no lanes to read")));
        };
        let position = state.positions.iter().copied().max().unwrap_or(0);
        let read_err = |error| IngestError::Read { source_name: name.clone(), error };
        if source.kind() == SourceKind::File {
            match (fingerprint, fingerprint_len) {
                (Some(stored), Some(len)) => {
                    let now = source.fingerprint(len as u64).map_err(read_err)?;
                    if now.as_deref() != Some(stored.as_str()) {
                        return Err(IngestError::SourceChanged(name));
                    }
                }
                _ => {
                    let len = source.len_hint().unwrap_or(0).min(FINGERPRINT_BYTES);
                    if len > 0 {
                        let fp = source.fingerprint(len).map_err(read_err)?;
                        sqlx::query(
                            "UPDATE ingest_sources SET fingerprint = $2, fingerprint_len = $3 WHERE source = $1",
                        )
                        .bind(&name)
                        .bind(fp)
                        .bind(len as i64)
                        .execute(&mut self.conn)
                        .await
                        .map_err(db("storing the source fingerprint"))?;
                    }
                }
            }
        }
        if source.kind() == SourceKind::Stream && position > 0 && !self.opts.resume_streams {
            return Err(IngestError::StreamResume { name, position });
        }
        source.seek(&state.positions).map_err(read_err)?;
        Ok(state)
    }

    async fn run_source(
        &mut self,
        source: Box<dyn LineSource>,
        state: SourceState,
        report: &mut IngestReport,
        progress: &ProgressBar,
        progress_base: u64,
    ) -> Result<(), IngestError> {
        let first_id = self.watermark().await? + 1;
        let name: Arc<str> = source.name().into();
        let lanes = state.lanes.clone();
        let acknowledger = source.acknowledger();
        let (tx, mut rx) = mpsc::channel::<Batch>(2);
        let opts = self.opts.clone();
        let parser_name = name.clone();
        let parser = tokio::task::spawn_blocking(move || parse_source(source, parser_name, state, first_id, &opts, tx));
        let mut write_result = Ok(());
        while let Some(batch) = rx.recv().await {
            progress.set_position(progress_base + batch.ends().sum::<u64>());
            match self.commit(&lanes, &batch).await {
                Ok(()) => {
                    if let Some(ack) = &acknowledger {
                        for (lane, end) in batch.ends().enumerate() {
                            ack.ack(lane, end);
                        }
                    }
                    report.lines += batch.lines;
                    report.bytes += batch.advanced();
                    report.batches += 1;
                    report.accepted.add(&batch.accepted);
                    for (reason, n) in RejectReason::ALL.iter().zip(batch.rejected) {
                        if n > 0 {
                            *report.rejected.entry(*reason).or_default() += n;
                        }
                    }
                    progress.set_message(format!("{} events", report.accepted.total()));
                }
                Err(e) => {
                    write_result = Err(e);
                    break;
                }
            }
        }
        drop(rx);
        let parse_result = parser.await.map_err(|e| IngestError::Invariant(format!("parser thread failed: {e}")))?;
        write_result?;
        parse_result
    }

    /// Commits `batch`, read from the source whose lanes are named `lanes`, in one transaction.
    async fn commit(&mut self, lanes: &[String], batch: &Batch) -> Result<(), IngestError> {
        let mut tx = self.conn.begin().await.map_err(db("starting a batch"))?;
        let watermark: i64 = sqlx::query_scalar("SELECT last_event_id FROM ingest_watermark FOR UPDATE")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("locking the watermark"))?;
        if watermark != batch.first_event_id - 1 {
            return Err(IngestError::Invariant(format!(
                "watermark is {watermark}, batch starts at event {}",
                batch.first_event_id
            )));
        }
        if lanes.len() != batch.lanes.len() {
            return Err(IngestError::Invariant(format!(
                "a batch of {} lanes for a source of {}",
                batch.lanes.len(),
                lanes.len()
            )));
        }
        // Every lane is locked (in lane order) and checked, also those the batch did not touch:
        // a second writer on any lane is a broken invariant.
        for (source, span) in lanes.iter().zip(&batch.lanes) {
            let position: i64 = sqlx::query_scalar("SELECT position FROM ingest_sources WHERE source = $1 FOR UPDATE")
                .bind(source)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("locking the source position"))?;
            if position as u64 != span.from {
                return Err(IngestError::Invariant(format!(
                    "{source} is at position {position}, batch starts at {}",
                    span.from
                )));
            }
        }
        let (watched, ratings) = batch.summary_rows();
        let events = EVENT_COPY_STATEMENTS.into_iter().zip(batch.rows.tables());
        for (statement, rows) in events.chain([
            ("COPY rejected_lines (source, line_no, position, reason, detail, raw) FROM STDIN", &batch.rejected_rows),
            ("COPY batch_watched FROM STDIN", &watched),
            ("COPY batch_ratings FROM STDIN", &ratings),
        ]) {
            if rows.is_empty() {
                continue;
            }
            let mut copy_in = tx.copy_in_raw(statement).await.map_err(db("starting COPY"))?;
            copy_in.send(rows.as_slice()).await.map_err(db("sending COPY data"))?;
            copy_in.finish().await.map_err(db("finishing COPY"))?;
        }
        if !watched.is_empty() {
            sqlx::query(
                "INSERT INTO user_watched AS w SELECT * FROM batch_watched
                 ON CONFLICT (user_id, movie_id) DO UPDATE SET
                   minute_events = w.minute_events + excluded.minute_events,
                   max_minute = greatest(w.max_minute, excluded.max_minute),
                   first_ts = least(w.first_ts, excluded.first_ts),
                   last_ts = greatest(w.last_ts, excluded.last_ts),
                   first_event_id = least(w.first_event_id, excluded.first_event_id),
                   last_event_id = greatest(w.last_event_id, excluded.last_event_id)",
            )
            .execute(&mut *tx)
            .await
            .map_err(db("updating user_watched"))?;
        }
        if !ratings.is_empty() {
            sqlx::query(
                "INSERT INTO ratings AS r (user_id, movie_id, rating, scale, ts, event_id)
                   SELECT user_id, movie_id, rating, $1, ts, event_id FROM batch_ratings
                 ON CONFLICT (user_id, movie_id) DO UPDATE SET
                   rating = excluded.rating, scale = excluded.scale, ts = excluded.ts, event_id = excluded.event_id
                 WHERE (excluded.ts, excluded.event_id) > (r.ts, r.event_id)",
            )
            .bind(self.opts.parse.rating_scale)
            .execute(&mut *tx)
            .await
            .map_err(db("updating ratings"))?;
        }
        let last_event_id = batch.next_event_id - 1;
        if batch.events() > 0 {
            sqlx::query("UPDATE ingest_watermark SET last_event_id = $1, updated_at = now()")
                .bind(last_event_id)
                .execute(&mut *tx)
                .await
                .map_err(db("advancing the watermark"))?;
        }
        // Each lane the batch read from: its new position and an `ingest_batches` row with the
        // event ids that came from it (lanes interleave, so their id ranges may overlap).
        for (source, span) in lanes.iter().zip(&batch.lanes).filter(|(_, span)| span.lines > 0) {
            sqlx::query(
                "UPDATE ingest_sources SET position = $2, lines = lines + $3, accepted = accepted + $4,
                   rejected = rejected + $5, updated_at = now() WHERE source = $1",
            )
            .bind(source)
            .bind(span.to as i64)
            .bind(span.lines as i64)
            .bind(span.accepted as i64)
            .bind(span.rejected as i64)
            .execute(&mut *tx)
            .await
            .map_err(db("advancing the source position"))?;
            sqlx::query(
                "INSERT INTO ingest_batches (source, from_position, to_position, first_event_id, last_event_id, lines, accepted, rejected)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(source)
            .bind(span.from as i64)
            .bind(span.to as i64)
            .bind(span.first_event_id)
            .bind(span.last_event_id)
            .bind(span.lines as i32)
            .bind(span.accepted as i32)
            .bind(span.rejected as i32)
            .execute(&mut *tx)
            .await
            .map_err(db("recording the batch"))?;
        }
        tx.commit().await.map_err(db("committing a batch"))?;
        Ok(())
    }
}

/// The parser thread: reads `source` from its resume point and sends full batches.
fn parse_source(
    mut source: Box<dyn LineSource>,
    name: Arc<str>,
    state: SourceState,
    first_event_id: i64,
    opts: &IngestOptions,
    tx: mpsc::Sender<Batch>,
) -> Result<(), IngestError> {
    let read_err = |error| IngestError::Read { source_name: name.to_string(), error };
    let scale = opts.parse.rating_scale;
    let mut line_no = state.lines;
    let lanes = state.lanes;
    let mut batch = Batch::new(state.positions, first_event_id);
    let mut buf = Vec::with_capacity(4096);
    loop {
        let outcome = source.read_line(&mut buf, MAX_LINE_BYTES).map_err(read_err)?;
        let flush = match outcome {
            ReadOutcome::Line { lane, end } | ReadOutcome::TooLong { lane, end, .. } => {
                let (Some(span), Some(lane_name), Some(line_no)) =
                    (batch.lanes.get_mut(lane), lanes.get(lane), line_no.get_mut(lane))
                else {
                    return Err(IngestError::Invariant(format!(
                        "{name} returned a line of lane {lane} but has {} lanes",
                        lanes.len()
                    )));
                };
                *line_no += 1;
                let start = span.to;
                span.to = end;
                span.lines += 1;
                batch.lines += 1;
                let id = batch.next_event_id;
                if let ReadOutcome::TooLong { len, .. } = outcome {
                    let clipped = &buf[..buf.len().min(CLIPPED_COPY_BYTES)];
                    let detail =
                        format!("{len} bytes (the limit is {MAX_LINE_BYTES}; raw keeps the first {})", clipped.len());
                    batch.push_rejected(lane_name, *line_no, start, clipped, RejectReason::LineTooLong, &detail);
                } else {
                    match parse_line(&buf, &opts.parse) {
                        Ok(event) => batch.push_event(&event, scale),
                        Err(rejection) => {
                            batch.push_rejected(lane_name, *line_no, start, &buf, rejection.reason, &rejection.detail)
                        }
                    }
                }
                let span = &mut batch.lanes[lane];
                if batch.next_event_id > id {
                    span.accepted += 1;
                    span.first_event_id.get_or_insert(id);
                    span.last_event_id = Some(id);
                } else {
                    span.rejected += 1;
                }
                batch.lines as usize >= opts.batch_lines || batch.bytes() >= MAX_BATCH_BYTES
            }
            ReadOutcome::Idle => {
                if tx.is_closed() {
                    // The writer stopped (it reports why, or its task was cancelled): a
                    // followed source would otherwise keep this thread polling forever.
                    return Ok(());
                }
                !batch.is_empty()
            }
            ReadOutcome::Eof => {
                if !batch.is_empty() {
                    // A send error means the writer stopped; it reports why.
                    let _writer_gone = tx.blocking_send(batch);
                }
                return Ok(());
            }
        };
        if flush {
            let next = Batch::new(batch.ends(), batch.next_event_id);
            if tx.blocking_send(std::mem::replace(&mut batch, next)).is_err() {
                // The writer stopped (it reports why).
                return Ok(());
            }
        }
    }
}
