//! The routing table: the experiment (salt, share) and the backends of each variant.
//!
//! The table is an immutable value behind an [`ArcSwap`]: the request path loads it without a
//! lock, admin changes build a new table and swap it in. Each [`Backend`] carries its own
//! atomics: `enabled` (an operator's decision: drain) is kept apart from `healthy` (the health
//! checker's and the request path's observation), so draining a backend never fights with its
//! health and a drained backend keeps being checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use anyhow::Context;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::assign::Variant;
use crate::config::Config;

/// One backend server.
#[derive(Debug)]
pub struct Backend {
    /// Its base URL, `http://host:port` (also its name).
    pub url: String,
    enabled: AtomicBool,
    healthy: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
    /// Requests answered through this backend.
    pub answered: AtomicU64,
    in_flight: AtomicUsize,
}

/// One request slot of a backend, held by the attempt until it ends — also after its request
/// gave up waiting (attempts run detached, so their connection goes back to the pool).
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    /// A backend, enabled; `healthy` until a check says otherwise.
    pub fn new(url: &str) -> Arc<Self> {
        Arc::new(Self {
            url: url.trim_end_matches('/').to_string(),
            enabled: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// One of the backend's `limit` request slots, or None when all are taken.
    pub fn claim(self: &Arc<Self>, limit: usize) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = InFlight(self.clone());
        (before < limit).then_some(slot)
    }

    /// Attempts running on this backend now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes requests (not drained).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Passed its health checks.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Drain (false) or enable (true).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Sets the health directly (the first check at start-up, tests).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.successes.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    /// Records an answered request: failures are counted only when consecutive.
    pub fn record_answer(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a successful check; returns true when this made the backend healthy.
    pub fn record_success(&self, rise: u32) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        let n = self.successes.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n >= rise && !self.healthy() {
            self.healthy.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a failed check or forwarded request; returns true when this made the backend
    /// unhealthy.
    pub fn record_failure(&self, fall: u32) -> bool {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n >= fall && self.healthy() {
            self.healthy.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// What the admin API can change, as stored across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingSpec {
    /// The experiment name (the assignment salt).
    pub experiment: String,
    /// Share of users on nightly.
    pub share: f64,
    /// Main backend URLs.
    pub main: Vec<String>,
    /// Nightly backend URLs.
    pub nightly: Vec<String>,
    /// Drained backend URLs.
    pub drained: Vec<String>,
    /// Release of main.
    pub main_release_id: Option<i64>,
    /// Release of nightly.
    pub nightly_release_id: Option<i64>,
}

/// The routing table in effect.
#[derive(Debug)]
pub struct Routing {
    /// The fleet's routing version this table was built from (`lb_routing.version`; 0: the
    /// configuration, before Postgres was reached).
    pub version: i64,
    /// The experiment name (the assignment salt).
    pub experiment: String,
    /// Share of users on nightly.
    pub share: f64,
    /// Main backends.
    pub main: Vec<Arc<Backend>>,
    /// Nightly backends.
    pub nightly: Vec<Arc<Backend>>,
    /// Release of main.
    pub main_release_id: Option<i64>,
    /// Release of nightly.
    pub nightly_release_id: Option<i64>,
}

impl Routing {
    /// Backends of `variant`.
    pub fn backends(&self, variant: Variant) -> &[Arc<Backend>] {
        match variant {
            Variant::Main => &self.main,
            Variant::Nightly => &self.nightly,
        }
    }

    /// Release of `variant`.
    pub fn release_id(&self, variant: Variant) -> Option<i64> {
        match variant {
            Variant::Main => self.main_release_id,
            Variant::Nightly => self.nightly_release_id,
        }
    }

    /// The share in effect: 0 while nightly has no backends.
    pub fn effective_share(&self) -> f64 {
        if self.nightly.is_empty() { 0.0 } else { self.share }
    }

    /// Every backend once (a URL may serve both variants).
    pub fn all_backends(&self) -> Vec<Arc<Backend>> {
        let mut all: Vec<Arc<Backend>> = Vec::new();
        for b in self.main.iter().chain(&self.nightly) {
            if !all.iter().any(|x| Arc::ptr_eq(x, b)) {
                all.push(b.clone());
            }
        }
        all
    }

    /// The spec this table was built from.
    pub fn spec(&self) -> RoutingSpec {
        RoutingSpec {
            experiment: self.experiment.clone(),
            share: self.share,
            main: self.main.iter().map(|b| b.url.clone()).collect(),
            nightly: self.nightly.iter().map(|b| b.url.clone()).collect(),
            drained: self.all_backends().iter().filter(|b| !b.enabled()).map(|b| b.url.clone()).collect(),
            main_release_id: self.main_release_id,
            nightly_release_id: self.nightly_release_id,
        }
    }

    /// Builds a table from `spec` (of routing `version`), reusing `previous`'s backend objects
    /// (and so their health) for URLs it already had.
    pub fn build(spec: &RoutingSpec, version: i64, previous: Option<&Routing>) -> Routing {
        let known = previous.map(Routing::all_backends).unwrap_or_default();
        let mut made: Vec<Arc<Backend>> = Vec::new();
        let mut get = |url: &str| {
            let url = url.trim_end_matches('/');
            if let Some(b) = made.iter().chain(&known).find(|b| b.url == url) {
                let b = b.clone();
                if !made.iter().any(|x| Arc::ptr_eq(x, &b)) {
                    made.push(b.clone());
                }
                return b;
            }
            let b = Backend::new(url);
            made.push(b.clone());
            b
        };
        let main: Vec<_> = spec.main.iter().map(|u| get(u)).collect();
        let nightly: Vec<_> = spec.nightly.iter().map(|u| get(u)).collect();
        for b in main.iter().chain(&nightly) {
            b.set_enabled(!spec.drained.iter().any(|d| d.trim_end_matches('/') == b.url));
        }
        Routing {
            version,
            experiment: spec.experiment.clone(),
            share: spec.share,
            main,
            nightly,
            main_release_id: spec.main_release_id,
            nightly_release_id: spec.nightly_release_id,
        }
    }
}

/// The shared, lock-free handle to the routing table.
pub type SharedRouting = Arc<ArcSwap<Routing>>;

/// What the routing file holds: this replica's last routing (a cache of the fleet's row in
/// Postgres, for a start while Postgres is unreachable), its version and the fingerprint of the
/// configuration it applies to.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoutingFile {
    /// Fingerprint of the configured routing the changes were made on.
    pub config_fingerprint: String,
    /// The fleet's routing version (0 in files written before versions).
    #[serde(default)]
    pub version: i64,
    /// The routing in effect after the last change.
    pub spec: RoutingSpec,
}

/// A fingerprint of a spec (the configured one: admin changes survive restarts only while the
/// configuration they were made on is unchanged).
pub fn fingerprint(spec: &RoutingSpec) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(spec).unwrap_or_default()))
}

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
pub fn save(config: &Config, version: i64, spec: &RoutingSpec) -> anyhow::Result<()> {
    let file = RoutingFile { config_fingerprint: fingerprint(&configured_spec(config)), version, spec: spec.clone() };
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

/// The routing to start with when the fleet's row in Postgres cannot be read: the routing
/// file's (this replica's last routing) when it was made on the same configuration, else the
/// configuration's (version 0).
pub fn cached_spec(config: &Config) -> (i64, RoutingSpec) {
    let configured = configured_spec(config);
    let path = config.routing_file();
    let Ok(body) = std::fs::read(&path) else { return (0, configured) };
    match serde_json::from_slice::<RoutingFile>(&body) {
        Ok(file) if file.config_fingerprint == fingerprint(&configured) => {
            tracing::info!(file = %path.display(), version = file.version, experiment = %file.spec.experiment,
                share = file.spec.share, "routing: the last routing this replica followed, from its routing file");
            (file.version, file.spec)
        }
        Ok(_) => {
            tracing::warn!(file = %path.display(), "routing: the configuration changed since the cached routing; using the configuration");
            (0, configured)
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "routing file unreadable; using the configuration");
            (0, configured)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_and_drain_are_independent() {
        let b = Backend::new("http://127.0.0.1:1/");
        assert_eq!(b.url, "http://127.0.0.1:1");
        assert!(!b.record_failure(3) && !b.record_failure(3));
        assert!(b.record_failure(3), "third failure flips it");
        assert!(!b.healthy());
        assert!(!b.record_success(2));
        assert!(!b.record_failure(3), "a failure resets the successes");
        assert!(!b.record_success(2) && b.record_success(2));
        assert!(b.healthy());
        b.set_enabled(false);
        assert!(b.healthy() && !b.enabled());
    }

    #[test]
    fn rebuilding_keeps_backend_state_and_drains() {
        let spec = RoutingSpec {
            experiment: "e".into(),
            share: 0.2,
            main: vec!["http://a:1".into()],
            nightly: vec!["http://b:2".into()],
            drained: vec![],
            main_release_id: None,
            nightly_release_id: None,
        };
        let first = Routing::build(&spec, 1, None);
        first.nightly[0].set_healthy(false);
        let second =
            Routing::build(&RoutingSpec { drained: vec!["http://b:2".into()], ..spec.clone() }, 2, Some(&first));
        assert!(Arc::ptr_eq(&first.nightly[0], &second.nightly[0]));
        assert!(!second.nightly[0].healthy() && !second.nightly[0].enabled());
        assert_eq!(second.spec().drained, vec!["http://b:2".to_string()]);
        let none = Routing::build(&RoutingSpec { nightly: vec![], ..spec }, 3, Some(&second));
        assert_eq!(none.effective_share(), 0.0);
    }
}
