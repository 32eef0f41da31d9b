//! MovieLens ml-latest-small as course data: movies get course-style ids (title + year →
//! `toy+story+1995`), TMDB overviews come from the join file, and ratings become course log
//! lines (`GET /rate/<id>=<stars × 2>`, the 1–10 scale) for the ordinary ingester.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Movie, clean};
use crate::event::Timestamp;

/// The rating scale MovieLens ratings are converted to.
pub const RATING_SCALE: i16 = 10;

/// Reading MovieLens failed.
#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct MovieLensError {
    path: PathBuf,
    #[source]
    source: csv::Error,
}

/// Where the files are.
#[derive(Debug, Clone)]
pub struct MovieLensPaths {
    /// The ml-latest-small directory (movies.csv, ratings.csv, links.csv).
    pub dir: PathBuf,
    /// `ml-latest-small_x_tmdb5000.csv`, for overviews.
    pub tmdb_join: Option<PathBuf>,
    /// `tmdb_stats.csv`, for popularity and vote stats.
    pub tmdb_stats: Option<PathBuf>,
}

impl MovieLensPaths {
    /// The copy shipped in the repository (`db/data`), for tests and tools run from the source
    /// tree: the `db/data` of the tree the current directory is in (a test runs in its crate's
    /// directory), else the one this crate was compiled in. The tree comes first: a build cache
    /// made in another checkout keeps that checkout's path. A command finds the data with
    /// [`MovieLensPaths::find_default`] instead (a binary can outlive or move away from the tree
    /// it was built in).
    pub fn bundled() -> Self {
        let here = std::env::current_dir().ok().and_then(|cwd| {
            cwd.ancestors()
                .map(|dir| dir.join("db/data"))
                .find(|data| data.join("ml-latest-small/movies.csv").is_file())
        });
        Self::in_data_dir(&here.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("data")))
    }

    /// The default dataset's files under `data` (the layout of `db/data`).
    pub fn in_data_dir(data: &Path) -> Self {
        Self {
            dir: data.join("ml-latest-small"),
            tmdb_join: Some(data.join("tmdb/ml-latest-small_x_tmdb5000.csv")),
            tmdb_stats: Some(data.join("tmdb/tmdb_stats.csv")),
        }
    }

    /// The default dataset, found at run time: `explicit` (a flag or `LAZYREC_DEFAULT_DATA`)
    /// when given, else `db/data` under the current directory (commands run from the
    /// repository's root), else the tree the binary was built in. The error names every place
    /// looked at.
    pub fn find_default(explicit: Option<&Path>) -> Result<Self, String> {
        let candidates: Vec<PathBuf> = match explicit {
            Some(dir) => vec![dir.to_path_buf()],
            None => vec![PathBuf::from("db/data"), Path::new(env!("CARGO_MANIFEST_DIR")).join("data")],
        };
        for data in &candidates {
            let paths = Self::in_data_dir(data);
            if paths.dir.join("movies.csv").is_file() {
                return Ok(paths);
            }
        }
        let looked: Vec<String> =
            candidates.iter().map(|d| d.join("ml-latest-small/movies.csv").display().to_string()).collect();
        Err(format!(
            "the default dataset is not there (looked for {}): run from the repository's root or pass --data-dir / LAZYREC_DEFAULT_DATA",
            looked.join(", ")
        ))
    }
}

#[derive(Deserialize)]
struct MlMovie {
    #[serde(rename = "movieId")]
    movie_id: i32,
    title: String,
    genres: String,
}

#[derive(Deserialize)]
struct MlLink {
    #[serde(rename = "movieId")]
    movie_id: i32,
    #[serde(rename = "imdbId")]
    imdb_id: Option<String>,
    #[serde(rename = "tmdbId")]
    tmdb_id: Option<i64>,
}

#[derive(Deserialize)]
struct JoinRow {
    #[serde(rename = "movieId")]
    movie_id: i32,
    tmdb_title: Option<String>,
    release_date: Option<String>,
    tmdb_genres: Option<String>,
    keywords: Option<String>,
    tagline: Option<String>,
    overview: Option<String>,
}

#[derive(Deserialize)]
struct StatsRow {
    tmdb_id: i64,
    popularity: Option<f64>,
    vote_average: Option<f64>,
    vote_count: Option<i32>,
    runtime: Option<i32>,
    original_language: Option<String>,
}

#[derive(Deserialize)]
struct MlRating {
    #[serde(rename = "userId")]
    user_id: i64,
    #[serde(rename = "movieId")]
    movie_id: i32,
    rating: f64,
    timestamp: i64,
}

fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, MovieLensError> {
    let err = |source| MovieLensError { path: path.to_path_buf(), source };
    let mut reader = csv::Reader::from_path(path).map_err(err)?;
    reader.deserialize().collect::<Result<Vec<T>, _>>().map_err(err)
}

const TRAILING_ARTICLES: [&str; 23] = [
    "The", "A", "An", "Les", "La", "Le", "L'", "Il", "Das", "Der", "Die", "El", "Los", "Las", "Lo", "I", "Gli", "Un",
    "Une", "Det", "Den", "O", "Os",
];

/// The course's slug of a title: lowercase ASCII letters and digits kept, spaces → `+`,
/// commas → `_`, `.`, `-` and `*` kept, everything else (accents, `:`, `&`, `'`) dropped.
pub fn slug(title: &str) -> String {
    let mut out = String::with_capacity(title.len());
    for ch in title.chars().flat_map(char::to_lowercase) {
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '*' => out.push(ch),
            ' ' => out.push('+'),
            ',' => out.push('_'),
            _ => {}
        }
    }
    out
}

/// Splits a MovieLens title (`American President, The (1995)`) into the display title
/// (`The American President`) and the year.
pub fn split_ml_title(raw: &str) -> (String, Option<i32>) {
    let raw = raw.trim();
    let (mut title, year) = match raw.rfind(" (") {
        Some(i) if raw.ends_with(')') => {
            let inner = &raw[i + 2..raw.len() - 1];
            let year = inner
                .get(..4)
                .and_then(|y| y.parse::<i32>().ok())
                .filter(|_| inner.len() == 4 || inner.as_bytes().get(4) == Some(&b'-'));
            match year {
                Some(y) => (raw[..i].to_string(), Some(y)),
                None => (raw.to_string(), None),
            }
        }
        _ => (raw.to_string(), None),
    };
    // Alternative titles: "Hidden (a.k.a. Cache) (Caché)" → "Hidden".
    while title.ends_with(')') {
        match title.rfind(" (") {
            Some(i) => title.truncate(i),
            None => break,
        }
    }
    for article in TRAILING_ARTICLES {
        let suffix = format!(", {article}");
        if let Some(stem) = title.strip_suffix(&suffix) {
            let sep = if article.ends_with('\'') { "" } else { " " };
            title = format!("{article}{sep}{stem}");
            break;
        }
    }
    (title, year)
}

/// The course id of a title and year.
pub fn course_id(title: &str, year: Option<i32>) -> String {
    match year {
        Some(y) => format!("{}+{y}", slug(title)),
        None => format!("{}+", slug(title)),
    }
}

/// The MovieLens catalog as course movies plus the MovieLens-id → course-id map.
pub struct MovieLensCatalog {
    /// Movies, sorted by id.
    pub movies: Vec<Movie>,
    /// movieId → course id.
    pub ids: HashMap<i32, String>,
}

