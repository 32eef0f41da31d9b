//! The engine: an open-loop schedule of steps (one recommendation request and what the user
//! does next), run concurrently, in order per user, deterministic per seed.
//!
//! Step `i` is issued at `i / rate` seconds whatever earlier steps are doing (open loop); its
//! user and its random draws come from `(seed, i)` only. A user's steps run one after another
//! (each waits for the user's previous step), so with the same answers the same seed gives the
//! same actions in the same order, however the requests interleave in time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use tokio::sync::{oneshot, watch};

use crate::client::{Client, Outcome, Reply};
use crate::population::{FutureItem, SimUser};
use crate::report::{ColdStart, Latency, Lines, Report, Share, VariantReport};
use crate::sink::{LineSender, Output, Sink, SinkError};
use crate::user::{self, Behaviour, Reason};

/// When to stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// After this long.
    Duration(Duration),
    /// After this many requests.
    Requests(u64),
}

/// A run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// `http://host:port` of the load balancer (or a server).
    pub target: String,
    /// Requests per second (open loop).
    pub rate: f64,
    /// When to stop.
    pub limit: Limit,
    /// The client's time budget per request (the course waits 600 ms).
    pub timeout: Duration,
    /// How users respond.
    pub behaviour: Behaviour,
    /// The seed of every random choice.
    pub seed: u64,
    /// At most this many steps in flight; a step due beyond it is counted as not sent.
    pub max_in_flight: usize,
    /// Where the log lines go.
    pub output: Output,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Keep the list of actions (for determinism checks; memory grows with the run).
    pub trace: bool,
    /// Serve Prometheus metrics of the run here while it runs (`lazyrec_sim_*`).
    pub metrics: Option<std::net::SocketAddr>,
}

/// One step as it happened, without times: what determinism is checked on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TraceEntry {
    /// Step number.
    pub step: u64,
    /// The user.
    pub user: i64,
    /// The list received (empty on failure).
    pub list: Vec<String>,
    /// The movie watched, if any, and the rating given.
    pub watched: Option<(String, Option<i16>)>,
}

/// A finished run.
#[derive(Debug)]
pub struct Finished {
    /// The report.
    pub report: Report,
    /// The actions, by step (when [`Config::trace`]).
    pub trace: Vec<TraceEntry>,
}

/// A run that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    /// The output failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

struct UserState {
    id: i64,
    new: bool,
    created: bool,
    future: Vec<FutureItem>,
}

#[derive(Default)]
struct VariantCounts {
    answers: u64,
    valid: u64,
    converted: u64,
    liked: u64,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    available: u64,
    status_200: u64,
    status_other: u64,
    timeouts: u64,
    failed: u64,
    invalid: u64,
    latencies_us: Vec<u32>,
    variants: FxHashMap<String, VariantCounts>,
    organic: u64,
    cold_requests: u64,
    cold_served: u64,
    lines: Lines,
    trace: Vec<TraceEntry>,
}

struct Shared {
    client: Client,
    users: Vec<Mutex<UserState>>,
    behaviour: Behaviour,
    seed: u64,
    timeout: Duration,
    tally: Arc<Mutex<Tally>>,
    lines: LineSender,
    errors: AtomicU64,
    trace: bool,
}

