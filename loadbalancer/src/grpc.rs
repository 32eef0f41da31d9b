//! The gRPC front (tonic): `recommender.v1.Recommender/Recommend`, routed exactly like HTTP
//! (same assignment, failover, fallback and response log). Health and reflection are served
//! beside it (see `start`). Input rules and rendering are [`proto::contract`]'s.

use std::sync::Arc;

use proto::contract::{self, headers};
use proto::recommender_v1::recommender_server::Recommender;
use proto::recommender_v1::{RecommendRequest, RecommendResponse};
use tonic::{Request, Response, Status};

use crate::core::{Lb, Protocol};

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
        let client_id =
            contract::grpc_request_id(request.get_ref(), request.metadata()).map(contract::recorded_request_id);
        let req = request.into_inner();
        let handled = match contract::grpc_request(&req, lb.config.default_limit, lb.config.max_limit) {
            Ok((user_id, limit)) => lb.recommend(user_id, limit, true, Protocol::Grpc, client_id).await,
            Err(reason) => lb.reject(reason, Protocol::Grpc, client_id).await,
        };
        let code = handled.grpc_code();
        if code != tonic::Code::Ok {
            let mut status = Status::new(code, handled.refusal());
            if let Ok(v) = handled.request_id.parse() {
                status.metadata_mut().insert(headers::REQUEST_ID, v);
            }
            return Err(status);
        }
        match handled.into_answer() {
            Some(answer) => Ok(answer.into_grpc()),
            None => Err(Status::internal("no answer")),
        }
    }
}
