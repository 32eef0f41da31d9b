//! The one contract between clients, the load balancer and the servers: the gRPC package
//! `recommender.v1` (generated) and [`contract`] — the answer, its HTTP renderings and headers,
//! variants and kinds, input validation — shared by both servers' HTTP and gRPC fronts — and
//! [`admin`], the load balancer's admin API (request and state types, the typed client).
//!
//! Fields and methods are only ever added; a breaking change is a new package.

/// `recommender.v1`, generated from `proto/recommender/v1/recommender.proto`.
#[allow(missing_docs, clippy::all)]
pub mod recommender_v1 {
    tonic::include_proto!("recommender.v1");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("recommender_v1_descriptor");

pub mod admin;
pub mod contract;

/// The gRPC router both servers serve: `service`, `grpc.health.v1` (reporting it SERVING) and
/// reflection (v1 and v1alpha, so grpcurl can list and call it).
pub async fn grpc_router<T: recommender_v1::recommender_server::Recommender>(
    service: recommender_v1::recommender_server::RecommenderServer<T>,
) -> Result<tonic::transport::server::Router, tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<recommender_v1::recommender_server::RecommenderServer<T>>().await;
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(tonic::transport::Server::builder()
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(service))
}