fn step_rng(seed: u64, step: u64) -> StdRng {
    // SplitMix64 of (seed, step): independent streams per step.
    let mut z = seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

fn timestamp() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// Runs the simulation until the limit or `stop` turns true, then writes the report.
pub async fn run(config: Config, population: Vec<SimUser>, stop: watch::Receiver<bool>) -> Result<Finished, RunError> {
    if !(config.rate > 0.0 && config.rate.is_finite()) {
        return Err(RunError::Config(format!(
            "the rate must be a positive number of requests per second, got {}",
            config.rate
        )));
    }
    if population.is_empty() {
        return Err(RunError::Config("the population is empty".into()));
    }
    config.behaviour.validate().map_err(RunError::Config)?;
    let client = Client::new(&config.target, config.timeout).map_err(RunError::Config)?;
    let sink = Sink::open(&config.output)?;
    let new_users = population.iter().filter(|u| u.new).count() as u64;
    let shared = Arc::new(Shared {
        client,
        users: population
            .into_iter()
            .map(|u| Mutex::new(UserState { id: u.id, new: u.new, created: false, future: u.future }))
            .collect(),
        behaviour: config.behaviour,
        seed: config.seed,
        timeout: config.timeout,
        tally: Arc::new(Mutex::new(Tally::default())),
        lines: sink.sender(),
        errors: AtomicU64::new(0),
        trace: config.trace,
    });
    let total = match config.limit {
        Limit::Requests(n) => Some(n),
        Limit::Duration(d) => Some((d.as_secs_f64() * config.rate).ceil() as u64),
    };
    let metrics = match config.metrics {
        Some(addr) => Some(serve_metrics(addr, shared.tally.clone()).await?),
        None => None,
    };
    let bar = progress_bar(config.progress, total);
    let started = Instant::now();
    let in_flight = Arc::new(AtomicU64::new(0));
    let mut chains: FxHashMap<usize, oneshot::Receiver<()>> = FxHashMap::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut scheduled = 0u64;
    let mut not_sent = 0u64;
    let mut interrupted = false;
    let n_users = shared.users.len();
    loop {
        if *stop.borrow() {
            interrupted = true;
            break;
        }
        let elapsed = started.elapsed();
        if let Limit::Duration(d) = config.limit
            && elapsed >= d
        {
            break;
        }
        let due = (elapsed.as_secs_f64() * config.rate) as u64 + 1;
        let due = match total {
            Some(t) => due.min(t),
            None => due,
        };
        while scheduled < due {
            let step = scheduled;
            scheduled += 1;
            if in_flight.load(Ordering::Relaxed) as usize >= config.max_in_flight {
                not_sent += 1;
                continue;
            }
            let user = (step_rng(config.seed ^ 0x7573_6572, step).random::<u64>() % n_users as u64) as usize;
            let prev = chains.remove(&user);
            let (done, next) = oneshot::channel();
            chains.insert(user, next);
            in_flight.fetch_add(1, Ordering::Relaxed);
            let (shared, in_flight) = (shared.clone(), in_flight.clone());
            tasks.spawn(async move {
                if let Some(prev) = prev {
                    let _previous_step_ended = prev.await;
                }
                run_step(&shared, step, user).await;
                in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(done);
            });
        }
        // Reap finished tasks so the set does not grow with the run.
        while let Some(joined) = tasks.try_join_next() {
            if let Err(e) = joined {
                tracing::error!(error = %e, "a simulation step failed");
            }
        }
        if !bar.is_hidden() {
            bar.set_position(scheduled);
            bar.set_message(format!("{} errors", shared.errors.load(Ordering::Relaxed)));
        }
        if matches!(config.limit, Limit::Requests(n) if scheduled >= n) {
            break;
        }
        let next_at = Duration::from_secs_f64(scheduled as f64 / config.rate);
        let wait = next_at.saturating_sub(started.elapsed()).max(Duration::from_micros(200));
        let mut stop_rx = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_millis(50))) => {}
            _ = stop_rx.changed() => {}
        }
    }
    drop(chains);
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "a simulation step failed");
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let shared = Arc::into_inner(shared).ok_or_else(|| RunError::Config("steps outlived the run".into()))?;
    if let Some(server) = metrics {
        server.abort();
    }
    let tally = std::mem::take(&mut *shared.tally.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    drop(shared.lines);
    let sink_stats = sink.close()?;
    let mut trace = tally.trace;
    trace.sort();
    let variants = tally
        .variants
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                VariantReport { answers: v.answers, conversion: Share::wilson(v.converted, v.valid), liked: v.liked },
            )
        })
        .collect::<std::collections::BTreeMap<_, _>>();
    let (converted, valid) = variants.values().fold((0, 0), |(c, n), v| (c + v.conversion.hits, n + v.conversion.n));
    let report = Report {
        target: config.target.clone(),
        seed: config.seed,
        rate: config.rate,
        elapsed_s: elapsed.as_secs_f64(),
        scheduled,
        not_sent,
        requests: tally.requests,
        achieved_rate: tally.requests as f64 / elapsed.as_secs_f64().max(1e-9),
        availability: Share::wilson(tally.available, tally.requests),
        status_200: tally.status_200,
        status_other: tally.status_other,
        timeouts: tally.timeouts,
        failed: tally.failed,
        invalid: tally.invalid,
        latency_ms: Latency::from_micros(tally.latencies_us),
        variants,
        conversion: Share::wilson(converted, valid),
        organic_watches: tally.organic,
        cold_start: ColdStart { users: new_users, requests: tally.cold_requests, served: tally.cold_served },
        lines: tally.lines,
        undelivered: sink_stats.undelivered,
        interrupted,
    };
    Ok(Finished { report, trace })
}

