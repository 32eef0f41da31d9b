//! The same seed against the same answers gives the same requests and actions.

use std::time::Duration;

use simulator::population;
use simulator::run::{self, Config, Limit, TraceEntry};
use simulator::sink::Output;
use simulator::user::Behaviour;

async fn trace(target: &str, seed: u64, log: &std::path::Path) -> Vec<TraceEntry> {
    let config = Config {
        target: target.to_string(),
        rate: 2_000.0,
        limit: Limit::Requests(3_000),
        timeout: Duration::from_millis(600),
        behaviour: Behaviour::default(),
        seed,
        max_in_flight: 10_000,
        output: Output::File(log.to_path_buf()),
        progress: false,
        trace: true,
        metrics: None,
    };
    // 200 users for 3,000 requests: every user has many steps, which run concurrently.
    let people = population::synthetic(200, 300, 40, 9);
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let finished = run::run(config, people, stop_rx).await.expect("run");
    assert_eq!(finished.report.requests, 3_000);
    assert_eq!(finished.report.availability.hits, 3_000);
    finished.trace
}

/// The log without times and latencies, each user's lines in order, users sorted.
fn per_user_lines(log: &std::path::Path) -> Vec<(i64, Vec<String>)> {
    let text = std::fs::read_to_string(log).expect("log");
    let mut users: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ',');
        let (_ts, user, rest) = (parts.next(), parts.next().expect("user"), parts.next().expect("request"));
        let rest = match rest.rsplit_once(", ") {
            Some((head, latency)) if latency.ends_with(" ms") => head.to_string(),
            _ => rest.to_string(),
        };
        users.entry(user.parse().expect("user id")).or_default().push(rest);
    }
    users.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_with_the_same_seed_make_the_same_requests_and_actions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a_log, b_log, c_log) = (dir.path().join("a.log"), dir.path().join("b.log"), dir.path().join("c.log"));
    // One endpoint for the three runs: the same answers (and the same server name in the log).
    let (addr, stub) = simulator::stub::serve("127.0.0.1:0".parse().expect("addr"), 300).await.expect("stub");
    let target = format!("http://{addr}");
    let a = trace(&target, 42, &a_log).await;
    let b = trace(&target, 42, &b_log).await;
    let c = trace(&target, 43, &c_log).await;
    stub.abort();
    assert_eq!(a.len(), 3_000);
    let watched = a.iter().filter(|t| t.watched.is_some()).count();
    assert!(watched > 300, "users act: {watched} watches");
    assert!(a == b, "same seed, same answers: the same steps; first difference: {:?}", first_difference(&a, &b));
    assert!(a != c, "another seed: other steps");
    let (la, lb) = (per_user_lines(&a_log), per_user_lines(&b_log));
    assert_eq!(la.len(), 200);
    assert!(
        la == lb,
        "the same log lines per user, in the same order; first difference: {:?}",
        first_difference(&la, &lb)
    );
    assert!(la != per_user_lines(&c_log));
}

fn first_difference<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("lengths {} and {}", a.len(), b.len()));
    }
    a.iter().zip(b).find(|(x, y)| x != y).map(|(x, y)| format!("{x:?} vs {y:?}"))
}
