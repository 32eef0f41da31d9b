//! Injected bad nightlies, through a fault proxy in front of a real nightly server (the only
//! fake: the network edge): +200 ms on every answer is aborted by the latency guardrail, 5 %
//! errors by the failure guardrail — while no client request fails (the load balancer fails
//! over), and each abort names its criterion.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use release::controller;
use release::decision::Criterion;
use release::notify::Notifier;

use crate::fleet::Client;

#[derive(Clone, Copy)]
enum Fault {
    Delay(Duration),
    /// Every n-th request answers 503.
    ErrorEvery(u64),
}

/// An HTTP proxy to `upstream` that injects `fault` on `/recommend/…` (not on `/ready`).
async fn fault_proxy(upstream: String, fault: Fault) -> String {
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let count = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (client, upstream, count) = (client.clone(), upstream.clone(), count.clone());
        async move {
            let path = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            if path.starts_with("/recommend/") {
                match fault {
                    Fault::Delay(d) => tokio::time::sleep(d).await,
                    Fault::ErrorEvery(n) => {
                        if count.fetch_add(1, Ordering::Relaxed) % n == n - 1 {
                            return axum::response::Response::builder()
                                .status(503)
                                .body(axum::body::Body::from("injected fault\n"))
                                .expect("response");
                        }
                    }
                }
            }
            let mut forward = hyper::Request::get(format!("{upstream}{path}"));
            for (k, v) in request.headers() {
                forward = forward.header(k, v);
            }
            let response = client.request(forward.body(Empty::new()).expect("request")).await.expect("upstream");
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.expect("body").to_bytes();
            axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn bad_nightly_is_aborted(fault: Fault, tag: &str, want: Criterion) {
    let (fleet, lb, admin, _state_dir) = crate::stack().await;
    let pool = &fleet.stack.db.pool;
    let proxy = fault_proxy(fleet.nightly_url(), fault).await;
    let notify = Notifier::new(None);
    let mut start = crate::start_args(tag, "neighbours-v2", "popularity-v1", &proxy);
    start.gate.release.share = 0.3;
    let (id, _) = controller::start(pool, &admin, &notify, &start).await.expect("start");

    // Traffic until each variant has enough responses for the guardrails.
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();
    let failed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for k in 0..8u64 {
        let (client, base, failed, sent, stop) =
            (client.clone(), base.clone(), failed.clone(), sent.clone(), stop.clone());
        load.spawn(async move {
            let mut user = 1 + k;
            while !stop.load(Ordering::Relaxed) {
                let r = client.try_request("GET", &format!("{base}/recommend/{user}"), &[], None).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if !matches!(&r, Ok(r) if r.status == 200 && r.header("x-variant") != "fallback") {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                user = if user > 592 { 1 + k } else { user + 8 };
            }
        });
    }
    // The real controller judges and acts: `lazyrec-release evaluate --release ID --act`, once a
    // second (each look recorded, the p-value carried between looks), until it exits with the
    // abort code; the abort itself is its own (state, reason, the nightly emptied).
    let ctl = crate::crash::Controller {
        database_url: fleet.stack.db.url.clone(),
        admin_url: format!("http://{}", lb.admin_addr.expect("admin")),
    };
    let codes = String::from_utf8_lossy(&ctl.run(&["exit-codes"], None).await.stdout).to_string();
    let code_of = |name: &str| -> i32 {
        codes.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).and_then(|c| c.parse().ok()).expect("code")
    };
    let (stop_code, continue_code) = (code_of("EXIT_STOP"), code_of("EXIT_CONTINUE"));
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let id_arg = id.to_string();
    let (looks, last) = loop {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let out = ctl.run(&["evaluate", "--release", &id_arg, "--act", "--window-s", "0"], None).await;
        let code = out.status.code().expect("exited");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            code == stop_code || code == continue_code,
            "evaluate exited {code}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let looks: i64 =
            sqlx::query_scalar("SELECT count(*) FROM release_events WHERE release_id = $1 AND step = 'evaluate'")
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("looks");
        if code == stop_code || std::time::Instant::now() > deadline {
            break (looks, text);
        }
    };
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("SELECT state, decision_reason FROM releases WHERE release_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("release");
    assert_eq!(state, "aborted", "not aborted within 90 s after {looks} looks: {last}");
    let reason = reason.unwrap_or_default();
    let criterion = format!("{want:?}");
    assert!(reason.starts_with(&criterion), "{reason}");
    assert!(last.contains("ABORT"), "{last}");
    assert!(admin.state().await.expect("state").nightly.is_empty(), "the abort emptied the nightly");
    let carried: Option<f64> = sqlx::query_scalar(
        "SELECT (details->'comparison'->>'p_always_valid')::float8 FROM release_events
         WHERE release_id = $1 AND step = 'evaluate' ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("last look");
    assert!(carried.is_some_and(|p| p <= 1.0), "each look records its always-valid p-value");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{tag}: aborted by `evaluate --act` after {looks} looks: {reason}; {sent} client requests through it and the abort, {failed} failed"
    );
    assert_eq!(failed, 0, "no client request fails: the load balancer fails over or waits");
    assert!(sent > 400);
    lb.shutdown().await.expect("lb shutdown");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nightly_200_ms_slower_is_aborted_by_the_latency_guardrail() {
    bad_nightly_is_aborted(
        Fault::Delay(Duration::from_millis(200)),
        "release-recommender-nightly-slow",
        Criterion::Latency,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nightly_failing_5_percent_is_aborted_by_the_failure_guardrail() {
    bad_nightly_is_aborted(Fault::ErrorEvery(20), "release-recommender-nightly-flaky", Criterion::Failures).await;
}
