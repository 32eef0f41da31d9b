//! The Kafka path end to end against a real Kafka-protocol broker (tansu): simulator → topic →
//! `lazyrec-db ingest --kafka-topic --follow` (a consumer group) → Postgres, with the ingester
//! SIGKILLed mid-stream and restarted: no event lost or duplicated, on a topic of one partition
//! and on one of three (a position per partition, committed with the events).
//!
//! Runs when `tansu` is installed (`ci/install-kafka.sh`; or `LAZYREC_TANSU=/path/to/tansu`),
//! prints `SKIPPED: <reason>` otherwise.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use db::testing::TestDb;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use simulator::population;
use simulator::run::{self, Config, Limit};
use simulator::sink::Output;
use simulator::user::Behaviour;
use tokio::process::{Child, Command};

const GROUP: &str = "lazyrec-ingest-test";

fn tansu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAZYREC_TANSU") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("tansu")).find(|p| p.is_file())
}

/// `lazyrec-db`, built next to this test binary (`cargo test --workspace` builds it).
fn lazyrec_db() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("lazyrec-db");
    assert!(bin.is_file(), "{} is missing: build the workspace (cargo test --workspace builds it)", bin.display());
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn ingester(db: &TestDb, brokers: &str, topic: &str, log: &std::path::Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("ingester log");
    Command::new(lazyrec_db())
        .args(["ingest", "--kafka-topic", topic, "--kafka-brokers", brokers, "--kafka-group", GROUP])
        .args(["--follow", "--batch-lines", "500", "--rating-scale", "5", "--no-progress"])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::from(out.try_clone().expect("clone")))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .expect("start the ingester")
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.expect(sql)
}

