//! The monitoring configuration on the real stack with the simulator attached: a real
//! Prometheus (monitoring/prometheus.yml with this test's ports, monitoring/alerts.yml) scrapes
//! two servers, the load balancer, the release/ingest/online exporter, the Postgres exporter and
//! the simulator;
//! a real Alertmanager (monitoring/alertmanager.yml) routes to a webhook receiver (the test).
//! Every target is up, every Grafana panel's query (monitoring/dashboards/*.json) returns a
//! series, and stopping a server fires InstanceDown at the webhook.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simulator::population::{self, PopulationSpec};
use simulator::run::{self, Config, Limit};
use simulator::sink::Output;
use simulator::user::Behaviour;

use crate::helpers::get;
use testkit::closed_loop::ClosedLoop;

fn monitoring_dir() -> PathBuf {
    // At run time (cargo sets it for tests): a build cache made in another checkout keeps that
    // checkout's path in `env!`.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../monitoring")
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

fn spawn(program: &str, args: &[String], env: &[(&str, &str)], log: &Path) -> Proc {
    let out = std::fs::File::create(log).expect("log file");
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::from(out.try_clone().expect("log"))).stderr(Stdio::from(out));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {program}: {e} (ci/test.sh's setup installs it from apt: prometheus, prometheus-alertmanager, prometheus-postgres-exporter)")
    }))
}

/// `text` with each `from` (a quoted host:port of the shipped configuration) replaced.
fn retarget(text: &str, ports: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (from, to) in ports {
        assert!(out.contains(from), "the shipped configuration names {from}");
        out = out.replace(from, to);
    }
    out
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The number of series an instant query returns (and the body, for messages).
async fn series(prometheus: &str, query: &str) -> (usize, String) {
    let reply = get(&format!("{prometheus}/api/v1/query?query={}", encode(query)), &[]).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    let doc: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    (doc["data"]["result"].as_array().map_or(0, Vec::len), reply.body)
}

/// Every panel query of the shipped dashboards: (dashboard, panel title, expr).
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(monitoring_dir().join("dashboards")).expect("dashboards") {
        let path = entry.expect("entry").path();
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        for panel in doc["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                out.push((
                    doc["title"].as_str().unwrap_or_default().to_string(),
                    panel["title"].as_str().unwrap_or_default().to_string(),
                    target["expr"].as_str().expect("expr").to_string(),
                ));
            }
        }
    }
    out
}

