//! `prune --before`: history older than the cut goes together with what only it referred to;
//! everything a remaining row, the live/previous collection or the latest popularity run needs
//! stays. Real Postgres (fresh database), a real qdrant-edge store, the real binary for the CLI.

use std::process::Command;

use chrono::{DateTime, TimeDelta, Utc};
use db::testing::TestDb;
use vectorstore::edge::EdgeStore;
use vectorstore::{CollectionSpec, MoviePoint, VectorStore};

async fn history(pool: &sqlx::PgPool, id: &str, ts: DateTime<Utc>, run: i64, collection: Option<&str>) {
    let versions =
        proto::contract::DataVersions { popularity: run, collection: collection.map(str::to_string), exclude: None };
    testkit::history::HistoryRow::new(id, ts)
        .movies(&["m1"])
        .kind("personal")
        .data_versions(&versions)
        .insert(pool)
        .await;
}

async fn popularity_run(pool: &sqlx::PgPool, run: i64, computed_at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO popularity_runs (run_id, computed_at, watermark, params, movies) VALUES ($1, $2, 0, '{}', 2)",
    )
    .bind(run)
    .bind(computed_at)
    .execute(pool)
    .await
    .expect("run");
    sqlx::query("INSERT INTO popularity_run_movies VALUES ($1, 1, 'm1', 10), ($1, 2, 'm2', 5)")
        .bind(run)
        .execute(pool)
        .await
        .expect("run list");
}

async fn collection(pool: &sqlx::PgPool, store: &EdgeStore, name: &str, state: &str) {
    let spec = CollectionSpec { content_dim: 4, behaviour_dim: None, items: false, hnsw: Default::default() };
    store.create_collection(name, &spec).await.expect("create");
    let point = MoviePoint {
        id: vectorstore::point_id("m1"),
        vector: vec![1.0, 0.0, 0.0, 0.0],
        behaviour: None,
        item_dim: None,
        items: None,
        movie_id: "m1".into(),
        title: "M1".into(),
        year: None,
        genres: vec![],
        text_hash: "h".into(),
    };
    store.upsert(name, vec![point]).await.expect("upsert");
    sqlx::query(
        "INSERT INTO embedding_collections (name, store, model, template, catalog_hash, dim, state, live_at)
         VALUES ($1, $2, 'm', 't1', 'c', 4, $3, now())",
    )
    .bind(name)
    .bind(store.describe())
    .bind(state)
    .execute(pool)
    .await
    .expect("record");
}

async fn run_lists(pool: &sqlx::PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT DISTINCT run_id FROM popularity_run_movies ORDER BY 1")
        .fetch_all(pool)
        .await
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_history_with_what_only_it_referred_to_and_nothing_else() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let dir = tempfile::tempdir().expect("store dir");
    let store = EdgeStore::open(dir.path()).expect("store");
    let now = Utc::now();
    let (old, cut, recent) = (now - TimeDelta::hours(3), now - TimeDelta::hours(2), now - TimeDelta::minutes(30));

    // Runs 1–3 computed before the cut, 4 and 5 (the latest) after it.
    for (run, at) in [(1, old), (2, old), (3, old), (4, recent), (5, recent)] {
        popularity_run(pool, run, at).await;
    }
    // Collections: `a_old` retained, named only by old rows → goes; `b_kept` retained, named by
    // a recent row → stays; `c_previous` and `d_live` stay whatever history says.
    for (name, state) in [
        ("movies_a_old", "retained"),
        ("movies_b_kept", "retained"),
        ("movies_c_previous", "previous"),
        ("movies_d_live", "live"),
    ] {
        collection(pool, &store, name, state).await;
    }
    store.set_live("movies_d_live").await.expect("live");
    // A retained collection of another store: not this store's to drop.
    sqlx::query(
        "INSERT INTO embedding_collections (name, store, model, template, catalog_hash, dim, state)
         VALUES ('movies_e_elsewhere', 'qdrant:http://elsewhere', 'm', 't1', 'c', 4, 'retained')",
    )
    .execute(pool)
    .await
    .expect("elsewhere");
    history(pool, "old-1", old, 1, Some("movies_a_old")).await;
    history(pool, "old-2", old, 2, Some("movies_c_previous")).await;
    history(pool, "old-3", old, 1, Some("movies_e_elsewhere")).await;
    history(pool, "old-4", old, 2, None).await;
    history(pool, "new-1", recent, 2, Some("movies_b_kept")).await;
    history(pool, "new-2", recent, 5, Some("movies_d_live")).await;

    // The CLI refuses a cut younger than an hour, in one line, exit 2.
    let bin = env!("CARGO_BIN_EXE_lazyrec-provenance");
    let young = Command::new(bin)
        .args(["prune", "--before", &now.to_rfc3339()])
        .env("DATABASE_URL", &db.url)
        .env("LAZYREC_EDGE_DIR", dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&young.stderr);
    println!("{stderr}");
    assert_eq!(young.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("less than an hour ago") && stderr.trim().lines().count() == 1, "{stderr}");

    // Dry run (the CLI, JSON): the plan, nothing deleted.
    let dry = Command::new(bin)
        .args(["prune", "--before", &cut.to_rfc3339(), "--dry-run", "--json"])
        .env("DATABASE_URL", &db.url)
        .env("LAZYREC_EDGE_DIR", dir.path())
        .output()
        .expect("run");
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    println!("dry run: {report}");
    assert_eq!(report["plan"]["history_rows"], 4);
    assert_eq!(report["plan"]["popularity_runs"], serde_json::json!([1, 3]));
    assert_eq!(report["plan"]["collections"], serde_json::json!(["movies_a_old"]));
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM recommendations_history").fetch_one(pool).await.expect("count");
    assert_eq!(rows, 6, "a dry run deletes nothing");

    // The prune.
    let report = provenance::prune::prune(pool, &store, cut, false, |_| {}).await.expect("prune");
    print!("{}", report.render());
    assert_eq!(
        (report.history_rows, report.popularity_runs.clone(), report.collections.clone()),
        (4, vec![1, 3], vec!["movies_a_old".to_string()])
    );
    let left: Vec<String> = sqlx::query_scalar("SELECT request_id FROM recommendations_history ORDER BY 1")
        .fetch_all(pool)
        .await
        .expect("left");
    assert_eq!(left, ["new-1", "new-2"]);
    assert_eq!(run_lists(pool).await, [2, 4, 5], "run 2 is still named; 4 is newer than the cut; 5 is the latest");
    let mut stored = store.collections().await.expect("list");
    stored.sort();
    assert_eq!(stored, ["movies_b_kept", "movies_c_previous", "movies_d_live"]);
    let states: Vec<(String, String)> = sqlx::query_as("SELECT name, state FROM embedding_collections ORDER BY name")
        .fetch_all(pool)
        .await
        .expect("states");
    assert_eq!(
        states,
        [
            ("movies_a_old".to_string(), "dropped".to_string()),
            ("movies_b_kept".into(), "retained".into()),
            ("movies_c_previous".into(), "previous".into()),
            ("movies_d_live".into(), "live".into()),
            ("movies_e_elsewhere".into(), "retained".into()),
        ]
    );
    // What remains still reads what it named: the provenance view resolves the run and collection.
    let (run, coll): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT popularity_run, collection FROM recommendation_provenance WHERE request_id = 'new-1'")
            .fetch_one(pool)
            .await
            .expect("view");
    assert_eq!((run, coll.as_deref()), (Some(2), Some("movies_b_kept")));

    // Again: nothing more to do. A cut after everything: the latest run is never pruned, nor
    // the live or previous collection.
    let again = provenance::prune::prune(pool, &store, cut, false, |_| {}).await.expect("again");
    assert_eq!((again.history_rows, again.popularity_runs.len(), again.collections.len()), (0, 0, 0));
    let all = provenance::prune::prune(pool, &store, now + TimeDelta::days(1), true, |_| {}).await.expect("plan");
    assert_eq!(all.plan.history_rows, 2);
    assert_eq!(all.plan.popularity_runs, [2, 4]);
    assert_eq!(all.plan.collections, ["movies_b_kept"]);
}

