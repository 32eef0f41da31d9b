//! Shared set-up: the model, a database holding a catalog.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use db::testing::TestDb;
use embedder::model::{Model, ModelPaths};

/// The assets directory (`LAZYREC_ASSETS_DIR`, else `<repo>/.state/assets`).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("LAZYREC_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.state/assets"))
}

/// One model per test process (loading ONNX Runtime is process-wide anyway).
pub fn model() -> std::sync::MutexGuard<'static, Model> {
    static MODEL: OnceLock<Mutex<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let paths = ModelPaths::in_assets_dir(&assets_dir());
            Mutex::new(
                Model::load(&paths, 2, embedder::model::DEFAULT_MAX_TOKENS)
                    .unwrap_or_else(|e| panic!("{e} (install the assets with `python3 ci/assets.py`)")),
            )
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A database with the first `keep` movies of the bundled MovieLens catalog (9,742 in all) plus
/// the movies whose MovieLens ids are in `also`.
pub async fn db_with_movielens(keep: usize, also: &[i32]) -> TestDb {
    let db = TestDb::new().await;
    let catalog =
        db::import::movielens::read_catalog(&db::import::movielens::MovieLensPaths::bundled()).expect("movielens");
    let movies: Vec<_> = catalog
        .movies
        .into_iter()
        .enumerate()
        .filter(|(i, m)| *i < keep || m.ml_movie_id.is_some_and(|id| also.contains(&id)))
        .map(|(_, m)| m)
        .collect();
    db::import::upsert_movies(&db.pool, &movies, "test").await.expect("import");
    db
}

/// The `embedder` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_embedder"))
}
