//! A primary and its hot standby (two real private clusters, streaming replication made by
//! `pg_basebackup`): a two-host pool writes to the primary, a `prefer-standby` pool reads from
//! the standby; the primary is SIGKILLed, the standby promoted, and the writer follows it
//! without losing a committed row.

use std::time::{Duration, Instant};

use db::failover::{Hosts, Target};
use db::pgcluster::{Durability, PgCluster};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

async fn scalar<T>(pool: &PgPool, sql: &str) -> Result<T, sqlx::Error>
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    sqlx::query_scalar(sql).fetch_one(pool).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_host_pool_follows_the_promoted_standby_and_loses_no_committed_row() {
    let mut primary = PgCluster::start_ephemeral(None, Durability::Disposable).expect("primary");
    let standby = primary.start_ephemeral_standby().expect("standby from pg_basebackup");
    // Synchronous replication, as `lazyrec-db up --standby` sets it (the disposable cluster
    // turns synchronous_commit off; a committed row must be on the standby).
    let mut admin = PgConnection::connect(&primary.url("postgres")).await.expect("admin");
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "ALTER SYSTEM SET synchronous_commit = 'on'",
        "SELECT pg_reload_conf()",
        "CREATE TABLE shipped (id bigint PRIMARY KEY)",
    ] {
        sqlx::query(statement).execute(&mut admin).await.expect(statement);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sync: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")
            .fetch_one(&mut admin)
            .await
            .expect("replication");
        if sync > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the standby never became a synchronous one");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(admin);

    let url = primary.url_with_standby(&standby, "postgres");
    let writer = db::connect_pool(&url, 2).await.expect("writer on the two-host URL");
    assert_eq!(writer.connect_options().get_port(), primary.port(), "writers start on the primary");
    let options = || PgPoolOptions::new().max_connections(2).acquire_timeout(Duration::from_secs(1));
    let reader =
        db::failover::lazy_pool(options(), Hosts::parse(&url).expect("url").with_target(Target::PreferStandby));
    for id in 1..=500i64 {
        sqlx::query("INSERT INTO shipped VALUES ($1)").bind(id).execute(&writer).await.expect("insert");
    }
    // The reader moves to the standby and sees every committed row there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let on_standby = scalar::<bool>(&reader, "SELECT pg_is_in_recovery()").await.unwrap_or(false);
        let rows = scalar::<i64>(&reader, "SELECT count(*) FROM shipped").await.unwrap_or(0);
        if on_standby && rows == 500 {
            break;
        }
        assert!(Instant::now() < deadline, "reads never reached the standby (standby: {on_standby}, rows {rows})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    primary.crash();
    let killed = Instant::now();
    assert!(
        sqlx::query("INSERT INTO shipped VALUES (501)").execute(&writer).await.is_err(),
        "no primary: the write fails (its caller keeps it)"
    );
    // Reads go on from the standby while there is no primary.
    assert_eq!(scalar::<i64>(&reader, "SELECT count(*) FROM shipped").await.expect("read during the outage"), 500);

    standby.promote().expect("promote");
    let mut admin = PgConnection::connect(&standby.url("postgres")).await.expect("admin on the new primary");
    for statement in ["ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"] {
        sqlx::query(statement).execute(&mut admin).await.expect(statement);
    }
    let promoted = killed.elapsed();
    // The writer retries, as the load balancer's shipper does, until the pool has moved.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match sqlx::query("INSERT INTO shipped VALUES (501)").execute(&writer).await {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "the writer never reached the promoted standby: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let writable = killed.elapsed();
    assert_eq!(writer.connect_options().get_port(), standby.port(), "the writer follows the promotion");
    assert_eq!(
        scalar::<i64>(&writer, "SELECT count(*) FROM shipped").await.expect("count"),
        501,
        "every row committed before the crash is on the promoted standby"
    );
    println!(
        "failover: primary SIGKILLed; promoted after {:.0} ms, writes accepted again after {:.0} ms; 500 committed rows kept",
        promoted.as_secs_f64() * 1e3,
        writable.as_secs_f64() * 1e3
    );
}