/// Reads movies, links and the optional TMDB files.
pub fn read_catalog(paths: &MovieLensPaths) -> Result<MovieLensCatalog, MovieLensError> {
    let ml: Vec<MlMovie> = read_csv(&paths.dir.join("movies.csv"))?;
    let links: HashMap<i32, MlLink> =
        read_csv::<MlLink>(&paths.dir.join("links.csv"))?.into_iter().map(|l| (l.movie_id, l)).collect();
    let join: HashMap<i32, JoinRow> = match &paths.tmdb_join {
        Some(p) => read_csv::<JoinRow>(p)?.into_iter().map(|r| (r.movie_id, r)).collect(),
        None => HashMap::new(),
    };
    let stats: HashMap<i64, StatsRow> = match &paths.tmdb_stats {
        Some(p) => read_csv::<StatsRow>(p)?.into_iter().map(|r| (r.tmdb_id, r)).collect(),
        None => HashMap::new(),
    };
    let mut by_id: BTreeMap<String, Movie> = BTreeMap::new();
    let mut ids = HashMap::new();
    let mut sorted = ml;
    sorted.sort_by_key(|m| m.movie_id);
    for m in sorted {
        let (ml_title, ml_year) = split_ml_title(&m.title);
        let tmdb = join.get(&m.movie_id);
        let tmdb_year =
            tmdb.and_then(|t| t.release_date.as_deref()).and_then(|d| d.get(..4)).and_then(|y| y.parse::<i32>().ok());
        let tmdb_title = tmdb.and_then(|t| t.tmdb_title.clone()).filter(|t| !t.trim().is_empty());
        // TMDB's title and year are what the course ids were made from; MovieLens' are a fallback.
        let mut id = match (&tmdb_title, tmdb_year) {
            (Some(t), Some(y)) => course_id(t, Some(y)),
            _ => course_id(&ml_title, ml_year),
        };
        if by_id.contains_key(&id) {
            id = format!("{id}+ml{}", m.movie_id);
        }
        let link = links.get(&m.movie_id);
        let tmdb_id = link.and_then(|l| l.tmdb_id);
        let stat = tmdb_id.and_then(|t| stats.get(&t));
        let mut genres: Vec<String> =
            m.genres.split('|').filter(|g| !g.is_empty() && *g != "(no genres listed)").map(str::to_string).collect();
        if genres.is_empty() {
            genres = split_list(tmdb.and_then(|t| t.tmdb_genres.as_deref()));
        }
        let movie = Movie {
            movie_id: id.clone(),
            tmdb_id,
            imdb_id: link.and_then(|l| l.imdb_id.as_ref()).map(|i| format!("tt{i}")),
            ml_movie_id: Some(m.movie_id),
            title: tmdb_title.unwrap_or(ml_title),
            original_title: None,
            year: tmdb_year.or(ml_year),
            genres,
            overview: tmdb.and_then(|t| t.overview.as_deref()).map(clean).filter(|s| !s.is_empty()),
            tagline: tmdb.and_then(|t| t.tagline.as_deref()).map(clean).filter(|s| !s.is_empty()),
            keywords: split_list(tmdb.and_then(|t| t.keywords.as_deref())),
            popularity: stat.and_then(|s| s.popularity),
            vote_average: stat.and_then(|s| s.vote_average),
            vote_count: stat.and_then(|s| s.vote_count),
            runtime: stat.and_then(|s| s.runtime).filter(|r| *r > 0),
            original_language: stat.and_then(|s| s.original_language.clone()),
            release_date: tmdb
                .and_then(|t| t.release_date.as_deref())
                .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
            raw: serde_json::json!({"movielens_title": m.title, "movielens_genres": m.genres}),
        };
        ids.insert(m.movie_id, id.clone());
        by_id.insert(id, movie);
    }
    Ok(MovieLensCatalog { movies: by_id.into_values().collect(), ids })
}

fn split_list(s: Option<&str>) -> Vec<String> {
    s.map(|s| s.split('|').map(|x| clean(x.trim())).filter(|x| !x.is_empty()).collect()).unwrap_or_default()
}

/// Converts ratings.csv to course log lines, ordered by time (then user, movie).
/// Returns the lines and the number of ratings whose movie is unknown (skipped).
pub fn ratings_as_log(paths: &MovieLensPaths, ids: &HashMap<i32, String>) -> Result<(Vec<u8>, u64), MovieLensError> {
    let mut ratings: Vec<MlRating> = read_csv(&paths.dir.join("ratings.csv"))?;
    ratings.sort_by_key(|r| (r.timestamp, r.user_id, r.movie_id));
    let mut out = Vec::with_capacity(ratings.len() * 64);
    let mut unknown = 0;
    for r in &ratings {
        let Some(id) = ids.get(&r.movie_id) else {
            unknown += 1;
            continue;
        };
        let stars = (r.rating * 2.0).round() as i64;
        let ts = Timestamp::from_unix_micros(r.timestamp * 1_000_000);
        out.extend_from_slice(format!("{},{},GET /rate/{id}={stars}\n", ts.to_log_string(), r.user_id).as_bytes());
    }
    Ok((out, unknown))
}

/// A rating held out of the load: part of a simulated user's future.
#[derive(Debug, Clone, PartialEq)]
pub struct FutureRating {
    /// The MovieLens user id (the log's user id).
    pub user_id: i64,
    /// The course-style movie id.
    pub movie_id: String,
    /// On the log's scale ([`RATING_SCALE`]).
    pub rating: i16,
    /// When the user rated it (unix seconds).
    pub timestamp: i64,
}

/// [`ratings_split`]'s result.
#[derive(Debug)]
pub struct RatingsSplit {
    /// The log of the ratings kept (time order).
    pub log: Vec<u8>,
    /// The held-out ratings (time order).
    pub futures: Vec<FutureRating>,
    /// Ratings of movies missing from movies.csv (skipped).
    pub unknown: u64,
}

