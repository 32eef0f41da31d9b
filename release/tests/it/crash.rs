//! The controller killed (SIGKILL, at a fault point of the real `lazyrec-release` binary) at every
//! step boundary of route, promote, abort and rollback, while traffic runs through the load
//! balancer: after the next `lazyrec-release` command (`reconcile`) the records and the load
//! balancer agree every time, and no client request failed.

use std::os::unix::process::ExitStatusExt as _;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use release::steps;
use release::store::{self, State};

use crate::fleet;

/// Runs the real `lazyrec-release` against the test stack, with a fault point when given.
pub(crate) struct Controller {
    pub(crate) database_url: String,
    pub(crate) admin_url: String,
}

impl Controller {
    pub(crate) async fn run(&self, args: &[&str], fault: Option<&str>) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lazyrec-release"));
        command
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("LAZYREC_LB_ADMIN_URL", &self.admin_url)
            .env("LAZYREC_LB_ADMIN_TOKEN", fleet::TOKEN)
            .env_remove("LAZYREC_RELEASE_WEBHOOK")
            .env_remove(steps::FAULT_ENV);
        if let Some(point) = fault {
            command.env(steps::FAULT_ENV, point);
        }
        command.output().await.expect("lazyrec-release")
    }

    /// Runs a command that must succeed.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "lazyrec-release {args:?}: {:?}\n{text}", out.status);
        text
    }

    /// Runs a command that must die at `point` by SIGKILL.
    async fn killed_at(&self, args: &[&str], point: &str) {
        let out = self.run(args, Some(point)).await;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: expected SIGKILL, got {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn gated(pool: &sqlx::PgPool, tag: &str) -> i64 {
    let id = store::create(pool, &crate::new_release(tag, "neighbours-v2")).await.expect("create");
    store::transition(pool, id, State::Gated, "the gate is not under test here", serde_json::json!({}))
        .await
        .expect("gated");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_at_any_step_boundary_is_reconciled_by_the_next_command() {
    let (fleet, lb, admin, state_dir) = crate::stack().await;
    let pool = fleet.stack.db.pool.clone();
    let ctl = Controller {
        database_url: fleet.stack.db.url.clone(),
        admin_url: format!("http://{}", lb.admin_addr.expect("admin")),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = crate::load(format!("http://{}", lb.http_addr), stop.clone());
    // Both servers serve the same model; whichever is not main is the next nightly.
    let (mut main, mut spare) = (fleet.main_url(), fleet.nightly_url());
    let route = |id: i64, url: String| {
        vec![
            "route".to_string(),
            "--release".into(),
            id.to_string(),
            "--nightly".into(),
            url,
            "--warm-users".into(),
            "0".into(),
        ]
    };
    let agree = |point: String| {
        let (ctl, pool, admin) = (&ctl, pool.clone(), admin.clone());
        async move {
            let text = ctl.ok(&["reconcile"]).await;
            assert!(text.contains("the records and the load balancer agree"), "{point}: {text}");
            let lb = admin.state().await.expect("state");
            let problems = steps::disagreements(&pool, &lb).await.expect("compare");
            assert!(problems.is_empty(), "{point}: {problems:?}");
            println!("{point}: {}", text.lines().next().unwrap_or_default());
        }
    };
    let run_ok = |v: Vec<String>| {
        let ctl = &ctl;
        async move { ctl.ok(&v.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    let run_killed = |v: Vec<String>, point: &'static str| {
        let ctl = &ctl;
        async move { ctl.killed_at(&v.iter().map(String::as_str).collect::<Vec<_>>(), point).await }
    };

    // The load balancer cannot save its routing (a directory where its temporary file goes): the
    // admin API refuses the change (503, nothing applied), the route fails, the release stays
    // gated, no step is left open.
    let blocked = gated(&pool, "release-recommender-nightly-unsaved").await;
    let tmp = state_dir.path().join("loadbalancer/journal/routing.json.tmp");
    std::fs::create_dir_all(&tmp).expect("block the routing file");
    let before = admin.state().await.expect("state");
    let out = ctl.run(&route(blocked, spare.clone()).iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("503") && stderr.contains("routing not saved"), "{stderr}");
    println!("unsaved routing: {}", stderr.trim());
    assert_eq!(store::state(&pool, blocked).await.expect("state"), State::Gated, "the release did not move");
    let after = admin.state().await.expect("state");
    assert_eq!((after.nightly_urls(), after.experiment), (before.nightly_urls(), before.experiment));
    agree("unsaved routing".into()).await;
    std::fs::remove_dir(&tmp).expect("unblock");
    run_ok(vec!["abort".into(), blocked.to_string()]).await;

    // A release promoted cleanly first: the rollbacks below go back to it.
    let first = gated(&pool, "release-recommender-nightly-c0").await;
    run_ok(route(first, spare.clone())).await;
    run_ok(vec!["promote".into(), first.to_string()]).await;
    std::mem::swap(&mut main, &mut spare);

    // route: killed after recording the intent, between its two admin calls, after both.
    for (n, point) in ["route:intent", "route:nightly", "route:act"].into_iter().enumerate() {
        let id = gated(&pool, &format!("release-recommender-nightly-r{n}")).await;
        run_killed(route(id, spare.clone()), point).await;
        agree(point.to_string()).await;
        let state = store::state(&pool, id).await.expect("state");
        let expected = if point == "route:act" { State::Deployed } else { State::Gated };
        assert_eq!(state, expected, "{point}");
        run_ok(vec!["abort".into(), id.to_string()]).await;
        agree(format!("{point}, then abort")).await;
    }

    // promote: before and after the swap.
    for (n, point) in ["promote:intent", "promote:act"].into_iter().enumerate() {
        let id = gated(&pool, &format!("release-recommender-nightly-p{n}")).await;
        run_ok(route(id, spare.clone())).await;
        run_killed(vec!["promote".into(), id.to_string()], point).await;
        agree(point.to_string()).await;
        let state = store::state(&pool, id).await.expect("state");
        if point == "promote:act" {
            assert_eq!(state, State::Promoted, "{point}");
            assert_eq!(admin.state().await.expect("state").main_release_id, Some(id));
            std::mem::swap(&mut main, &mut spare);
        } else {
            assert_eq!(state, State::Deployed, "{point}: nothing moved");
            run_ok(vec!["abort".into(), id.to_string()]).await;
            agree(format!("{point}, then abort")).await;
        }
    }

    // abort: before and after emptying the nightly — an abort always completes.
    for (n, point) in ["abort:intent", "abort:act"].into_iter().enumerate() {
        let id = gated(&pool, &format!("release-recommender-nightly-a{n}")).await;
        run_ok(route(id, spare.clone())).await;
        run_killed(vec!["abort".into(), id.to_string()], point).await;
        agree(point.to_string()).await;
        assert_eq!(store::state(&pool, id).await.expect("state"), State::Aborted, "{point}");
        assert!(admin.state().await.expect("state").nightly.is_empty(), "{point}");
    }

    // rollback to the first release: before and after the main swap.
    let current = admin.state().await.expect("state").main_release_id.expect("a main release");
    for point in ["rollback:intent", "rollback:act"] {
        run_killed(vec!["rollback".into(), "--to".into(), first.to_string()], point).await;
        agree(point.to_string()).await;
        let main_release = admin.state().await.expect("state").main_release_id;
        if point == "rollback:act" {
            assert_eq!(main_release, Some(first), "{point}");
            assert_eq!(store::state(&pool, current).await.expect("state"), State::RolledBack);
        } else {
            assert_eq!(main_release, Some(current), "{point}: nothing moved");
            assert_eq!(store::state(&pool, current).await.expect("state"), State::Promoted);
        }
    }

    // SIGTERM inside a step: the step closes, then the process exits (143): nothing to reconcile.
    let id = gated(&pool, "release-recommender-nightly-term").await;
    run_ok(route(id, spare.clone())).await;
    let out = ctl.run(&["promote", &id.to_string()], Some("promote:intent:sigterm")).await;
    assert_eq!(out.status.code(), Some(143), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(store::state(&pool, id).await.expect("state"), State::Promoted, "the step finished");
    assert!(store::open_step(&pool).await.expect("steps").is_none(), "and closed before the exit");
    agree("promote:intent:sigterm".into()).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = traffic.await.expect("traffic");
    println!("{sent} client requests through nine kills, {failed} failed");
    assert!(sent > 100, "traffic ran ({sent})");
    assert_eq!(failed, 0);
    let steps: Vec<(String, i64)> = sqlx::query_as("SELECT outcome, count(*) FROM release_steps GROUP BY 1 ORDER BY 1")
        .fetch_all(&pool)
        .await
        .expect("steps");
    println!("steps by outcome: {steps:?}");
    lb.shutdown().await.expect("lb shutdown");
    fleet.shutdown().await;
}