/// The Alertmanager webhook receiver: every POSTed notification.
async fn webhook(addr: &str) -> Arc<Mutex<Vec<serde_json::Value>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |body: String| {
            let store = store.clone();
            async move {
                if let Ok(doc) = serde_json::from_str(&body) {
                    store.lock().unwrap_or_else(|p| p.into_inner()).push(doc);
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind the webhook");
    tokio::spawn(async move { axum::serve(listener, app).await });
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_everything_dashboards_have_data_and_instance_down_reaches_the_webhook() {
    for program in ["prometheus", "prometheus-alertmanager", "prometheus-postgres-exporter"] {
        assert!(
            Command::new(program).arg("--version").output().is_ok(),
            "{program} is not installed (ci/test.sh's setup installs it from apt)"
        );
    }
    // The stack: two servers, the load balancer, the ingester following the simulator's log.
    let ClosedLoop {
        loaded,
        stack,
        main,
        nightly,
        lb,
        nightly_url,
        lb_url,
        log,
        ingester,
        work,
        nightly_edge: _nightly_edge,
        ..
    } = ClosedLoop::start("monitoring-1", None).await;

    // The exporters, the webhook receiver, Alertmanager and Prometheus on free ports.
    let exporter_addr = free_addr();
    let listener = tokio::net::TcpListener::bind(&exporter_addr).await.expect("bind the exporter");
    // Short windows, so conversion has data within the test (the defaults are 15 and 10 min).
    let windows = release::metrics::OnlineWindows {
        online: chrono::TimeDelta::seconds(60),
        conversion: chrono::TimeDelta::seconds(5),
    };
    let (stop_exporter, stopped) = tokio::sync::oneshot::channel::<()>();
    let exporter = tokio::spawn(release::metrics::serve(stack.db.pool.clone(), listener, windows, async {
        let _stop = stopped.await;
    }));
    let (pg_exporter_addr, webhook_addr, alertmanager_addr, prometheus_addr, simulator_addr) =
        (free_addr(), free_addr(), free_addr(), free_addr(), free_addr());
    let _pg_exporter = spawn(
        "prometheus-postgres-exporter",
        &[format!("--web.listen-address={pg_exporter_addr}")],
        &[("DATA_SOURCE_NAME", &format!("{}?sslmode=disable", stack.db.url))],
        &work.path().join("pg-exporter.log"),
    );
    let notifications = webhook(&webhook_addr).await;
    let config = work.path().join("monitoring");
    std::fs::create_dir_all(&config).expect("config dir");
    let alertmanager_yml =
        std::fs::read_to_string(monitoring_dir().join("alertmanager.yml")).expect("alertmanager.yml");
    std::fs::write(
        config.join("alertmanager.yml"),
        retarget(&alertmanager_yml, &[("http://127.0.0.1:9095/alerts", &format!("http://{webhook_addr}/alerts"))]),
    )
    .expect("write");
    let _alertmanager = spawn(
        "prometheus-alertmanager",
        &[
            format!("--config.file={}", config.join("alertmanager.yml").display()),
            format!("--storage.path={}", work.path().join("alertmanager").display()),
            format!("--web.listen-address={alertmanager_addr}"),
            "--cluster.listen-address=".into(),
        ],
        &[],
        &work.path().join("alertmanager.log"),
    );
    let prometheus_yml = std::fs::read_to_string(monitoring_dir().join("prometheus.yml")).expect("prometheus.yml");
    let quoted = |a: &str| format!("\"{a}\"");
    std::fs::write(
        config.join("prometheus.yml"),
        retarget(
            &prometheus_yml,
            &[
                ("\"127.0.0.1:8080\"", &quoted(&main.http_addr.to_string())),
                ("\"127.0.0.1:8081\"", &quoted(&nightly.http_addr.to_string())),
                ("\"127.0.0.1:8082\"", &quoted(&lb.http_addr.to_string())),
                ("\"127.0.0.1:9187\"", &quoted(&exporter_addr)),
                ("\"127.0.0.1:9189\"", &quoted(&pg_exporter_addr)),
                ("\"127.0.0.1:9090\"", &quoted(&prometheus_addr)),
                ("\"127.0.0.1:9093\"", &quoted(&alertmanager_addr)),
                ("\"127.0.0.1:9191\"", &quoted(&simulator_addr)),
            ],
        ),
    )
    .expect("write");
    std::fs::copy(monitoring_dir().join("alerts.yml"), config.join("alerts.yml")).expect("rules");
    let _prometheus = spawn(
        "prometheus",
        &[
            format!("--config.file={}", config.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", work.path().join("prometheus").display()),
            format!("--web.listen-address={prometheus_addr}"),
        ],
        &[],
        &work.path().join("prometheus.log"),
    );
    let prometheus = format!("http://{prometheus_addr}");
    let started = Instant::now();
    while std::net::TcpStream::connect(&prometheus_addr).is_err()
        || get(&format!("{prometheus}/-/ready"), &[]).await.status != 200
    {
        assert!(started.elapsed() < Duration::from_secs(60), "Prometheus did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The simulator drives the stack meanwhile.
    let futures = testkit::closed_loop::db_futures(&loaded.futures);
    let people =
        population::build(&futures, &PopulationSpec { users: None, new_share: 0.05, new_user_base: 900_000, seed: 7 });
    let sim = Config {
        target: lb_url.clone(),
        rate: 80.0,
        limit: Limit::Requests(16_000),
        timeout: Duration::from_millis(600),
        behaviour: Behaviour { accept: 0.9, ..Behaviour::default() },
        seed: 7,
        max_in_flight: 10_000,
        output: Output::File(log.clone()),
        progress: false,
        trace: false,
        metrics: Some(simulator_addr.parse().expect("addr")),
    };
    let (stop_sim, stop_rx) = tokio::sync::watch::channel(false);
    let simulation = tokio::spawn(run::run(sim, people, stop_rx));

    // Every target up.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let reply = get(&format!("{prometheus}/api/v1/targets"), &[]).await;
        let doc: serde_json::Value = serde_json::from_str(&reply.body).expect("targets json");
        let targets = doc["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        let down: Vec<String> = targets
            .iter()
            .filter(|t| t["health"] != "up")
            .map(|t| format!("{} {} ({}: {})", t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]))
            .collect();
        if targets.len() == 8 && down.is_empty() {
            println!(
                "targets: {} up ({:?})",
                targets.len(),
                targets.iter().map(|t| t["labels"]["job"].clone()).collect::<Vec<_>>()
            );
            break;
        }
        assert!(Instant::now() < deadline, "targets not all up: {} targets, down: {down:?}", targets.len());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Every dashboard panel's query returns a series (with the simulator's traffic flowing).
    let queries = panel_queries();
    assert!(queries.len() >= 20, "{} panel queries", queries.len());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut empty = Vec::new();
        for (dashboard, panel, expr) in &queries {
            if series(&prometheus, expr).await.0 == 0 {
                empty.push(format!("{dashboard} / {panel}: {expr}"));
            }
        }
        if empty.is_empty() {
            println!("all {} panel queries of {} dashboards return data", queries.len(), 2);
            break;
        }
        assert!(Instant::now() < deadline, "panel queries without data: {empty:#?}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (n, body) = series(&prometheus, "lazyrec_online_conversion").await;
    println!("online conversion: {n} series: {body}");
    assert_eq!(series(&prometheus, "ALERTS{alertstate=\"firing\"}").await.0, 0, "no alert fires on a healthy stack");

    // A server goes away: InstanceDown reaches the webhook within the rule's window.
    let killed_at = Instant::now();
    nightly.shutdown().await.expect("nightly shutdown");
    let nightly_instance = nightly_url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let alert = loop {
        let found = notifications.lock().unwrap_or_else(|p| p.into_inner()).iter().find_map(|n| {
            n["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == "InstanceDown"
                        && a["status"] == "firing"
                        && a["labels"]["instance"] == nightly_instance.as_str()
                })
                .cloned()
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no InstanceDown at the webhook; got {:?}",
            notifications.lock().map(|n| n.len())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "InstanceDown at the webhook {:.1} s after the server stopped: {alert}",
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(alert["labels"]["severity"], "page");

    let _stopped = stop_sim.send(true);
    let finished = simulation.await.expect("join").expect("simulate");
    println!("{}", finished.report.render());
    assert!(finished.report.availability.rate > 0.99, "{:?}", finished.report.availability);
    let _stop = stop_exporter.send(());
    let _served = exporter.await;
    ingester.abort();
    lb.shutdown().await.expect("lb shutdown");
    main.shutdown().await.expect("main shutdown");
}
