//! Integration tests of the embedder on the real stack: private Postgres, the real model from
//! PyPI, qdrant-edge (and a Qdrant server when QDRANT_URL is set).

mod behaviour;
mod helpers;
mod pipeline;
mod store;
