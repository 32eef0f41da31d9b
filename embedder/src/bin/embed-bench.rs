//! Embedding and search benchmarks.
//!
//! * `embed-bench compare` — our embedder vs Python sentence-transformers all-MiniLM-L6-v2 on
//!   the same course movie texts, in one run: both rates, their ratio, cosine agreement.
//! * `embed-bench search` — top-50 search latency on qdrant-edge at course scale (the real
//!   course movies plus synthetic fill to 27k points), with and without a genre filter.
//! * `embed-bench recall` — recall@k of HNSW search against exact search on a store's live
//!   collection, in both spaces, for several graphs (m × ef_construct) and search breadths (ef),
//!   with the search latency of each.
//! * `embed-bench behaviour` — the behaviour-vector job at scale (read + factorise time, peak
//!   memory); `--attach` copies the live collection with the new vectors and makes it live.
//!
//! `cargo run --release -p embedder --bin embed-bench -- compare --catalog ../shared/data/course/catalog/course_catalog_union.jsonl`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use embedder::model::{Model, ModelPaths};
use embedder::text::{MovieFields, movie_text, text_hash};
use rand::{Rng, SeedableRng};
use vectorstore::edge::EdgeStore;
use vectorstore::point_id;
use vectorstore::{CollectionSpec, Hnsw, MoviePoint, SearchFilter, Space, VectorStore};