/// A cut inside a running experiment's window, or inside a load balancer's journal backlog, is
/// refused (in one line, exit 2, from the CLI); once the experiment ended and the cut precedes
/// the backlog, it is accepted.
#[tokio::test]
async fn prune_refuses_a_cut_inside_a_running_experiment_or_a_journal_backlog() {
    use provenance::prune::{PruneError, check_cut};
    let db = TestDb::new().await;
    let pool = &db.pool;
    let now = Utc::now();
    let cut = now - TimeDelta::hours(3);
    sqlx::query(
        "INSERT INTO releases (tag, version, strategy, model_version, experiment_started_at)
         VALUES ('release-recommender-nightly-9', '9', 'items-v1', 'm', $1)",
    )
    .bind(now - TimeDelta::hours(5))
    .execute(pool)
    .await
    .expect("a running experiment");
    let running = check_cut(pool, cut, &[]).await;
    assert!(
        matches!(&running, Err(PruneError::CutTooRecent { why, .. }) if why.contains("runs an experiment")),
        "{running:?}"
    );
    let bin = env!("CARGO_BIN_EXE_lazyrec-provenance");
    let dir = tempfile::tempdir().expect("dir");
    let cli = |journal: &std::path::Path| {
        Command::new(bin)
            .args(["prune", "--dry-run", "--before", &cut.to_rfc3339(), "--journal-dir"])
            .arg(journal)
            .env("DATABASE_URL", &db.url)
            .env("LAZYREC_EDGE_DIR", dir.path())
            .output()
            .expect("run")
    };
    let refused = cli(&dir.path().join("no-journal"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("release-recommender-nightly-9") && stderr.trim().lines().count() == 1, "{stderr}");
    sqlx::query("UPDATE releases SET experiment_ended_at = now()").execute(pool).await.expect("ended");
    check_cut(pool, cut, &[]).await.expect("no experiment runs");

    let journal_dir = dir.path().join("journal");
    let journal = loadbalancer::journal::Journal::open(
        &journal_dir,
        1 << 20,
        loadbalancer::journal::FsyncPolicy::Never,
        std::time::Duration::ZERO,
    )
    .expect("journal");
    let row = format!("{{\"ts\":\"{}\"}}\n", (now - TimeDelta::hours(4)).to_rfc3339());
    journal.append(row.as_bytes(), 1).expect("an unshipped row");
    let backlog = check_cut(pool, cut, std::slice::from_ref(&journal_dir)).await;
    assert!(matches!(&backlog, Err(PruneError::CutTooRecent { why, .. }) if why.contains("journal")), "{backlog:?}");
    let refused = cli(&journal_dir);
    assert_eq!(refused.status.code(), Some(2), "{}", String::from_utf8_lossy(&refused.stderr));
    check_cut(pool, now - TimeDelta::hours(5), std::slice::from_ref(&journal_dir)).await.expect("before the backlog");
    journal.close();
}
