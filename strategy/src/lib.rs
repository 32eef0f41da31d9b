//! lazyrec's recommendation pipeline, free of I/O.
//!
//! - [`input`] — what a strategy ranks from: [`History`], [`Popularity`], the rating rule.
//! - [`strategies`] — the append-only registry of strategies ([`ModelSpec`] → [`Strategy`]).
//! - [`fetch`] — the item-weights search an item-model plan needs (the server's and the
//!   replayer's one way to ask the store for it).
//! - [`pipeline`] — [`Model`] (strategy + parameters + [`Search`], with its version) and
//!   [`Model::answer`], the one function that decides an answer.
//!
//! The server, the replayer (`provenance`) and the evaluator (`eval`) supply the inputs and
//! call [`Model::answer`]; none of them depends on another to do so.

pub mod fetch;
pub mod input;
pub mod pipeline;
pub mod strategies;

pub use input::{History, POPULARITY_LIST, Popularity, Watched, five_star};
pub use pipeline::{Decision, GIT_SHA, Model, Search, Stage, without_code};
pub use proto::contract::{DataVersions, Exclude, Item, Kind};
pub use strategies::{ModelSpec, Neighbours, Plan, REGISTRY, Strategy, StrategyError};
