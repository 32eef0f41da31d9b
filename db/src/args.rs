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

/// The same two flags for commands that also read a config file (the server, the load
/// balancer): a flag or its environment variable overrides the file, an absent one keeps it.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseOverrides {
    /// Postgres URL (default: the config file's, else the private cluster under the state directory).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Project state directory (default: the config file's, else `.state`).
    #[arg(long, env = "LAZYREC_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
}

impl DatabaseOverrides {
    /// Writes the given flags over a config's values.
    pub fn apply(&self, database_url: &mut Option<String>, state_dir: &mut PathBuf) {
        if let Some(u) = &self.database_url {
            *database_url = Some(u.clone());
        }
        if let Some(d) = &self.state_dir {
            *state_dir = d.clone();
        }
    }
}
