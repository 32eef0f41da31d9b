//! The gRPC contract shared by the server and the load balancer: package `recommender.v1`.
//!
//! Fields and methods are only ever added; a breaking change is a new package.

#![allow(missing_docs, clippy::all)]

/// `recommender.v1`, generated from `proto/recommender/v1/recommender.proto`.
pub mod recommender_v1 {
    tonic::include_proto!("recommender.v1");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("recommender_v1_descriptor");
