//! The response log's journal driven step by step: rows journaled, shipped, and — after a crash
//! that lost the shipping checkpoint — shipped again without a single duplicate row.

use std::time::Duration;

use chrono::Utc;
use loadbalancer::history::{HistoryLog, Inputs, Row, Shipper, ShipperOptions};
use loadbalancer::journal::{FsyncPolicy, Journal};
use loadbalancer::metrics::Metrics;

fn row(i: usize) -> Row<'static> {
    Row {
        request_id: format!("req-{i}").into(),
        ts: Utc::now(),
        user_id: Some(i as i64),
        experiment: Some("e".into()),
        assigned_variant: Some("main".into()),
        served_variant: "main".into(),
        backend: Some("http://127.0.0.1:1".into()),
        release_id: None,
        model_version: Some("m@1".into()),
        data_watermark: Some(7),
        status: 200,
        latency_us: 1_000,
        movie_ids: vec!["a+b+1999".into(), "quote\"back\\slash\ttab".into()],
        degraded: false,
        error: i.is_multiple_of(2).then(|| "main x: timeout: no answer\nwithin 1 ms".into()),
        inputs: Some(Inputs {
            protocol: "http".into(),
            limit: Some(20),
            kind: Some("personal".into()),
            client_request_id: None,
            data_versions: None,
        }),
        bucket: Some(3),
    }
}

fn options() -> ShipperOptions {
    ShipperOptions {
        batch_rows: 4,
        flush: Duration::from_millis(10),
        retry: Duration::from_millis(10),
        insert_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_shipped_again_after_a_lost_checkpoint_are_stored_once() {
    let db = db::testing::TestDb::new().await;
    let dir = tempfile::tempdir().expect("journal dir");
    let open = || Journal::open(dir.path(), 1 << 20, FsyncPolicy::Always, Duration::from_millis(5)).expect("open");
    let metrics = Metrics::new().expect("metrics");

    let journal = open();
    let log = HistoryLog::new(journal.clone(), metrics.clone());
    let rows: Vec<Row<'static>> = (0..10).map(row).collect();
    for r in &rows[..9] {
        log.record(r).await;
    }
    // A row as journals written before records were COPY rows held it: a JSON line, still read.
    let mut legacy = serde_json::to_vec(&rows[9]).expect("json");
    legacy.push(b'\n');
    journal.append(&legacy, 1).expect("append a JSON line");
    assert_eq!(log.queued(), 10);
    let mut shipper = Shipper::new(db.pool.clone(), journal.clone(), metrics.clone(), options());
    let mut shipped = 0;
    while shipped < 10 {
        let step = shipper.step().await.expect("step");
        assert!(step.rows > 0);
        shipped += step.rows;
    }
    assert_eq!(log.queued(), 0);
    journal.close();
    drop((shipper, log, journal));

    // A crash before the checkpoint reached the disk: everything is read again.
    std::fs::remove_file(dir.path().join("shipped")).expect("lose the checkpoint");
    let journal = open();
    assert_eq!(journal.pending_rows(), 10);
    let mut shipper = Shipper::new(db.pool.clone(), journal.clone(), metrics.clone(), options());
    loop {
        let step = shipper.step().await.expect("step again");
        if step.rows == 0 {
            break;
        }
    }
    journal.close();
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM recommendations_history").fetch_one(&db.pool).await.expect("count");
    assert_eq!(count, 10, "no duplicates, none lost");
    assert_eq!(metrics.history_written.get(), 10, "the second shipment stored nothing new");
    // What went in is what came out: the awkward characters survive COPY's escaping.
    let (ids, error): (Vec<String>, Option<String>) =
        sqlx::query_as("SELECT movie_ids, error FROM recommendations_history WHERE request_id = 'req-2'")
            .fetch_one(&db.pool)
            .await
            .expect("row");
    assert_eq!(ids, rows[2].movie_ids.iter().map(|m| m.to_string()).collect::<Vec<_>>());
    assert_eq!(error.as_deref(), rows[2].error.as_deref());
    // Both record forms store the same columns.
    for i in [2, 9] {
        let (ts, user_id, inputs): (chrono::DateTime<Utc>, Option<i64>, serde_json::Value) =
            sqlx::query_as("SELECT ts, user_id, inputs FROM recommendations_history WHERE request_id = $1")
                .bind(format!("req-{i}"))
                .fetch_one(&db.pool)
                .await
                .expect("row");
        assert_eq!((ts.timestamp_micros(), user_id), (rows[i].ts.timestamp_micros(), rows[i].user_id), "row {i}");
        assert_eq!(inputs["kind"], "personal", "row {i}");
    }
    let sightings: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_model_map").fetch_one(&db.pool).await.expect("sightings");
    assert_eq!(sightings, 10);
}
