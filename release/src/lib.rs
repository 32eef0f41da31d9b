//! The release controller (issue 13), first part: the online evaluation of a nightly against
//! main — what the experiment measured ([`online`]), the statistics ([`stats`]: an always-valid
//! sequential test, because the controller looks repeatedly; SRM) and the decision with
//! guardrails ([`decision`]) and the release records with their allowed transitions ([`store`]).
//! The release lifecycle (start, promote, abort, rollback) and the
//! GitLab pipeline come next.

pub mod controller;
pub mod decision;
pub mod notify;
pub mod online;
pub mod stats;
pub mod store;
