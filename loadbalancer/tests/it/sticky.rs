//! Sticky assignment: one user, one variant — across requests, restarts and replicas — and the
//! same answer the variant's server gives directly, over HTTP and gRPC; every response logged.

use std::collections::HashMap;

use loadbalancer::assign::{self, Variant};
use proto::recommender_v1::RecommendRequest;
use proto::recommender_v1::recommender_client::RecommenderClient;

use crate::fleet::{Client, Fleet};

const USERS: i64 = 50;
const REPEATS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stays_on_one_variant_across_requests_restarts_and_replicas() {
    let fleet = Fleet::new().await;
    let client = Client::new();
    let state = tempfile::tempdir().expect("state");
    let config = fleet.lb_config(state.path());
    let lb = loadbalancer::start(config.clone()).await.expect("lb");
    let base = format!("http://{}", lb.http_addr);

    // 1,000 requests: 50 users × 20.
    let mut variant_of: HashMap<i64, String> = HashMap::new();
    let mut answer_of: HashMap<i64, String> = HashMap::new();
    let mut responses = 0;
    for round in 0..REPEATS {
        for user in 1..=USERS {
            let r = client.get(&format!("{base}/recommend/{user}")).await;
            responses += 1;
            assert_eq!(r.status, 200, "{}", r.body);
            let served = r.header("x-variant").to_string();
            assert_eq!(r.header("x-assigned-variant"), served, "no failover while both are up");
            let expected = assign::assign("test-release-1", 0.2, user).1;
            assert_eq!(served, expected.as_str(), "user {user}: the pure assignment function decides");
            let first = variant_of.entry(user).or_insert_with(|| served.clone());
            assert_eq!(*first, served, "user {user} switched variants in round {round}");
            let body = answer_of.entry(user).or_insert_with(|| r.body.clone());
            assert_eq!(*body, r.body, "user {user}: same answer every time");
            assert_eq!(r.body.split(',').count(), 20);
        }
    }
    let on_nightly = variant_of.values().filter(|v| *v == "nightly").count();
    assert!((3..=20).contains(&on_nightly), "about 20 % of 50 users on nightly: {on_nightly}");
    println!("{on_nightly} of {USERS} users on nightly");

    // The answer is the one the variant's own server gives.
    for (user, variant) in variant_of.iter().take(10) {
        let direct = if variant == "main" { fleet.main_url() } else { fleet.nightly_url() };
        assert_eq!(client.get(&format!("{direct}/recommend/{user}")).await.body, answer_of[user]);
    }

    // gRPC through the load balancer: same routing, same answer, same log.
    let mut grpc = RecommenderClient::connect(format!("http://{}", lb.grpc_addr)).await.expect("grpc");
    for user in 1..=5 {
        let reply =
            grpc.recommend(RecommendRequest { user_id: user, limit: 0, request_id: String::new() }).await.expect("rpc");
        responses += 1;
        assert_eq!(reply.metadata().get("x-variant").and_then(|v| v.to_str().ok()), Some(variant_of[&user].as_str()));
        let reply = reply.into_inner();
        assert_eq!(reply.variant, variant_of[&user]);
        let ids: Vec<String> = reply.items.into_iter().map(|i| i.movie_id).collect();
        assert_eq!(ids.join(","), answer_of[&user]);
    }
    let bad = grpc.recommend(RecommendRequest { user_id: -5, limit: 0, request_id: String::new() }).await;
    assert_eq!(bad.expect_err("refused").code(), tonic::Code::InvalidArgument);
    let bad_http = client.get(&format!("{base}/recommend/abc")).await;
    assert_eq!(bad_http.status, 400);
    assert_eq!(bad_http.body.lines().count(), 1, "one-line reason: {:?}", bad_http.body);
    responses += 2;

    // Restart (graceful: the log drains) → the same variants.
    lb.shutdown().await.expect("shutdown");
    assert_eq!(fleet.history_rows().await, responses, "one history row per response");
    let restarted = loadbalancer::start(config.clone()).await.expect("restart");
    // A second replica with its own state directory, running at the same time.
    let other_state = tempfile::tempdir().expect("state");
    let replica = loadbalancer::start(fleet.lb_config(other_state.path())).await.expect("replica");
    for (user, variant) in &variant_of {
        for lb in [&restarted, &replica] {
            let r = client.get(&format!("http://{}/recommend/{user}", lb.http_addr)).await;
            assert_eq!(r.header("x-variant"), variant, "user {user} moved after a restart / on a replica");
            responses += 1;
        }
    }
    restarted.shutdown().await.expect("shutdown");
    replica.shutdown().await.expect("shutdown");

    // The log: every response once, with its provenance; first sightings with their buckets.
    assert_eq!(fleet.history_rows().await, responses);
    type LoggedRow = (i64, String, String, Option<String>, Option<String>, i32, Vec<String>);
    let rows: Vec<LoggedRow> = sqlx::query_as(
        "SELECT user_id, assigned_variant, served_variant, backend, model_version, status, movie_ids
         FROM recommendations_history WHERE user_id IS NOT NULL",
    )
    .fetch_all(&fleet.stack.db.pool)
    .await
    .expect("rows");
    for (user, assigned, served, backend, model, status, ids) in &rows {
        assert_eq!((assigned, served), (&variant_of[user], &variant_of[user]));
        let expected_backend = if served == "main" { fleet.main_url() } else { fleet.nightly_url() };
        assert_eq!(backend.as_deref(), Some(expected_backend.as_str()));
        assert!(model.as_deref().is_some_and(|m| m.starts_with("neighbours-v2@")), "{model:?}");
        assert_eq!(*status, 200);
        assert_eq!(ids.join(","), answer_of[user]);
    }
    let rejected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recommendations_history WHERE user_id IS NULL AND status = 400 AND served_variant = 'none'",
    )
    .fetch_one(&fleet.stack.db.pool)
    .await
    .expect("rejected");
    assert_eq!(rejected, 2, "bad requests are logged too");
    let sightings: Vec<(i64, i32, String)> =
        sqlx::query_as("SELECT user_id, bucket, variant FROM user_model_map WHERE experiment = 'test-release-1'")
            .fetch_all(&fleet.stack.db.pool)
            .await
            .expect("sightings");
    assert_eq!(sightings.len() as i64, USERS, "one first sighting per user");
    for (user, bucket, variant) in sightings {
        assert_eq!(bucket as u32, assign::bucket("test-release-1", user));
        assert_eq!(variant, variant_of[&user]);
        assert_eq!(assign::variant_of(bucket as u32, 0.2) == Variant::Nightly, variant == "nightly");
    }
    fleet.shutdown().await;
}