fn group_offset(brokers: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", GROUP).create().expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let committed = consumer.committed_offsets(list, Duration::from_secs(5)).ok()?;
    match committed.find_partition(topic, partition)?.offset() {
        Offset::Offset(n) => Some(n),
        Offset::Beginning | Offset::End | Offset::Stored | Offset::Invalid | Offset::OffsetTail(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_to_kafka_to_postgres_survives_an_ingester_killed_mid_stream() {
    kill_mid_stream("movielog-test", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_of_three_partitions_is_ingested_exactly_once_across_a_sigkill() {
    kill_mid_stream("movielog-three", 3).await;
}

async fn kill_mid_stream(topic: &str, partitions: i32) {
    let Some(tansu) = tansu() else {
        testkit::skip_or_fail(
            testkit::External::Kafka,
            "tansu (a Kafka-protocol broker) is not installed; `ci/install-kafka.sh` installs it",
        );
        return;
    };
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let url = format!("tcp://{brokers}");
    let work = tempfile::tempdir().expect("tempdir");
    let broker_log = std::fs::File::create(work.path().join("tansu.log")).expect("log");
    let mut broker = Command::new(&tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::from(broker_log.try_clone().expect("clone")))
        .stderr(Stdio::from(broker_log))
        .kill_on_drop(true)
        .spawn()
        .expect("start tansu");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let created = Command::new(&tansu)
            .args(["topic", "create", topic, "--partitions", &partitions.to_string(), "--broker", &url])
            .output()
            .await
            .expect("tansu topic create");
        if created.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "could not create the topic: {}; broker log: {}",
            String::from_utf8_lossy(&created.stderr),
            std::fs::read_to_string(work.path().join("tansu.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let db = TestDb::new().await;
    let ingest_log = work.path().join("ingest.log");
    let mut first = ingester(&db, &brokers, topic, &ingest_log);

    let (addr, stub) = simulator::stub::serve("127.0.0.1:0".parse().expect("addr"), 500).await.expect("stub");
    let config = Config {
        target: format!("http://{addr}"),
        rate: 1_000.0,
        limit: Limit::Requests(6_000),
        timeout: Duration::from_millis(600),
        behaviour: Behaviour::default(),
        seed: 7,
        max_in_flight: 10_000,
        output: Output::Kafka { brokers: brokers.clone(), topic: topic.into() },
        progress: false,
        trace: false,
        metrics: None,
    };
    let people = population::synthetic(500, 500, 30, 7);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let simulation = tokio::spawn(run::run(config, people, stop_rx));

    // Kill the first ingester (SIGKILL) once it has committed part of the stream.
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar(&db, "SELECT last_event_id FROM ingest_watermark").await < 3_000 {
        assert!(
            Instant::now() < deadline,
            "the ingester never got going: {}",
            std::fs::read_to_string(&ingest_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.start_kill().expect("SIGKILL");
    let _exit = first.wait().await;
    let at_kill = scalar(&db, "SELECT last_event_id FROM ingest_watermark").await;
    let lanes_at_kill = scalar(&db, "SELECT count(*) FROM ingest_sources WHERE position > 0").await;
    let mut second = ingester(&db, &brokers, topic, &ingest_log);

    let finished = simulation.await.expect("join").expect("simulate");
    stub.abort();
    let r = &finished.report;
    println!("{}", r.render());
    assert_eq!(r.undelivered, 0);
    let total = (r.lines.recommendation + r.lines.watch + r.lines.rate + r.lines.create_account) as i64;
    assert!(at_kill < total, "the kill came mid-stream ({at_kill} of {total} events in)");

    let deadline = Instant::now() + Duration::from_secs(90);
    while scalar(&db, "SELECT last_event_id FROM ingest_watermark").await < total {
        assert!(
            Instant::now() < deadline,
            "events missing after the restart: {} of {total}; ingester log: {}",
            scalar(&db, "SELECT last_event_id FROM ingest_watermark").await,
            std::fs::read_to_string(&ingest_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = [
        ("watch_events", r.lines.watch),
        ("rating_events", r.lines.rate),
        ("recommendation_events", r.lines.recommendation),
        ("account_events", r.lines.create_account),
    ];
    for (table, n) in counts {
        assert_eq!(
            scalar(&db, &format!("SELECT count(*) FROM {table}")).await,
            n as i64,
            "{table}: no loss, no duplicate"
        );
    }
    assert_eq!(scalar(&db, "SELECT count(*) FROM rejected_lines").await, 0);
    assert_eq!(scalar(&db, "SELECT last_event_id FROM ingest_watermark").await, total);
    // One row per partition; the positions are the next offsets, and they add up to the lines.
    let lanes: Vec<(String, i64)> = sqlx::query_as("SELECT source, position FROM ingest_sources ORDER BY source")
        .fetch_all(&db.pool)
        .await
        .expect("lanes");
    let expected: Vec<String> = (0..partitions).map(|p| format!("kafka:{topic}/{p}")).collect();
    assert_eq!(lanes.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), expected, "a position per partition");
    assert_eq!(lanes.iter().map(|(_, p)| p).sum::<i64>(), total, "one message per line");
    assert!(lanes.iter().all(|(_, p)| *p > 0), "every partition carried lines (keyed by user): {lanes:?}");
    // Every batch row names the partition its lines came from; each partition's rows tile it.
    for (source, position) in &lanes {
        let (rows, covered): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), sum(to_position - from_position)::bigint FROM ingest_batches WHERE source = $1",
        )
        .bind(source)
        .fetch_one(&db.pool)
        .await
        .expect("batches");
        assert!(rows > 0);
        assert_eq!(covered, Some(*position), "{source}: batches cover 0..{position} once");
    }
    // The consumer group's offsets follow Postgres (committed after each transaction).
    for (partition, (source, position)) in lanes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let committed = tokio::task::spawn_blocking({
                let (brokers, topic) = (brokers.clone(), topic.to_string());
                move || group_offset(&brokers, &topic, partition as i32)
            })
            .await
            .expect("join");
            if committed == Some(*position) {
                break;
            }
            assert!(
                committed.is_none_or(|c| c <= *position),
                "{source}: the group offset {committed:?} ran ahead of Postgres ({position})"
            );
            assert!(
                Instant::now() < deadline,
                "{source}: the group offset stayed at {committed:?}, Postgres has {position}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!(
        "kafka: {total} lines through {topic} ({partitions} partitions: {lanes:?}); ingester SIGKILLed at event {at_kill} with {lanes_at_kill} partition positions committed, restarted; {total} events, no loss, no duplicate"
    );
    second.start_kill().expect("kill");
    let _exit = second.wait().await;
    broker.start_kill().expect("kill tansu");
    let _exit = broker.wait().await;
}
