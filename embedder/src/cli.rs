//! The `embedder` command line: `embed`, `behaviour`, `status`, `similar`, `query`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::model::{Model, ModelPaths};
use crate::pipeline::Embedder;
use vectorstore::args::StoreArgs;
use vectorstore::point_id;
use vectorstore::{Hnsw, SearchFilter, Space};

#[derive(Parser, Debug)]
#[command(
    name = "embedder",
    version,
    about = "Embed the movie catalog into Qdrant (embedded qdrant-edge by default, a Qdrant server with --qdrant-url)"
)]
struct Cli {
    #[command(flatten)]
    db: db::args::DatabaseArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// HNSW edges per node of new collections (part of the collection name).
    #[arg(long, default_value_t = Hnsw::default().m, global = true)]
    hnsw_m: usize,
    /// HNSW build breadth of new collections (part of the collection name).
    #[arg(long, default_value_t = Hnsw::default().ef_construct, global = true)]
    hnsw_ef_construct: usize,
    /// Spaces smaller than this (KiB of vectors) get no HNSW graph and are scanned (part of the
    /// collection name).
    #[arg(long, default_value_t = Hnsw::default().full_scan_kb, global = true)]
    hnsw_full_scan_kb: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SpaceArg {
    Content,
    Behaviour,
}

impl From<SpaceArg> for Space {
    fn from(s: SpaceArg) -> Self {
        match s {
            SpaceArg::Content => Space::Content,
            SpaceArg::Behaviour => Space::Behaviour,
        }
    }
}

/// Where the model files are.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Directory with the assets installed by ci/assets.py (default: <state-dir>/assets).
    #[arg(long, env = "LAZYREC_ASSETS_DIR", global = true)]
    pub assets_dir: Option<PathBuf>,
    /// ONNX Runtime shared library (overrides the assets dir).
    #[arg(long, env = "LAZYREC_ONNXRUNTIME", global = true)]
    pub onnxruntime: Option<PathBuf>,
    /// ONNX embedding model (overrides the assets dir).
    #[arg(long, env = "LAZYREC_MODEL", global = true)]
    pub model: Option<PathBuf>,
    /// Tokenizer directory (tokenizer.json, config.json, special_tokens_map.json, tokenizer_config.json).
    #[arg(long, env = "LAZYREC_TOKENIZER_DIR", global = true)]
    pub tokenizer_dir: Option<PathBuf>,
    /// ONNX Runtime threads.
    #[arg(long, default_value_t = 2, global = true)]
    pub threads: usize,
    /// Texts are truncated to this many tokens (part of the model id).
    #[arg(long, default_value_t = crate::model::DEFAULT_MAX_TOKENS, global = true)]
    pub max_tokens: usize,
}

impl ModelArgs {
    /// The model paths after defaults and overrides.
    pub fn paths(&self, state_dir: &std::path::Path) -> ModelPaths {
        let assets = self.assets_dir.clone().unwrap_or_else(|| state_dir.join("assets"));
        let mut paths = ModelPaths::in_assets_dir(&assets);
        if let Some(p) = &self.onnxruntime {
            paths.onnxruntime = p.clone();
        }
        if let Some(p) = &self.model {
            paths.model = p.clone();
        }
        if let Some(p) = &self.tokenizer_dir {
            paths.tokenizer_dir = p.clone();
        }
        paths
    }

