//! Embedding and search benchmarks.
//!
//! * `embed-bench compare` — our embedder vs Python sentence-transformers all-MiniLM-L6-v2 on
//!   the same course movie texts, in one run: both rates, their ratio, cosine agreement.
//! * `embed-bench search` — top-50 search latency on qdrant-edge at course scale (the real
//!   course movies plus synthetic fill to 27k points), with and without a genre filter.
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
    }
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
            .create_collection(name, &CollectionSpec { content_dim: dim, behaviour_dim: None, hnsw: Hnsw::default() })
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
