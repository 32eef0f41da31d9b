//! Load benchmark for the recommendation service (HTTP, the course contract).
//!
//! * `load-bench vectors --from <edge dir> --to <edge dir>` — course-scale vectors: the real
//!   course-movie vectors of a live collection, reused (and perturbed beyond the real count) for
//!   the synthetic movie ids `db::synth` writes into the log, 27k points by default.
//! * `load-bench run --rate 1000 --seconds 20` — open-loop load at a fixed rate (latency is
//!   measured from each request's *scheduled* time, so a stalled server cannot hide queueing),
//!   random users; prints throughput, p50/p99/max, errors, the generator's own CPU and the
//!   server's RSS.
//! * `load-bench compare --direct <server> --via <load balancer>` — the proxy's overhead: the
//!   same load against both, interleaved, then each saturated; added p50/p99 and the
//!   throughput ratio.
//! * `load-bench overload --phase 1000x20 --phase 3000x20 --phase 500x30` — the phases one after
//!   the other; the degraded share and p99 per second and per phase, how soon the last phase
//!   settled under 1 % degraded, and the Postgres sessions opened during the run.
//! * `load-bench capacity` — rates stepped up until p99 exceeds the target; prints the highest
//!   rate that met it.
//!
//! See BENCHMARKS.md for the full procedure (data through the ingester, then these steps).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rand::{Rng, SeedableRng};
use vectorstore::edge::EdgeStore;
use vectorstore::point_id;
use vectorstore::{CollectionSpec, Hnsw, MoviePoint, Space, VectorStore};

#[derive(Parser, Debug)]
#[command(about = "Load benchmark for lazyrec-server (HTTP)")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct Load {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Users are drawn uniformly from 1..=users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Seconds per rate.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of warm-up at the first rate (not measured).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// The server's pid, to report its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a course-scale qdrant-edge collection for the synthetic movie ids.
    Vectors {
        /// An edge store with a live collection of real movie vectors.
        #[arg(long)]
        from: std::path::PathBuf,
        /// The edge store to write (its live collection is replaced).
        #[arg(long)]
        to: std::path::PathBuf,
        /// Synthetic movies (ids as `db::synth::movie_id`).
        #[arg(long, default_value_t = 27_000)]
        movies: usize,
    },
    /// Fixed-rate load.
    Run {
        #[command(flatten)]
        load: Load,
        /// Requests per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
    },
    /// Overhead of a proxy (the load balancer): the same open-loop load against `--direct`,
    /// `--via` (and every `--peer`), interleaved round by round, then closed-loop saturation of
    /// each, also interleaved round by round; prints the added p50/p99 (median of rounds) and the
    /// throughput ratios of the median saturation rates.
    Compare {
        /// The server, directly.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        direct: String,
        /// The same server behind the proxy.
        #[arg(long, default_value = "http://127.0.0.1:8082")]
        via: String,
        /// Users are drawn uniformly from 1..=users.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        /// Open-loop rate for the latency comparison.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rounds (each measures direct, then via).
        #[arg(long, default_value_t = 3)]
        rounds: u64,
        /// Concurrent connections for the saturation run.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Another proxy in front of the same server, measured in the same run (`NAME=URL`,
        /// e.g. `nginx=http://127.0.0.1:8090`); repeatable.
        #[arg(long = "peer", value_parser = parse_peer)]
        peers: Vec<(String, String)>,
    },
    /// Overload: open-loop phases one after the other (e.g. `--phase 1000x20 --phase 3000x20
    /// --phase 500x30`); prints the degraded share and p99 per second and per phase, when the
    /// degraded share settled under 1 % in the last phase, and the Postgres sessions opened.
    Overload {
        #[command(flatten)]
        load: Load,
        /// `RATExSECONDS`, repeatable, in order.
        #[arg(long = "phase", value_parser = parse_phase, required = true)]
        phases: Vec<(u64, u64)>,
        /// Postgres to count sessions on (`pg_stat_database`); without it, not counted.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
    },
    /// A bare proxy: GET /recommend/{user} forwarded to UPSTREAM and its body copied back, on
    /// one thread, with the same hyper server and pooled client the load balancer uses and
    /// nothing else (no routing, answer check, metrics or log). ci/bench-lb.sh measures it
    /// beside the load balancer and nginx: the floor of a proxy built on these crates.
    /// With --history-url, it also stores every answer as a row of `recommendations_history`
    /// (COPY every 10 ms; rows `bare-…`, deleted when it stops): the floor of a proxy that logs
    /// every response to Postgres on the same machine.
    Proxy {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: std::net::SocketAddr,
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        upstream: String,
        /// Postgres to store a history row per answer in (none: no log).
        #[arg(long)]
        history_url: Option<String>,
    },
    /// Step the rate up until p99 exceeds the target.
    Capacity {
        #[command(flatten)]
        load: Load,
        /// First rate.
        #[arg(long, default_value_t = 1_000)]
        start: u64,
        /// Increment.
        #[arg(long, default_value_t = 500)]
        step: u64,
        /// p99 target in milliseconds.
        #[arg(long, default_value_t = 10.0)]
        p99_ms: f64,
    },
}