    /// Loads the model (on a blocking thread: it reads ~25 MB and builds a session).
    pub async fn load(&self, state_dir: &std::path::Path) -> Result<Model> {
        let paths = self.paths(state_dir);
        let (threads, max_tokens) = (self.threads, self.max_tokens);
        Ok(tokio::task::spawn_blocking(move || Model::load(&paths, threads, max_tokens))
            .await
            .context("model loader")??)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make the current catalog's collection live: when the catalog changed since the live
    /// collection was built, build a new collection (only new and changed movies go through the
    /// model, the rest come from the vector cache) and switch to it when complete. A live
    /// collection is never modified: past answers name it and a replay searches it.
    Embed {
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Movies per embed-and-upsert step.
        #[arg(long, default_value_t = 256)]
        chunk: usize,
    },
    /// Compute behaviour vectors (randomised SVD of the user–item matrix up to the watermark)
    /// and item weights (EASE / EDLAE, the `items` sparse vectors items-v1 searches) from the
    /// interactions in Postgres, build a new collection with them next to the content vectors,
    /// and switch to it. Content vectors come from the cache.
    Behaviour {
        /// Factorisation parameters as JSON, e.g. '{"dim":64}' (defaults: see the behaviour crate).
        #[arg(long, default_value = "{}")]
        params: String,
        /// Item-weights parameters as JSON, e.g. '{"lambda":250,"top_k":1000,"max_items":12000}'
        /// (memory 16 × max_items² bytes during the solve; defaults: behaviour::items).
        #[arg(long, default_value = "{}")]
        items: String,
        /// No item weights (the collection then serves neighbours strategies only).
        #[arg(long)]
        no_items: bool,
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Movies per upsert step.
        #[arg(long, default_value_t = 256)]
        chunk: usize,
    },
    /// Show the store's collections, point counts and which is live.
    Status,
    /// Movies nearest to a movie.
    Similar {
        /// Course movie id, e.g. toy+story+1995.
        movie_id: String,
        /// How many.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Only movies of this genre (repeatable).
        #[arg(long)]
        genre: Vec<String>,
        /// Which vectors: the text embedding or the behaviour vector.
        #[arg(long, value_enum, default_value = "content")]
        space: SpaceArg,
    },
    /// Movies nearest to a free-text query.
    Query {
        /// The text.
        text: String,
        /// How many.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Only movies of this genre (repeatable).
        #[arg(long)]
        genre: Vec<String>,
    },
}

/// Runs the command line.
pub async fn run() -> Result<()> {
    let cli = Cli::parse();
    let hnsw = Hnsw { m: cli.hnsw_m, ef_construct: cli.hnsw_ef_construct, full_scan_kb: cli.hnsw_full_scan_kb };
    hnsw.check().map_err(anyhow::Error::msg)?;
    let store = cli.store.open(&cli.db.state_dir).context("opening the vector store")?;
    let connect = || async {
        let pool = cli.db.pool(4).await?;
        db::migrate(&pool).await.context("applying migrations")?;
        anyhow::Ok(pool)
    };
    match &cli.command {
        Command::Embed { no_progress, chunk, .. } | Command::Behaviour { no_progress, chunk, .. } => {
            let pool = connect().await?;
            // Content runs keep the live behaviour vectors; `behaviour` computes new ones and
            // builds a collection with them.
            let behaviour = match &cli.command {
                Command::Behaviour { params, items, no_items, .. } => {
                    let params: behaviour::Params =
                        serde_json::from_str(params).map_err(|e| anyhow::anyhow!("--params: {e}"))?;
                    let items: behaviour::items::ItemParams =
                        serde_json::from_str(items).map_err(|e| anyhow::anyhow!("--items: {e}"))?;
                    let items = (!no_items).then_some(&items);
                    let run = crate::behaviour::compute(&pool, &params, items).await?;
                    println!("{}", run.render());
                    Some(run.vectors)
                }
                Command::Embed { .. } | Command::Status | Command::Similar { .. } | Command::Query { .. } => None,
            };
            let mut model = cli.model.load(&cli.db.state_dir).await?;
            let mut embedder = Embedder {
                pool: &pool,
                store: store.as_ref(),
                model: &mut model,
                progress: !no_progress && std::io::stderr().is_terminal(),
                chunk: *chunk,
                hnsw,
                behaviour,
            };
            let report = embedder.run().await?;
            println!("{}", report.render());
        }
        Command::Status => {
            let live = store.live().await?;
            println!("store: {}", store.describe());
            for name in store.collections().await? {
                let count = store.count(&name).await?;
                let mark = if live.as_deref() == Some(name.as_str()) { " (live)" } else { "" };
                println!("{name}: {count} points{mark}");
            }
            if live.is_none() {
                println!("no live collection: run `embedder embed`");
            }
        }
        Command::Similar { movie_id, limit, genre, space } => {
            let live = store.live().await?.context("no live collection: run `embedder embed` first")?;
            let id = point_id(movie_id);
            let space = Space::from(*space);
            let Some((_, vector)) = store.vectors(&live, space, &[id]).await?.into_iter().next() else {
                bail!("{movie_id} has no {space} vector in the live collection {live}");
            };
            let filter = SearchFilter { any_genre: genre.clone(), exclude_ids: vec![id], ..SearchFilter::default() };
            for hit in store.search(&live, space, vector, *limit, &filter).await? {
                println!("{:.4}  {}", hit.score, hit.movie_id);
            }
        }
        Command::Query { text, limit, genre } => {
            let live = store.live().await?.context("no live collection: run `embedder embed` first")?;
            let mut model = cli.model.load(&cli.db.state_dir).await?;
            let vector = model.embed(std::slice::from_ref(text))?.pop().context("the model returned no vector")?;
            let filter = SearchFilter { any_genre: genre.clone(), ..SearchFilter::default() };
            for hit in store.search(&live, Space::Content, vector, *limit, &filter).await? {
                println!("{:.4}  {}", hit.score, hit.movie_id);
            }
        }
    }
    Ok(())
}
