//! The course catalog: `course_catalog_union.jsonl` (one movie object per line) or the raw
//! movie API answers (`{"<tmdb id>": "<movie JSON as a string>", ...}`) in which numbers are
//! often strings (`"vote_average":"5.9"`), `"null"` means null and genres are `{id, name}`.

// Matching on serde_json::Value: "any other JSON shape" is the meaning of the wildcard arms.
#![allow(clippy::wildcard_enum_match_arm)]

use std::path::Path;

use serde_json::Value;

use super::{Movie, clean};

/// Reading a catalog file failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// I/O.
    #[error("reading {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The file is neither JSON lines nor a JSON object.
    #[error("{0}: not a course catalog (expected JSON lines or an object of movie records): {1}")]
    Format(String, #[source] serde_json::Error),
}

/// A record that could not become a movie, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    /// Line number (JSONL) or key (API map).
    pub at: String,
    /// Why.
    pub reason: String,
}

/// Reads a catalog file of either format.
pub fn read_catalog(path: &Path) -> Result<(Vec<Movie>, Vec<SkippedRecord>), CatalogError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Io(name.clone(), e))?;
    let mut movies = Vec::new();
    let mut skipped = Vec::new();
    let as_map = serde_json::from_str::<serde_json::Map<String, Value>>(&text);
    match as_map {
        Ok(map) => {
            for (key, value) in map {
                let value = match value {
                    Value::String(s) => match serde_json::from_str::<Value>(&s) {
                        Ok(v) => v,
                        Err(e) => {
                            skipped.push(SkippedRecord { at: key, reason: format!("bad JSON: {e}") });
                            continue;
                        }
                    },
                    other => other,
                };
                match movie_from_json(&value) {
                    Ok(m) => movies.push(m),
                    Err(reason) => skipped.push(SkippedRecord { at: key, reason }),
                }
            }
        }
        Err(map_err) => {
            let mut any = false;
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = match serde_json::from_str(line) {
                    Ok(v) => v,
                    Err(e) if !any && i == 0 => {
                        return Err(CatalogError::Format(
                            name,
                            if text.trim_start().starts_with('{') { map_err } else { e },
                        ));
                    }
                    Err(e) => {
                        skipped.push(SkippedRecord { at: format!("line {}", i + 1), reason: format!("bad JSON: {e}") });
                        continue;
                    }
                };
                any = true;
                match movie_from_json(&value) {
                    Ok(m) => movies.push(m),
                    Err(reason) => skipped.push(SkippedRecord { at: format!("line {}", i + 1), reason }),
                }
            }
        }
    }
    movies.sort_by(|a, b| a.movie_id.cmp(&b.movie_id));
    movies.dedup_by(|a, b| a.movie_id == b.movie_id);
    Ok((movies, skipped))
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.trim().is_empty() && s != "null" && s != "None" => Some(clean(s.trim())),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: &Value, key: &str) -> Option<f64> {
    match v.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

fn integer(v: &Value, key: &str) -> Option<i64> {
    number(v, key).map(|x| x.round() as i64)
}

fn string_list(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(clean(s.trim())),
                Value::Object(o) => o.get("name").and_then(Value::as_str).map(|s| clean(s.trim())),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) => {
            s.split([',', '|']).map(|g| clean(g.trim())).filter(|g| !g.is_empty() && g != "null").collect()
        }
        _ => Vec::new(),
    }
}

/// Turns one course movie record into a [`Movie`].
pub fn movie_from_json(v: &Value) -> Result<Movie, String> {
    let movie_id = text(v, "id").or_else(|| text(v, "movie_id")).ok_or("no id")?;
    if !movie_id.contains('+') {
        return Err(format!("id {movie_id:?} is not a course movie id"));
    }
    let title = text(v, "title").ok_or("no title")?;
    let release_date = text(v, "release_date").and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
    let year = release_date
        .map(|d| chrono::Datelike::year(&d))
        .or_else(|| movie_id.rsplit('+').next().and_then(|y| y.parse().ok()).filter(|y| (1870..=2100).contains(y)));
    Ok(Movie {
        tmdb_id: integer(v, "tmdb_id"),
        imdb_id: text(v, "imdb_id"),
        ml_movie_id: None,
        original_title: text(v, "original_title"),
        year,
        genres: string_list(v, "genres"),
        overview: text(v, "overview"),
        tagline: text(v, "tagline"),
        keywords: string_list(v, "keywords"),
        popularity: number(v, "popularity"),
        vote_average: number(v, "vote_average"),
        vote_count: integer(v, "vote_count").map(|c| c as i32),
        runtime: integer(v, "runtime").map(|r| r as i32).filter(|r| *r > 0),
        original_language: text(v, "original_language"),
        release_date,
        raw: v.clone(),
        movie_id,
        title,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_records_with_numbers_as_strings_are_read() {
        let record = serde_json::json!({
            "id": "the+canterville+ghost+1944", "tmdb_id": 19463, "title": "The Canterville Ghost",
            "genres": [{"id": 35, "name": "Comedy"}, {"id": 18, "name": "Drama"}],
            "popularity": "1.300589", "vote_average": "6.4", "vote_count": "22", "runtime": "96",
            "release_date": "1944-07-28", "homepage": "null"
        });
        let m = movie_from_json(&record).expect("a movie");
        assert_eq!(m.genres, vec!["Comedy", "Drama"]);
        assert_eq!(
            (m.popularity, m.vote_average, m.vote_count, m.runtime),
            (Some(1.300589), Some(6.4), Some(22), Some(96))
        );
        assert_eq!(m.year, Some(1944));
    }
}
