//! Prometheus metrics of releases, read from Postgres at every scrape (`lazyrec-release
//! exporter`). The controller is a command run by the pipeline, not a daemon, and the release
//! records are the truth, so the exporter derives every number from them: a restarted exporter
//! loses nothing and two exporters agree.
//!
//! - `lazyrec_release_info{release_id,tag,model_version,state}` 1 — the 50 newest releases
//! - `lazyrec_releases{state}` — releases per state
//! - `lazyrec_release_decisions_total{outcome}` — promoted / aborted / rejected / rolled_back moves
//! - `lazyrec_release_looks_total{outcome}` — evaluations by decision (promote / abort / continue)
//! - `lazyrec_release_nightly_age_seconds{release_id,tag}` — how long a deployed nightly has run
//! - from the latest look of each of those releases: `lazyrec_release_conversion{release_id,variant}`,
//!   `lazyrec_release_responses{release_id,variant}`, `lazyrec_release_p99_ms{release_id,variant}`,
//!   `lazyrec_release_conversion_difference{release_id,bound="estimate"|"low"|"high"}` (nightly −
//!   main with its always-valid confidence sequence), `lazyrec_release_p_value{release_id,test}`
//!   (`always_valid`, `fixed`, `srm`), `lazyrec_release_switched_users{release_id}`.
//!
//! And what the alert rules need from the same database (monitoring/alerts.yml):
//! - `lazyrec_ingest_watermark`, `lazyrec_ingest_last_commit_timestamp_seconds`,
//!   `lazyrec_ingest_source_position{source,kind}` (bytes or offset committed),
//!   `lazyrec_ingest_source_size_bytes{source}` and `lazyrec_ingest_source_lag_bytes{source}`
//!   (file sources: the file's size now, and what of it is not ingested yet)
//! - `lazyrec_online_conversion{variant}` and `lazyrec_online_responses{variant}`: by served
//!   variant, the 200 answers of the last [`OnlineWindows::online`] (15 min) whose conversion
//!   window ([`OnlineWindows::conversion`], 10 min as `evaluate`'s default) has closed, and the
//!   share followed by a first watch of one of their movies (the release controller's
//!   definition of conversion). One query per scrape over that slice of history (index on `ts`):
//!   scrape this job every 30 s, not every 5 s.