/// Like [`ratings_as_log`], holding out each user's latest `share` of ratings (rounded, at
/// least one rating kept; ties in time broken by movie id) as their future.
pub fn ratings_split(
    paths: &MovieLensPaths,
    ids: &HashMap<i32, String>,
    share: f64,
) -> Result<RatingsSplit, MovieLensError> {
    let mut ratings: Vec<MlRating> = read_csv(&paths.dir.join("ratings.csv"))?;
    ratings.sort_by_key(|r| (r.timestamp, r.user_id, r.movie_id));
    let mut unknown = 0;
    ratings.retain(|r| {
        let known = ids.contains_key(&r.movie_id);
        unknown += u64::from(!known);
        known
    });
    let mut per_user: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &ratings {
        *per_user.entry(r.user_id).or_default() += 1;
    }
    // Walking in time order, a user's first `n - held` ratings are kept.
    let mut keep_left: BTreeMap<i64, usize> = per_user
        .iter()
        .map(|(user, n)| {
            let held = ((*n as f64) * share).round() as usize;
            (*user, n - held.min(n.saturating_sub(1)))
        })
        .collect();
    let mut log = Vec::with_capacity(ratings.len() * 64);
    let mut futures = Vec::new();
    for r in &ratings {
        let Some(id) = ids.get(&r.movie_id) else { continue };
        let stars = (r.rating * 2.0).round() as i16;
        let left = keep_left.entry(r.user_id).or_default();
        if *left > 0 {
            *left -= 1;
            let ts = Timestamp::from_unix_micros(r.timestamp * 1_000_000);
            log.extend_from_slice(format!("{},{},GET /rate/{id}={stars}\n", ts.to_log_string(), r.user_id).as_bytes());
        } else {
            futures.push(FutureRating {
                user_id: r.user_id,
                movie_id: id.clone(),
                rating: stars,
                timestamp: r.timestamp,
            });
        }
    }
    Ok(RatingsSplit { log, futures, unknown })
}

/// Writes futures as `user<TAB>movie<TAB>rating<TAB>timestamp` lines under a header.
pub fn write_futures(path: &Path, futures: &[FutureRating]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "user_id\tmovie_id\trating\ttimestamp")?;
    for f in futures {
        writeln!(out, "{}\t{}\t{}\t{}", f.user_id, f.movie_id, f.rating, f.timestamp)?;
    }
    out.flush()
}

/// How well our title+year ids agree with the course's own mapping file
/// (`course_to_ml-latest-small.csv`: course_movie_id, …, ml_movieId, …).
#[derive(Debug, Clone)]
pub struct MappingAgreement {
    /// Rows compared.
    pub total: u64,
    /// Rows where our id equals the course id.
    pub agree: u64,
    /// A few disagreements: (MovieLens title, course id, ours).
    pub examples: Vec<(String, String, String)>,
}

/// Compares [`read_catalog`]'s ids with the course mapping file.
pub fn mapping_agreement(catalog: &MovieLensCatalog, mapping_csv: &Path) -> Result<MappingAgreement, MovieLensError> {
    #[derive(Deserialize)]
    struct Row {
        course_movie_id: String,
        #[serde(rename = "ml_movieId")]
        ml_movie_id: i32,
        ml_title: String,
    }
    let rows: Vec<Row> = read_csv(mapping_csv)?;
    let mut result = MappingAgreement { total: 0, agree: 0, examples: Vec::new() };
    for row in rows {
        result.total += 1;
        let ours = catalog.ids.get(&row.ml_movie_id).cloned().unwrap_or_default();
        if ours == row.course_movie_id {
            result.agree += 1;
        } else if result.examples.len() < 10 {
            result.examples.push((row.ml_title, row.course_movie_id, ours));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movielens_titles_become_course_ids() {
        let cases = [
            ("Toy Story (1995)", "toy+story+1995"),
            ("American President, The (1995)", "the+american+president+1995"),
            ("Hidden (a.k.a. Cache) (Caché) (2005)", "hidden+2005"),
            ("Monsters, Inc. (2001)", "monsters_+inc.+2001"),
            ("Kiki's Delivery Service (Majo no takkyûbin) (1989)", "kikis+delivery+service+1989"),
            (
                "Percy Jackson & the Olympians: The Lightning Thief (2010)",
                "percy+jackson++the+olympians+the+lightning+thief+2010",
            ),
            ("Babylon 5", "babylon+5+"),
        ];
        for (ml, course) in cases {
            let (title, year) = split_ml_title(ml);
            assert_eq!(course_id(&title, year), course, "{ml}");
        }
    }

    #[test]
    fn the_default_dataset_is_found_where_it_is_and_a_wrong_directory_is_named() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        let found = MovieLensPaths::find_default(Some(&data)).expect("the repository's db/data");
        assert_eq!(found.dir, data.join("ml-latest-small"));
        let empty = std::env::temp_dir().join(format!("lazyrec-no-data-{}", std::process::id()));
        let error = MovieLensPaths::find_default(Some(&empty)).expect_err("no dataset there");
        assert!(error.contains(&empty.join("ml-latest-small/movies.csv").display().to_string()), "{error}");
    }
}
