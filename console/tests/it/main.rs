//! The console in a real browser (Debian's chromium over WebDriver, chromedriver) against the
//! real stack: the closed loop (Postgres with the default dataset, two servers with real
//! embeddings, the load balancer, the ingester following the simulator's log), one release
//! started by the release controller with two recorded looks, simulated traffic — then every
//! page, checked against what SQL gives for the same release, user and request id, with no
//! error in the browser's console, a screenshot of each, and the promote button carrying the
//! release to main.

mod browser;

use std::time::{Duration, Instant};

use release::controller;
use release::decision::Criteria;
use release::look::{self, LookParams};
use release::notify::Notifier;
use simulator::population::{self, PopulationSpec};
use simulator::run::{self, Limit};
use simulator::sink::Output;
use simulator::user::Behaviour;
use testkit::closed_loop::{ClosedLoop, db_futures};
use testkit::fleet::TOKEN;

use crate::browser::Browser;

const CONSOLE_TOKEN: &str = "console-test-token-0123456789";
const TAG: &str = "release-recommender-nightly-7";

fn model_version(strategy: &str) -> String {
    let spec = strategy::ModelSpec { strategy: strategy.into(), params: serde_json::json!({}) };
    strategy::Model::build(&spec, strategy::Search::default()).expect("strategy").version().to_string()
}

