//! The gRPC adapter (tonic): `recommender.v1.Recommender/Recommend` on the same core, plus
//! `grpc.health.v1` and reflection (v1 and v1alpha, so grpcurl can list and call it).

use std::sync::Arc;
use std::time::Instant;

use proto::recommender_v1::recommender_server::Recommender;
use proto::recommender_v1::{RecommendRequest, RecommendResponse, RecommendedItem};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::core::{Core, Kind};
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
        let metadata_id = request.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let req = request.into_inner();
        let given = if req.request_id.is_empty() { metadata_id } else { Some(req.request_id.clone()) };
        let request_id = request_id(given.as_deref());
        if req.user_id < 0 {
            core.metrics.requests.with_label_values(&["grpc", "bad_request"]).inc();
            return Err(Status::invalid_argument(format!(
                "invalid user id {}: expected a non-negative integer",
                req.user_id
            )));
        }
        let limit = if req.limit == 0 { core.config.default_limit } else { req.limit as usize };
        if limit > core.config.max_limit {
            core.metrics.requests.with_label_values(&["grpc", "bad_request"]).inc();
            return Err(Status::invalid_argument(format!(
                "invalid limit {limit}: expected at most {}",
                core.config.max_limit
            )));
        }
        let span =
            tracing::debug_span!("recommend", request_id = %request_id, user_id = req.user_id, protocol = "grpc");
        let answer = core.recommend(req.user_id, limit).instrument(span).await;
        core.metrics.requests.with_label_values(&["grpc", answer.kind.as_str()]).inc();
        core.metrics.latency.with_label_values(&["grpc"]).observe(started.elapsed().as_secs_f64());
        let mut response = Response::new(RecommendResponse {
            items: answer.items.into_iter().map(|i| RecommendedItem { movie_id: i.movie_id, score: i.score }).collect(),
            model_version: core.model_version().to_string(),
            variant: core.variant().to_string(),
            request_id: request_id.clone(),
            data_watermark: answer.watermark,
            degraded: answer.kind == Kind::Degraded,
            degraded_reason: answer.degraded.unwrap_or_default(),
            kind: answer.kind.as_str().to_string(),
        });
        for (key, value) in [
            ("x-model-version", core.model_version().to_string()),
            ("x-variant", core.variant().to_string()),
            ("x-request-id", request_id),
            ("x-data-watermark", answer.watermark.to_string()),
        ] {
            if let Ok(v) = value.parse() {
                response.metadata_mut().insert(key, v);
            }
        }
        Ok(response)
    }
}
