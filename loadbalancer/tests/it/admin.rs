//! The admin API: refused without the token, and changes that apply at once, are recorded, and
//! survive a restart.

use loadbalancer::assign::{self, Variant};

use crate::fleet::{Client, Fleet, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_token_and_changes_apply_at_once_are_recorded_and_survive_a_restart() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let config = fleet.lb_config(state.path());
    let lb = loadbalancer::start(config.clone()).await.expect("lb");
    let admin = format!("http://{}", lb.admin_addr.expect("admin enabled"));
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();
    let auth = format!("Bearer {TOKEN}");
    let call = |method: &'static str, path: &'static str, body: Option<&'static str>| {
        let (client, admin, auth) = (client.clone(), admin.clone(), auth.clone());
        async move {
            client
                .try_request(method, &format!("{admin}{path}"), &[("authorization", &auth)], body)
                .await
                .expect("admin call")
        }
    };

    // Refused without the right token — reads and changes alike.
    for (method, path) in [("GET", "/admin/state"), ("PUT", "/admin/share"), ("POST", "/admin/backends/drain")] {
        let none =
            client.try_request(method, &format!("{admin}{path}"), &[], Some(r#"{"share":1.0}"#)).await.expect("call");
        assert_eq!(none.status, 401, "{method} {path}: {}", none.body);
        let wrong = client
            .try_request(
                method,
                &format!("{admin}{path}"),
                &[("authorization", "Bearer not-the-token-xxxxxxxx")],
                Some(r#"{"share":1.0}"#),
            )
            .await
            .expect("call");
        assert_eq!(wrong.status, 403, "{method} {path}");
    }
    let unchanged = call("GET", "/admin/state", None).await;
    assert_eq!(unchanged.status, 200);
    let v: serde_json::Value = serde_json::from_str(&unchanged.body).expect("json");
    assert_eq!(v["share"], 0.2, "the refused calls changed nothing: {v}");
    assert_eq!(v["experiment"], "test-release-1");
    assert_eq!(v["nightly"][0]["healthy"], true);

    // Bad input: 400 with a one-line reason.
    let bad = call("PUT", "/admin/share", Some(r#"{"share": 7}"#)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body.lines().count(), 1, "{:?}", bad.body);
    let unknown = call("POST", "/admin/backends/drain", Some(r#"{"url": "http://127.0.0.1:1"}"#)).await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);

    // Share 0: everyone on main, at once.
    let nightly_user = (1..).find(|&u| assign::assign("test-release-1", 0.2, u).1 == Variant::Nightly).expect("user");
    assert_eq!(client.get(&format!("{base}/recommend/{nightly_user}")).await.header("x-variant"), "nightly");
    assert_eq!(call("PUT", "/admin/share", Some(r#"{"share": 0}"#)).await.status, 200);
    assert_eq!(client.get(&format!("{base}/recommend/{nightly_user}")).await.header("x-variant"), "main");

    // Drain main: its users go to nightly (a drained backend takes no requests, healthy or not).
    let main_url = fleet.main_url();
    let drain_body: &'static str = Box::leak(format!(r#"{{"url": "{main_url}"}}"#).into_boxed_str());
    let drained = call("POST", "/admin/backends/drain", Some(drain_body)).await;
    assert_eq!(drained.status, 200, "{}", drained.body);
    let v: serde_json::Value = serde_json::from_str(&drained.body).expect("json");
    assert_eq!((v["main"][0]["enabled"].clone(), v["main"][0]["healthy"].clone()), (false.into(), true.into()));
    let r = client.get(&format!("{base}/recommend/1")).await;
    assert_eq!((r.header("x-assigned-variant"), r.header("x-variant")), ("main", "nightly"));
    assert_eq!(call("POST", "/admin/backends/enable", Some(drain_body)).await.status, 200);
    assert_eq!(client.get(&format!("{base}/recommend/1")).await.header("x-variant"), "main");

    // A new experiment: a new salt at 20 % reshuffles users.
    let started = call("POST", "/admin/experiment", Some(r#"{"experiment": "test-release-2", "share": 0.2}"#)).await;
    assert_eq!(started.status, 200, "{}", started.body);
    let moved = (1..=40)
        .find(|&u| assign::assign("test-release-1", 0.2, u).1 != assign::assign("test-release-2", 0.2, u).1)
        .expect("a user whose variant differs");
    let expected = assign::assign("test-release-2", 0.2, moved).1;
    assert_eq!(client.get(&format!("{base}/recommend/{moved}")).await.header("x-variant"), expected.as_str());
    let again = call("POST", "/admin/experiment", Some(r#"{"experiment": "test-release-2"}"#)).await;
    assert_eq!(again.status, 400, "a running experiment's name cannot be reused");

    // Recorded: one release_events row per applied change.
    let steps: Vec<String> = sqlx::query_scalar("SELECT step FROM release_events ORDER BY id")
        .fetch_all(&fleet.stack.db.pool)
        .await
        .expect("events");
    assert_eq!(steps, ["lb.set_share", "lb.drain_backend", "lb.enable_backend", "lb.start_experiment"]);

    // Survives a restart: same experiment, same share.
    lb.shutdown().await.expect("shutdown");
    let lb = loadbalancer::start(config.clone()).await.expect("restart");
    assert_eq!(lb.lb.routing.load().experiment, "test-release-2");
    let r = client.get(&format!("http://{}/recommend/{moved}", lb.http_addr)).await;
    assert_eq!(r.header("x-variant"), expected.as_str());

    // What made an answer: the provenance document (token required like every admin call).
    let admin = format!("http://{}", lb.admin_addr.expect("admin enabled"));
    let answered = client.get(&format!("http://{}/recommend/7", lb.http_addr)).await;
    let id = answered.header("x-request-id").to_string();
    let mut found = None;
    for _ in 0..100 {
        let r = client
            .try_request("GET", &format!("{admin}/admin/provenance/{id}"), &[("authorization", &auth)], None)
            .await
            .expect("provenance");
        if r.status == 200 {
            found = Some(r);
            break;
        }
        assert_eq!(r.status, 404, "{}", r.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let doc: serde_json::Value = serde_json::from_str(&found.expect("shipped within 10 s").body).expect("json");
    assert_eq!(doc["model_version"].as_str(), Some(answered.header("x-model-version")), "{doc}");
    assert_eq!((doc["strategy"].as_str(), doc["user_id"].as_i64()), (Some("neighbours-v2"), Some(7)), "{doc}");
    assert!(doc["popularity_run"].as_i64().is_some() && doc["data_watermark"].as_i64().is_some(), "{doc}");
    let anonymous =
        client.try_request("GET", &format!("{admin}/admin/provenance/{id}"), &[], None).await.expect("call");
    assert_eq!(anonymous.status, 401);
    lb.shutdown().await.expect("shutdown");

    // No token configured → no admin API at all.
    let other = tempfile::tempdir().expect("state");
    let open = loadbalancer::start(loadbalancer::config::Config { admin_token: None, ..fleet.lb_config(other.path()) })
        .await
        .expect("lb");
    assert!(open.admin_addr.is_none());
    open.shutdown().await.expect("shutdown");
    fleet.shutdown().await;
}

/// Promotion and rollback under load: no request fails or falls back while the routing swaps,
/// after `promote` every request is answered by the former nightly (as main, share 0), and
/// `PUT /admin/main` puts the old main back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_under_load_fail_no_request() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let lb = loadbalancer::start(fleet.lb_config(state.path())).await.expect("lb");
    let admin = format!("http://{}", lb.admin_addr.expect("admin enabled"));
    let base = format!("http://{}", lb.http_addr);
    let client = Client::new();
    let auth = format!("Bearer {TOKEN}");
    let (main_url, nightly_url) = (fleet.main_url(), fleet.nightly_url());

    // Load: four clients, users 1..=400 round robin, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for k in 0..4u64 {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        load.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut user = 1 + k;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match client.try_request("GET", &format!("{base}/recommend/{user}"), &[], None).await {
                    Ok(r) if r.status == 200 && r.header("x-variant") != "fallback" => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.header("x-variant"))),
                    Err(e) => failed.push(e),
                }
                user = if user > 396 { 1 + k } else { user + 4 };
            }
            (ok, failed)
        });
    }
    let call = |method: &'static str, path: &'static str, body: Option<String>| {
        let (client, admin, auth) = (client.clone(), admin.clone(), auth.clone());
        async move {
            client
                .try_request(method, &format!("{admin}{path}"), &[("authorization", &auth)], body.as_deref())
                .await
                .expect("admin call")
        }
    };
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let promoted = call("POST", "/admin/promote", Some(r#"{"release_id": 7}"#.to_string())).await;
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    let v: serde_json::Value = serde_json::from_str(&promoted.body).expect("json");
    assert_eq!((v["share"].as_f64(), v["main_release_id"].as_i64()), (Some(0.0), Some(7)), "{v}");
    assert_eq!(v["main"][0]["url"], nightly_url.as_str());
    assert!(v["nightly"].as_array().is_some_and(|n| n.is_empty()), "{v}");
    let after_promote = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    // A second promote has no nightly: refused, nothing changes.
    assert_eq!(call("POST", "/admin/promote", None).await.status, 400);
    // The swap happens before the admin call answers (it health-checks after swapping).
    let before_rollback = chrono::Utc::now();
    let rollback =
        call("PUT", "/admin/main", Some(format!(r#"{{"backends": ["{main_url}"], "release_id": 6}}"#))).await;
    assert_eq!(rollback.status, 200, "{}", rollback.body);
    let after_rollback = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(joined) = load.join_next().await {
        let (o, f) = joined.expect("load task");
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 300, "load ran: {ok} answers");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed or fell back: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    println!("promote + rollback under load: {ok} requests, 0 failed");

    lb.shutdown().await.expect("shutdown");
    // Who answered, from the response log: between promote and rollback only the former
    // nightly (as main); after the rollback only the old main.
    let backends = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        let pool = fleet.stack.db.pool.clone();
        async move {
            sqlx::query_as::<_, (String, String, i64)>(
                "SELECT coalesce(backend, ''), served_variant, count(*) FROM recommendations_history
                 WHERE ts > $1 + interval '200 milliseconds' AND ts < $2 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&pool)
            .await
            .expect("history")
        }
    };
    let promoted_rows = backends(after_promote, before_rollback).await;
    assert!(
        !promoted_rows.is_empty() && promoted_rows.iter().all(|(b, v, _)| *b == nightly_url && v == "main"),
        "{promoted_rows:?}"
    );
    let rolled_back = backends(after_rollback, chrono::Utc::now()).await;
    assert!(
        !rolled_back.is_empty() && rolled_back.iter().all(|(b, v, _)| *b == main_url && v == "main"),
        "{rolled_back:?}"
    );
    fleet.shutdown().await;
}