#[derive(Debug, Clone)]
struct Outcome {
    rate: u64,
    sent: u64,
    ok: u64,
    /// Requests that got an HTTP response, whatever its status (for log-completeness checks).
    responses: u64,
    errors: u64,
    degraded: u64,
    seconds: f64,
    p50: f64,
    p99: f64,
    max: f64,
    cpu: f64,
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (clock ticks; 100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One request of an open-loop run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// The second (from the start) it was scheduled in.
    second: u32,
    /// From its scheduled time to the end of its body (ms).
    latency: f64,
    /// A 200 with a body.
    ok: bool,
    /// Any HTTP response (for log-completeness checks).
    responded: bool,
    degraded: bool,
}

/// Open-loop load through `phases` (rate, seconds), one after the other; every request's sample.
async fn run_phases(load: &Load, phases: &[(u64, u64)], seed: u64) -> Result<(Vec<Sample>, f64, f64)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1_024)
        .build_http::<Empty<Bytes>>();
    let total: u64 = phases.iter().map(|(rate, secs)| rate * secs).sum();
    let samples = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut phase_start = Duration::ZERO;
    for &(rate, seconds) in phases {
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        for i in 0..rate * seconds {
            let offset = phase_start + interval.mul_f64(i as f64);
            let scheduled = started + offset;
            tokio::time::sleep_until(scheduled.into()).await;
            let user = rng.random_range(1..=load.users);
            let uri: hyper::Uri = format!("{}/recommend/{user}", load.url).parse()?;
            let client = client.clone();
            let samples = samples.clone();
            let second = offset.as_secs() as u32;
            tasks.push(tokio::spawn(async move {
                let result = async {
                    let resp = client.get(uri).await?;
                    let ok = resp.status().is_success();
                    let degraded = resp.headers().contains_key(proto::contract::headers::DEGRADED);
                    let body = resp.into_body().collect().await?.to_bytes();
                    anyhow::Ok((ok && !body.is_empty(), degraded))
                }
                .await;
                let latency = scheduled.elapsed().as_secs_f64() * 1e3;
                let (ok, responded, degraded) = match result {
                    Ok((ok, degraded)) => (ok, true, degraded),
                    Err(_) => (false, false, false),
                };
                samples.lock().unwrap_or_else(|p| p.into_inner()).push(Sample {
                    second,
                    latency,
                    ok,
                    responded,
                    degraded,
                });
            }));
        }
        phase_start += Duration::from_secs(seconds);
    }
    for t in tasks {
        let _joined = t.await;
    }
    let seconds_taken = started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / seconds_taken;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((samples, seconds_taken, cpu))
}

