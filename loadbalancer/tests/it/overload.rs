//! The load balancer under overload: a retry budget instead of a retry per failure, and a
//! per-backend concurrency limit instead of an unbounded pile of attempts on a hung backend.
//! The misbehaving backends are fakes at the edge (one that fails every request at once, one
//! that never answers); the other backend is a real server.

use std::net::SocketAddr;
use std::time::Duration;

use loadbalancer::assign::Variant;

use crate::fleet::{Client, Fleet};
use crate::helpers::blackhole;

/// An HTTP/1.1 backend that passes its health checks (`/ready` → 200) and answers every other
/// request with a 500 at once, keeping connections alive.
async fn failing_backend() -> SocketAddr {
    crate::fleet::scripted_backend("500 Internal Server Error", b"no".to_vec()).await
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Main fails every request at once and stays "healthy" (its checks pass): without a budget,
/// every request would be retried on nightly. With a 10 % budget, about one in ten is; the
/// others get the fallback list at once, flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_a_backend_fails_every_request() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state.path());
    config.main = vec![format!("http://{}", failing_backend().await)];
    config.nightly_share = Some(0.0);
    config.health.fall = 1_000_000; // it keeps passing its checks; only the budget protects nightly
    config.overload.retry_ratio = 0.1;
    config.overload.retry_min_per_second = 0.0;
    let lb = loadbalancer::start(config).await.expect("lb");
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();
    let requests = 200;
    let mut served = std::collections::HashMap::<String, usize>::new();
    for user in 1..=requests {
        let r = client.get(&format!("{base}/recommend/{user}")).await;
        assert_eq!(r.status, 200, "every request is answered");
        *served.entry(r.header("x-variant").to_string()).or_default() += 1;
    }
    let metrics = client.get(&format!("{base}/metrics")).await.body;
    let retries = metric(&metrics, "lazyrec_lb_retries_total");
    let shed = metric(&metrics, "lazyrec_lb_shed_total{reason=\"retry_budget\"}");
    println!("{requests} requests: served {served:?}, {retries} retries, {shed} shed by the budget");
    assert!(retries <= 0.1 * requests as f64 + 1.0, "retries within 10 %: {retries}");
    assert!(retries >= 0.1 * requests as f64 - 2.0, "the budget allows what it earned: {retries}");
    assert_eq!(
        served.get(Variant::Nightly.as_str()).copied().unwrap_or(0) as f64,
        retries,
        "each retry reached nightly"
    );
    assert_eq!(retries + shed, requests as f64, "every other request was shed to the fallback list");
    assert_eq!(served.get("fallback").copied().unwrap_or(0) as f64, shed);
    lb.shutdown().await.expect("shutdown");
    let logged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recommendations_history WHERE error LIKE 'overloaded: retry budget spent%'",
    )
    .fetch_one(&fleet.stack.db.pool)
    .await
    .expect("rows");
    assert_eq!(logged as f64, shed, "the shed requests are logged with their reason");
    fleet.shutdown().await;
}

/// Main hangs (accepts, never answers) but passes for healthy: only `backend_max_in_flight`
/// attempts ever wait on it; a burst beyond that goes to nightly at once — or, with nightly at its
/// limit too, to the fallback list at once — and the hung attempts give their slots back after
/// their linger (twice the deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_gets_no_more_attempts_than_its_concurrency_limit() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state.path());
    config.main = vec![format!("http://{}", blackhole())];
    config.nightly_share = Some(0.0);
    config.health.interval_ms = 600_000;
    config.health.fall = 1_000_000;
    config.overload.backend_max_in_flight = 4;
    config.overload.retry_min_per_second = 100.0;
    let lb = loadbalancer::start(config.clone()).await.expect("lb");
    let main = lb.lb.routing.load().main[0].clone();
    main.set_healthy(true); // as if it hung after the last check
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();
    let burst: Vec<_> = (1..=20)
        .map(|user| {
            let (client, url) = (client.clone(), format!("{base}/recommend/{user}"));
            async move { client.get(&url).await }
        })
        .collect();
    let replies = futures_util::future::join_all(burst).await;
    let metrics = client.get(&format!("{base}/metrics")).await.body;
    let timeouts = metric(&metrics, "lazyrec_lb_backend_errors_total{reason=\"timeout\",variant=\"main\"}");
    let busy = main.in_flight();
    println!("burst of 20: {timeouts} attempts timed out on the hung backend, {busy} still holding its slots");
    let by_nightly = replies.iter().filter(|r| r.header("x-variant") == "nightly").count();
    let shed = replies
        .iter()
        .filter(|r| r.header("x-variant") == "fallback")
        .inspect(|r| assert_eq!(r.header("x-degraded"), "overloaded: every backend at its concurrency limit"))
        .count();
    println!("{by_nightly} served by nightly, {shed} shed to the fallback list at once");
    assert!(replies.iter().all(|r| r.status == 200), "all answered");
    assert_eq!(by_nightly + shed, replies.len(), "none served by the hung backend");
    assert!(by_nightly >= 4, "nightly took what its limit allows");
    assert_eq!(timeouts, 4.0, "only the limit's worth of attempts waited on the hung backend");
    assert_eq!(busy, 4, "the hung attempts still hold their slots");
    tokio::time::sleep(config.deadline() * 2 + Duration::from_millis(300)).await;
    assert_eq!(main.in_flight(), 0, "the slots come back after the linger");
    lb.shutdown().await.expect("shutdown");
    fleet.shutdown().await;
}