use prometheus::{Encoder, Gauge, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use sqlx::PgPool;

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn plain_gauge(registry: &Registry, name: &str, help: &str) -> Result<Gauge, prometheus::Error> {
    let g = Gauge::with_opts(Opts::new(name, help))?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The slices of history `lazyrec_online_conversion` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnlineWindows {
    /// The answers covered: this long, ending one conversion window ago.
    pub online: chrono::TimeDelta,
    /// How long after an answer a watch counts as its conversion.
    pub conversion: chrono::TimeDelta,
}

impl Default for OnlineWindows {
    fn default() -> Self {
        Self { online: chrono::TimeDelta::minutes(15), conversion: chrono::TimeDelta::minutes(10) }
    }
}

/// Failures of a scrape.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A metric could not be registered (a programming error).
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
}

type InfoRow = (i64, Option<String>, String, String, Option<f64>, Option<serde_json::Value>);

/// The ingest and online metrics (see the module docs) into `registry`.
async fn data_metrics(pool: &PgPool, registry: &Registry, windows: &OnlineWindows) -> Result<(), MetricsError> {
    let watermark = plain_gauge(registry, "lazyrec_ingest_watermark", "The last committed event id.")?;
    let last_commit = plain_gauge(
        registry,
        "lazyrec_ingest_last_commit_timestamp_seconds",
        "When the ingester last committed a batch (Unix time).",
    )?;
    let position = gauge(
        registry,
        "lazyrec_ingest_source_position",
        "Committed position of a source: bytes (files, streams) or offset (Kafka).",
        &["source", "kind"],
    )?;
    let size = gauge(registry, "lazyrec_ingest_source_size_bytes", "A file source's size now.", &["source"])?;
    let lag = gauge(
        registry,
        "lazyrec_ingest_source_lag_bytes",
        "Bytes of a file source not ingested yet (size − committed position).",
        &["source"],
    )?;
    let conversion = gauge(
        registry,
        "lazyrec_online_conversion",
        "Share of recent 200 answers followed by a first watch of one of their movies, by served variant.",
        &["variant"],
    )?;
    let responses = gauge(
        registry,
        "lazyrec_online_responses",
        "Recent 200 answers whose conversion window closed, by served variant.",
        &["variant"],
    )?;
    let (wm, committed): (i64, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT last_event_id FROM ingest_watermark),
                (SELECT extract(epoch FROM max(committed_at))::float8 FROM ingest_batches)",
    )
    .fetch_one(pool)
    .await?;
    watermark.set(wm as f64);
    if let Some(t) = committed {
        last_commit.set(t);
    }
    let sources: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT source, kind, position FROM ingest_sources").fetch_all(pool).await?;
    for (source, kind, at) in sources {
        position.with_label_values(&[&source, &kind]).set(at as f64);
        if kind == "file"
            && let Some(path) = source.strip_prefix("file:")
            && let Ok(meta) = std::fs::metadata(path)
        {
            size.with_label_values(&[&source]).set(meta.len() as f64);
            lag.with_label_values(&[&source]).set(meta.len().saturating_sub(at.max(0) as u64) as f64);
        }
    }
    let until = chrono::Utc::now() - windows.conversion;
    let online: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT served_variant, count(*),
                count(*) FILTER (WHERE EXISTS (
                  SELECT 1 FROM user_watched w
                  WHERE w.user_id = h.user_id AND w.movie_id = ANY (h.movie_ids)
                    AND watch_converts(h.ts, w.first_ts, $3 * interval '1 second')))
         FROM recommendations_history h
         WHERE h.ts >= $1 AND h.ts < $2 AND h.status = 200 AND h.user_id IS NOT NULL
           AND h.served_variant IN ('main', 'nightly')
         GROUP BY served_variant",
    )
    .bind(until - windows.online)
    .bind(until)
    .bind(windows.conversion.num_milliseconds() as f64 / 1000.0)
    .fetch_all(pool)
    .await?;
    for variant in ["main", "nightly"] {
        let (n, hits) = online.iter().find(|(v, _, _)| v == variant).map_or((0, 0), |(_, n, h)| (*n, *h));
        responses.with_label_values(&[variant]).set(n as f64);
        if n > 0 {
            conversion.with_label_values(&[variant]).set(hits as f64 / n as f64);
        }
    }
    Ok(())
}

