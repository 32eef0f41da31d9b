//! lazyrec's data layer: the Postgres schema and migrations, the course event-log parser, the
//! exactly-once ingester, the catalog/user/MovieLens importers and the popularity table.
//!
//! This crate knows nothing of HTTP or gRPC; the server, embedder and load balancer build on it.

pub mod args;
pub mod cli;
pub mod copy;
pub mod event;
pub mod failover;
pub mod import;
pub mod ingest;
pub mod interactions;
pub mod kafka;
pub mod models;
pub mod parse;
pub mod pgcluster;
pub mod popularity;
pub mod provenance;
pub mod retention;
pub mod source;
pub mod synth;
pub mod testing;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// The embedded migrations (`db/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connection options from a one-host URL, with quiet statement logging (a URL listing several
/// hosts goes through [`failover::Hosts`], [`connect_pool`] or [`connect_one`]).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    Ok(opts
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// A pool that fails fast when the server is down (5 s) instead of the driver's 30 s default.
/// `url` may list several hosts (a primary and its standby, see [`failover`]): the pool goes to
/// the one its `target_session_attrs` asks for (the primary by default) and follows a failover.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgPoolOptions::new().max_connections(max_connections).acquire_timeout(Duration::from_secs(5));
    failover::connect_pool(options, failover::Hosts::parse(url)?).await
}

/// One connection to the host `url` asks for: its only host, or the first that fits its
/// `target_session_attrs` (the primary by default) when it lists several (see [`failover`]).
pub async fn connect_one(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    let hosts = failover::Hosts::parse(url)?;
    let i = if hosts.is_multi() { hosts.choose().await? } else { 0 };
    hosts.options(i).connect().await
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// No database was configured and no private cluster is running.
#[derive(Debug, thiserror::Error)]
#[error("no database: set DATABASE_URL or start the private cluster with `lazyrec-db up` (no {0})")]
pub struct NoDatabase(std::path::PathBuf);

/// The database URL: the explicit one (DATABASE_URL) if given, else the project's private
/// cluster recorded under `state_dir` (by `lazyrec-db up`): its primary and, when `up --standby`
/// made one, its hot standby, as a two-host URL (a fenced old primary is left out).
pub fn resolve_database_url(explicit: Option<&str>, state_dir: &std::path::Path) -> Result<String, NoDatabase> {
    if let Some(url) = explicit {
        return Ok(url.to_string());
    }
    let primary = state_dir.join("pg");
    let port = |dir: &std::path::Path| {
        std::fs::read_to_string(dir.join("port")).ok().and_then(|s| s.trim().parse::<u16>().ok())
    };
    let mut hosts = Vec::new();
    for dir in [primary.clone(), state_dir.join(pgcluster::STANDBY_DIR)] {
        if pgcluster::fenced(&dir).is_none()
            && let Some(port) = port(&dir)
        {
            hosts.push((dir, port));
        }
    }
    let Some((first, _)) = hosts.first() else { return Err(NoDatabase(primary.join("port"))) };
    let password = pgcluster::read_password(first).ok();
    let ports: Vec<u16> = hosts.iter().map(|(_, p)| *p).collect();
    Ok(pgcluster::multi_host_url(&ports, password.as_deref(), cli::DATABASE_NAME))
}

/// A URL with its credentials hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_string(),
    }
}
