//! Typed, layered, validated configuration.
//!
//! Layers, later wins: built-in defaults → a TOML file (`--config`) → environment variables
//! `LAZYREC_LB_<KEY>` (nested keys joined by `__`, e.g. `LAZYREC_LB_HEALTH__FALL`) → flags.
//! [`Config::validate`] lists every problem, one line each; `lazyrec-lb --check-config` prints
//! the resolved configuration (token redacted) and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::journal::FsyncPolicy;

/// Health checking of backends (`GET /ready`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Time between checks of one backend.
    pub interval_ms: u64,
    /// A check slower than this fails.
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub rise: u32,
    /// Consecutive failures (checks or forwarded requests) that make a healthy backend unhealthy.
    pub fall: u32,
}

impl Default for Health {
    fn default() -> Self {
        Self { interval_ms: 1_000, timeout_ms: 300, rise: 2, fall: 3 }
    }
}

/// The response log (`recommendations_history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct History {
    /// Rows per insert.
    pub batch_rows: usize,
    /// The longest a journaled row waits before its (partial) batch is shipped to Postgres.
    pub flush_ms: u64,
    /// The write-ahead journal every row reaches before its response is sent. One load balancer
    /// per directory (it is locked); the routing cache and the fallback list live there too.
    /// Default: a free slot of `<state_dir>/loadbalancer/journal`, `journal-2`, … `journal-8` —
    /// each replica its own; a free slot still holding rows (a killed replica's) is taken
    /// first, so they ship. Set, it is that directory or an error when it is taken.
    #[serde(alias = "spool_dir")]
    pub journal_dir: Option<PathBuf>,
    /// Unshipped journal bytes allowed; beyond them rows are dropped and counted.
    #[serde(alias = "spool_max_bytes")]
    pub journal_max_bytes: u64,
    /// When journaled rows are forced to disk: `always` (the response waits for a group-commit
    /// fsync: survives power loss), `interval` (a background fsync every `fsync_interval_ms`:
    /// a process crash loses nothing, a power loss at most the interval), `never`.
    pub fsync: FsyncPolicy,
    /// The background fsync period of `fsync = "interval"`.
    pub fsync_interval_ms: u64,
    /// Wait before shipping again after Postgres failed.
    pub retry_ms: u64,
    /// The longest the final shipment at shutdown may take (the rest stays journaled).
    pub drain_timeout_ms: u64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            batch_rows: 500,
            flush_ms: 50,
            journal_dir: None,
            journal_max_bytes: 1 << 30,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 200,
            retry_ms: 1_000,
            drain_timeout_ms: 10_000,
        }
    }
}

/// Behaviour under overload: never a retry storm, never an unbounded pile on one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Overload {
    /// Attempts running on one backend at once (attempts still finishing after their request
    /// gave up included). A backend at its limit is passed over like an unhealthy one; when
    /// every backend is, the fallback list answers at once.
    pub backend_max_in_flight: usize,
    /// Retries (attempts after a request's first) allowed as a share of requests: every request
    /// adds this much to the retry budget, every retry takes one.
    pub retry_ratio: f64,
    /// Retries allowed per second on top of the ratio, so a quiet load balancer still fails over.
    pub retry_min_per_second: f64,
}

impl Default for Overload {
    fn default() -> Self {
        Self { backend_max_in_flight: 64, retry_ratio: 0.1, retry_min_per_second: 10.0 }
    }
}

