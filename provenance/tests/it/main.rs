//! Integration tests of provenance: replay on the real stack, pruning on a real Postgres.

mod items;
mod prune;
mod replay;
mod support;
