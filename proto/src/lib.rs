//! The one contract between clients, the load balancer and the servers: the gRPC package
//! `recommender.v1` (generated) and [`contract`] — the answer, its HTTP renderings and headers,
//! variants and kinds, input validation — shared by both servers' HTTP and gRPC fronts.
//!
//! Fields and methods are only ever added; a breaking change is a new package.

/// `recommender.v1`, generated from `proto/recommender/v1/recommender.proto`.
#[allow(missing_docs, clippy::all)]
pub mod recommender_v1 {
    tonic::include_proto!("recommender.v1");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("recommender_v1_descriptor");

pub mod contract;