async fn scalar_i64(pool: &sqlx::PgPool, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql).bind(bind).fetch_one(pool).await.expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_what_sql_gives_without_browser_errors_and_the_token_is_required() {
    let cl = ClosedLoop::start("console-warmup", Some(200)).await;
    let pool = cl.stack.db.pool.clone();
    let admin_url = format!("http://{}", cl.lb.admin_addr.expect("admin"));
    let admin = proto::admin::AdminClient::new(&admin_url, TOKEN);

    // One release, started by the controller: gate, route to the nightly.
    let release = release::store::NewRelease {
        tag: TAG.into(),
        version: "7".into(),
        git_sha: Some("test".into()),
        pipeline_id: None,
        strategy: "neighbours-v2".into(),
        params: serde_json::json!({}),
        model_version: model_version("neighbours-v2"),
        embedding_version: None,
        data_watermark: None,
        experiment_salt: TAG.into(),
        share: 0.3,
    };
    let start = controller::Start {
        gate: controller::GateStep {
            release,
            reference: "popularity-v1".parse().expect("reference"),
            metric: "ndcg@20".parse().expect("metric"),
            tolerance: 0.02,
            store: None,
        },
        backends: vec![cl.nightly_url.clone()],
        ready_within: Duration::from_secs(30),
        warmup: controller::Warmup::default(),
    };
    let (id, state) = controller::start(&pool, &admin, &Notifier::new(None), &start).await.expect("start");
    assert_eq!(state, release::store::State::Deployed);

    // Simulated users through the load balancer; a look in the middle and one at the end.
    let futures = db_futures(&cl.loaded.futures);
    let people =
        population::build(&futures, &PopulationSpec { users: None, new_share: 0.05, new_user_base: 900_000, seed: 7 });
    let config = run::Config {
        target: cl.lb_url.clone(),
        rate: 150.0,
        limit: Limit::Requests(1_800),
        timeout: Duration::from_millis(600),
        behaviour: Behaviour { accept: 0.9, ..Behaviour::default() },
        seed: 7,
        max_in_flight: 10_000,
        output: Output::File(cl.log.clone()),
        progress: false,
        trace: false,
        metrics: None,
    };
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let simulation = tokio::spawn(run::run(config, people, stop_rx));
    // A short conversion window, so looks within the test count closed responses.
    let window = Duration::from_secs(4);
    let params = LookParams {
        conversion_window: chrono::Duration::from_std(window).expect("window"),
        previous_p: 1.0,
        criteria: Criteria::default(),
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    look::look(&pool, id, &params).await.expect("first look");
    let finished = simulation.await.expect("join").expect("simulate");
    let requests = finished.report.requests as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while scalar_i64(&pool, "SELECT count(*) FROM recommendations_history WHERE experiment = $1", TAG).await < requests
    {
        assert!(Instant::now() < deadline, "history rows for every simulated request");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(window).await;
    let last = look::look(&pool, id, &params).await.expect("second look");
    assert!(last.main.requests > 500 && last.nightly.requests > 200, "{last:?}");
    println!("{}", finished.report.render());

    // The console, with write access, its own token, and a copy of the vectors for replays.
    let vectors = cl.stack.edge_copy().await;
    let vectors_path = vectors.path().to_path_buf();
    let console = lazyrec_console::App::new(
        pool.clone(),
        lazyrec_console::Config {
            token: CONSOLE_TOKEN.into(),
            write: true,
            lb_admin_url: admin_url.clone(),
            lb_admin_token: TOKEN.into(),
            store: std::sync::Arc::new(move || {
                Ok(vectorstore::open(None, None, Duration::from_secs(30), Some(&vectors_path), &vectors_path)?)
            }),
            webhook: None,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_console, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(lazyrec_console::serve(listener, console, async move {
        let _ = stopped.await;
    }));

    // Without the token: 401, for a program and in the browser.
    let plain = testkit::stack::get(&format!("{base}/releases/{id}"), &[]).await;
    assert_eq!(plain.status, 401, "{}", plain.body);
    let bearer =
        testkit::stack::get(&format!("{base}/releases/{id}"), &[("authorization", &format!("Bearer {CONSOLE_TOKEN}"))])
            .await;
    assert_eq!(bearer.status, 200);

    let mut b = Browser::start().await;
    b.open(&format!("{base}/")).await;
    let said = b.text("#auth-message").await;
    assert!(said.contains("needs the admin token"), "{said}");
    b.shot("login").await;
    let errors = b.console_errors().await;
    assert!(errors.iter().all(|e| e.contains("401")), "only the 401 itself is reported: {errors:?}");
    b.sign_in("not-the-token-at-all").await;
    assert!(b.text("#auth-message").await.contains("not the admin token"));
    b.console_errors().await;
    b.sign_in(CONSOLE_TOKEN).await;

    // Overview: the last hour per assigned variant, as SQL counts it.
    assert!(b.url().await.ends_with('/'), "back to the page asked for");
    for variant in ["main", "nightly"] {
        let want = scalar_i64(
            &pool,
            "SELECT count(*) FROM recommendations_history WHERE ts > now() - interval '1 hour'
               AND coalesce(assigned_variant, served_variant) = $1",
            variant,
        )
        .await;
        assert_eq!(b.text(&format!("#traffic-{variant} .requests")).await, want.to_string(), "{variant}");
    }
    assert_eq!(b.text("#experiment").await, TAG);
    b.expect_clean("overview").await;
    b.shot("overview").await;

    // Releases: the list, then the release's looks against its recorded events.
    b.open(&format!("{base}/releases")).await;
    assert_eq!(b.text(&format!("#release-{id} .state")).await, "deployed");
    b.expect_clean("releases").await;
    b.open(&format!("{base}/releases/{id}")).await;
    assert_eq!(b.text("#release-state").await, "deployed");
    let looks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM release_events WHERE release_id = $1 AND step = 'evaluate'")
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("looks");
    assert_eq!(looks, 2);
    assert_eq!(b.text("#looks").await, looks.to_string());
    let recorded: serde_json::Value = sqlx::query_scalar(
        "SELECT details FROM release_events WHERE release_id = $1 AND step = 'evaluate' ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .expect("latest look");
    assert_eq!(recorded["main"]["requests"].as_u64(), Some(last.main.requests));
    assert_eq!(b.text("#look-main .requests").await, last.main.requests.to_string());
    assert_eq!(b.text("#look-nightly .requests").await, last.nightly.requests.to_string());
    for chart in ["#chart-conversion", "#chart-difference", "#chart-latency", "#chart-split"] {
        assert!(b.exists(&format!("{chart} svg")).await, "{chart} is drawn");
    }
    b.expect_clean("release").await;
    b.shot("release").await;

    // A user: counts, the variant the load balancer recorded, the last answers.
    let (user, variant): (i64, String) = sqlx::query_as(
        "SELECT m.user_id, m.variant FROM user_model_map m
         WHERE m.experiment = $1 AND EXISTS (SELECT 1 FROM user_watched w WHERE w.user_id = m.user_id)
         ORDER BY (SELECT count(*) FROM recommendations_history h WHERE h.user_id = m.user_id) DESC, m.user_id LIMIT 1",
    )
    .bind(TAG)
    .fetch_one(&pool)
    .await
    .expect("a served user with a history");
    b.open(&format!("{base}/users?id={user}")).await;
    let watched: i64 = sqlx::query_scalar("SELECT count(*) FROM user_watched WHERE user_id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .expect("watched");
    let answers: i64 = sqlx::query_scalar("SELECT least(count(*), 20) FROM recommendations_history WHERE user_id = $1")
        .bind(user)
        .fetch_one(&pool)
        .await
        .expect("answers");
    assert_eq!(b.text("#user-id").await, user.to_string());
    assert_eq!(b.text("#watched-count").await, watched.to_string());
    assert_eq!(b.text("#variant").await, variant, "the variant the load balancer recorded");
    assert_eq!(b.text("#answers-count").await, answers.to_string());
    assert!(b.text("#now-main").await.contains(&model_version("neighbours-v2")), "main answers now");
    b.expect_clean("user").await;
    b.shot("user").await;

    // Provenance of one of the user's answers, and its replay.
    let (request_id, model): (String, Option<String>) = sqlx::query_as(
        "SELECT request_id, model_version FROM recommendations_history
         WHERE user_id = $1 AND status = 200 AND served_variant <> 'fallback' ORDER BY ts DESC LIMIT 1",
    )
    .bind(user)
    .fetch_one(&pool)
    .await
    .expect("an answer");
    b.open(&format!("{base}/provenance?request_id={request_id}")).await;
    assert_eq!(b.text("#request-id").await, request_id);
    assert_eq!(Some(b.text("#model-version").await), model);
    b.click("#replay").await;
    let outcome = b.text("#replay-outcome").await;
    assert_eq!(outcome, "identical", "the replay reproduces the answer");
    b.expect_clean("provenance").await;
    b.shot("provenance").await;

    // Reports over the last hour.
    b.open(&format!("{base}/reports?hours=1")).await;
    let answered = scalar_i64(
        &pool,
        "SELECT count(*) FROM recommendations_history WHERE ts >= now() - interval '1 hour' AND status = 200 AND $1 = $1",
        "",
    )
    .await;
    assert_eq!(b.text("#answers").await, answered.to_string());
    assert!(b.exists("#chart-lorenz svg").await);
    b.expect_clean("reports").await;
    b.shot("reports").await;

    // The promote button: the release controller moves the release, the load balancer serves it.
    b.open(&format!("{base}/releases/{id}")).await;
    b.click("#action-promote").await;
    assert_eq!(b.text("#release-state").await, "promoted");
    let state: String = sqlx::query_scalar("SELECT state FROM releases WHERE release_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("state");
    assert_eq!(state, "promoted");
    assert_eq!(admin.state().await.expect("state").main_release_id, Some(id));
    assert!(!b.exists("#action-promote").await, "a promoted release offers only a rollback");
    b.expect_clean("release after promote").await;

    let timings = b.timings();
    println!("page loads (ms, navigation to load in the browser): {timings:?}");
    b.close().await;
    let _ = stop_console.send(());
    served.await.expect("join").expect("console");
    drop(vectors);
    let ClosedLoop { lb, main, nightly, ingester, .. } = cl;
    lb.shutdown().await.expect("lb");
    main.shutdown().await.expect("main");
    nightly.shutdown().await.expect("nightly");
    ingester.abort();
}
