//! lazyrec's data layer: the Postgres schema and migrations, the course event-log parser, the
//! exactly-once ingester, the catalog/user/MovieLens importers and the popularity table.
//!
//! This crate knows nothing of HTTP or gRPC; the server, embedder and load balancer build on it.

pub mod args;
pub mod cli;
pub mod copy;
pub mod event;
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

/// Connection options from a URL, with quiet statement logging.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    let opts: PgConnectOptions = url.parse()?;
    Ok(opts
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// A pool that fails fast when the server is down (5 s) instead of the driver's 30 s default.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect_options(url)?)
        .await
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
/// cluster recorded under `state_dir` (by `lazyrec-db up`).
pub fn resolve_database_url(explicit: Option<&str>, state_dir: &std::path::Path) -> Result<String, NoDatabase> {
    if let Some(url) = explicit {
        return Ok(url.to_string());
    }
    let dir = state_dir.join("pg");
    let port_file = dir.join("port");
    let port = std::fs::read_to_string(&port_file)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .ok_or(NoDatabase(port_file))?;
    let password = pgcluster::read_password(&dir).ok();
    Ok(pgcluster::url(port, password.as_deref(), cli::DATABASE_NAME))
}

/// A URL with its credentials hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_string(),
    }
}
