//! The release lifecycle against the real stack (two servers with real embeddings, the load
//! balancer's admin API, Postgres with the default dataset): start → gate → deploy → promote,
//! a release rejected by the gate, an abort, a rollback and a rollback back.

use testkit::{fleet, stack as helpers};

use std::time::Duration;

mod crash;
mod faults;
mod looks;
mod records;

use proto::admin::AdminClient as Admin;
use release::controller::{self, Start};
use release::notify::Notifier;
use release::store::{self, NewRelease, State};

fn new_release(tag: &str, strategy: &str) -> NewRelease {
    NewRelease {
        tag: tag.into(),
        version: tag.rsplit('-').next().unwrap_or_default().into(),
        git_sha: Some("test".into()),
        pipeline_id: None,
        strategy: strategy.into(),
        params: serde_json::json!({}),
        model_version: model_version(strategy),
        embedding_version: None,
        data_watermark: None,
        experiment_salt: tag.into(),
        share: 0.2,
    }
}

/// The version a server of this build reports for `strategy` with its default parameters.
fn model_version(strategy: &str) -> String {
    let spec = strategy::ModelSpec { strategy: strategy.into(), params: serde_json::json!({}) };
    strategy::Model::build(&spec, strategy::Search::default()).expect("strategy").version().to_string()
}

fn start_args(tag: &str, strategy: &str, reference: &str, backend: &str) -> Start {
    Start {
        gate: controller::GateStep {
            release: new_release(tag, strategy),
            reference: reference.parse().expect("reference"),
            metric: "ndcg@20".parse().expect("metric"),
            tolerance: 0.02,
            store: None,
        },
        backends: vec![backend.to_string()],
        ready_within: Duration::from_secs(30),
        warmup: controller::Warmup::default(),
    }
}

