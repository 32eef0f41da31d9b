//! Importers for the catalog (course JSON), users (course API/CSV) and MovieLens, and the
//! movie/user upserts they share. Re-importing unchanged data changes nothing.

pub mod catalog;
pub mod movielens;
pub mod users;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// A catalog movie in the shape of the `movies` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Movie {
    /// Course id (`toy+story+1995`).
    pub movie_id: String,
    /// TMDB id.
    pub tmdb_id: Option<i64>,
    /// IMDb id (`tt0114709`).
    pub imdb_id: Option<String>,
    /// MovieLens id.
    pub ml_movie_id: Option<i32>,
    /// Display title.
    pub title: String,
    /// Original-language title.
    pub original_title: Option<String>,
    /// Release year.
    pub year: Option<i32>,
    /// Genre names.
    pub genres: Vec<String>,
    /// Plot summary.
    pub overview: Option<String>,
    /// Tagline.
    pub tagline: Option<String>,
    /// TMDB keywords.
    pub keywords: Vec<String>,
    /// TMDB popularity.
    pub popularity: Option<f64>,
    /// TMDB vote average.
    pub vote_average: Option<f64>,
    /// TMDB vote count.
    pub vote_count: Option<i32>,
    /// Minutes.
    pub runtime: Option<i32>,
    /// ISO 639-1.
    pub original_language: Option<String>,
    /// `YYYY-MM-DD`.
    pub release_date: Option<chrono::NaiveDate>,
    /// The raw record as imported.
    #[serde(skip)]
    pub raw: serde_json::Value,
}

impl Movie {
    /// Hash of every imported field: equal hashes mean "nothing to update or re-embed".
    pub fn content_hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Records read.
    pub read: u64,
    /// New rows.
    pub inserted: u64,
    /// Rows whose content changed.
    pub updated: u64,
    /// Rows already up to date.
    pub unchanged: u64,
    /// Records that could not be used (reported with a reason).
    pub skipped: u64,
}

impl std::fmt::Display for ImportStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "read {}, inserted {}, updated {}, unchanged {}, skipped {}",
            self.read, self.inserted, self.updated, self.unchanged, self.skipped
        )
    }
}

/// Inserts or updates `movies` (by `movie_id`) in one transaction.
pub async fn upsert_movies(pool: &PgPool, movies: &[Movie], source: &str) -> Result<ImportStats, sqlx::Error> {
    let mut stats = ImportStats { read: movies.len() as u64, ..ImportStats::default() };
    let mut tx = pool.begin().await?;
    for m in movies {
        let hash = m.content_hash();
        let row: Option<(bool,)> = sqlx::query_as(
            "INSERT INTO movies (movie_id, tmdb_id, imdb_id, ml_movie_id, title, original_title, year, genres, overview,
                tagline, keywords, popularity, vote_average, vote_count, runtime, original_language, release_date,
                source, raw, content_hash)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20)
             ON CONFLICT (movie_id) DO UPDATE SET
                tmdb_id = excluded.tmdb_id, imdb_id = excluded.imdb_id, ml_movie_id = excluded.ml_movie_id,
                title = excluded.title, original_title = excluded.original_title, year = excluded.year,
                genres = excluded.genres, overview = excluded.overview, tagline = excluded.tagline,
                keywords = excluded.keywords, popularity = excluded.popularity,
                vote_average = excluded.vote_average, vote_count = excluded.vote_count,
                runtime = excluded.runtime, original_language = excluded.original_language,
                release_date = excluded.release_date, source = excluded.source, raw = excluded.raw,
                content_hash = excluded.content_hash, updated_at = now()
             WHERE movies.content_hash <> excluded.content_hash
             RETURNING (xmax = 0)",
        )
        .bind(&m.movie_id)
        .bind(m.tmdb_id)
        .bind(&m.imdb_id)
        .bind(m.ml_movie_id)
        .bind(&m.title)
        .bind(&m.original_title)
        .bind(m.year)
        .bind(&m.genres)
        .bind(&m.overview)
        .bind(&m.tagline)
        .bind(&m.keywords)
        .bind(m.popularity)
        .bind(m.vote_average)
        .bind(m.vote_count)
        .bind(m.runtime)
        .bind(&m.original_language)
        .bind(m.release_date)
        .bind(source)
        .bind(&m.raw)
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            Some((true,)) => stats.inserted += 1,
            Some((false,)) => stats.updated += 1,
            None => stats.unchanged += 1,
        }
    }
    tx.commit().await?;
    Ok(stats)
}

/// Strips NUL characters, which Postgres text cannot hold.
pub(crate) fn clean(s: &str) -> String {
    s.replace('\0', "")
}
