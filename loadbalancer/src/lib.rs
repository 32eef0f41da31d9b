//! The :8082 front door: sticky main/nightly routing, failover, fallback, the response log and
//! the admin API.
//!
//! One [`core::Lb`] (routing table, backend client, response log, metrics) with thin fronts:
//! [`http`] (the course contract), [`grpc`] (`recommender.v1`, with health and reflection),
//! [`admin`] (own port, bearer token). [`start`] binds them, runs the [`health`] checker, the
//! [`fallback`]-list refresher and the [`history`] shipper (on a thread of its own), and returns a handle whose
//! [`RunningLb::shutdown`] stops the fronts, waits for in-flight requests, then ships what the
//! [`journal`] holds.

pub mod admin;
pub mod assign;
pub mod backend;
pub mod config;
pub mod core;
pub mod fallback;
pub mod fleet;
pub mod grpc;
pub mod health;
pub mod history;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod overload;
pub mod routing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use lifecycle::stopped;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::core::Lb;
use crate::fallback::FallbackList;

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
    stop_shipper: watch::Sender<bool>,
    fronts: Vec<JoinHandle<anyhow::Result<()>>>,
    background: Vec<JoinHandle<()>>,
    shipper: ShipperThread,
}

/// The [`history::Shipper`] on a thread and runtime of its own, with its own connections (a
/// sqlx connection belongs to the runtime that opened it): encoding and `COPY` never take time
/// from the request path's thread (`worker_threads = 1` runs the fronts on one thread).
struct ShipperThread {
    thread: std::thread::JoinHandle<()>,
}

impl ShipperThread {
    /// Connections of the shipper's own pool: one transaction at a time, one spare for the
    /// partition check.
    const CONNECTIONS: u32 = 2;

    fn spawn(
        hosts: db::failover::Hosts,
        journal: Arc<journal::Journal>,
        metrics: metrics::Metrics,
        options: history::ShipperOptions,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the response-log shipper's runtime")?;
        let thread = std::thread::Builder::new()
            .name("lb-shipper".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let pool = db::failover::lazy_pool(
                        PgPoolOptions::new().max_connections(Self::CONNECTIONS).acquire_timeout(Duration::from_secs(1)),
                        hosts,
                    );
                    history::Shipper::new(pool.clone(), journal, metrics, options).run(stop).await;
                    let _closed = tokio::time::timeout(Duration::from_secs(2), pool.close()).await;
                });
            })
            .context("starting the response-log shipper's thread")?;
        Ok(Self { thread })
    }

    /// Waits for the shipper to drain and stop (after its stop signal).
    async fn join(self) -> anyhow::Result<()> {
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(anyhow::anyhow!("response-log shipper panicked")),
            Err(e) => Err(anyhow::anyhow!("waiting for the response-log shipper: {e}")),
        }
    }
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

    /// Stops accepting, finishes in-flight requests, ships the journal, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _sent = self.stop_fronts.send(true);
        self.wait().await
    }

    /// Waits until the fronts stop (see [`RunningLb::stop_handle`]), then ships the journal.
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
        // Every request has been answered and journaled: the shipper can drain and stop.
        let _sent = self.stop_shipper.send(true);
        self.shipper.join().await?;
        // Say goodbye to Postgres (a Terminate per connection), so it does not count the
        // sessions as abandoned; bounded, a shutdown never hangs on it.
        let _closed = tokio::time::timeout(std::time::Duration::from_secs(2), self.lb.pool.close()).await;
        let m = &self.lb.metrics;
        tracing::info!(
            written = m.history_written.get(),
            deferred = m.history_deferred.get(),
            dropped = m.history_dropped.get(),
            pending = self.lb.history.queued(),
            "load balancer stopped"
        );
        result
    }
}

/// The most replicas sharing a state directory's default journal slots.
pub const JOURNAL_SLOTS: usize = 8;

/// The journal slots of the default layout: `journal`, `journal-2`, … under
/// `<state_dir>/loadbalancer` (what `prune` checks for a backlog).
pub fn journal_slots(state_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let base = state_dir.join("loadbalancer");
    (1..=JOURNAL_SLOTS).map(|n| if n == 1 { base.join("journal") } else { base.join(format!("journal-{n}")) }).collect()
}

