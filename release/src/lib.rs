//! The release controller (issue 13): the online evaluation of a nightly against main — what the
//! experiment measured ([`online`]), the statistics ([`stats`]: an always-valid sequential test,
//! because the controller looks repeatedly; SRM), the decision with guardrails ([`decision`]), one look recorded and acted on ([`look`]),
//! the release records with their allowed transitions ([`store`]), the lifecycle over the load
//! balancer's admin API ([`controller`]: start with the offline gate ([`gate`]), promote, abort,
//! rollback with redeploy ([`deploy`]), readiness ([`readiness`]), warm-up ([`warmup`])), each
//! step crash-safe ([`steps`]: intent, act, confirm, reconcile), notifications ([`notify`]),
//! Prometheus metrics read from the records ([`metrics`]) and the commands' exit codes ([`exit`]).

pub mod controller;
pub mod decision;
pub mod deploy;
pub mod exit;
pub mod gate;
pub mod look;
pub mod metrics;
pub mod notify;
pub mod online;
pub mod readiness;
pub mod steps;
pub mod store;

/// The statistics (the `stats` crate: mSPRT, SRM, Wilson, pooled z).
pub use ::stats;
pub mod warmup;