/// Limits of the public HTTP port: a client cannot hold connections open without sending
/// (slowloris), nor open more than the load balancer can serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Front {
    /// Connections open at once on the HTTP port; beyond them a new connection is closed at
    /// once and counted (`lazyrec_lb_connections_refused_total`). Keep it under the process'
    /// open-files limit (`ulimit -n`).
    pub max_connections: usize,
    /// A client must send a request's headers within this, counted from the connection (or the
    /// previous response) on: idle and trickling connections are closed after it.
    pub header_read_timeout_ms: u64,
    /// Bind the HTTP, gRPC and admin ports with `SO_REUSEPORT`, so a second replica can serve
    /// the same ports: the zero-downtime restart starts the new process, then stops the old one.
    /// (With `net.ipv4.tcp_migrate_req = 1` the kernel hands connections still queued on the old
    /// listener to the new one; without it they are reset — the load balancer warns at start.)
    pub reuse_port: bool,
    /// At shutdown, after the listener closes: for this long open keep-alive connections are
    /// still served, each response saying `Connection: close`, so clients move to the other
    /// replica between requests instead of finding their connection gone; then what is still
    /// open is closed once idle.
    pub drain_ms: u64,
}

impl Default for Front {
    fn default() -> Self {
        Self { max_connections: 4_096, header_read_timeout_ms: 10_000, reuse_port: true, drain_ms: 1_000 }
    }
}

/// The routing shared by every replica of a fleet (the `lb_routing` row in Postgres).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shared {
    /// The fleet: replicas with the same name (on one database) share one routing.
    pub fleet: String,
    /// How often a replica re-reads the routing (besides the notification every change sends),
    /// so a lost notification delays a change by at most this.
    pub poll_ms: u64,
    /// At start, write the configured routing as a new version even when the stored one was
    /// made on the same configuration (`lazyrec-lb --reset-routing`): admin changes are dropped.
    pub reset: bool,
}

impl Default for Shared {
    fn default() -> Self {
        Self { fleet: "default".into(), poll_ms: 1_000, reset: false }
    }
}

/// The load balancer's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP front (the course contract).
    pub http_addr: SocketAddr,
    /// gRPC front (`recommender.v1.Recommender`).
    pub grpc_addr: SocketAddr,
    /// Admin API (only served when `admin_token` is set).
    pub admin_addr: SocketAddr,
    /// Bearer token of the admin API; absent → admin API disabled.
    pub admin_token: Option<String>,
    /// Base URLs of the `main` servers (`http://host:port`).
    pub main: Vec<String>,
    /// Base URLs of the `nightly` servers.
    pub nightly: Vec<String>,
    /// Share of users on nightly; default 0.2 when nightly has backends, else 0.
    pub nightly_share: Option<f64>,
    /// The experiment: its name is the assignment salt. A new release gets a new one.
    pub experiment: String,
    /// `releases.release_id` of what `main` / `nightly` serve, recorded with every response.
    pub main_release_id: Option<i64>,
    /// See `main_release_id`.
    pub nightly_release_id: Option<i64>,
    /// The whole request, failovers included (the course allows 600 ms end to end).
    pub deadline_ms: u64,
    /// One attempt on one backend; the last attempt gets whatever is left of the deadline.
    pub attempt_timeout_ms: u64,
    /// Postgres URL; absent → the private cluster under `state_dir`.
    pub database_url: Option<String>,
    /// Postgres connections (fallback list, routing, admin records; the response-log shipper
    /// has two of its own).
    pub database_connections: u32,
    /// Project state (private Postgres, the spool, admin changes).
    pub state_dir: PathBuf,
    /// How often the fallback (popularity) list is re-read.
    pub fallback_refresh_ms: u64,
    /// Movies per answer when the client does not say.
    pub default_limit: usize,
    /// The most a client may ask for.
    pub max_limit: usize,
    /// Runtime worker threads: 1 (the default) runs the load balancer on one thread, which
    /// avoids cross-thread wake-ups and leaves the other cores to the servers and Postgres;
    /// 0 means one per core.
    pub worker_threads: usize,
    /// Backend health checks.
    pub health: Health,
    /// The response log.
    pub history: History,
    /// Retry budget and per-backend concurrency limit.
    pub overload: Overload,
    /// Connection limits of the public HTTP port, port sharing and draining.
    pub front: Front,
    /// The routing shared with the fleet's other replicas.
    pub routing: Shared,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8082)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 8083)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8084)),
            admin_token: None,
            main: vec!["http://127.0.0.1:8080".into()],
            nightly: Vec::new(),
            nightly_share: None,
            experiment: "default".into(),
            main_release_id: None,
            nightly_release_id: None,
            deadline_ms: 500,
            attempt_timeout_ms: 250,
            database_url: None,
            database_connections: 4,
            state_dir: PathBuf::from(".state"),
            fallback_refresh_ms: 5_000,
            default_limit: 20,
            max_limit: 100,
            worker_threads: 1,
            health: Health::default(),
            history: History::default(),
            overload: Overload::default(),
            front: Front::default(),
            routing: Shared::default(),
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