#[derive(Parser, Debug)]
#[command(about = "Embedding and vector-search benchmarks")]
struct Args {
    /// The course catalog (course_catalog_union.jsonl).
    #[arg(long, default_value = "../shared/data/course/catalog/course_catalog_union.jsonl", global = true)]
    catalog: PathBuf,
    /// Embedding assets (ci/assets.py).
    #[arg(long, default_value = ".state/assets", global = true)]
    assets_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Ours vs sentence-transformers on the same texts.
    Compare {
        /// How many movie texts.
        #[arg(long, default_value_t = 2_000)]
        texts: usize,
        /// Batch size for both.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// ONNX Runtime threads (ours).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Skip the Python side (quick tuning runs of ours only).
        #[arg(long)]
        ours_only: bool,
        /// Truncation (tokens) for both.
        #[arg(long, default_value_t = embedder::model::DEFAULT_MAX_TOKENS)]
        max_tokens: usize,
    },
    /// Search latency at course scale.
    Search {
        /// Total points (real movies + synthetic fill).
        #[arg(long, default_value_t = 27_000)]
        points: usize,
        /// Queries per configuration.
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        /// Take the real movie vectors from this edge store's live collection (made by
        /// `embedder embed` over the course catalog) instead of embedding them again.
        #[arg(long)]
        vectors_from: Option<PathBuf>,
    },
    /// Recall of HNSW against exact search on an edge store's live collection (both spaces).
    Recall {
        /// The qdrant-edge directory (its live collection is copied, not changed).
        #[arg(long, default_value = ".state/qdrant-edge")]
        edge_dir: PathBuf,
        /// Query movies per space (random, seeded).
        #[arg(long, default_value_t = 25)]
        queries: usize,
        /// Neighbours per query.
        #[arg(long, default_value_t = 50)]
        k: usize,
        /// Search breadths to try (0: the engine's default).
        #[arg(long, value_delimiter = ',', default_value = "0,64,128,256")]
        ef: Vec<usize>,
        /// Graphs to build, as <m>x<ef_construct>[f<full_scan_kb>] (full scan threshold default:
        /// the store's default).
        #[arg(long, value_delimiter = ',', default_value = "16x100f10000,32x400")]
        hnsw: Vec<String>,
        /// Searches per configuration for the latency figures.
        #[arg(long, default_value_t = 500)]
        latency_queries: usize,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// The behaviour-vector job on a database: time and peak memory.
    Behaviour {
        #[command(flatten)]
        db: db::args::DatabaseArgs,
        /// Factorisation parameters (JSON).
        #[arg(long, default_value = "{}")]
        params: String,
        /// Also fit the item weights with these parameters (JSON, e.g. '{}' for the defaults):
        /// their solve time and the peak memory are part of the report.
        #[arg(long)]
        items: Option<String>,
        /// Copy this edge store's live collection with the behaviour vectors added, and make
        /// the copy live (prepares a load benchmark of a strategy that uses them).
        #[arg(long)]
        attach: Option<PathBuf>,
    },
}

fn course_texts(catalog: &Path) -> Result<Vec<(MovieFields, String)>> {
    let (movies, _) =
        db::import::catalog::read_catalog(catalog).with_context(|| format!("reading {}", catalog.display()))?;
    Ok(movies
        .into_iter()
        .map(|m| {
            let fields = MovieFields {
                movie_id: m.movie_id,
                title: m.title,
                year: m.year,
                genres: m.genres,
                overview: m.overview,
                tagline: m.tagline,
                keywords: m.keywords,
            };
            let text = movie_text(&fields);
            (fields, text)
        })
        .collect())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let paths = ModelPaths::in_assets_dir(&args.assets_dir);
    match args.command {
        Cmd::Compare { texts, batch, max_tokens, threads, ours_only } => {
            compare(&args.catalog, &paths, texts, batch, max_tokens, threads, ours_only)
        }
        Cmd::Search { points, queries, vectors_from } => {
            search(&args.catalog, &paths, points, queries, vectors_from.as_deref())
        }
        Cmd::Recall { edge_dir, queries, k, ef, hnsw, latency_queries, seed } => {
            let graphs = hnsw.iter().map(|h| parse_hnsw(h)).collect::<Result<Vec<_>>>()?;
            runtime()?.block_on(recall(&edge_dir, queries, k, &ef, &graphs, latency_queries, seed))
        }
        Cmd::Behaviour { db, params, items, attach } => {
            let params: behaviour::Params = serde_json::from_str(&params).context("--params")?;
            let items: Option<behaviour::items::ItemParams> =
                items.map(|i| serde_json::from_str(&i)).transpose().context("--items")?;
            runtime()?.block_on(behaviour_job(&db, &params, items.as_ref(), attach.as_deref()))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

fn parse_hnsw(s: &str) -> Result<Hnsw> {
    let bad = || format!("--hnsw {s:?}: expected <m>x<ef_construct>[f<full_scan_kb>], e.g. 16x100 or 32x400f10000");
    let (m, rest) = s.split_once('x').with_context(bad)?;
    let (ef, full_scan) = rest.split_once('f').unwrap_or((rest, ""));
    let mut h = Hnsw {
        m: m.trim().parse().with_context(bad)?,
        ef_construct: ef.trim().parse().with_context(bad)?,
        ..Hnsw::default()
    };
    if !full_scan.is_empty() {
        h.full_scan_kb = full_scan.trim().parse().with_context(bad)?;
    }
    h.check().map_err(anyhow::Error::msg)?;
    Ok(h)
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Every point of `collection` with its content and behaviour vectors (payload: movie id and
/// text hash only).
async fn copy_points(store: &EdgeStore, collection: &str) -> Result<Vec<MoviePoint>> {
    let digests = store.digests(collection).await?;
    let ids: Vec<u64> = digests.iter().map(|d| d.id).collect();
    let mut content = std::collections::HashMap::new();
    let mut behaviour = std::collections::HashMap::new();
    for chunk in ids.chunks(1_000) {
        content.extend(store.vectors(collection, Space::Content, chunk).await?);
        behaviour.extend(store.vectors(collection, Space::Behaviour, chunk).await?);
    }
    Ok(digests
        .into_iter()
        .filter_map(|d| {
            Some(MoviePoint {
                id: d.id,
                vector: content.remove(&d.id)?,
                behaviour: behaviour.remove(&d.id),
                item_dim: None,
                items: None,
                movie_id: d.movie_id,
                title: String::new(),
                year: None,
                genres: Vec::new(),
                text_hash: d.text_hash,
            })
        })
        .collect())
}

async fn build(store: &EdgeStore, name: &str, points: &[MoviePoint], hnsw: Hnsw) -> Result<f64> {
    let spec = CollectionSpec {
        content_dim: points.first().map(|p| p.vector.len()).context("no points")?,
        behaviour_dim: points.iter().find_map(|p| p.behaviour.as_ref().map(Vec::len)),
        items: points.iter().any(|p| p.items.is_some()),
        hnsw,
    };
    store.drop_collection(name).await?;
    store.create_collection(name, &spec).await?;
    let started = Instant::now();
    for chunk in points.chunks(1_000) {
        store.upsert(name, chunk.to_vec()).await?;
    }
    store.finish_bulk_load(name).await?;
    Ok(started.elapsed().as_secs_f64())
}

async fn recall(
    edge_dir: &Path,
    queries: usize,
    k: usize,
    efs: &[usize],
    graphs: &[Hnsw],
    latency_queries: usize,
    seed: u64,
) -> Result<()> {
    let source = EdgeStore::open(edge_dir)?;
    let live = source.live().await?.context("the store has no live collection")?;
    let points = copy_points(&source, &live).await?;
    drop(source);
    println!(
        "embed-bench recall: {live} ({} points), recall@{k} of HNSW vs exact search, {queries} query movies per space",
        points.len()
    );
    let dir = tempfile::tempdir()?;
    let store = EdgeStore::open(dir.path())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for &hnsw in graphs {
        let name = format!("recall_{}", hnsw.tag());
        let seconds = build(&store, &name, &points, hnsw).await?;
        println!(
            "  graph m = {}, ef_construct = {}, full scan below {} KiB: built in {seconds:.1} s",
            hnsw.m, hnsw.ef_construct, hnsw.full_scan_kb
        );
        for space in Space::ALL {
            let with: Vec<&MoviePoint> = points
                .iter()
                .filter(|p| match space {
                    Space::Content => true,
                    Space::Behaviour => p.behaviour.is_some(),
                })
                .collect();
            if with.is_empty() {
                println!("    {space:<9}: no vectors in this collection");
                continue;
            }
            let vector = |p: &MoviePoint| match space {
                Space::Content => p.vector.clone(),
                Space::Behaviour => p.behaviour.clone().unwrap_or_default(),
            };
            let sample: Vec<&MoviePoint> = (0..queries).map(|_| with[rng.random_range(0..with.len())]).collect();
            for &ef in efs {
                let mut found = 0usize;
                let mut wanted = 0usize;
                for p in &sample {
                    let exclude = vec![p.id];
                    let exact = SearchFilter { exclude_ids: exclude.clone(), exact: true, ..SearchFilter::default() };
                    let truth = store.search(&name, space, vector(p), k, &exact).await?;
                    let approx =
                        SearchFilter { exclude_ids: exclude, ef: (ef > 0).then_some(ef), ..SearchFilter::default() };
                    let got = store.search(&name, space, vector(p), k, &approx).await?;
                    let truth: std::collections::HashSet<u64> = truth.iter().map(|h| h.id).collect();
                    wanted += truth.len();
                    found += got.iter().filter(|h| truth.contains(&h.id)).count();
                }
                let mut times = Vec::with_capacity(latency_queries);
                for q in 0..latency_queries {
                    let p = with[(q * 7919) % with.len()];
                    let filter =
                        SearchFilter { exclude_ids: vec![p.id], ef: (ef > 0).then_some(ef), ..SearchFilter::default() };
                    let started = Instant::now();
                    store.search(&name, space, vector(p), k, &filter).await?;
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
                times.sort_by(f64::total_cmp);
                println!(
                    "    {space:<9} ef {:>7}: recall@{k} {:.4}  search p50 {:.2} ms, p99 {:.2} ms",
                    if ef == 0 { "default".to_string() } else { ef.to_string() },
                    found as f64 / wanted.max(1) as f64,
                    percentile(&times, 0.5),
                    percentile(&times, 0.99)
                );
            }
        }
        store.drop_collection(&name).await?;
    }
    Ok(())
}

async fn behaviour_job(
    db: &db::args::DatabaseArgs,
    params: &behaviour::Params,
    items: Option<&behaviour::items::ItemParams>,
    attach: Option<&Path>,
) -> Result<()> {
    let pool = db.pool(2).await?;
    let started = Instant::now();
    let run = embedder::behaviour::compute(&pool, params, items).await?;
    let seconds = started.elapsed().as_secs_f64();
    println!("{}", run.render());
    println!("embed-bench behaviour: {seconds:.1} s wall, peak RSS {:.0} MiB", peak_rss_mib());
    let Some(dir) = attach else { return Ok(()) };
    let store = EdgeStore::open(dir)?;
    let live = store.live().await?.context("the store has no live collection")?;
    let mut points = copy_points(&store, &live).await?;
    for p in &mut points {
        p.behaviour = run.vectors.by_movie.get(&p.movie_id).cloned();
        let entry = run.vectors.items.get(&p.movie_id);
        p.item_dim = entry.and_then(|e| e.dim);
        p.items = entry.and_then(|e| e.vector.clone());
    }
    let with = points.iter().filter(|p| p.behaviour.is_some()).count();
    let name = format!("{live}_b{}", run.vectors.version);
    let seconds = build(&store, &name, &points, Hnsw::default()).await?;
    store.set_live(&name).await?;
    println!("{name}: {} points ({with} with behaviour vectors) built in {seconds:.1} s, now live", points.len());
    Ok(())
}

fn compare(
    catalog: &Path,
    paths: &ModelPaths,
    n: usize,
    batch: usize,
    max_tokens: usize,
    threads: usize,
    ours_only: bool,
) -> Result<()> {
    let texts: Vec<String> = course_texts(catalog)?.into_iter().take(n).map(|(_, t)| t).collect();
    let work = tempfile::tempdir()?;
    let texts_json = work.path().join("texts.json");
    std::fs::write(&texts_json, serde_json::to_vec(&texts)?)?;
    let out = work.path().join("python.f32");

    if ours_only {
        let mut model = Model::load(paths, threads, max_tokens)?;
        model.embed_batched(&texts[..32.min(texts.len())], batch)?;
        let started = Instant::now();
        model.embed_batched(&texts, batch)?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "ours: {} texts, batch {batch}, {threads} threads, max {max_tokens} tokens: {:.0} texts/s",
            texts.len(),
            texts.len() as f64 / secs
        );
        return Ok(());
    }
    // Python first (its torch threads would otherwise compete with ours).
    let env = Command::new("bash").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/python-env.sh")).output()?;
    if !env.status.success() {
        bail!("creating the Python venv failed: {}", String::from_utf8_lossy(&env.stderr));
    }
    let python = String::from_utf8(env.stdout)?.trim().to_string();
    let py = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/st_embed.py"))
        .arg(&texts_json)
        .arg(&out)
        .arg(batch.to_string())
        .arg(max_tokens.to_string())
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    if !py.status.success() {
        bail!("sentence-transformers failed: {}", String::from_utf8_lossy(&py.stderr));
    }
    let report: serde_json::Value = serde_json::from_slice(py.stdout.trim_ascii()).context("python output")?;
    let py_secs = report["seconds"].as_f64().context("python seconds")?;
    let raw = std::fs::read(&out)?;
    let py_vectors: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();

    let mut model = Model::load(paths, threads, max_tokens)?;
    model.embed_batched(&texts[..32.min(texts.len())], batch)?; // warm-up, as for Python
    let started = Instant::now();
    let ours = model.embed_batched(&texts, batch)?;
    let our_secs = started.elapsed().as_secs_f64();

    let dim = model.dim();
    let cosines: Vec<f32> = ours
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let p = &py_vectors[i * dim..(i + 1) * dim];
            let dot: f32 = v.iter().zip(p).map(|(a, b)| a * b).sum();
            let nv: f32 = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            let np: f32 = p.iter().map(|a| a * a).sum::<f32>().sqrt();
            dot / (nv * np)
        })
        .collect();
    let mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    let min = cosines.iter().copied().fold(f32::INFINITY, f32::min);
    let our_rate = texts.len() as f64 / our_secs;
    let py_rate = texts.len() as f64 / py_secs;
    println!(
        "embed-bench compare: {} course movie texts, batch {batch}, max {max_tokens} tokens, 2 threads each",
        texts.len()
    );
    println!("  ours (fastembed, int8 ONNX, length-sorted batches): {our_secs:.2} s = {our_rate:.0} texts/s");
    println!("  python sentence-transformers (fp32 torch)         : {py_secs:.2} s = {py_rate:.0} texts/s");
    println!("  ratio ours/python: {:.2}", our_rate / py_rate);
    println!("  cosine(ours, python): mean {mean:.5}, min {min:.5}");
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn search(catalog: &Path, paths: &ModelPaths, total: usize, queries: usize, vectors_from: Option<&Path>) -> Result<()> {
    let movies = course_texts(catalog)?;
    let texts: Vec<String> = movies.iter().map(|(_, t)| t.clone()).collect();
    let vectors = match vectors_from {
        Some(dir) => stored_vectors(dir, &movies)?,
        None => {
            let mut model = Model::load(paths, 2, embedder::model::DEFAULT_MAX_TOKENS)?;
            eprintln!("embedding {} course movies ...", texts.len());
            model.embed(&texts)?
        }
    };
    let dim = vectors.first().map(Vec::len).context("no vectors")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut points: Vec<MoviePoint> = movies
        .iter()
        .zip(&vectors)
        .map(|((m, t), v)| MoviePoint {
            id: point_id(&m.movie_id),
            vector: v.clone(),
            behaviour: None,
            item_dim: None,
            items: None,
            movie_id: m.movie_id.clone(),
            title: m.title.clone(),
            year: m.year,
            genres: m.genres.clone(),
            text_hash: text_hash(t),
        })
        .collect();
    // Synthetic fill: perturbed copies of real movies (same genres), renormalised.
    let mut k = 0;
    while points.len() < total {
        let base = &points[k % movies.len()];
        let mut v: Vec<f32> = base.vector.iter().map(|x| x + rng.random_range(-0.05..0.05)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        let movie_id = format!("synthetic+{k}");
        points.push(MoviePoint {
            id: point_id(&movie_id),
            vector: v,
            movie_id,
            genres: base.genres.clone(),
            ..base.clone()
        });
        k += 1;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = tempfile::tempdir()?;
    rt.block_on(async {
        let store = EdgeStore::open(dir.path())?;
        let name = "movies_bench";
        store
            .create_collection(
                name,
                &CollectionSpec { content_dim: dim, behaviour_dim: None, items: false, hnsw: Hnsw::default() },
            )
            .await?;
        let started = Instant::now();
        for chunk in points.chunks(1_000) {
            store.upsert(name, chunk.to_vec()).await?;
        }
        let upsert = started.elapsed().as_secs_f64();
        let started = Instant::now();
        store.finish_bulk_load(name).await?;
        let index = started.elapsed().as_secs_f64();
        println!(
            "embed-bench search: {} points ({} real course movies + synthetic fill), dim {dim}",
            points.len(),
            movies.len()
        );
        println!("  upsert {upsert:.1} s, HNSW build {index:.1} s");
        for (label, genre, exact) in [
            ("top-50, HNSW, no filter", None, false),
            ("top-50, HNSW, genre = Drama", Some("Drama"), false),
            ("top-50, HNSW, genre = Western", Some("Western"), false),
            ("top-50, exact, no filter", None, true),
            ("top-50, exact, genre = Western", Some("Western"), true),
        ] {
            let filter = SearchFilter {
                any_genre: genre.map(|g| vec![g.to_string()]).unwrap_or_default(),
                exclude_ids: Vec::new(),
                exact,
                ef: None,
            };
            let mut times = Vec::with_capacity(queries);
            for q in 0..queries {
                let v = vectors[(q * 7919) % vectors.len()].clone();
                let started = Instant::now();
                let hits = store.search(name, Space::Content, v, 50, &filter).await?;
                times.push(started.elapsed().as_secs_f64() * 1e3);
                anyhow::ensure!(!hits.is_empty(), "no hits");
            }
            times.sort_by(f64::total_cmp);
            println!(
                "  {label:<32}: p50 {:.2} ms, p99 {:.2} ms ({queries} queries)",
                percentile(&times, 0.5),
                percentile(&times, 0.99)
            );
        }
        anyhow::Ok(())
    })?;
    Ok(())
}

/// The vectors of `movies` from the live collection of the edge store at `dir`, in order.
fn stored_vectors(dir: &Path, movies: &[(MovieFields, String)]) -> Result<Vec<Vec<f32>>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store = EdgeStore::open(dir)?;
        let live = store.live().await?.context("no live collection in the --vectors-from store")?;
        let ids: Vec<u64> = movies.iter().map(|(m, _)| point_id(&m.movie_id)).collect();
        let found = store.vectors(&live, Space::Content, &ids).await?;
        anyhow::ensure!(found.len() == ids.len(), "{live} holds {} of the {} catalog movies", found.len(), ids.len());
        Ok(found.into_iter().map(|(_, v)| v).collect())
    })
}
