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
use release::decision::{self, Criteria, Criterion, Decision};
use release::notify::Notifier;
use release::online::{self, Window};

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
    let started = chrono::Utc::now() - chrono::Duration::seconds(1);

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
    let criteria = Criteria::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let evaluation = loop {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let window = Window {
            experiment: tag.into(),
            since: started,
            until: chrono::Utc::now(),
            conversion_window: chrono::Duration::zero(),
        };
        let (main, nightly) = online::measure(pool, &window).await.expect("measure");
        let e = decision::decide(main, nightly, 0, 0.3, Duration::from_secs(30), 1.0, &criteria);
        if matches!(e.decision, Decision::Abort { .. }) || std::time::Instant::now() > deadline {
            break e;
        }
    };
    let Decision::Abort { criterion, reason } = &evaluation.decision else {
        panic!("not aborted within 90 s: {:?}", evaluation.decision);
    };
    assert_eq!(*criterion, want, "{reason}");
    controller::abort(pool, &admin, &notify, id, reason).await.expect("abort");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{tag}: aborted by {criterion:?}: {reason}; {sent} client requests through it and the abort, {failed} failed"
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
