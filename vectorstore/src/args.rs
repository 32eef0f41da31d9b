//! The store flags every command shares (`#[command(flatten)]`): one rule for where the vectors
//! are — a Qdrant server with `--qdrant-url`, else qdrant-edge in `--edge-dir` (default
//! `<state-dir>/qdrant-edge`). The API key is never echoed by `--help`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::{ClusterLayout, StoreError, VectorStore};

/// `--qdrant-url`, `--qdrant-api-key`, `--qdrant-timeout-secs`, `--qdrant-shards`,
/// `--qdrant-replication-factor`, `--qdrant-write-consistency`, `--edge-dir`.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Use a Qdrant server (gRPC URL, e.g. http://localhost:6334) instead of embedded
    /// qdrant-edge; the nodes of a cluster separated by commas (calls move to the next node when
    /// one is unreachable).
    #[arg(long, env = "QDRANT_URL", global = true)]
    pub qdrant_url: Option<String>,
    /// API key for the Qdrant server.
    #[arg(long, env = "QDRANT_API_KEY", global = true, hide_env_values = true)]
    pub qdrant_api_key: Option<String>,
    /// Timeout of each Qdrant server call, in seconds.
    #[arg(long, default_value_t = 30, global = true)]
    pub qdrant_timeout_secs: u64,
    /// Shards of each new collection on a Qdrant cluster.
    #[arg(long, env = "QDRANT_SHARDS", default_value_t = 1, global = true)]
    pub qdrant_shards: u32,
    /// Copies of each shard on a Qdrant cluster (reads survive one lost node with 2).
    #[arg(long, env = "QDRANT_REPLICATION_FACTOR", default_value_t = 1, global = true)]
    pub qdrant_replication_factor: u32,
    /// Copies that must acknowledge each write (at most the replication factor).
    #[arg(long, env = "QDRANT_WRITE_CONSISTENCY", default_value_t = 1, global = true)]
    pub qdrant_write_consistency: u32,
    /// qdrant-edge directory (default: <state-dir>/qdrant-edge).
    #[arg(long, env = "LAZYREC_EDGE_DIR", global = true)]
    pub edge_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The layout of new collections on a Qdrant cluster.
    pub fn layout(&self) -> ClusterLayout {
        ClusterLayout {
            shard_number: self.qdrant_shards,
            replication_factor: self.qdrant_replication_factor,
            write_consistency_factor: self.qdrant_write_consistency,
        }
    }

    /// Opens the configured store (qdrant-edge creates its directory when missing).
    pub fn open(&self, state_dir: &Path) -> Result<Arc<dyn VectorStore>, StoreError> {
        crate::open_with_layout(
            self.qdrant_url.as_deref(),
            self.qdrant_api_key.clone(),
            Duration::from_secs(self.qdrant_timeout_secs),
            self.edge_dir.as_deref(),
            state_dir,
            self.layout(),
        )
    }

    /// Opens the store only when there is one to read: a server URL, an `--edge-dir`, or an
    /// existing `<default_state_dir>/qdrant-edge` (`None` when no default is wanted). For
    /// commands whose vectors are optional (the evaluator's content vectors, the gate's).
    pub fn open_existing(&self, default_state_dir: Option<&Path>) -> Result<Option<Arc<dyn VectorStore>>, StoreError> {
        let default_dir = default_state_dir.map(|d| d.join("qdrant-edge")).filter(|d| d.exists());
        if self.qdrant_url.is_none() && self.edge_dir.is_none() && default_dir.is_none() {
            return Ok(None);
        }
        let dir = self.edge_dir.clone().or(default_dir);
        crate::open_with_layout(
            self.qdrant_url.as_deref(),
            self.qdrant_api_key.clone(),
            Duration::from_secs(self.qdrant_timeout_secs),
            dir.as_deref(),
            Path::new("."),
            self.layout(),
        )
        .map(Some)
    }
}
