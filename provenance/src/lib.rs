//! Provenance of past recommendations: what made an answer ([`show`]: SQL over the history row,
//! its model, release, popularity run, vector collection and data sources) and the proof
//! ([`replay`]: recompute it with that model on that data and compare), and retention
//! ([`prune`]: old history goes together with what only it referred to).

pub mod prune;
pub mod replay;

/// What made an answer, by SQL (shared with the load balancer's admin API).
pub use db::provenance as show;
