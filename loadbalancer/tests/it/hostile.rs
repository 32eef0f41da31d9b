//! Hostile clients and backends: every input the load balancer echoes or records is clipped, a
//! connection that sends nothing is closed, connections beyond the limit are refused at once,
//! and a backend's huge bodies are never read whole. The misbehaving backend is a fake at the
//! edge; the other backends are real servers.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fleet::{Client, Fleet};

/// Reads until the peer closes (or `within` passes): whether it closed, and how long it took.
async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within.saturating_sub(start.elapsed()), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_and_limits_are_clipped_in_the_answer_and_in_the_log() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let lb = loadbalancer::start(fleet.lb_config(state.path())).await.expect("lb");
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();
    let id = "x".repeat(60_000);
    let bad_id = client.get(&format!("{base}/recommend/{id}")).await;
    let bad_limit = client.get(&format!("{base}/recommend/7?limit={}", "9".repeat(60_000))).await;
    let good = client.get(&format!("{base}/recommend/7")).await;
    lb.shutdown().await.expect("shutdown");

    assert_eq!((bad_id.status, bad_limit.status, good.status), (400, 400, 200));
    assert!(bad_id.body.len() < 256, "the 400 echoes a clipped id: {} bytes", bad_id.body.len());
    assert!(bad_id.body.contains("(60000 bytes)"), "{}", bad_id.body);
    assert!(bad_limit.body.len() < 256, "{} bytes", bad_limit.body.len());
    let widest: i32 = sqlx::query_scalar(
        "SELECT max(octet_length(coalesce(error, '')) + octet_length(coalesce(inputs::text, ''))) FROM recommendations_history",
    )
    .fetch_one(&fleet.stack.db.pool)
    .await
    .expect("rows");
    assert!(widest < 512, "no logged row carries the hostile input: {widest} bytes");
    assert_eq!(fleet.history_rows().await, 3, "every response logged");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_connections_beyond_the_limit_are_refused() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state.path());
    config.front.max_connections = 4;
    config.front.header_read_timeout_ms = 300;
    let lb = loadbalancer::start(config).await.expect("lb");
    let addr = lb.http_addr;

    // Four slowloris clients: two send nothing, two trickle an unfinished header.
    let mut slow = Vec::new();
    for i in 0..4 {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 1 {
            conn.write_all(b"GET /recommend/1 HTTP/1.1\r\nhost: x\r\n").await.expect("trickle");
        }
        slow.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut surplus = tokio::net::TcpStream::connect(addr).await.expect("the kernel accepts");
    let refused = closed_within(&mut surplus, Duration::from_secs(2)).await;
    let mut closed = Vec::new();
    for conn in &mut slow {
        closed.push(closed_within(conn, Duration::from_secs(5)).await);
    }
    let after = Client::new().get(&format!("http://{addr}/recommend/5")).await;
    let metrics = Client::new().get(&format!("http://{addr}/metrics")).await.body;
    lb.shutdown().await.expect("shutdown");

    assert!(
        refused.is_some_and(|t| t < Duration::from_millis(500)),
        "the fifth connection is closed at once: {refused:?}"
    );
    assert!(
        closed.iter().all(|c| c.is_some_and(|t| t < Duration::from_secs(2))),
        "closed after the timeout: {closed:?}"
    );
    assert_eq!(after.status, 200, "normal clients are served once the slow ones are gone");
    assert!(metrics.contains("lazyrec_lb_connections_refused_total 1"), "counted: {metrics}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_huge_bodies_are_not_read_whole_nor_logged() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let client = Client::new();
    for status in ["400 Bad Request", "200 OK", "503 Service Unavailable"] {
        let mut config = fleet.lb_config(state.path());
        config.main = vec![format!("http://{}", crate::fleet::scripted_backend(status, vec![b'e'; 2 << 20]).await)];
        config.nightly_share = Some(0.0);
        config.health.fall = 1_000_000;
        let lb = loadbalancer::start(config).await.expect("lb");
        let reply = client.get(&format!("http://{}/recommend/1", lb.http_addr)).await;
        lb.shutdown().await.expect("shutdown");
        assert!(reply.body.len() < 4096, "{status}: the client gets no 2 MB body: {} bytes", reply.body.len());
    }
    let widest: i32 = sqlx::query_scalar("SELECT max(octet_length(coalesce(error, ''))) FROM recommendations_history")
        .fetch_one(&fleet.stack.db.pool)
        .await
        .expect("rows");
    assert!(widest <= 600, "no logged row carries a backend's body: {widest} bytes");
    assert_eq!(fleet.history_rows().await, 3);
    fleet.shutdown().await;
}
