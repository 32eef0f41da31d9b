//! The gRPC front (tonic): `recommender.v1.Recommender/Recommend`, routed exactly like HTTP
//! (same assignment, failover, fallback and response log), plus `grpc.health.v1`.

use std::sync::Arc;

use proto::recommender_v1::recommender_server::Recommender;
use proto::recommender_v1::{RecommendRequest, RecommendResponse, RecommendedItem};
use tonic::{Code, Request, Response, Status};

use crate::core::Lb;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcFront {
    lb: Arc<Lb>,
}

impl GrpcFront {
    /// Wraps the load balancer.
    pub fn new(lb: Arc<Lb>) -> Self {
        Self { lb }
    }
}

#[tonic::async_trait]
impl Recommender for GrpcFront {
    async fn recommend(&self, request: Request<RecommendRequest>) -> Result<Response<RecommendResponse>, Status> {
        let lb = &self.lb;
        let metadata_id = request.metadata().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let req = request.into_inner();
        let mut client_id = if req.request_id.is_empty() { metadata_id } else { Some(req.request_id.clone()) };
        if let Some(id) = client_id.as_mut() {
            id.truncate(128);
        }
        let limit = if req.limit == 0 { lb.config.default_limit } else { req.limit as usize };
        let answer = if req.user_id < 0 {
            lb.reject(format!("invalid user id {}: expected a non-negative integer", req.user_id), "grpc", client_id)
                .await
        } else if limit > lb.config.max_limit {
            lb.reject(format!("invalid limit {limit}: expected at most {}", lb.config.max_limit), "grpc", client_id)
                .await
        } else {
            lb.recommend(req.user_id, limit, true, "grpc", client_id).await
        };
        if answer.status != 200 {
            let code = match answer.status {
                400..=499 => Code::InvalidArgument,
                _ => Code::Unavailable,
            };
            let mut status = Status::new(code, answer.error.clone().unwrap_or_default());
            if let Ok(v) = answer.request_id.parse() {
                status.metadata_mut().insert("x-request-id", v);
            }
            return Err(status);
        }
        let mut response = Response::new(RecommendResponse {
            items: answer.items.into_iter().map(|i| RecommendedItem { movie_id: i.movie_id, score: i.score }).collect(),
            model_version: answer.model_version.clone(),
            variant: answer.served.to_string(),
            request_id: answer.request_id.clone(),
            data_watermark: answer.watermark,
            degraded: answer.degraded.is_some(),
            degraded_reason: answer.degraded.unwrap_or_default(),
            kind: answer.kind,
        });
        let assigned = answer.assigned.map(|v| v.as_str()).unwrap_or_default();
        for (key, value) in [
            ("x-model-version", answer.model_version.as_str()),
            ("x-variant", answer.served),
            ("x-assigned-variant", assigned),
            ("x-request-id", answer.request_id.as_str()),
        ] {
            if let Ok(v) = value.parse() {
                response.metadata_mut().insert(key, v);
            }
        }
        Ok(response)
    }
}
