//! The :8082 front door: sticky main/nightly routing, failover, fallback, the response log and
//! the admin API.
//!
//! One [`core::Lb`] (routing table, backend client, response log, metrics) with thin fronts:
//! [`http`] (the course contract), [`grpc`] (`recommender.v1`), [`admin`] (own port, bearer
//! token). [`start`] binds them, runs the health checker, the fallback-list refresher and the
//! [`history`] writer, and returns a handle whose [`RunningLb::shutdown`] stops the fronts,
//! waits for in-flight requests, then drains the response log.

pub mod admin;
pub mod assign;
pub mod config;
pub mod core;
pub mod grpc;
pub mod history;
pub mod http;
pub mod metrics;
pub mod routing;
pub mod spool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use db::cli::stopped;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::core::{Fallback, Lb};
use crate::routing::{Routing, RoutingSpec};

/// The routing the configuration describes.
pub fn configured_spec(config: &Config) -> RoutingSpec {
    let clean = |list: &[String]| list.iter().map(|u| u.trim_end_matches('/').to_string()).collect();
    RoutingSpec {
        experiment: config.experiment.clone(),
        share: config.share(),
        main: clean(&config.main),
        nightly: clean(&config.nightly),
        drained: Vec::new(),
        main_release_id: config.main_release_id,
        nightly_release_id: config.nightly_release_id,
    }
}

/// Writes the routing file (atomically: temp file, fsync, rename).
pub fn save_routing(config: &Config, spec: &RoutingSpec) -> anyhow::Result<()> {
    let file =
        admin::RoutingFile { config_fingerprint: admin::fingerprint(&configured_spec(config)), spec: spec.clone() };
    let path = config.routing_file();
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&file)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The routing to start with: the routing file's when it was made on the same configuration,
/// else the configuration's.
pub fn initial_spec(config: &Config) -> RoutingSpec {
    let configured = configured_spec(config);
    let path = config.routing_file();
    let Ok(body) = std::fs::read(&path) else { return configured };
    match serde_json::from_slice::<admin::RoutingFile>(&body) {
        Ok(file) if file.config_fingerprint == admin::fingerprint(&configured) => {
            tracing::info!(file = %path.display(), experiment = %file.spec.experiment, share = file.spec.share,
                "routing: admin changes from the routing file");
            file.spec
        }
        Ok(_) => {
            tracing::warn!(file = %path.display(), "routing: the configuration changed since the last admin change; using the configuration");
            configured
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "routing file unreadable; using the configuration");
            configured
        }
    }
}

fn fallback_file(config: &Config) -> std::path::PathBuf {
    config.spool_dir().join("fallback.json")
}

/// Reads the popularity list from Postgres and keeps a copy on disk (so a restart while
/// Postgres is down still has a fallback list).
async fn refresh_fallback(lb: &Lb) {
    let limit = lb.config.max_limit as i64;
    match tokio::time::timeout(Duration::from_secs(2), db::popularity::current(&lb.pool, limit)).await {
        Ok(Ok((movies, watermark))) if !movies.is_empty() => {
            let fallback = Fallback { movies, watermark };
            if let Ok(body) = serde_json::to_vec(&fallback) {
                let _ignored = std::fs::write(fallback_file(&lb.config), body);
            }
            lb.set_fallback(fallback);
        }
        Ok(Ok(_)) => tracing::debug!("no popularity list yet"),
        Ok(Err(e)) => tracing::debug!(error = %e, "fallback list not refreshed"),
        Err(_) => tracing::debug!("fallback list not refreshed: Postgres too slow"),
    }
}

/// Runs `work` every `period` (first after one period), until aborted.
fn every<F, Fut>(period: Duration, lb: Arc<Lb>, work: F) -> JoinHandle<()>
where
    F: Fn(Arc<Lb>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            work(lb.clone()).await;
        }
    })
}

/// A running load balancer.
pub struct RunningLb {
    /// The HTTP front.
    pub http_addr: SocketAddr,
    /// The gRPC front.
    pub grpc_addr: SocketAddr,
    /// The admin API (None when no token is configured).
    pub admin_addr: Option<SocketAddr>,
    /// The shared state.
    pub lb: Arc<Lb>,
    stop_fronts: watch::Sender<bool>,
    stop_writer: watch::Sender<bool>,
    fronts: Vec<JoinHandle<anyhow::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for RunningLb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningLb").field("http_addr", &self.http_addr).finish()
    }
}