/// Checks a backend base URL: `http://host:port` with nothing after the port.
pub fn check_backend_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("backend {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("backend {url:?}: expected http://host:port"));
    }
    if uri.authority().and_then(|a| a.port_u16()).is_none() {
        return Err(format!("backend {url:?}: missing port"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("backend {url:?}: expected no path"));
    }
    Ok(())
}

impl Config {
    /// Defaults → `file` → `LAZYREC_LB_*` environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Load(format!("config file {} not found", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("LAZYREC_LB_").split("__"));
        figment.extract().map_err(|e| ConfigError::Load(e.to_string()))
    }

    /// The nightly share in effect.
    pub fn share(&self) -> f64 {
        self.nightly_share.unwrap_or(if self.nightly.is_empty() { 0.0 } else { 0.2 })
    }

    /// The journal directory in effect (after [`crate::start`], the slot this replica took).
    pub fn journal_dir(&self) -> PathBuf {
        self.history.journal_dir.clone().unwrap_or_else(|| self.state_dir.join("loadbalancer").join("journal"))
    }

    /// Where admin changes are kept across restarts.
    pub fn routing_file(&self) -> PathBuf {
        self.journal_dir().join("routing.json")
    }

    /// Where the last fallback list is kept (for a restart while Postgres is down).
    pub fn fallback_file(&self) -> PathBuf {
        self.journal_dir().join("fallback.json")
    }

    /// The request deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// Checks values; lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.main.is_empty() && self.nightly.is_empty() {
            problems.push("no backends: set main (and optionally nightly) to server URLs".to_string());
        }
        for url in self.main.iter().chain(&self.nightly) {
            if let Err(e) = check_backend_url(url) {
                problems.push(e);
            }
        }
        if self.front.max_connections == 0 {
            problems.push("front.max_connections must be at least 1".to_string());
        }
        if self.front.header_read_timeout_ms < 100 {
            problems.push(format!(
                "front.header_read_timeout_ms = {} is too short for any client (at least 100)",
                self.front.header_read_timeout_ms
            ));
        }
        let share = self.share();
        if !(0.0..=1.0).contains(&share) || share.is_nan() {
            problems.push(format!("nightly_share ({share}) must be within 0..=1"));
        }
        if self.experiment.trim().is_empty() {
            problems.push("experiment must not be empty (it is the assignment salt)".into());
        }
        if self.deadline_ms == 0 || self.attempt_timeout_ms == 0 {
            problems.push("deadline_ms and attempt_timeout_ms must be positive".into());
        }
        if self.attempt_timeout_ms > self.deadline_ms {
            problems.push(format!(
                "attempt_timeout_ms ({}) must not exceed deadline_ms ({})",
                self.attempt_timeout_ms, self.deadline_ms
            ));
        }
        if let Some(token) = &self.admin_token
            && token.len() < 16
        {
            problems.push("admin_token must be at least 16 characters".into());
        }
        let addrs = [self.http_addr, self.grpc_addr, self.admin_addr];
        for (i, a) in addrs.iter().enumerate() {
            if a.port() != 0 && addrs[..i].contains(a) {
                problems.push(format!("two listeners on {a}"));
            }
        }
        let h = &self.health;
        if h.interval_ms == 0 || h.timeout_ms == 0 || h.rise == 0 || h.fall == 0 {
            problems.push("health.interval_ms, timeout_ms, rise and fall must be positive".into());
        }
        let q = &self.history;
        if q.batch_rows == 0 || q.flush_ms == 0 || q.retry_ms == 0 || q.fsync_interval_ms == 0 {
            problems.push("history.batch_rows, flush_ms, retry_ms and fsync_interval_ms must be positive".into());
        }
        if q.journal_max_bytes < 1 << 20 {
            problems.push("history.journal_max_bytes must be at least 1 MiB".into());
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            problems
                .push(format!("default_limit ({}) must be in 1..=max_limit ({})", self.default_limit, self.max_limit));
        }
        if self.database_connections < 2 {
            problems.push("database_connections must be at least 2".into());
        }
        let o = &self.overload;
        if o.backend_max_in_flight == 0 {
            problems.push("overload.backend_max_in_flight must be positive".into());
        }
        if !(0.0..=1.0).contains(&o.retry_ratio) {
            problems.push(format!("overload.retry_ratio ({}) must be within 0..=1", o.retry_ratio));
        }
        if !(o.retry_min_per_second >= 0.0 && o.retry_min_per_second.is_finite()) {
            problems.push(format!("overload.retry_min_per_second ({}) must be ≥ 0", o.retry_min_per_second));
        }
        if self.routing.fleet.trim().is_empty() || self.routing.poll_ms == 0 {
            problems.push("routing.fleet must not be empty and routing.poll_ms must be positive".into());
        }
        if self.front.drain_ms > 60_000 {
            problems.push(format!("front.drain_ms = {} is longer than a minute", self.front.drain_ms));
        }
        if self.fallback_refresh_ms == 0 {
            problems.push("fallback_refresh_ms must be positive".into());
        }
        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(problems)) }
    }

    /// The resolved configuration as JSON with secrets redacted, for `--check-config`.
    pub fn render(&self) -> String {
        let mut shown = self.clone();
        if let Some(url) = &shown.database_url {
            shown.database_url = Some(db::redact(url));
        }
        if shown.admin_token.is_some() {
            shown.admin_token = Some("<redacted>".into());
        }
        serde_json::to_string_pretty(&shown).unwrap_or_else(|e| format!("<unprintable: {e}>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_listed_one_per_problem() {
        let config = Config {
            main: vec!["localhost:8080".into(), "http://127.0.0.1".into()],
            nightly_share: Some(1.5),
            admin_token: Some("short".into()),
            attempt_timeout_ms: 900,
            ..Config::default()
        };
        let Err(ConfigError::Invalid(problems)) = config.validate() else { panic!("accepted") };
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(Config::default().validate().is_ok());
        assert_eq!(Config::default().share(), 0.0);
        let with_nightly = Config { nightly: vec!["http://127.0.0.1:8081".into()], ..Config::default() };
        assert_eq!(with_nightly.share(), 0.2);
    }

    #[test]
    fn the_shipped_example_holds_every_key_at_its_default() {
        // The crate's directory at run time (cargo sets it for tests): a build cache made in another
        // checkout keeps that checkout's path in `env!`.
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let path = std::path::Path::new(&dir).join("../docs/examples/lb.toml");
        let example = Config::load(Some(&path)).expect("docs/examples/lb.toml loads");
        example.validate().expect("docs/examples/lb.toml is valid");
        let expected = Config {
            main: vec!["http://127.0.0.1:8080".into()],
            nightly: vec!["http://127.0.0.1:8081".into()],
            ..Config::default()
        };
        assert_eq!(
            serde_json::to_value(&example).expect("json"),
            serde_json::to_value(&expected).expect("json"),
            "docs/examples/lb.toml drifted from the defaults"
        );
    }
}
