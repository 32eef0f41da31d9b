//! The lazyrec recommendation service: lazy retrieval + rerank over HTTP and gRPC.
//!
//! One [`core::Core`] (the request path, caches, metrics) with two thin adapters,
//! [`http`] (axum) and [`grpc`] (tonic). [`start`] binds both, runs a background refresher
//! (watermark, popularity list, live vector collection) and returns a handle that shuts
//! everything down gracefully.

pub mod admission;
pub mod config;
pub mod core;
pub mod data;
pub mod grpc;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lifecycle::stopped;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vectorstore::VectorStore;

use crate::config::Config;
use crate::core::Core;

/// Opens the configured vector store (edge directory or Qdrant server).
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn VectorStore>> {
    let store = &config.store;
    vectorstore::open(
        store.qdrant_url.as_deref(),
        store.qdrant_api_key.clone(),
        config.deadlines.request(),
        store.edge_dir.as_deref(),
        &config.state_dir,
    )
    .context("opening the vector store")
}

/// A running server.
pub struct RunningServer {
    /// Where HTTP listens.
    pub http_addr: SocketAddr,
    /// Where gRPC listens.
    pub grpc_addr: SocketAddr,
    /// The core (tests read metrics and readiness through it).
    pub core: Arc<Core>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer").field("http_addr", &self.http_addr).field("grpc_addr", &self.grpc_addr).finish()
    }
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish, and returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _sent = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after [`RunningServer::stop_handle`] fired or a task failed).
    pub async fn wait(self) -> anyhow::Result<()> {
        for task in self.tasks {
            task.await.context("server task panicked")??;
        }
        // Close the pool (a Terminate per connection, once late queries have returned theirs),
        // so Postgres does not count the sessions as abandoned; bounded, a shutdown never hangs.
        let _closed = tokio::time::timeout(Duration::from_secs(2), self.core.pool().close()).await;
        let _closed = tokio::time::timeout(Duration::from_secs(2), self.core.primary().close()).await;
        Ok(())
    }

    /// A handle that stops the server when sent `true`.
    pub fn stop_handle(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Validates `config`, binds HTTP and gRPC, and serves until shut down. Postgres and the vector
/// store are reached lazily: the server answers (degraded) even before they are up.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    let url = db::resolve_database_url(config.database_url.as_deref(), &config.state_dir)?;
    let hosts =
        db::failover::Hosts::parse(&url).with_context(|| format!("bad database URL {}", db::redact(&url)))?.map(|o| {
            o.application_name(&format!("lazyrec-server {}", config.variant.as_str()))
                .options([("statement_timeout", config.deadlines.statement_timeout_ms().to_string())])
        });
    // Queries run detached (see `core`): the request waits for its stage deadline only, the
    // pool may take longer to hand out or open a connection.
    let acquire = Duration::from_millis(config.deadlines.statement_timeout_ms());
    let options = || PgPoolOptions::new().acquire_timeout(acquire);
    let pools = if hosts.is_multi() {
        let reads = match config.database_reads {
            config::DatabaseReads::Standby => db::failover::Target::PreferStandby,
            config::DatabaseReads::Primary => db::failover::Target::ReadWrite,
        };
        core::Pools {
            reads: db::failover::lazy_pool(
                options().max_connections(config.database_connections),
                hosts.clone().with_target(reads),
            ),
            primary: db::failover::lazy_pool(
                options().max_connections(2),
                hosts.with_target(db::failover::Target::ReadWrite),
            ),
        }
    } else {
        let pool = db::failover::lazy_pool(options().max_connections(config.database_connections), hosts);
        core::Pools { reads: pool.clone(), primary: pool }
    };
    let store = open_store(&config)?;
    let metrics = metrics::Metrics::new(config.variant.as_str())?;
    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let refresh = Duration::from_millis(config.caches.refresh_ms);
    let core = Arc::new(Core::new(config, pools, store, metrics)?);
    core.refresh().await;
    core.register_model().await;
    // Before the listeners answer: the first request must not pay for a cold engine.
    core.warm(Duration::from_secs(10)).await;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    let refresher = {
        let core = core.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => core.refresh().await,
                    () = stopped(stop_rx.clone()) => return Ok(()),
                }
            }
        })
    };
    tasks.push(refresher);

    let app = http::router(core.clone());
    let http_stop = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        axum::serve(http_listener, app).with_graceful_shutdown(stopped(http_stop)).await.context("HTTP server")
    }));

    let router = proto::grpc_router(proto::recommender_v1::recommender_server::RecommenderServer::new(
        grpc::GrpcService::new(core.clone()),
    ))
    .await?;
    let grpc_stop = stop_rx.clone();
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    tasks.push(tokio::spawn(async move {
        router.serve_with_incoming_shutdown(incoming, stopped(grpc_stop)).await.context("gRPC server")
    }));
    tracing::info!(%http_addr, %grpc_addr, model_version = core.model_version(), variant = core.variant(), "serving");
    Ok(RunningServer { http_addr, grpc_addr, core, stop, tasks })
}
