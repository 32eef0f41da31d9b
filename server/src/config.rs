//! Typed, layered, validated configuration.
//!
//! Layers, later wins: built-in defaults → a TOML file (`--config`) → environment variables
//! `LAZYREC_SERVER_<KEY>` (nested keys joined by `__`, e.g. `LAZYREC_SERVER_DEADLINES__VECTOR_MS`)
//! → command-line flags. [`Config::validate`] rejects what cannot work, with one line per problem;
//! `lazyrec-server --check-config` prints the resolved configuration and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::admission::Limits;
use strategy::{Model, ModelSpec, Search};

pub use proto::contract::Variant;

/// Per-stage and whole-request deadlines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deadlines {
    /// The whole request (the course allows 600 ms end to end; the load balancer gives 500).
    pub request_ms: u64,
    /// Reading the user's history from Postgres.
    pub postgres_ms: u64,
    /// Fetching neighbour lists from the vector store.
    pub vector_ms: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self { request_ms: 300, postgres_ms: 100, vector_ms: 100 }
    }
}

impl Deadlines {
    /// Postgres stage.
    pub fn postgres(&self) -> Duration {
        Duration::from_millis(self.postgres_ms)
    }
    /// Vector stage.
    pub fn vector(&self) -> Duration {
        Duration::from_millis(self.vector_ms)
    }
    /// Whole request.
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
    /// Postgres' `statement_timeout` for the server's connections, and the pool's acquire
    /// timeout: how long a query that outlived its stage deadline (it runs detached) may go on —
    /// ten times the stage deadline, at least one second.
    pub fn statement_timeout_ms(&self) -> u64 {
        (self.postgres_ms * 10).max(1_000)
    }
}

/// Cache sizes and lifetimes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Caches {
    /// User histories kept (entries).
    pub user_histories: u64,
    /// How long a user history may be served without re-reading it (it is also dropped as soon
    /// as the ingest watermark moves).
    pub user_history_ttl_ms: u64,
    /// Neighbour lists kept (one per movie; the course catalog has ~27k movies).
    pub neighbour_lists: u64,
    /// An item-weights model's candidates kept (one per user and history watermark, ~5 KB
    /// each): a user asking again before new events arrive costs no store call.
    pub item_candidates: u64,
    /// How often the popularity list, the ingest watermark and the live collection are re-read.
    pub refresh_ms: u64,
}

impl Default for Caches {
    fn default() -> Self {
        Self {
            user_histories: 200_000,
            user_history_ttl_ms: 5_000,
            neighbour_lists: 50_000,
            item_candidates: 20_000,
            refresh_ms: 1_000,
        }
    }
}

/// Admission control per stage (see [`crate::admission`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admission {
    /// Postgres queries; capped at `database_connections` (more would queue inside the pool,
    /// where nothing bounds the wait).
    pub postgres: Limits,
    /// Vector-store lookups (neighbour lists missing from the cache).
    pub vector_store: Limits,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            postgres: Limits { max_in_flight: 16, max_queued: 32 },
            vector_store: Limits { max_in_flight: 8, max_queued: 64 },
        }
    }
}

/// Which host the request path reads from (see [`Config::database_reads`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseReads {
    /// A hot standby while one answers, else the primary.
    Standby,
    /// Always the primary.
    Primary,
}

/// Which vector store, as for the embedder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// A Qdrant server's gRPC URL; absent → embedded qdrant-edge.
    pub qdrant_url: Option<String>,
    /// Its API key.
    pub qdrant_api_key: Option<String>,
    /// qdrant-edge directory (default `<state_dir>/qdrant-edge`).
    pub edge_dir: Option<PathBuf>,
    /// Serve this collection instead of the store's live one (pins a release to its embeddings).
    pub collection: Option<String>,
    /// Neighbour lists by exhaustive search instead of the HNSW index. The index is stored with
    /// the collection, so the same collection gives the same answers either way; exact search
    /// also makes them independent of the index (~5 ms instead of ~1 ms per cold list at 27k).
    pub exact_search: bool,
    /// HNSW search breadth `ef` of neighbour searches (recall against exact search rises with
    /// it; `embed-bench recall` measures both: 256 on the default m = 32 × ef_construct = 400
    /// graph gives recall@50 ≈ 0.997 on the default catalog). Absent: the engine's default.
    pub search_ef: Option<usize>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            qdrant_url: None,
            qdrant_api_key: None,
            edge_dir: None,
            collection: None,
            exact_search: false,
            search_ef: Some(256),
        }
    }
}