/// Serves `GET /metrics` (the run's counts so far) on `addr` until aborted.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    tally: Arc<Mutex<Tally>>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RunError::Config(format!("cannot serve metrics on {addr}: {e}")))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let tally = tally.clone();
            async move {
                let text = tally.lock().unwrap_or_else(|p| p.into_inner()).render_metrics();
                match text {
                    Ok(text) => {
                        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                    }
                    Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    }))
}

impl Tally {
    /// The counts so far as Prometheus text.
    fn render_metrics(&self) -> Result<String, prometheus::Error> {
        use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
        let registry = Registry::new_custom(Some("lazyrec_sim".into()), None)?;
        let counter = |name: &str, help: &str, value: u64| -> Result<(), prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            c.inc_by(value);
            registry.register(Box::new(c))
        };
        let vec = |name: &str, help: &str, label: &str, values: &[(&str, u64)]| -> Result<(), prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            for (l, v) in values {
                c.with_label_values(&[*l]).inc_by(*v);
            }
            registry.register(Box::new(c))
        };
        counter("requests_total", "Requests sent", self.requests)?;
        counter("available_total", "Answers with status 200, a valid list, in time", self.available)?;
        vec(
            "responses_total",
            "Requests by result",
            "result",
            &[
                ("status_200", self.status_200),
                ("status_other", self.status_other),
                ("timeout", self.timeouts),
                ("failed", self.failed),
                ("invalid", self.invalid),
            ],
        )?;
        let variants: Vec<(&str, &VariantCounts)> = self.variants.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let per = |f: fn(&VariantCounts) -> u64| variants.iter().map(|(k, v)| (*k, f(v))).collect::<Vec<_>>();
        vec("answers_total", "Answers by served variant", "variant", &per(|v| v.answers))?;
        vec("valid_answers_total", "Valid answers by served variant", "variant", &per(|v| v.valid))?;
        vec(
            "conversions_total",
            "Valid answers the user then watched from, by served variant",
            "variant",
            &per(|v| v.converted),
        )?;
        counter("organic_watches_total", "Watches not taken from an answer", self.organic)?;
        vec(
            "log_lines_total",
            "Course log lines written, by kind",
            "kind",
            &[
                ("recommendation", self.lines.recommendation),
                ("watch", self.lines.watch),
                ("rate", self.lines.rate),
                ("create_account", self.lines.create_account),
            ],
        )?;
        let mut buf = Vec::new();
        TextEncoder::new().encode(&registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

fn progress_bar(enabled: bool, total: Option<u64>) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr()).with_style(
        ProgressStyle::with_template(
            "{spinner} simulate [{elapsed_precise}] {wide_bar} {pos}/{len} requests ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// One step: (a new user's account line,) the request, its log line, the user's response.
async fn run_step(shared: &Shared, step: u64, user_index: usize) {
    let mut rng = step_rng(shared.seed, step);
    let (user_id, new, announce) = {
        let mut u = shared.users[user_index].lock().unwrap_or_else(|p| p.into_inner());
        let announce = u.new && !u.created;
        u.created = true;
        (u.id, u.new, announce)
    };
    let mut out = Vec::with_capacity(256);
    if announce {
        out.extend_from_slice(format!("{},{user_id},GET /create_account\n", timestamp()).as_bytes());
    }
    let Reply { outcome, latency } = shared.client.recommend(user_id).await;
    let ms = latency.as_millis().min(99_999_999);
    let ts = timestamp();
    let server = &shared.client.server;
    let (list, variant, valid) = match &outcome {
        Outcome::Response { status: 200, ids: Some(ids), variant, .. } => {
            out.extend_from_slice(
                format!(
                    "{ts},{user_id},recommendation request {server}, status 200, result: {}, {ms} ms\n",
                    ids.join(", ")
                )
                .as_bytes(),
            );
            (ids.clone(), variant.clone(), true)
        }
        Outcome::Response { status, text, variant, .. } => {
            let status = if *status == 200 { 0 } else { *status };
            let what = if text.is_empty() { format!("HTTP {status}") } else { text.clone() };
            out.extend_from_slice(
                format!("{ts},{user_id},recommendation request {server}, status {status}, result: {what}, {ms} ms\n")
                    .as_bytes(),
            );
            (Vec::new(), variant.clone(), false)
        }
        Outcome::Timeout => {
            let budget = shared.timeout.as_millis();
            out.extend_from_slice(
                format!("{ts},{user_id},recommendation request {server}, status 0, result: timeout after {budget} ms, {ms} ms\n")
                    .as_bytes(),
            );
            (Vec::new(), None, false)
        }
        Outcome::Failed(e) => {
            let mut e = e.chars().take(80).collect::<String>();
            e.retain(|c| !c.is_control());
            out.extend_from_slice(
                format!("{ts},{user_id},recommendation request {server}, status 0, result: {e}, {ms} ms\n").as_bytes(),
            );
            (Vec::new(), None, false)
        }
    };
    let in_time = latency <= shared.timeout;
    let action = {
        let mut u = shared.users[user_index].lock().unwrap_or_else(|p| p.into_inner());
        user::respond(&shared.behaviour, &mut u.future, &list, &mut rng)
    };
    let mut watch_lines = 0;
    let mut rate_lines = 0;
    if let Some(a) = &action {
        for minute in 0..a.minutes {
            out.extend_from_slice(format!("{ts},{user_id},GET /data/m/{}/{minute}.mpg\n", a.movie).as_bytes());
            watch_lines += 1;
        }
        if let Some(r) = a.rating {
            out.extend_from_slice(format!("{ts},{user_id},GET /rate/{}={r}\n", a.movie).as_bytes());
            rate_lines += 1;
        }
    }
    if !shared.lines.send(out) {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
    let mut t = shared.tally.lock().unwrap_or_else(|p| p.into_inner());
    t.requests += 1;
    t.lines.recommendation += 1;
    t.lines.create_account += u64::from(announce);
    t.lines.watch += watch_lines;
    t.lines.rate += rate_lines;
    t.lines.movies_watched += u64::from(action.is_some());
    match &outcome {
        Outcome::Response { status: 200, ids, .. } => {
            t.status_200 += 1;
            t.invalid += u64::from(ids.is_none());
        }
        Outcome::Response { .. } => t.status_other += 1,
        Outcome::Timeout => t.timeouts += 1,
        Outcome::Failed(_) => t.failed += 1,
    }
    if !valid || !in_time {
        shared.errors.fetch_add(1, Ordering::Relaxed);
    }
    let available = valid && in_time;
    t.available += u64::from(available);
    if new {
        t.cold_requests += 1;
        t.cold_served += u64::from(available);
    }
    if matches!(outcome, Outcome::Response { .. }) {
        t.latencies_us.push(latency.as_micros().min(u32::MAX as u128) as u32);
    }
    let variant_name = match (&outcome, variant) {
        (Outcome::Response { .. }, Some(v)) => v,
        (Outcome::Response { .. }, None) => "unknown".to_string(),
        _ => "none".to_string(),
    };
    let v = t.variants.entry(variant_name).or_default();
    v.answers += 1;
    if valid {
        v.valid += 1;
        if let Some(a) = &action
            && a.reason.converted()
        {
            v.converted += 1;
            v.liked += u64::from(a.reason == Reason::Liked);
        }
    }
    if action.as_ref().is_some_and(|a| !a.reason.converted()) {
        t.organic += 1;
    }
    if shared.trace {
        t.trace.push(TraceEntry {
            step,
            user: user_id,
            list,
            watched: action.map(|a| (a.movie.to_string(), a.rating)),
        });
    }
}