impl RunningLb {
    /// A handle that starts the graceful shutdown when sent `true`.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop_fronts.clone()
    }

    /// Stops accepting, finishes in-flight requests, drains the response log, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _sent = self.stop_fronts.send(true);
        self.wait().await
    }

    /// Waits until the fronts stop (see [`RunningLb::stop_handle`]), then drains the response log.
    pub async fn wait(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        for front in self.fronts {
            match front.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(anyhow::anyhow!("front task panicked: {e}")),
            }
        }
        for task in &self.background {
            task.abort();
        }
        // Every request has been answered and logged: the writer can drain and stop.
        let _sent = self.stop_writer.send(true);
        self.writer.await.context("response-log writer panicked")?;
        let m = &self.lb.metrics;
        tracing::info!(
            written = m.history_written.get(),
            spooled = m.history_spooled.get(),
            dropped = m.history_dropped.get(),
            spool_bytes = m.history_spool_bytes.get(),
            "load balancer stopped"
        );
        result
    }
}

/// Validates `config`, binds the fronts, and serves until shut down. Postgres is reached
/// lazily: without it the load balancer still routes and spools its log.
pub async fn start(config: Config) -> anyhow::Result<RunningLb> {
    config.validate()?;
    let url = db::resolve_database_url(config.database_url.as_deref(), &config.state_dir)?;
    let pool = PgPoolOptions::new()
        .max_connections(config.database_connections)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(
            db::connect_options(&url).with_context(|| format!("bad database URL {}", db::cli::redact(&url)))?,
        );
    let spool_dir = config.spool_dir();
    let spool = spool::Spool::open(&spool_dir, config.history.spool_max_bytes)?;
    if !spool.is_empty() {
        tracing::info!(dir = %spool_dir.display(), bytes = spool.bytes(), "spooled response-log rows from an earlier run will be stored");
    }
    let metrics = metrics::Metrics::new()?;
    let routing = Arc::new(ArcSwap::from_pointee(Routing::build(&initial_spec(&config), None)));
    let (stop_writer, writer_rx) = watch::channel(false);
    let h = &config.history;
    let options = history::WriterOptions {
        batch_rows: h.batch_rows,
        flush: Duration::from_millis(h.flush_ms),
        queue_rows: h.queue_rows,
        retry: Duration::from_millis(h.retry_ms),
        insert_timeout: Duration::from_secs(5),
    };
    let (log, writer) = history::start(pool.clone(), spool, metrics.clone(), options, writer_rx);
    let saved_fallback = std::fs::read(fallback_file(&config))
        .ok()
        .and_then(|b| serde_json::from_slice::<Fallback>(&b).ok())
        .unwrap_or_default();

    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let admin_listener = match &config.admin_token {
        Some(_) => Some(
            tokio::net::TcpListener::bind(config.admin_addr)
                .await
                .with_context(|| format!("binding the admin API on {}", config.admin_addr))?,
        ),
        None => {
            tracing::info!("admin API disabled (no admin_token configured)");
            None
        }
    };
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.as_ref().map(|l| l.local_addr()).transpose()?;

    let lb = Arc::new(Lb::new(config.clone(), routing, metrics, log, pool, saved_fallback));
    lb.check_all(true).await;
    refresh_fallback(&lb).await;

    let background =
        vec![
            every(Duration::from_millis(config.health.interval_ms), lb.clone(), |lb| async move {
                lb.check_all(false).await
            }),
            every(Duration::from_millis(config.fallback_refresh_ms), lb.clone(), |lb| async move {
                refresh_fallback(&lb).await
            }),
        ];

    let (stop_fronts, stop_rx) = watch::channel(false);
    let mut fronts = Vec::new();
    let app = http::router(lb.clone());
    let rx = stop_rx.clone();
    let http_listener = {
        use axum::serve::ListenerExt;
        http_listener.tap_io(|tcp| {
            let _ignored = tcp.set_nodelay(true);
        })
    };
    fronts.push(tokio::spawn(async move {
        axum::serve(http_listener, app).with_graceful_shutdown(stopped(rx)).await.context("HTTP front")
    }));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::recommender_v1::recommender_server::RecommenderServer<grpc::GrpcFront>>()
        .await;
    let service = proto::recommender_v1::recommender_server::RecommenderServer::new(grpc::GrpcFront::new(lb.clone()));
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let rx = stop_rx.clone();
    fronts.push(tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stopped(rx))
            .await
            .context("gRPC front")
    }));

    if let (Some(listener), Some(token)) = (admin_listener, config.admin_token.clone()) {
        let app = admin::router(lb.clone(), token);
        let rx = stop_rx.clone();
        fronts.push(tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stopped(rx)).await.context("admin API")
        }));
    }
    let routing = lb.routing.load();
    tracing::info!(%http_addr, %grpc_addr, admin = ?admin_addr, experiment = %routing.experiment,
        share = routing.effective_share(), main = routing.main.len(), nightly = routing.nightly.len(), "load balancer serving");
    drop(routing);
    Ok(RunningLb { http_addr, grpc_addr, admin_addr, lb, stop_fronts, stop_writer, fronts, background, writer })
}