/// Two servers, a load balancer with main only (a release routes the nightly), its admin client
/// (keep the state directory until the load balancer stops).
async fn stack() -> (fleet::Fleet, loadbalancer::RunningLb, Admin, tempfile::TempDir) {
    let fleet = fleet::Fleet::new().await;
    let state_dir = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state_dir.path());
    config.nightly = Vec::new();
    let lb = loadbalancer::start(config).await.expect("lb");
    let admin = Admin::new(&format!("http://{}", lb.admin_addr.expect("admin")), fleet::TOKEN);
    (fleet, lb, admin, state_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_deploy_promote_reject_abort_and_rollback() {
    let (fleet, lb, admin, _state_dir) = stack().await;
    let pool = &fleet.stack.db.pool;
    let (main_url, nightly_url) = (fleet.main_url(), fleet.nightly_url());
    // A local webhook receiver (the only fake: the edge where Slack would be).
    let (hook, received) = webhook_receiver().await;
    let notify = Notifier::new(Some(hook));
    let lb_state = || async { serde_json::to_value(admin.state().await.expect("state")).expect("json") };

    // A better model: gated, deployed as nightly under its own experiment, then promoted.
    let (r1, state) = controller::start(
        pool,
        &admin,
        &notify,
        &start_args("release-recommender-nightly-1", "neighbours-v2", "popularity-v1", &nightly_url),
    )
    .await
    .expect("start 1");
    assert_eq!(state, State::Deployed);
    let s = lb_state().await;
    assert_eq!(
        (s["experiment"].as_str(), s["share"].as_f64()),
        (Some("release-recommender-nightly-1"), Some(0.2)),
        "{s}"
    );
    assert_eq!(
        (s["nightly"][0]["url"].as_str(), s["nightly_release_id"].as_i64()),
        (Some(nightly_url.as_str()), Some(r1))
    );
    let offline: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT offline_metrics FROM releases WHERE release_id = $1")
            .bind(r1)
            .fetch_one(pool)
            .await
            .expect("row");
    assert!(
        offline.is_some_and(|o| o["models"].as_array().is_some_and(|m| m.len() == 2)),
        "the gate's numbers are recorded"
    );
    controller::promote(pool, &admin, &notify, r1, "test").await.expect("promote");
    let s = lb_state().await;
    assert_eq!(
        (s["main"][0]["url"].as_str(), s["main_release_id"].as_i64(), s["share"].as_f64()),
        (Some(nightly_url.as_str()), Some(r1), Some(0.0))
    );

    // A worse model: rejected by the gate before anything is deployed.
    let (r2, state) = controller::start(
        pool,
        &admin,
        &notify,
        &start_args("release-recommender-nightly-2", "popularity-v1", "neighbours-v2", &main_url),
    )
    .await
    .expect("start 2");
    assert_eq!(state, State::Rejected);
    let reason: Option<String> = sqlx::query_scalar("SELECT decision_reason FROM releases WHERE release_id = $1")
        .bind(r2)
        .fetch_one(pool)
        .await
        .expect("row");
    assert!(reason.as_deref().is_some_and(|r| r.contains("FAILED")), "{reason:?}");
    assert!(lb_state().await["nightly"].as_array().is_some_and(|n| n.is_empty()), "nothing deployed");

    // Deployed, then aborted: share 0, nightly emptied; an aborted release cannot be promoted.
    let (r3, _) = controller::start(
        pool,
        &admin,
        &notify,
        &start_args("release-recommender-nightly-3", "neighbours-v2", "popularity-v1", &main_url),
    )
    .await
    .expect("start 3");
    controller::abort(pool, &admin, &notify, r3, "test abort").await.expect("abort");
    let s = lb_state().await;
    assert!(s["nightly"].as_array().is_some_and(|n| n.is_empty()) && s["share"].as_f64() == Some(0.0), "{s}");
    assert!(controller::promote(pool, &admin, &notify, r3, "no").await.is_err());
    assert_eq!(store::state(pool, r3).await.expect("state"), State::Aborted);

    // Promote another release, roll back to the first, and back again.
    let (r4, _) = controller::start(
        pool,
        &admin,
        &notify,
        &start_args("release-recommender-nightly-4", "neighbours-v2", "popularity-v1", &main_url),
    )
    .await
    .expect("start 4");
    controller::promote(pool, &admin, &notify, r4, "test").await.expect("promote 4");
    assert_eq!(lb_state().await["main"][0]["url"].as_str(), Some(main_url.as_str()));
    controller::rollback(pool, &admin, &notify, r1, None, Duration::from_secs(10)).await.expect("rollback to 1");
    let s = lb_state().await;
    assert_eq!((s["main"][0]["url"].as_str(), s["main_release_id"].as_i64()), (Some(nightly_url.as_str()), Some(r1)));
    assert_eq!(store::state(pool, r4).await.expect("state"), State::RolledBack);
    controller::rollback(pool, &admin, &notify, r4, None, Duration::from_secs(10)).await.expect("rollback to 4");
    assert_eq!(lb_state().await["main_release_id"].as_i64(), Some(r4));
    assert_eq!(
        (store::state(pool, r1).await.expect("state"), store::state(pool, r4).await.expect("state")),
        (State::RolledBack, State::Promoted)
    );
    assert!(
        controller::rollback(pool, &admin, &notify, r2, None, Duration::from_secs(1)).await.is_err(),
        "never promoted"
    );
    let steps: Vec<String> = sqlx::query_scalar("SELECT step FROM release_events WHERE release_id = $1 ORDER BY id")
        .bind(r1)
        .fetch_all(pool)
        .await
        .expect("events");
    assert_eq!(
        steps,
        ["created", "state.gated", "state.deployed", "state.promoted", "rollback.target", "state.rolled_back"]
    );

    let texts = received.lock().expect("lock").clone();
    for expected in [
        "rejected by the offline gate",
        "deployed as nightly",
        "promoted to main",
        "aborted: test abort",
        "rolled back to release",
    ] {
        assert!(texts.iter().any(|t| t.contains(expected)), "no notification saying {expected:?}: {texts:?}");
    }
    lb.shutdown().await.expect("lb shutdown");
    fleet.shutdown().await;
}

/// The deploy step of the tests: a real server with the release's strategy, in this process, on
/// its own copy of the store.
struct InProcess<'a> {
    stack: &'a helpers::Stack,
    started: tokio::sync::Mutex<Vec<(server::RunningServer, tempfile::TempDir)>>,
}

#[async_trait::async_trait]
impl controller::Deploy for InProcess<'_> {
    async fn deploy(&self, d: &controller::Deployment) -> Result<Vec<String>, controller::DeployError> {
        let edge = self.stack.edge_copy().await;
        let mut config = self.stack.config();
        config.store.edge_dir = Some(edge.path().to_path_buf());
        config.state_dir = edge.path().to_path_buf();
        config.model = strategy::ModelSpec { strategy: d.strategy.clone(), params: d.params.clone() };
        let running = server::start(config).await.map_err(|e| controller::DeployError::Other(format!("{e:#}")))?;
        let url = format!("http://{}", running.http_addr);
        self.started.lock().await.push((running, edge));
        Ok(vec![url])
    }
}

impl InProcess<'_> {
    /// Stops every server it started (the release's servers are gone).
    async fn stop_all(&self) {
        for (server, _edge) in self.started.lock().await.drain(..) {
            server.shutdown().await.expect("server shutdown");
        }
    }
}

