//! The front door's edges: caller request ids of any shape (long, multi-byte) over HTTP and
//! gRPC are answered and logged, never a panic; gRPC reflection and health are served.

use std::io::{Read, Write};

use crate::fleet::Fleet;
use proto::recommender_v1::RecommendRequest;
use proto::recommender_v1::recommender_client::RecommenderClient;

async fn logged_client_ids(fleet: &Fleet) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT inputs->>'client_request_id' FROM recommendations_history ORDER BY ts")
        .fetch_all(&fleet.stack.db.pool)
        .await
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_multibyte_request_ids_are_answered_and_logged_over_http_and_grpc() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let lb = loadbalancer::start(fleet.lb_config(state.path())).await.expect("lb");

    // gRPC: 200 characters, the 128th byte inside a two-byte character.
    let id = format!("{}é{}", "a".repeat(127), "ü".repeat(72));
    assert_eq!(id.chars().count(), 200);
    let mut grpc = RecommenderClient::connect(format!("http://{}", lb.grpc_addr)).await.expect("grpc");
    let reply =
        grpc.recommend(RecommendRequest { user_id: 1, limit: 0, request_id: id.clone() }).await.expect("answered");
    assert_eq!(reply.into_inner().items.len(), 20);
    // The same id in the metadata only (ASCII-only there): 200 characters.
    let mut request = tonic::Request::new(RecommendRequest { user_id: 2, limit: 0, request_id: String::new() });
    request.metadata_mut().insert("x-request-id", "m".repeat(200).parse().expect("metadata"));
    grpc.recommend(request).await.expect("answered");

    // HTTP: the raw header bytes are UTF-8 (obs-text to HTTP/1.1), 200 characters.
    let raw = format!(
        "GET /recommend/3 HTTP/1.1\r\nhost: x\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        "é".repeat(200)
    );
    let addr = lb.http_addr;
    let response = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(raw.as_bytes()).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    })
    .await
    .expect("http");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // And a long ASCII one.
    let client = crate::fleet::Client::new();
    let long = "r".repeat(200);
    let r = client
        .try_request("GET", &format!("http://{}/recommend/4", lb.http_addr), &[("x-request-id", &long)], None)
        .await
        .expect("answered");
    assert_eq!(r.status, 200);

    lb.shutdown().await.expect("shutdown");
    let ids = logged_client_ids(&fleet).await;
    assert_eq!(ids.len(), 4, "every response logged: {ids:?}");
    assert!(ids.contains(&Some("a".repeat(127))), "cut before the multi-byte character: {ids:?}");
    assert!(ids.contains(&Some("m".repeat(128))), "{ids:?}");
    assert!(ids.contains(&Some("r".repeat(128))), "{ids:?}");
    assert!(ids.contains(&None), "a header that is not text is not kept: {ids:?}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_reflection_and_health_are_served() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let lb = loadbalancer::start(fleet.lb_config(state.path())).await.expect("lb");
    let url = format!("http://{}", lb.grpc_addr);

    let channel = tonic::transport::Channel::from_shared(url).expect("url").connect().await.expect("connect");
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else { panic!("{reply:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"recommender.v1.Recommender".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "recommender.v1.Recommender".into() })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    lb.shutdown().await.expect("shutdown");
    fleet.shutdown().await;
}