/// Latency percentiles of the answered samples, and the counts.
fn outcome(rate: u64, samples: &[Sample], seconds: f64, cpu: f64) -> Outcome {
    let mut l: Vec<f64> = samples.iter().filter(|s| s.ok).map(|s| s.latency).collect();
    l.sort_by(f64::total_cmp);
    Outcome {
        rate,
        sent: samples.len() as u64,
        ok: l.len() as u64,
        responses: samples.iter().filter(|s| s.responded).count() as u64,
        errors: samples.iter().filter(|s| !s.ok).count() as u64,
        degraded: samples.iter().filter(|s| s.ok && s.degraded).count() as u64,
        seconds,
        p50: percentile(&l, 0.5),
        p99: percentile(&l, 0.99),
        max: l.last().copied().unwrap_or(f64::NAN),
        cpu,
    }
}

async fn run_rate(load: &Load, rate: u64, seconds: u64, seed: u64) -> Result<Outcome> {
    let (samples, taken, cpu) = run_phases(load, &[(rate, seconds)], seed).await?;
    Ok(outcome(rate, &samples, taken, cpu))
}

/// `pg_stat_database.sessions` summed over every database (Postgres ≥ 14), read on a
/// connection opened before the run (so it does not count itself).
async fn sessions(conn: &mut sqlx::PgConnection) -> Result<(i64, i64)> {
    // Statistics are flushed by each backend at most once a second.
    let row: (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT sum(sessions)::bigint, sum(sessions_abandoned)::bigint FROM pg_stat_database")
            .fetch_one(&mut *conn)
            .await
            .context("reading pg_stat_database")?;
    Ok((row.0.unwrap_or(0), row.1.unwrap_or(0)))
}

/// `rate x seconds`.
fn parse_phase(s: &str) -> Result<(u64, u64), String> {
    let (rate, secs) = s.split_once('x').ok_or_else(|| format!("expected RATExSECONDS, got {s:?}"))?;
    let rate: u64 = rate.trim().parse().map_err(|_| format!("bad rate in {s:?}"))?;
    let secs: u64 = secs.trim().parse().map_err(|_| format!("bad seconds in {s:?}"))?;
    if rate == 0 || secs == 0 {
        return Err(format!("rate and seconds must be positive in {s:?}"));
    }
    Ok((rate, secs))
}

/// The overload run: phases, then a per-second table (rate, achieved, degraded share, p99,
/// errors), per-phase summaries, how long the degraded share took to fall under 1 % in the last
/// phase, and the Postgres sessions opened during the run.
async fn overload(load: &Load, phases: &[(u64, u64)], database_url: Option<&str>) -> Result<()> {
    use sqlx::Connection;
    let mut pg = match database_url {
        Some(url) => Some(db::connect_one(url).await.context("connecting to Postgres")?),
        None => None,
    };
    let before = match pg.as_mut() {
        Some(c) => Some(sessions(c).await?),
        None => None,
    };
    if load.warmup > 0 {
        run_rate(load, phases[0].0, load.warmup, 1).await?;
    }
    let (samples, taken, cpu) = run_phases(load, phases, 3).await?;
    let mut bounds = Vec::new(); // (first second, last second + 1, rate)
    let mut at = 0u32;
    for &(rate, secs) in phases {
        bounds.push((at, at + secs as u32, rate));
        at += secs as u32;
    }
    println!("second  rate  answered  degraded%  p99 ms  errors");
    let mut by_second: Vec<Vec<Sample>> = vec![Vec::new(); at as usize];
    for s in &samples {
        if let Some(v) = by_second.get_mut(s.second as usize) {
            v.push(*s);
        }
    }
    let rate_at = |sec: u32| bounds.iter().find(|(a, b, _)| (*a..*b).contains(&sec)).map(|b| b.2).unwrap_or(0);
    let share = |v: &[Sample]| {
        let ok = v.iter().filter(|s| s.ok).count().max(1);
        100.0 * v.iter().filter(|s| s.ok && s.degraded).count() as f64 / ok as f64
    };
    for (sec, v) in by_second.iter().enumerate() {
        let o = outcome(0, v, 1.0, 0.0);
        println!("{sec:>6} {:>5} {:>9} {:>9.1}% {:>7.1} {:>7}", rate_at(sec as u32), o.ok, share(v), o.p99, o.errors);
    }
    for (i, &(a, b, rate)) in bounds.iter().enumerate() {
        let v: Vec<Sample> = samples.iter().filter(|s| (a..b).contains(&s.second)).copied().collect();
        let o = outcome(rate, &v, f64::from(b - a), 0.0);
        println!(
            "phase {} ({rate}/s for {} s): {} answered ({:.0}/s), degraded {:.1} %, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms, {} errors",
            i + 1,
            b - a,
            o.ok,
            o.ok as f64 / f64::from(b - a),
            share(&v),
            o.p50,
            o.p99,
            o.max,
            o.errors
        );
    }
    if let Some(&(a, b, _)) = bounds.last().filter(|_| bounds.len() > 1) {
        // The first second of the last phase from which every second stays under 1 % degraded.
        let settled = (a..b).find(|&sec| (sec..b).all(|t| share(&by_second[t as usize]) < 1.0));
        match settled {
            Some(sec) => println!("last phase: degraded share under 1 % from second {} of the phase on", sec - a),
            None => println!("last phase: the degraded share did not stay under 1 %"),
        }
    }
    println!("run: {} requests in {taken:.1} s, load generator CPU {:.0}%", samples.len(), cpu * 100.0);
    if let (Some(c), Some((s0, a0))) = (pg.as_mut(), before) {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let (s1, a1) = sessions(c).await?;
        println!("Postgres sessions opened during the run (warm-up included): {} ({} abandoned)", s1 - s0, a1 - a0);
    }
    if let Some(c) = pg {
        c.close().await.context("closing the statistics connection")?;
    }
    Ok(())
}

/// Closed loop: `concurrency` workers sending back to back for `seconds`.
async fn saturate(url: &str, users: u64, concurrency: usize, seconds: u64) -> Result<(f64, f64, f64, u64)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1_024)
        .build_http::<Empty<Bytes>>();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let url = url.to_string();
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < until {
                let uri: hyper::Uri = format!("{url}/recommend/{}", rng.random_range(1..=users)).parse()?;
                let at = Instant::now();
                let ok = async {
                    let resp = client.get(uri).await?;
                    let ok = resp.status().is_success();
                    resp.into_body().collect().await?;
                    anyhow::Ok(ok)
                }
                .await;
                match ok {
                    Ok(true) => lat.push(at.elapsed().as_secs_f64() * 1e3),
                    _ => errors += 1,
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (lat, e) = w.await??;
        all.extend(lat);
        errors += e;
    }
    let took = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((all.len() as f64 / took, percentile(&all, 0.5), percentile(&all, 0.99), errors))
}

fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or_else(|| format!("expected NAME=URL, got {s:?}"))?;
    if name.is_empty() || !url.starts_with("http://") {
        return Err(format!("expected NAME=http://host:port, got {s:?}"));
    }
    Ok((name.to_string(), url.trim_end_matches('/').to_string()))
}

#[allow(clippy::too_many_arguments)]
async fn compare(
    direct: &str,
    via: &str,
    peers: &[(String, String)],
    users: u64,
    rate: u64,
    seconds: u64,
    rounds: u64,
    concurrency: usize,
) -> Result<()> {
    let load = |url: &str| Load { url: url.to_string(), users, seconds, warmup: 0, server_pid: None };
    // Every path, the server alone first: (name, load).
    let mut paths = vec![("direct".to_string(), load(direct)), ("via".to_string(), load(via))];
    paths.extend(peers.iter().map(|(name, url)| (name.clone(), load(url))));
    // Warm every path (caches, connection pools).
    for (i, (_, l)) in paths.iter().enumerate() {
        run_rate(l, rate, 3, 100 + i as u64).await?;
    }
    let mut added: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); paths.len()];
    for round in 0..rounds {
        // The same users for every path in a round, interleaved.
        let mut direct_p = (0.0, 0.0);
        for (i, (name, l)) in paths.iter().enumerate() {
            let o = run_rate(l, rate, seconds, round).await?;
            println!("round {round}: {name:<8} p50 {:.3} ms p99 {:.3} ms ({} errors)", o.p50, o.p99, o.errors);
            if i == 0 {
                direct_p = (o.p50, o.p99);
            } else {
                added[i].0.push(o.p50 - direct_p.0);
                added[i].1.push(o.p99 - direct_p.1);
            }
        }
    }
    for (i, (name, _)) in paths.iter().enumerate().skip(1) {
        let (p50s, p99s) = &mut added[i];
        p50s.sort_by(f64::total_cmp);
        p99s.sort_by(f64::total_cmp);
        println!(
            "added latency of {name} at {rate}/s (median of {rounds} rounds): p50 {:+.3} ms, p99 {:+.3} ms",
            percentile(p50s, 0.5),
            percentile(p99s, 0.5)
        );
    }
    // Saturation, interleaved round by round (the machine's speed drifts; one run per path says
    // little): the median of each path's rounds.
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds.max(1) {
        for (i, (name, l)) in paths.iter().enumerate() {
            let (t, p50, p99, e) = saturate(&l.url, users, concurrency, seconds).await?;
            println!(
                "saturation round {round}, {concurrency} connections: {name:<8} {t:.0} req/s (p50 {p50:.2} p99 {p99:.2} ms, {e} errors)"
            );
            runs[i].push(t);
        }
    }
    let throughput: Vec<f64> = runs
        .iter_mut()
        .map(|r| {
            r.sort_by(f64::total_cmp);
            percentile(r, 0.5)
        })
        .collect();
    for (i, (name, _)) in paths.iter().enumerate() {
        println!("saturation median of {} rounds: {name:<8} {:.0} req/s", rounds.max(1), throughput[i]);
    }
    for (i, (name, _)) in paths.iter().enumerate().skip(1) {
        println!("throughput ratio {name}/direct: {:.3}", throughput[i] / throughput[0]);
    }
    for (i, (name, _)) in paths.iter().enumerate().skip(2) {
        println!("throughput ratio via/{name}: {:.3}", throughput[1] / throughput[i]);
    }
    Ok(())
}

