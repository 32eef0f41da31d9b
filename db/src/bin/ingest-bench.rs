//! Ingest benchmark: generates course-format lines with a realistic mix, ingests them into a
//! private Postgres end to end (read, parse, COPY, summaries, watermark), then `COPY`s the same
//! event rows, pre-encoded, into a fresh database: the physical limit. Prints both rates and
//! their ratio.
//!
//! `cargo run --release -p db --bin ingest-bench -- --lines 10000000`

use std::io::BufWriter;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use db::event::Event;
use db::ingest::{EVENT_COPY_STATEMENTS, EventRows, IngestOptions, Ingester};
use db::parse::{ParseConfig, parse_line};
use db::pgcluster::{Durability, PgCluster};
use db::source::FileSource;
use db::synth::{SynthSpec, write_log};
use sqlx::{Connection, PgConnection};

#[derive(Parser, Debug)]
#[command(about = "Benchmark the course-log ingester against a plain COPY of the same rows")]
struct Args {
    /// Lines to generate.
    #[arg(long, default_value_t = 10_000_000)]
    lines: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Distinct movies.
    #[arg(long, default_value_t = 27_000)]
    movies: usize,
    /// Lines per ingest transaction.
    #[arg(long, default_value_t = 200_000)]
    batch_lines: usize,
    /// Where the generated log is kept between runs.
    #[arg(long, default_value = "/tmp/lazyrec-bench")]
    work_dir: PathBuf,
    /// Run Postgres with fsync and synchronous commit on (as the local stack does).
    #[arg(long)]
    durable: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.work_dir).context("creating the work dir")?;
    let spec = SynthSpec { lines: args.lines, users: args.users, movies: args.movies, ..SynthSpec::default() };
    let log = args.work_dir.join(format!("synth-{}-{}-{}-{}.log", spec.lines, spec.users, spec.movies, spec.seed));
    if !log.is_file() {
        eprintln!("generating {} lines into {} ...", spec.lines, log.display());
        let tmp = log.with_extension("partial");
        let file = std::fs::File::create(&tmp).context("creating the log")?;
        let counts = write_log(&spec, &mut BufWriter::with_capacity(1 << 20, file)).context("writing the log")?;
        std::fs::rename(&tmp, &log).context("finishing the log")?;
        eprintln!("generated: {counts:?}");
    }
    let bytes = std::fs::metadata(&log)?.len();
    let durability = if args.durable { Durability::Durable } else { Durability::Disposable };
    let cluster = PgCluster::start_ephemeral(Some(&args.work_dir), durability).context("starting Postgres")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let mut admin = PgConnection::connect(&cluster.url("postgres")).await?;
        for name in ["bench_ingest", "bench_copy"] {
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await?;
            let pool = db::connect_pool(&cluster.url(name), 2).await?;
            db::migrate(&pool).await?;
            pool.close().await;
        }

        // End to end: file → parse → COPY + summaries + watermark, batch by batch.
        let conn = PgConnection::connect(&cluster.url("bench_ingest")).await?;
        let opts = IngestOptions { batch_lines: args.batch_lines, progress: true, ..IngestOptions::default() };
        let source = FileSource::open(&log, None).context("opening the log")?;
        let started = Instant::now();
        let report = Ingester::run_once(conn, opts, vec![Box::new(source)]).await?;
        let ingest_secs = started.elapsed().as_secs_f64();
        let events = report.accepted.total();
        eprintln!("{}", report.render());

        // The physical limit: the same event rows, already encoded, in one COPY per table.
        eprintln!("encoding the same rows for the plain COPY baseline (not timed) ...");
        let text = std::fs::read(&log)?;
        let mut rows = EventRows::default();
        let mut id = 0i64;
        let cfg = ParseConfig::default();
        for line in text.split(|b| *b == b'\n') {
            if let Ok(event) = parse_line(line, &cfg) {
                id += 1;
                let event: Event<'_> = event;
                rows.push(id, &event, cfg.rating_scale);
            }
        }
        drop(text);
        anyhow::ensure!(id as u64 == events, "baseline has {id} events, ingest {events}");
        let mut conn = PgConnection::connect(&cluster.url("bench_copy")).await?;
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        for (statement, data) in EVENT_COPY_STATEMENTS.into_iter().zip(rows.tables()) {
            let mut copy_in = tx.copy_in_raw(statement).await?;
            copy_in.send(data.as_slice()).await?;
            copy_in.finish().await?;
        }
        tx.commit().await?;
        let copy_secs = started.elapsed().as_secs_f64();

        let ingest_rate = events as f64 / ingest_secs;
        let copy_rate = events as f64 / copy_secs;
        println!(
            "ingest-bench: {} lines ({:.0} MB), {} events, {} rejected; postgres {:?}",
            report.lines,
            bytes as f64 / 1e6,
            events,
            report.rejected_total(),
            durability
        );
        println!(
            "  end-to-end ingest: {ingest_secs:.2} s = {ingest_rate:.0} events/s ({} batches of {})",
            report.batches, args.batch_lines
        );
        println!("  plain COPY       : {copy_secs:.2} s = {copy_rate:.0} events/s");
        println!("  ratio ingest/COPY: {:.2}", ingest_rate / copy_rate);
        anyhow::Ok(())
    })?;
    drop(cluster);
    Ok(())
}
