//! The simulator: a population of users from real histories (their later events held out of
//! the database as their future, plus new users for cold start) who request recommendations
//! through the load balancer, watch and rate, and write the course's log lines to a file,
//! stdout or Kafka — closing the loop through the ingester.
//!
//! - [`population`] — who: futures file → users; new users borrow a real user's taste.
//! - [`user`] — what a user does with a list (pure, seeded).
//! - [`run`] — the open-loop engine, ordered per user, deterministic per seed.
//! - [`client`] — the course contract from the client's side.
//! - [`sink`] — where the lines go.
//! - [`report`] — availability, latency, conversion per variant with intervals.
//! - [`stub`] — a trivial endpoint for the simulator's own benchmark and tests.

pub mod client;
pub mod population;
pub mod report;
pub mod run;
pub mod sink;
pub mod stub;
pub mod user;
