//! The release controller (issue 13): the online evaluation of a nightly against main — what the
//! experiment measured ([`online`]), the statistics ([`stats`]: an always-valid sequential test,
//! because the controller looks repeatedly; SRM), the decision with guardrails ([`decision`]),
//! the release records with their allowed transitions ([`store`]), the lifecycle over the load
//! balancer's admin API ([`controller`]: start with the offline gate, promote, abort, rollback
//! with redeploy), notifications ([`notify`]) and Prometheus metrics read from the records
//! ([`metrics`]).

pub mod controller;
pub mod decision;
pub mod metrics;
pub mod notify;
pub mod online;
pub mod stats;
pub mod store;