/// The exposition text of the release, ingest and online metrics now.
pub async fn render(pool: &PgPool, windows: &OnlineWindows) -> Result<String, MetricsError> {
    let registry = Registry::new();
    data_metrics(pool, &registry, windows).await?;
    let info = IntGaugeVec::new(
        Opts::new("lazyrec_release_info", "The newest releases (1), with their state."),
        &["release_id", "tag", "model_version", "state"],
    )?;
    registry.register(Box::new(info.clone()))?;
    let per_state = IntGaugeVec::new(Opts::new("lazyrec_releases", "Releases per state."), &["state"])?;
    registry.register(Box::new(per_state.clone()))?;
    let decisions = IntCounterVec::new(
        Opts::new(
            "lazyrec_release_decisions_total",
            "Release state moves that decide: promoted, aborted, rejected, rolled_back.",
        ),
        &["outcome"],
    )?;
    registry.register(Box::new(decisions.clone()))?;
    let looks = IntCounterVec::new(
        Opts::new("lazyrec_release_looks_total", "Online evaluations by their decision."),
        &["outcome"],
    )?;
    registry.register(Box::new(looks.clone()))?;
    let age = gauge(
        &registry,
        "lazyrec_release_nightly_age_seconds",
        "Seconds since a release still deployed as nightly was deployed.",
        &["release_id", "tag"],
    )?;
    let conversion =
        gauge(&registry, "lazyrec_release_conversion", "Conversion at the latest look.", &["release_id", "variant"])?;
    let responses = gauge(
        &registry,
        "lazyrec_release_responses",
        "Responses with a closed conversion window at the latest look.",
        &["release_id", "variant"],
    )?;
    let p99 =
        gauge(&registry, "lazyrec_release_p99_ms", "p99 latency at the latest look.", &["release_id", "variant"])?;
    let difference = gauge(
        &registry,
        "lazyrec_release_conversion_difference",
        "Nightly − main conversion at the latest look, with the always-valid confidence sequence.",
        &["release_id", "bound"],
    )?;
    let p_value = gauge(
        &registry,
        "lazyrec_release_p_value",
        "p-values at the latest look: always_valid (mSPRT), fixed (z), srm (split).",
        &["release_id", "test"],
    )?;
    let switched = gauge(
        &registry,
        "lazyrec_release_switched_users",
        "Users whose variant changed during the experiment (must be 0).",
        &["release_id"],
    )?;

    let rows: Vec<InfoRow> = sqlx::query_as(
        "SELECT r.release_id, r.tag, r.model_version, r.state,
                CASE WHEN r.state = 'deployed' THEN extract(epoch FROM now() - (
                  SELECT max(at) FROM release_events e WHERE e.release_id = r.release_id AND e.step = 'state.deployed'
                ))::float8 END,
                r.online_metrics
         FROM releases r ORDER BY r.release_id DESC LIMIT 50",
    )
    .fetch_all(pool)
    .await?;
    for (id, tag, model, state, deployed_for, online) in rows {
        let (id, tag) = (id.to_string(), tag.unwrap_or_default());
        info.with_label_values(&[&id, &tag, &model, &state]).set(1);
        if let Some(seconds) = deployed_for {
            age.with_label_values(&[&id, &tag]).set(seconds);
        }
        let Some(o) = online else { continue };
        // The stored look is a `decision::Evaluation`; a record that does not read is skipped
        // with a warning (its release's info is still exported).
        let e: crate::decision::Evaluation = match serde_json::from_value(o) {
            Ok(e) => e,
            Err(err) => {
                tracing::warn!(release = %id, error = %err, "online_metrics is not an evaluation; not exported");
                continue;
            }
        };
        for v in [&e.main, &e.nightly] {
            let variant = v.variant.as_str();
            conversion.with_label_values(&[&id, variant]).set(v.conversion.rate());
            responses.with_label_values(&[&id, variant]).set(v.conversion.n as f64);
            p99.with_label_values(&[&id, variant]).set(v.p99_ms);
        }
        let c = &e.comparison;
        for (bound, x) in [("estimate", c.diff), ("low", c.cs_low), ("high", c.cs_high)] {
            difference.with_label_values(&[&id, bound]).set(x);
        }
        for (test, x) in [("always_valid", c.p_always_valid), ("fixed", c.p_fixed), ("srm", e.srm.p)] {
            p_value.with_label_values(&[&id, test]).set(x);
        }
        switched.with_label_values(&[&id]).set(e.switched_users as f64);
    }
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM releases GROUP BY state").fetch_all(pool).await?;
    for state in ["created", "gated", "rejected", "deployed", "promoted", "aborted", "rolled_back"] {
        per_state.with_label_values(&[state]).set(states.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n));
    }
    let moves: Vec<(String, i64)> = sqlx::query_as(
        "SELECT substr(step, 7), count(*) FROM release_events
         WHERE step IN ('state.promoted', 'state.aborted', 'state.rejected', 'state.rolled_back') GROUP BY step",
    )
    .fetch_all(pool)
    .await?;
    for outcome in ["promoted", "aborted", "rejected", "rolled_back"] {
        let n = moves.iter().find(|(s, _)| s == outcome).map_or(0, |(_, n)| *n);
        decisions.with_label_values(&[outcome]).inc_by(n as u64);
    }
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT details->'decision'->>'outcome', count(*) FROM release_events
         WHERE step = 'evaluate' AND details->'decision'->>'outcome' IS NOT NULL GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    for outcome in ["promote", "abort", "continue"] {
        let n = outcomes.iter().find(|(s, _)| s == outcome).map_or(0, |(_, n)| *n);
        looks.with_label_values(&[outcome]).inc_by(n as u64);
    }
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves; a failed scrape answers 503
/// with the reason (Prometheus then records `up` = 0 for it).
pub async fn serve(
    pool: PgPool,
    listener: tokio::net::TcpListener,
    windows: OnlineWindows,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::response::IntoResponse;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move |axum::extract::State(pool): axum::extract::State<PgPool>| async move {
                match render(&pool, &windows).await {
                    Ok(text) => {
                        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "scrape failed");
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
                    }
                }
            }),
        )
        .route("/health", axum::routing::get(|| async { "ok" }))
        .with_state(pool);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
