//! The gRPC adapter (tonic): `recommender.v1.Recommender/Recommend` on the same core, plus
//! `grpc.health.v1` and reflection (v1 and v1alpha, so grpcurl can list and call it). Input
//! rules and the response's rendering are [`proto::contract`]'s.

use std::sync::Arc;
use std::time::Instant;

use proto::contract;
use proto::recommender_v1::recommender_server::Recommender;
use proto::recommender_v1::{RecommendRequest, RecommendResponse};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::core::Core;
use crate::http::request_id;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcService {
    core: Arc<Core>,
}

impl GrpcService {
    /// Wraps the core.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl Recommender for GrpcService {
    async fn recommend(&self, request: Request<RecommendRequest>) -> Result<Response<RecommendResponse>, Status> {
        let started = Instant::now();
        let core = &self.core;
        let request_id = request_id(contract::grpc_request_id(request.get_ref(), request.metadata()));
        let req = request.into_inner();
        let (user_id, limit) = match contract::grpc_request(&req, core.config.default_limit, core.config.max_limit) {
            Ok(ok) => ok,
            Err(reason) => {
                core.metrics.requests.with_label_values(&["grpc", "bad_request"]).inc();
                tracing::info!(%request_id, error = %reason, "bad request");
                return Err(Status::new(reason.grpc_code(), reason.to_string()));
            }
        };
        let span = tracing::info_span!("recommend", request_id = %request_id, user_id, protocol = "grpc");
        let answer = core.recommend(user_id, limit).instrument(span).await;
        core.metrics.requests.with_label_values(&["grpc", answer.kind.as_str()]).inc();
        core.metrics.latency.with_label_values(&["grpc"]).observe(started.elapsed().as_secs_f64());
        Ok(core.contract_answer(user_id, request_id, answer).into_grpc())
    }
}
