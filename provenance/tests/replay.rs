//! Replay against the real stack (two servers with real embeddings, the load balancer logging
//! history, Postgres with the default dataset): every answer replays identically — also after
//! further ingest moved the watermark (re-watches and re-ratings of the same users), after a new
//! popularity run, and after main changed model — and a row whose inputs are gone is reported as
//! not reproducible, never as a match.

#[allow(dead_code)]
#[path = "../../server/tests/it/helpers.rs"]
mod helpers;

#[allow(dead_code)]
#[path = "../../loadbalancer/tests/it/fleet.rs"]
mod fleet;

use std::time::Duration;

use db::ingest::{IngestOptions, Ingester};
use db::parse::{DEFAULT_MAX_USER_ID, ParseConfig};
use db::source::StreamSource;
use provenance::replay::{Outcome, Replayer, SearchParams, Tally};
use sqlx::Connection as _;

/// Requests `/recommend/<user>` through the load balancer for each user; the request ids.
async fn ask(base: &str, users: impl IntoIterator<Item = i64>) -> Vec<String> {
    let client = fleet::Client::new();
    let mut ids = Vec::new();
    for user in users {
        let reply = client.get(&format!("{base}/recommend/{user}")).await;
        assert_eq!(reply.status, 200, "user {user}: {}", reply.body);
        ids.push(reply.header("x-request-id").to_string());
    }
    ids
}

/// Waits until every request id is in recommendations_history.
async fn shipped(pool: &sqlx::PgPool, ids: &[String]) {
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM recommendations_history WHERE request_id = ANY($1)")
            .bind(ids)
            .fetch_one(pool)
            .await
            .expect("count");
        if n as usize == ids.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("history rows were not shipped");
}

async fn replay_all(replayer: &mut Replayer, ids: &[String]) -> Tally {
    let mut tally = Tally::default();
    for id in ids {
        let (recorded, outcome) = replayer.replay(id).await.expect("replay");
        tally.add(&recorded, &outcome);
    }
    tally
}