/// The server's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// main or nightly: reported in `X-Variant`.
    pub variant: Variant,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Postgres URL; absent → the private cluster under `state_dir`. May list a primary and its
    /// hot standby (`postgres://u:p@h1:p1,h2:p2/db`, see `db::failover`).
    pub database_url: Option<String>,
    /// Postgres connections.
    pub database_connections: u32,
    /// Where the request path reads histories, popularity and the watermark when the URL lists
    /// a standby: `standby` (a hot standby while one answers, else the primary) or `primary`.
    /// Writes (the model registry) always go to the primary.
    pub database_reads: DatabaseReads,
    /// Project state (private Postgres, qdrant-edge).
    pub state_dir: PathBuf,
    /// The vector store.
    pub store: StoreConfig,
    /// The model: a registered strategy and its parameters.
    pub model: ModelSpec,
    /// Deadlines.
    pub deadlines: Deadlines,
    /// Caches.
    pub caches: Caches,
    /// Admission control: in-flight limits and queues per stage.
    pub admission: Admission,
    /// Movies per answer when the client does not say (the course wants 20).
    pub default_limit: usize,
    /// The most a client may ask for.
    pub max_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            variant: Variant::Main,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: None,
            database_connections: 16,
            database_reads: DatabaseReads::Standby,
            state_dir: PathBuf::from(".state"),
            store: StoreConfig::default(),
            model: ModelSpec::default(),
            deadlines: Deadlines::default(),
            caches: Caches::default(),
            admission: Admission::default(),
            default_limit: 20,
            max_limit: 100,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or has a wrong type / unknown key.
    #[error("configuration: {0}")]
    Load(String),
    /// Values that cannot work together.
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Defaults → `file` → `LAZYREC_SERVER_*` environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!("config file {} not found", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("LAZYREC_SERVER_").split("__"));
        let config: Config = figment.extract().map_err(|e| ConfigError::Load(e.to_string()))?;
        Ok(config)
    }

    /// Checks values and the model spec; lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let d = &self.deadlines;
        if d.request_ms == 0 || d.postgres_ms == 0 || d.vector_ms == 0 {
            problems.push("deadlines must be positive".to_string());
        }
        if d.postgres_ms + d.vector_ms >= d.request_ms {
            problems.push(format!(
                "deadlines.postgres_ms + deadlines.vector_ms ({}) must leave room within deadlines.request_ms ({})",
                d.postgres_ms + d.vector_ms,
                d.request_ms
            ));
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            problems
                .push(format!("default_limit ({}) must be in 1..=max_limit ({})", self.default_limit, self.max_limit));
        }
        if self.max_limit > 1_000 {
            problems.push(format!("max_limit ({}) must be at most 1000", self.max_limit));
        }
        if self.database_connections == 0 {
            problems.push("database_connections must be positive".into());
        }
        if self.http_addr == self.grpc_addr && self.http_addr.port() != 0 {
            problems.push(format!("http_addr and grpc_addr are both {}", self.http_addr));
        }
        for (name, limits) in [("postgres", &self.admission.postgres), ("vector_store", &self.admission.vector_store)] {
            if limits.max_in_flight == 0 {
                problems.push(format!("admission.{name}.max_in_flight must be positive"));
            }
        }
        if self.store.search_ef.is_some_and(|ef| !(1..=4_096).contains(&ef)) {
            problems.push(format!("store.search_ef must be in 1..=4096, got {:?}", self.store.search_ef));
        }
        if self.caches.refresh_ms == 0 {
            problems.push("caches.refresh_ms must be positive".into());
        }
        if let Err(e) = self.model() {
            problems.push(e.to_string());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The served model: the strategy and parameters of `[model]`, searched with `[store]`'s
    /// search parameters (both are part of the recorded model).
    pub fn model(&self) -> Result<Model, strategy::StrategyError> {
        Model::build(&self.model, Search { exact: self.store.exact_search, ef: self.store.search_ef })
    }

    /// The Postgres stage's limits as applied (in flight capped at the pool size).
    pub fn postgres_limits(&self) -> Limits {
        let l = self.admission.postgres;
        Limits { max_in_flight: l.max_in_flight.min(self.database_connections as usize), ..l }
    }

    /// The resolved configuration as TOML-ish JSON (secrets redacted), for `--check-config`.
    pub fn render(&self) -> String {
        let mut shown = self.clone();
        if let Some(url) = &shown.database_url {
            shown.database_url = Some(db::redact(url));
        }
        if shown.store.qdrant_api_key.is_some() {
            shown.store.qdrant_api_key = Some("<redacted>".into());
        }
        serde_json::to_string_pretty(&shown).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn the_shipped_example_holds_every_key_at_its_default() {
        // The crate's directory at run time (cargo sets it for tests): a build cache made in another
        // checkout keeps that checkout's path in `env!`.
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let path = std::path::Path::new(&dir).join("../docs/examples/server.toml");
        let example = Config::load(Some(&path)).expect("docs/examples/server.toml loads");
        example.validate().expect("docs/examples/server.toml is valid");
        assert_eq!(example, Config::default(), "docs/examples/server.toml drifted from the defaults");
    }
}
