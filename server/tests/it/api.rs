//! The HTTP and gRPC contracts on the real stack.

use std::collections::HashSet;

use proto::recommender_v1::RecommendRequest;
use proto::recommender_v1::recommender_client::RecommenderClient;

use crate::helpers::{Stack, get, wait_ready};

const USER: i64 = 1; // 232 ratings in the default dataset

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_the_course_contract_deterministically_without_watched_movies() {
    let stack = Stack::new().await;
    let server = server::start(stack.config()).await.expect("start");
    let base = format!("http://{}", server.http_addr);
    wait_ready(&base).await;
    let watermark: i64 =
        sqlx::query_scalar("SELECT last_event_id FROM ingest_watermark").fetch_one(&stack.db.pool).await.expect("wm");

    let r = get(&format!("{base}/recommend/{USER}"), &[("x-request-id", "req-42")]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("content-type").starts_with("text/plain"));
    assert!(!r.body.contains('\n') && !r.body.contains(' '), "one line of ids: {:?}", r.body);
    let ids: Vec<&str> = r.body.split(',').collect();
    assert_eq!(ids.len(), 20);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 20, "no duplicates");
    let seen: HashSet<String> = stack.seen(USER).await.into_iter().collect();
    assert!(seen.len() > 100);
    assert!(ids.iter().all(|id| !seen.contains(*id)), "a watched movie was recommended: {ids:?}");
    assert_eq!(r.header("x-request-id"), "req-42");
    assert_eq!(r.header("x-variant"), "main");
    assert!(r.header("x-model-version").starts_with("neighbours-v2@"), "{}", r.header("x-model-version"));
    assert_eq!(r.header("x-data-watermark"), watermark.to_string());
    assert_eq!(r.header("x-recommendation-kind"), "personal");
    assert!(r.headers.get("x-degraded").is_none());
    assert!(!r.header("x-request-id").is_empty());
    let generated = get(&format!("{base}/recommend/{USER}"), &[]).await;
    assert_eq!(generated.header("x-request-id").len(), 36, "a UUID is generated when none is given");

    // Personal, not the popularity list.
    let popular: Vec<String> = stack.popular(500).await.into_iter().filter(|m| !seen.contains(m)).take(20).collect();
    assert_ne!(ids, popular.iter().map(String::as_str).collect::<Vec<_>>());

    // Determinism: the same answer again, from a cold second server, and over JSON.
    assert_eq!(get(&format!("{base}/recommend/{USER}"), &[]).await.body, r.body);
    let other_edge = stack.edge_copy().await;
    let mut second_config = stack.config();
    second_config.store.edge_dir = Some(other_edge.path().to_path_buf());
    let second = server::start(second_config).await.expect("second server");
    let base2 = format!("http://{}", second.http_addr);
    wait_ready(&base2).await;
    assert_eq!(get(&format!("{base2}/recommend/{USER}"), &[]).await.body, r.body, "a fresh instance answers the same");
    let json = get(&format!("{base}/recommend/{USER}?limit=5"), &[("accept", "application/json")]).await;
    assert_eq!(json.status, 200);
    let v: serde_json::Value = serde_json::from_str(&json.body).expect("json");
    let items = v["items"].as_array().expect("items");
    assert_eq!(items.len(), 5);
    let json_ids: Vec<&str> = items.iter().map(|i| i["movie_id"].as_str().expect("id")).collect();
    assert_eq!(json_ids, ids[..5].to_vec(), "limit=5 is a prefix of the 20");
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");
    assert_eq!(v["variant"], "main");
    assert_eq!(v["data_watermark"], watermark);

    // Cold start: a user without history gets the popularity list.
    let cold = get(&format!("{base}/recommend/999999"), &[]).await;
    assert_eq!(cold.status, 200);
    assert_eq!(cold.header("x-recommendation-kind"), "cold_start");
    assert_eq!(cold.body, stack.popular(20).await.join(","));

    // Bad input: 400 with a one-line reason, never a panic.
    for path in [
        "/recommend/abc",
        "/recommend/-5",
        "/recommend/1.5",
        "/recommend/99999999999999999999",
        "/recommend/1?limit=0",
        "/recommend/1?limit=x",
    ] {
        let bad = get(&format!("{base}{path}"), &[]).await;
        assert_eq!(bad.status, 400, "{path}");
        assert_eq!(bad.body.trim_end().lines().count(), 1, "{path}: {:?}", bad.body);
        assert!(bad.body.starts_with("invalid "), "{path}: {:?}", bad.body);
        assert_eq!(bad.header("x-variant"), "main");
    }

    let metrics = get(&format!("{base}/metrics"), &[]).await.body;
    assert!(
        metrics.contains("lazyrec_server_requests_total{outcome=\"bad_request\",protocol=\"http\",variant=\"main\"} 6"),
        "{metrics}"
    );
    assert!(metrics.contains("lazyrec_server_cache_requests_total{cache=\"neighbours\",result=\"hit\""), "{metrics}");
    assert!(metrics.contains("lazyrec_server_stage_seconds_bucket{stage=\"postgres\""));
    second.shutdown().await.expect("shutdown");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gives_the_same_answer_with_provenance_health_and_validation() {
    let stack = Stack::new().await;
    let mut config = stack.config();
    config.variant = server::config::Variant::Nightly;
    let server = server::start(config).await.expect("start");
    let base = format!("http://{}", server.http_addr);
    wait_ready(&base).await;
    let http = get(&format!("{base}/recommend/{USER}"), &[]).await;

    let mut client = RecommenderClient::connect(format!("http://{}", server.grpc_addr)).await.expect("connect");
    let reply = client
        .recommend(RecommendRequest { user_id: USER, limit: 0, request_id: "grpc-1".into() })
        .await
        .expect("recommend");
    let metadata_variant = reply.metadata().get("x-variant").and_then(|v| v.to_str().ok()).map(str::to_string);
    let r = reply.into_inner();
    let ids: Vec<&str> = r.items.iter().map(|i| i.movie_id.as_str()).collect();
    assert_eq!(ids.join(","), http.body, "one core behind both protocols");
    assert_eq!(
        (r.variant.as_str(), r.request_id.as_str(), r.kind.as_str(), r.degraded),
        ("nightly", "grpc-1", "personal", false)
    );
    assert_eq!(metadata_variant.as_deref(), Some("nightly"));
    assert_eq!(r.model_version, http.header("x-model-version"));
    assert_eq!(r.data_watermark.to_string(), http.header("x-data-watermark"));

    let bad = client
        .recommend(RecommendRequest { user_id: -3, limit: 0, request_id: String::new() })
        .await
        .expect_err("negative user");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let too_many = client
        .recommend(RecommendRequest { user_id: 1, limit: 1_000, request_id: String::new() })
        .await
        .expect_err("limit");
    assert_eq!(too_many.code(), tonic::Code::InvalidArgument);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "recommender.v1.Recommender".into() })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    server.shutdown().await.expect("shutdown");
}