/// Opens the configured journal, or a free default slot (each replica its own): one that holds
/// unshipped rows if any (a killed replica's), else the first.
fn open_journal(config: &Config) -> anyhow::Result<(Arc<journal::Journal>, std::path::PathBuf)> {
    let h = &config.history;
    let open = |dir: &std::path::Path| {
        journal::Journal::open(dir, h.journal_max_bytes, h.fsync, Duration::from_millis(h.fsync_interval_ms))
    };
    if let Some(dir) = &h.journal_dir {
        return Ok((open(dir)?, dir.clone()));
    }
    // Slots holding unshipped rows first (a replica killed there: its rows ship now), then the
    // first free one.
    let slots = journal_slots(&config.state_dir);
    let (behind, rest): (Vec<_>, Vec<_>) =
        slots.into_iter().partition(|dir| matches!(journal::backlog(dir), Ok(Some(_))));
    for dir in behind.into_iter().chain(rest) {
        match open(&dir) {
            Ok(journal) => return Ok((journal, dir)),
            Err(journal::JournalError::Locked(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!(
        "all {JOURNAL_SLOTS} journal slots under {} are taken by running load balancers",
        config.state_dir.join("loadbalancer").display()
    )
}

/// Binds `addr`, with `SO_REUSEPORT` when `reuse_port` (another replica may serve the port).
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Warns when connections queued on a stopping replica's listener would be reset instead of
/// handed to the other replica (Linux `net.ipv4.tcp_migrate_req`).
fn check_migrate_req() {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        && v.trim() == "0"
    {
        tracing::warn!(
            "net.ipv4.tcp_migrate_req = 0: when a replica stops, connections still queued on its listener are \
             reset instead of handed to the other replica (sysctl -w net.ipv4.tcp_migrate_req=1)"
        );
    }
}

/// Validates `config`, binds the fronts, and serves until shut down. Postgres is reached
/// lazily: without it the load balancer still routes (its last routing), and its log waits in
/// the journal.
pub async fn start(mut config: Config) -> anyhow::Result<RunningLb> {
    config.validate()?;
    let url = db::resolve_database_url(config.database_url.as_deref(), &config.state_dir)?;
    // A two-host URL (primary, standby) is followed through a failover: the journal holds the
    // log while no host accepts writes, and ships it to the promoted standby.
    let hosts = db::failover::Hosts::parse(&url)
        .with_context(|| format!("bad database URL {}", db::redact(&url)))?
        .with_target(db::failover::Target::ReadWrite);
    let pool = db::failover::lazy_pool(
        PgPoolOptions::new().max_connections(config.database_connections).acquire_timeout(Duration::from_secs(1)),
        hosts.clone(),
    );
    let (journal, journal_dir) = open_journal(&config)?;
    // From here on every path under the journal directory (routing and fallback files) is this
    // replica's slot.
    config.history.journal_dir = Some(journal_dir.clone());
    let h = &config.history;
    if journal.pending_rows() > 0 {
        tracing::info!(dir = %journal_dir.display(), rows = journal.pending_rows(), bytes = journal.pending_bytes(),
            "journaled response-log rows from an earlier run will be stored");
    }
    let metrics = metrics::Metrics::new()?;
    let (table, seeded) = fleet::initial(&pool, &config, Duration::from_secs(3)).await;
    metrics.routing_version.set(table.version);
    let routing = Arc::new(ArcSwap::from_pointee(table));
    let (stop_shipper, shipper_rx) = watch::channel(false);
    let options = history::ShipperOptions {
        batch_rows: h.batch_rows,
        flush: Duration::from_millis(h.flush_ms),
        retry: Duration::from_millis(h.retry_ms),
        insert_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_millis(h.drain_timeout_ms),
    };
    let log = history::HistoryLog::new(journal.clone(), metrics.clone());
    let fallback = FallbackList::load(config.fallback_file());

    let reuse = config.front.reuse_port;
    if reuse {
        check_migrate_req();
    }
    let http_listener =
        bind(config.http_addr, reuse).with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let grpc_listener =
        bind(config.grpc_addr, reuse).with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let admin_listener = match &config.admin_token {
        Some(_) => Some(
            bind(config.admin_addr, reuse)
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

    // Listeners are bound: from here on the process serves, and ships.
    let shipper = ShipperThread::spawn(hosts, journal, metrics.clone(), options, shipper_rx)?;
    let lb = Arc::new(Lb::new(config.clone(), routing, metrics, log, pool, fallback));
    if seeded {
        fleet::mark_seeded(&lb).await;
    }
    health::check_all(&lb, true).await;
    lb.fallback.refresh(&lb.pool, lb.config.max_limit).await;

    let background = vec![
        every(Duration::from_millis(config.health.interval_ms), lb.clone(), |lb| async move {
            health::check_all(&lb, false).await
        }),
        every(Duration::from_millis(config.fallback_refresh_ms), lb.clone(), |lb| async move {
            lb.fallback.refresh(&lb.pool, lb.config.max_limit).await
        }),
    ];

    let (stop_fronts, stop_rx) = watch::channel(false);
    let mut background = background;
    background.push(tokio::spawn(fleet::follow(lb.clone(), stop_rx.clone())));
    let mut fronts = Vec::new();
    let rx = stop_rx.clone();
    let (limits, metrics, front_lb) = (config.front.clone(), lb.metrics.clone(), lb.clone());
    fronts.push(tokio::spawn(async move {
        http::serve(http_listener, front_lb, limits, metrics, rx).await;
        Ok(())
    }));

    let router = proto::grpc_router(proto::recommender_v1::recommender_server::RecommenderServer::new(
        grpc::GrpcFront::new(lb.clone()),
    ))
    .await?;
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let rx = stop_rx.clone();
    fronts.push(tokio::spawn(async move {
        router.serve_with_incoming_shutdown(incoming, stopped(rx)).await.context("gRPC front")
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
    Ok(RunningLb { http_addr, grpc_addr, admin_addr, lb, stop_fronts, stop_shipper, fronts, background, shipper })
}