/// Ingests course log lines through the ordinary ingester.
async fn ingest(url: &str, name: &str, lines: &str) {
    let conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let opts = IngestOptions {
        parse: ParseConfig { rating_scale: 10, max_user_id: DEFAULT_MAX_USER_ID },
        ..IngestOptions::default()
    };
    let source =
        StreamSource::new(name.to_string(), std::io::Cursor::new(lines.as_bytes().to_vec()), Duration::from_secs(1));
    Ingester::run_once(conn, opts, vec![Box::new(source)]).await.expect("ingest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_answers_replay_identically_after_ingest_a_new_popularity_run_and_a_model_change() {
    let fleet = fleet::Fleet::new().await;
    let pool = fleet.stack.db.pool.clone();
    let state_dir = tempfile::tempdir().expect("state");
    let lb = loadbalancer::start(fleet.lb_config(state_dir.path())).await.expect("lb");
    let base = format!("http://{}", lb.http_addr);
    // The vectors as the servers have them: a copy of the store (the servers hold theirs open).
    let vectors = fleet.stack.edge_copy().await;
    let store =
        vectorstore::open(None, None, Duration::from_secs(30), Some(vectors.path()), vectors.path()).expect("store");
    let mut replayer = Replayer::new(pool.clone(), store, SearchParams::default());

    // 1. Known users (personal answers from both variants) and unknown ones (cold start).
    let users: Vec<i64> = (1..=240).chain(900_001..=900_010).collect();
    let first = ask(&base, users.iter().copied()).await;
    shipped(&pool, &first).await;
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT inputs->>'kind', count(*) FROM recommendations_history WHERE request_id = ANY($1) GROUP BY 1 ORDER BY 1",
    )
    .bind(&first)
    .fetch_all(&pool)
    .await
    .expect("kinds");
    println!("answers by kind: {kinds:?}");
    let tally = replay_all(&mut replayer, &first).await;
    println!("as answered: {tally:?}");
    assert_eq!((tally.identical, tally.different), (first.len() as u64, 0), "{tally:?}");

    // 2. The watermark moves: the same users re-watch what they had, rate it again, watch new
    // movies; a new popularity run lands. The old answers still replay identically (history as
    // of their watermark, their popularity run), and new answers too.
    let movies: Vec<String> = sqlx::query_scalar("SELECT movie_id FROM popularity ORDER BY rank LIMIT 30")
        .fetch_all(&pool)
        .await
        .expect("movies");
    let mut log = String::new();
    for user in 1..=120_i64 {
        let seen = fleet.stack.seen(user).await;
        for m in seen.iter().take(3) {
            log.push_str(&format!("2030-01-01T10:00:00,{user},GET /data/m/{m}/1.mpg\n"));
            log.push_str(&format!("2030-01-01T10:00:01,{user},GET /rate/{m}=1\n"));
        }
        for m in movies.iter().skip(user as usize % 10).take(4) {
            log.push_str(&format!("2030-01-01T10:01:00,{user},GET /data/m/{m}/1.mpg\n"));
        }
    }
    ingest(&fleet.stack.db.url, "more-events", &log).await;
    db::popularity::refresh(&pool, db::popularity::PopularityParams::default()).await.expect("popularity");
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the servers' refresh picks it up
    let second = ask(&base, users.iter().copied()).await;
    shipped(&pool, &second).await;
    let moved: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recommendations_history a JOIN recommendations_history b ON a.user_id = b.user_id
         WHERE a.request_id = ANY($1) AND b.request_id = ANY($2) AND a.movie_ids <> b.movie_ids",
    )
    .bind(&first)
    .bind(&second)
    .fetch_one(&pool)
    .await
    .expect("moved");
    assert!(moved > 50, "the new events changed many answers ({moved})");
    let tally = replay_all(&mut replayer, &[first.clone(), second.clone()].concat()).await;
    println!("after ingest and a popularity run: {tally:?}");
    assert_eq!((tally.identical, tally.different), (2 * first.len() as u64, 0), "{tally:?}");

    // 3. Main changes model (a popularity-v1 server, as a promotion or rollback would do).
    let edge = fleet.stack.edge_copy().await;
    let mut config = fleet.stack.config();
    config.store.edge_dir = Some(edge.path().to_path_buf());
    config.state_dir = edge.path().to_path_buf();
    config.model = server::strategy::ModelSpec { strategy: "popularity-v1".into(), params: serde_json::json!({}) };
    let popular = server::start(config).await.expect("popularity server");
    let admin = fleet::Client::new();
    let admin_url = format!("http://{}", lb.admin_addr.expect("admin"));
    let reply = admin
        .try_request(
            "PUT",
            &format!("{admin_url}/admin/main"),
            &[("authorization", &format!("Bearer {}", fleet::TOKEN))],
            Some(&serde_json::json!({"backends": [format!("http://{}", popular.http_addr)]}).to_string()),
        )
        .await
        .expect("admin");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let third = ask(&base, users.iter().copied()).await;
    shipped(&pool, &third).await;
    let models: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT model_version FROM recommendations_history ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("models");
    assert!(models.iter().any(|m| m.starts_with("popularity-v1@")), "{models:?}");
    let all = [first.clone(), second, third].concat();
    let tally = replay_all(&mut replayer, &all).await;
    println!("after the model change: {tally:?}");
    assert_eq!((tally.identical, tally.different), (all.len() as u64, 0), "{tally:?}");

    // The SQL answer for one row: model, code, data.
    let p = provenance::show::provenance(&pool, &first[0]).await.expect("show").expect("row");
    print!("{}", p.render());
    assert_eq!(p.strategy.as_deref(), Some("neighbours-v2"));
    assert!(p.code_git_sha.is_some() && p.popularity_run == Some(1) && p.collection.is_some(), "{p:?}");
    // (The collection's model/template come from embedding_collections, which the embedder
    // writes in its own database: the tests' shared store was embedded with another one.)
    assert!(p.sources.iter().any(|s| s.last_event_id.is_some_and(|l| l <= p.data_watermark.unwrap_or(0))));

    // 4. Inputs gone → not reproducible, never a match: the first popularity run pruned, and a
    // store without the collection.
    sqlx::query("DELETE FROM popularity_run_movies WHERE run_id = 1").execute(&pool).await.expect("prune");
    let mut fresh = Replayer::new(
        pool.clone(),
        vectorstore::open(None, None, Duration::from_secs(30), Some(vectors.path()), vectors.path()).expect("store"),
        SearchParams::default(),
    );
    let (_, outcome) = fresh.replay(&first[0]).await.expect("replay");
    assert!(
        matches!(&outcome, Outcome::NotReproducible { why } if why.contains("popularity run 1 is gone")),
        "{outcome:?}"
    );
    let empty = tempfile::tempdir().expect("empty store");
    let mut no_vectors = Replayer::new(
        pool.clone(),
        vectorstore::open(None, None, Duration::from_secs(30), Some(empty.path()), empty.path()).expect("store"),
        SearchParams::default(),
    );
    let personal: String = sqlx::query_scalar(
        "SELECT request_id FROM recommendations_history WHERE request_id = ANY($1) AND inputs->>'kind' = 'personal'
           AND model_version LIKE 'neighbours-v2@%' LIMIT 1",
    )
    .bind(&all)
    .fetch_one(&pool)
    .await
    .expect("a personal answer");
    let (_, outcome) = no_vectors.replay(&personal).await.expect("replay");
    assert!(matches!(&outcome, Outcome::NotReproducible { why } if why.contains("is gone")), "{outcome:?}");

    popular.shutdown().await.expect("popularity server");
    lb.shutdown().await.expect("lb shutdown");
    fleet.shutdown().await;
}
