//! Faults: a nightly that dies under load costs no request; a hung backend costs one attempt;
//! with every backend gone the cached popularity list answers (variant `fallback`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use loadbalancer::assign::{self, Variant};

use crate::fleet::{Client, CutProxy, Fleet};
use crate::helpers::blackhole;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_nightly_under_load_fails_no_request_and_with_both_gone_the_fallback_answers() {
    let mut fleet = Fleet::new().await;
    let proxy = CutProxy::start(fleet.nightly.as_ref().expect("nightly").http_addr).await;
    let state = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state.path());
    config.nightly = vec![proxy.url()];
    let lb = loadbalancer::start(config).await.expect("lb");
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();

    // Load: 8 workers, distinct users, until told to stop; the nightly is cut after 1.5 s.
    let stop = Arc::new(AtomicBool::new(false));
    let next_user = Arc::new(AtomicU64::new(1));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, base, stop, next_user) = (client.clone(), base.clone(), stop.clone(), next_user.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let user = (next_user.fetch_add(1, Ordering::Relaxed) % 600 + 1) as i64;
                let at = Instant::now();
                let r = client.try_request("GET", &format!("{base}/recommend/{user}"), &[], None).await;
                seen.push((user, at, r));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let cut_at = Instant::now();
    proxy.cut().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.expect("worker"));
    }
    let total = results.len();
    let mut failovers_after_cut = 0;
    for (user, at, r) in &results {
        let r = r.as_ref().unwrap_or_else(|e| panic!("user {user}: the client got no response: {e}"));
        assert_eq!(r.status, 200, "user {user}: {}", r.body);
        assert_eq!(r.body.split(',').count(), 20);
        let assigned = assign::assign("test-release-1", 0.2, *user).1;
        assert_eq!(r.header("x-assigned-variant"), assigned.as_str());
        if *at > cut_at + Duration::from_millis(50) && assigned == Variant::Nightly {
            assert_eq!(r.header("x-variant"), "main", "user {user}: nightly is gone");
            failovers_after_cut += 1;
        }
    }
    println!("{total} requests, {failovers_after_cut} nightly users served by main after the cut, 0 failed");
    assert!(total > 200, "load ran: {total}");
    assert!(failovers_after_cut > 10, "{failovers_after_cut}");
    let metrics = client.get(&format!("{base}/metrics")).await.body;
    assert!(metrics.contains("lazyrec_lb_failovers_total{assigned=\"nightly\"}"), "{metrics}");

    // Both gone: the cached popularity list, as variant `fallback`.
    if let Some(main) = fleet.main.take() {
        main.shutdown().await.expect("main down");
    }
    let popular = fleet.stack.popular(20).await.join(",");
    for user in [1, 2, 3, 999_999] {
        let r = client.get(&format!("{base}/recommend/{user}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-variant"), "fallback");
        assert_eq!(r.header("x-recommendation-kind"), "fallback");
        assert!(!r.header("x-degraded").is_empty());
        assert_eq!(r.body, popular, "the popularity list");
    }
    let ready = client.get(&format!("{base}/ready")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains("fallback"), "{}", ready.body);
    lb.shutdown().await.expect("shutdown");

    let (rows, fallbacks, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE served_variant = 'fallback' AND model_version = 'fallback:popularity'
                                             AND degraded AND error IS NOT NULL),
                count(*) FILTER (WHERE status <> 200)
         FROM recommendations_history",
    )
    .fetch_one(&fleet.stack.db.pool)
    .await
    .expect("rows");
    assert_eq!(rows, total as i64 + 4, "one row per response");
    assert_eq!(fallbacks, 4);
    assert_eq!(failed, 0);
    let failovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recommendations_history WHERE assigned_variant = 'nightly' AND served_variant = 'main'",
    )
    .fetch_one(&fleet.stack.db.pool)
    .await
    .expect("failovers");
    assert!(failovers >= failovers_after_cut, "assigned and served variants are both recorded");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_costs_one_attempt_per_request_until_it_is_marked_unhealthy() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state.path());
    config.nightly = vec![format!("http://{}", blackhole())];
    config.health.interval_ms = 600_000; // only the request path observes it
    let lb = loadbalancer::start(config.clone()).await.expect("lb");
    let nightly = lb.lb.routing.load().nightly[0].clone();
    assert!(!nightly.healthy(), "the start-up check found it hung");
    nightly.set_healthy(true); // as if it hung after the last check
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();
    let nightly_users: Vec<i64> =
        (1..=2_000).filter(|&u| assign::assign("test-release-1", 0.2, u).1 == Variant::Nightly).take(10).collect();
    let mut took = Vec::new();
    for user in &nightly_users {
        let started = Instant::now();
        let r = client.get(&format!("{base}/recommend/{user}")).await;
        took.push(started.elapsed());
        assert_eq!(r.status, 200);
        // A 200 from main is an answer within the deadline: the last attempt gets only what is
        // left of it, and a timed-out last attempt is answered with an error.
        assert_eq!((r.header("x-assigned-variant"), r.header("x-variant")), ("nightly", "main"));
    }
    println!("latencies: {took:?}");
    let attempt = Duration::from_millis(config.attempt_timeout_ms);
    assert!(
        took[..3].iter().all(|t| *t >= attempt),
        "each of the first {} requests waited one attempt",
        config.health.fall
    );
    assert!(!nightly.healthy(), "marked unhealthy after {} failures", config.health.fall);
    lb.shutdown().await.expect("shutdown");
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM recommendations_history WHERE error LIKE '%timeout%'")
        .fetch_one(&fleet.stack.db.pool)
        .await
        .expect("rows");
    // Counted, not timed: the later requests skipped the unhealthy nightly, so only the first
    // three rows carry a timed-out attempt.
    assert_eq!(logged, 3, "the failed attempts are recorded on the rows they delayed");
    fleet.shutdown().await;
}