fn print(o: &Outcome, load: &Load) {
    let rss = load.server_pid.and_then(rss_mib).map(|r| format!(", server RSS {r:.0} MiB")).unwrap_or_default();
    println!(
        "rate {:>5}/s: {} sent, {} responses, {} ok ({} degraded), {} errors, {:.0} req/s achieved, p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, load generator CPU {:.0}%{rss}",
        o.rate,
        o.sent,
        o.responses,
        o.ok,
        o.degraded,
        o.errors,
        o.ok as f64 / o.seconds,
        o.p50,
        o.p99,
        o.max,
        o.cpu * 100.0
    );
}

async fn vectors(from: &std::path::Path, to: &std::path::Path, movies: usize) -> Result<()> {
    let source = EdgeStore::open(from)?;
    let live = source.live().await?.context("the source store has no live collection")?;
    let ids: Vec<u64> = source.digests(&live).await?.into_iter().map(|d| d.id).collect();
    let real = source.vectors(&live, Space::Content, &ids).await?;
    if real.is_empty() {
        bail!("the source collection {live} is empty");
    }
    let dim = real[0].1.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let target = EdgeStore::open(to)?;
    let name = format!("movies_bench_{movies}");
    target.drop_collection(&name).await?;
    let spec = CollectionSpec { content_dim: dim, behaviour_dim: None, items: false, hnsw: Hnsw::default() };
    target.create_collection(&name, &spec).await?;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(1_000);
    for i in 0..movies {
        let base = &real[i % real.len()].1;
        let vector = if i < real.len() {
            base.clone()
        } else {
            let mut v: Vec<f32> = base.iter().map(|x| x + rng.random_range(-0.05..0.05)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        };
        let movie_id = db::synth::movie_id(i);
        batch.push(MoviePoint {
            id: point_id(&movie_id),
            vector,
            behaviour: None,
            item_dim: None,
            items: None,
            movie_id,
            title: format!("Synthetic {i}"),
            year: Some(1950 + (i % 75) as i32),
            genres: vec![["Drama", "Comedy", "Action", "Thriller", "Romance"][i % 5].to_string()],
            text_hash: String::new(),
        });
        if batch.len() == 1_000 {
            target.upsert(&name, std::mem::take(&mut batch)).await?;
        }
    }
    target.upsert(&name, batch).await?;
    target.finish_bulk_load(&name).await?;
    target.set_live(&name).await?;
    println!(
        "{name}: {} points ({} real vectors reused) in {:.1}s, live",
        target.count(&name).await?,
        real.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The bare proxy's response log: rows in COPY text form, sent every 10 ms.
struct BareLog {
    rows: std::sync::Mutex<Vec<u8>>,
    next: std::sync::atomic::AtomicU64,
    upstream: String,
}

impl BareLog {
    /// One answered request as a row with the load balancer's columns and the same kinds of
    /// values (provenance from the answer's headers, the movie ids, the inputs object).
    fn record(&self, user: &str, h: &hyper::HeaderMap, status: u16, body: &[u8], latency: Duration) {
        use db::copy;
        use proto::contract::headers;
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let line = std::str::from_utf8(body).unwrap_or("").trim();
        let inputs = serde_json::json!({
            "protocol": "http",
            "limit": 20,
            "kind": header(headers::KIND),
            "data_versions": header(headers::DATA_VERSIONS).and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok()),
        });
        let mut out = self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The process id keeps ids apart from rows a killed earlier run could not delete.
        copy::text(&mut out, &format!("bare-{}-{n}", std::process::id()));
        copy::tab(&mut out);
        copy::timestamp(&mut out, sqlx::types::chrono::Utc::now());
        copy::tab(&mut out);
        match user.parse::<i64>() {
            Ok(u) => copy::int(&mut out, u),
            Err(_) => copy::null(&mut out),
        }
        for v in [None, None, Some("main"), Some(self.upstream.as_str())] {
            copy::tab(&mut out);
            match v {
                Some(v) => copy::text(&mut out, v),
                None => copy::null(&mut out),
            }
        }
        copy::tab(&mut out);
        copy::null(&mut out); // release_id
        copy::tab(&mut out);
        match header(headers::MODEL_VERSION) {
            Some(v) => copy::text(&mut out, v),
            None => copy::null(&mut out),
        }
        copy::tab(&mut out);
        match header(headers::DATA_WATERMARK).and_then(|v| v.parse::<i64>().ok()) {
            Some(v) => copy::int(&mut out, v),
            None => copy::null(&mut out),
        }
        copy::tab(&mut out);
        copy::int(&mut out, status);
        copy::tab(&mut out);
        copy::int(&mut out, latency.as_micros() as i64);
        copy::tab(&mut out);
        copy::text_array(&mut out, line.split(',').filter(|m| !m.is_empty()));
        copy::tab(&mut out);
        out.push(if header(headers::DEGRADED).is_some() { b't' } else { b'f' });
        copy::tab(&mut out);
        copy::null(&mut out); // error
        copy::tab(&mut out);
        copy::text(&mut out, &inputs.to_string());
        copy::end_row(&mut out);
    }

    /// Sends what was recorded every 10 ms until the process stops; then deletes its rows.
    async fn ship(self: Arc<Self>, pool: sqlx::PgPool) {
        const COLUMNS: &str = "request_id, ts, user_id, experiment, assigned_variant, served_variant, backend, \
            release_id, model_version, data_watermark, status, latency_us, movie_ids, degraded, error, inputs";
        let mut stop = std::pin::pin!(lifecycle::shutdown_signal());
        loop {
            let stopping = tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(10)) => false,
                () = &mut stop => true,
            };
            let batch = std::mem::take(&mut *self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if !batch.is_empty() {
                let sent = async {
                    let mut conn = pool.acquire().await?;
                    let mut copy =
                        conn.copy_in_raw(&format!("COPY recommendations_history ({COLUMNS}) FROM STDIN")).await?;
                    copy.send(batch).await?;
                    copy.finish().await
                };
                if let Err(e) = sent.await {
                    eprintln!("load-bench proxy: history COPY failed: {e}");
                }
            }
            if stopping {
                break;
            }
        }
        match sqlx::query("DELETE FROM recommendations_history WHERE request_id LIKE 'bare-%'").execute(&pool).await {
            Ok(done) => eprintln!("load-bench proxy: {} history rows of its own deleted", done.rows_affected()),
            Err(e) => eprintln!("load-bench proxy: deleting its history rows failed: {e}"),
        }
    }
}

async fn proxy(listen: std::net::SocketAddr, upstream: String, history_url: Option<String>) -> Result<()> {
    use axum::extract::Path;
    use axum::http::StatusCode;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
    let log = match history_url {
        Some(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&url)
                .await
                .context("connecting to the history database")?;
            let log = Arc::new(BareLog {
                rows: std::sync::Mutex::new(Vec::new()),
                next: std::sync::atomic::AtomicU64::new(0),
                upstream: upstream.clone(),
            });
            Some((log.clone(), tokio::spawn(log.ship(pool))))
        }
        None => None,
    };
    let (log, shipper) = log.unzip();
    eprintln!(
        "load-bench proxy: http://{listen} -> {upstream}{}",
        if log.is_some() { " (every answer stored in recommendations_history)" } else { "" }
    );
    let upstream = Arc::new(upstream);
    let forward = move |Path(user): Path<String>| {
        let (client, upstream, log) = (client.clone(), upstream.clone(), log.clone());
        async move {
            let started = Instant::now();
            let uri: hyper::Uri = match format!("{upstream}/recommend/{user}").parse() {
                Ok(uri) => uri,
                Err(e) => return (StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
            };
            match client.get(uri).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    match body.collect().await {
                        Ok(body) => {
                            let body = body.to_bytes();
                            if let Some(log) = &log {
                                log.record(&user, &parts.headers, parts.status.as_u16(), &body, started.elapsed());
                            }
                            (parts.status, body)
                        }
                        Err(e) => (StatusCode::BAD_GATEWAY, Bytes::from(e.to_string())),
                    }
                }
                Err(e) => (StatusCode::BAD_GATEWAY, Bytes::from(e.to_string())),
            }
        }
    };
    let app = axum::Router::new().route("/recommend/{user}", axum::routing::get(forward));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ignored = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).with_graceful_shutdown(lifecycle::shutdown_signal()).await?;
    if let Some(shipper) = shipper {
        shipper.await?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The generator gets one thread: the server under test needs the other core.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match args.command {
            Cmd::Vectors { from, to, movies } => vectors(&from, &to, movies).await,
            Cmd::Proxy { listen, upstream, history_url } => proxy(listen, upstream, history_url).await,
            Cmd::Run { load, rate } => {
                if load.warmup > 0 {
                    run_rate(&load, rate, load.warmup, 1).await?;
                }
                let o = run_rate(&load, rate, load.seconds, 2).await?;
                print(&o, &load);
                Ok(())
            }
            Cmd::Overload { load, phases, database_url } => overload(&load, &phases, database_url.as_deref()).await,
            Cmd::Compare { direct, via, users, rate, seconds, rounds, concurrency, peers } => {
                compare(&direct, &via, &peers, users, rate, seconds, rounds, concurrency).await
            }
            Cmd::Capacity { load, start, step, p99_ms } => {
                let mut best = None;
                let mut rate = start;
                loop {
                    let o = run_rate(&load, rate, load.seconds, rate).await?;
                    print(&o, &load);
                    let met = o.errors == 0
                        && o.degraded == 0
                        && o.p99 <= p99_ms
                        && (o.ok as f64 / o.seconds) >= 0.97 * rate as f64;
                    if !met {
                        break;
                    }
                    best = Some(rate);
                    rate += step;
                }
                match best {
                    Some(r) => println!("highest rate with p99 <= {p99_ms} ms, no errors, no degraded answers: {r}/s"),
                    None => println!("no rate met p99 <= {p99_ms} ms"),
                }
                Ok(())
            }
        }
    })
}
