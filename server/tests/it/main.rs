//! Integration tests of the server on the real stack: a private Postgres holding the default
//! dataset (MovieLens through the ingester), real embeddings in qdrant-edge, HTTP and gRPC.

mod api;
mod degraded;
use testkit::stack as helpers;
