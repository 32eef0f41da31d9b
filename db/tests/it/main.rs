//! Integration tests of the data layer against a real private Postgres cluster (one per test
//! process, one fresh database per test) and the real course data when it is present.

mod cli;
mod data;
mod failover;
mod import;
mod ingest;
mod parser;
mod partitions;
mod popularity;
