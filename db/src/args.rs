//! The database flags every command shares (`#[command(flatten)]`), with one rule for finding
//! the database and one way to connect: `--database-url` / `DATABASE_URL` (never echoed by
//! `--help`), else the private cluster under `--state-dir` / `LAZYREC_STATE_DIR`.

use std::path::PathBuf;

use anyhow::Context as _;
use sqlx::PgPool;

/// `--database-url`, `--state-dir`.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL (else the private cluster under the state directory).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the private cluster (and the default qdrant-edge store) live.
    #[arg(long, env = "LAZYREC_STATE_DIR", default_value = ".state", global = true)]
    pub state_dir: PathBuf,
}

impl DatabaseArgs {
    /// The database's URL (given, or the private cluster's).
    pub fn url(&self) -> anyhow::Result<String> {
        Ok(crate::resolve_database_url(self.database_url.as_deref(), &self.state_dir)?)
    }

    /// A pool of at most `connections` (the error names the URL without its password).
    pub async fn pool(&self, connections: u32) -> anyhow::Result<PgPool> {
        let url = self.url()?;
        crate::connect_pool(&url, connections).await.with_context(|| format!("connecting to {}", crate::redact(&url)))
    }
}