/// Requests `/recommend/<user>` through `base` from 4 tasks until `stop`; (sent, failed), where
/// failed = a transport error, a status other than 200 or the fallback list.
fn load(base: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> tokio::task::JoinHandle<(u64, u64)> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let client = fleet::Client::new();
        let mut tasks = tokio::task::JoinSet::new();
        for k in 0..4u64 {
            let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
            tasks.spawn(async move {
                let (mut sent, mut failed, mut user) = (0u64, 0u64, 1 + k);
                while !stop.load(Ordering::Relaxed) {
                    let r = client.try_request("GET", &format!("{base}/recommend/{user}"), &[], None).await;
                    sent += 1;
                    if !matches!(&r, Ok(r) if r.status == 200 && r.header("x-variant") != "fallback") {
                        failed += 1;
                    }
                    user = if user > 592 { 1 + k } else { user + 4 };
                }
                (sent, failed)
            });
        }
        let mut total = (0, 0);
        while let Some(Ok((s, f))) = tasks.join_next().await {
            total = (total.0 + s, total.1 + f);
        }
        total
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_redeploys_a_release_whose_servers_are_gone_and_main_answers_with_its_model() {
    let (fleet, lb, admin, _state_dir) = stack().await;
    let pool = &fleet.stack.db.pool;
    let notify = Notifier::new(None);
    let deployer = InProcess { stack: &fleet.stack, started: Default::default() };
    let deploy: &dyn controller::Deploy = &deployer;

    // Release A (popularity-v1) on a server of its own, promoted; then release B (the fleet's
    // neighbours-v2 nightly) promoted over it.
    let a_spec = controller::Deployment {
        release_id: 0,
        tag: "release-recommender-nightly-a".into(),
        strategy: "popularity-v1".into(),
        params: serde_json::json!({}),
        model_version: model_version("popularity-v1"),
    };
    let a_url = deploy.deploy(&a_spec).await.expect("deploy a").remove(0);
    let (a, _) = controller::start(
        pool,
        &admin,
        &notify,
        &start_args("release-recommender-nightly-a", "popularity-v1", "popularity-v1", &a_url),
    )
    .await
    .expect("start a");
    controller::promote(pool, &admin, &notify, a, "test").await.expect("promote a");
    let (b, _) = controller::start(
        pool,
        &admin,
        &notify,
        &start_args("release-recommender-nightly-b", "neighbours-v2", "popularity-v1", &fleet.nightly_url()),
    )
    .await
    .expect("start b");
    controller::promote(pool, &admin, &notify, b, "test").await.expect("promote b");

    // A's servers are gone: without a deploy step the rollback says so and changes nothing.
    deployer.stop_all().await;
    let err = controller::rollback(pool, &admin, &notify, a, None, Duration::from_secs(5)).await.expect_err("gone");
    assert!(err.to_string().contains("servers are gone"), "{err}");
    assert_eq!(admin.state().await.expect("state").main_release_id, Some(b));

    // With one, under load: A is redeployed from its record and becomes main; no request fails.
    let base = format!("http://{}", lb.http_addr);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = load(base.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    controller::rollback(pool, &admin, &notify, a, Some(deploy), Duration::from_secs(60)).await.expect("rollback to a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    controller::rollback(pool, &admin, &notify, b, Some(deploy), Duration::from_secs(60)).await.expect("back to b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    controller::rollback(pool, &admin, &notify, a, Some(deploy), Duration::from_secs(60)).await.expect("a again");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = traffic.await.expect("load");
    println!("rollbacks A → B → A under load: {sent} requests, {failed} failed");
    assert_eq!(failed, 0, "no client request fails during the rollbacks");
    assert!(sent > 50, "{sent}");

    let s = serde_json::to_value(admin.state().await.expect("state")).expect("json");
    let main_url = s["main"][0]["url"].as_str().unwrap_or_default().to_string();
    assert_eq!(s["main_release_id"].as_i64(), Some(a), "{s}");
    assert_ne!(main_url, a_url, "a new server, not the stopped one");
    assert_eq!(deployer.started.lock().await.len(), 1, "redeployed once; the second rollback to A reused it");
    // Main answers with A's model: popularity-v1's list (most popular unseen) and its version.
    for user in [1_i64, 7, 42, 101] {
        let reply = fleet::Client::new().get(&format!("{base}/recommend/{user}")).await;
        assert_eq!(reply.header("x-model-version"), model_version("popularity-v1"));
        let seen = fleet.stack.seen(user).await;
        let want: Vec<String> =
            fleet.stack.popular(2_000).await.into_iter().filter(|m| !seen.contains(m)).take(20).collect();
        assert_eq!(reply.body.trim(), want.join(","), "user {user}");
    }
    let redeployed: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT details->'redeployed_over' FROM release_events WHERE release_id = $1 AND step = 'rollback.target' ORDER BY id LIMIT 1",
    )
    .bind(a)
    .fetch_one(pool)
    .await
    .expect("event");
    assert_eq!(redeployed, Some(serde_json::json!([a_url])), "the event records what was replaced");
    deployer.stop_all().await;
    lb.shutdown().await.expect("lb shutdown");
    fleet.shutdown().await;
}

/// Collects the `text` of every JSON body posted to it.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let received: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                store.lock().expect("lock").push(v["text"].as_str().unwrap_or_default().to_string());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), received)
}
