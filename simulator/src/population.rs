//! Who is simulated: real users whose later events were held out of the database (their
//! "future"), plus new users with no history (cold start) who borrow a real user's taste.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

/// A movie in a user's future.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FutureItem {
    /// The course movie id.
    pub movie: Arc<str>,
    /// The rating the user gave it (on the log's scale), when known.
    pub rating: Option<i16>,
}

/// One simulated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimUser {
    /// The id requests and log lines carry.
    pub id: i64,
    /// A new account (announces itself with `GET /create_account`, has no history).
    pub new: bool,
    /// What they will watch, in the order they would watch it on their own.
    pub future: Vec<FutureItem>,
}

/// A futures file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PopulationError {
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {why}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// Nobody to simulate.
    #[error("{0}: no users with a future")]
    Empty(PathBuf),
}

/// Reads a futures file (`lazyrec-db load-default --hold-out … --futures FILE`):
/// `user<TAB>movie[<TAB>rating[<TAB>unix seconds]]` lines, an optional header; each user's items
/// ordered by time (file order among equal times).
pub fn read_futures(path: &Path) -> Result<BTreeMap<i64, Vec<FutureItem>>, PopulationError> {
    let file = std::fs::File::open(path).map_err(|source| PopulationError::Read { path: path.into(), source })?;
    let mut rows: BTreeMap<i64, Vec<(i64, usize, FutureItem)>> = BTreeMap::new();
    let mut interned: rustc_hash::FxHashMap<String, Arc<str>> = Default::default();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| PopulationError::Read { path: path.into(), source })?;
        let bad = |why: String| PopulationError::Line { path: path.into(), line: i + 1, why };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || (i == 0 && line.starts_with("user")) {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 2 || fields.len() > 4 {
            return Err(bad(format!("expected 2 to 4 tab-separated fields, found {}", fields.len())));
        }
        let user: i64 = fields[0].parse().map_err(|_| bad(format!("user id {:?} is not an integer", fields[0])))?;
        let movie = fields[1].trim();
        if movie.is_empty() || movie.contains(char::is_whitespace) || movie.contains(',') {
            return Err(bad(format!("movie id {movie:?} is empty or has spaces or commas")));
        }
        let rating = match fields.get(2) {
            Some(r) => Some(r.parse::<i16>().map_err(|_| bad(format!("rating {r:?} is not an integer")))?),
            None => None,
        };
        let ts = match fields.get(3) {
            Some(t) => t.parse::<i64>().map_err(|_| bad(format!("timestamp {t:?} is not an integer")))?,
            None => 0,
        };
        let movie = interned.entry(movie.to_string()).or_insert_with(|| movie.into()).clone();
        rows.entry(user).or_default().push((ts, i, FutureItem { movie, rating }));
    }
    if rows.is_empty() {
        return Err(PopulationError::Empty(path.into()));
    }
    Ok(rows
        .into_iter()
        .map(|(user, mut items)| {
            items.sort_by_key(|(ts, line, _)| (*ts, *line));
            (user, items.into_iter().map(|(_, _, item)| item).collect())
        })
        .collect())
}

/// How to draw the population.
#[derive(Debug, Clone)]
pub struct PopulationSpec {
    /// How many real users (all when `None` or more than there are); a seeded random sample.
    pub users: Option<usize>,
    /// Share of the population that is new (0..1).
    pub new_share: f64,
    /// The first new user's id (new ids count up from here).
    pub new_user_base: i64,
    /// The seed of the sample.
    pub seed: u64,
}

/// The population: a seeded sample of the real users, then the new users, each new user with
/// the future of a random real user (someone's taste, none of their history).
pub fn build(futures: &BTreeMap<i64, Vec<FutureItem>>, spec: &PopulationSpec) -> Vec<SimUser> {
    let mut rng = StdRng::seed_from_u64(spec.seed ^ 0x706f_7075_6c61_7469);
    let mut ids: Vec<i64> = futures.keys().copied().collect();
    if let Some(n) = spec.users
        && n < ids.len()
    {
        ids.shuffle(&mut rng);
        ids.truncate(n);
        ids.sort_unstable();
    }
    let mut users: Vec<SimUser> =
        ids.iter().map(|id| SimUser { id: *id, new: false, future: futures[id].clone() }).collect();
    let share = spec.new_share.clamp(0.0, 0.99);
    let new = ((users.len() as f64) * share / (1.0 - share)).round() as usize;
    for k in 0..new {
        let donor = &users[rng.random_range(0..ids.len())];
        let future = donor.future.clone();
        users.push(SimUser { id: spec.new_user_base + k as i64, new: true, future });
    }
    users
}

/// A synthetic population for benchmarks: `users` users with `future_len` random movies each out
/// of `movies` ids `m0 … m<movies-1>`.
pub fn synthetic(users: usize, movies: usize, future_len: usize, seed: u64) -> Vec<SimUser> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<Arc<str>> = (0..movies.max(1)).map(|m| Arc::from(format!("m{m}"))).collect();
    (0..users)
        .map(|u| SimUser {
            id: u as i64 + 1,
            new: false,
            future: (0..future_len)
                .map(|_| FutureItem {
                    movie: ids[(rng.next_u64() % ids.len() as u64) as usize].clone(),
                    rating: Some(rng.random_range(1..=5)),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futures_are_read_in_time_order_and_bad_lines_name_their_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("futures.tsv");
        std::fs::write(&path, "user_id\tmovie_id\trating\ttimestamp\n1\tb+2000\t8\t20\n1\ta+1999\t6\t10\n2\tc+2001\n")
            .expect("write");
        let futures = read_futures(&path).expect("read");
        let one: Vec<&str> = futures[&1].iter().map(|f| &*f.movie).collect();
        assert_eq!(one, ["a+1999", "b+2000"]);
        assert_eq!(futures[&1][0].rating, Some(6));
        assert_eq!(futures[&2][0].rating, None);
        std::fs::write(&path, "1\ta+1999\t6\t10\nx\tb\n").expect("write");
        let err = read_futures(&path).expect_err("bad user id").to_string();
        assert!(err.ends_with(":2: user id \"x\" is not an integer"), "{err}");
    }

    #[test]
    fn the_population_is_a_seeded_sample_with_new_users_borrowing_a_taste() {
        let futures: BTreeMap<i64, Vec<FutureItem>> =
            (1..=100).map(|u| (u, vec![FutureItem { movie: Arc::from(format!("m{u}")), rating: Some(5) }])).collect();
        let spec = PopulationSpec { users: Some(10), new_share: 0.2, new_user_base: 900_000, seed: 7 };
        let a = build(&futures, &spec);
        assert_eq!(a, build(&futures, &spec));
        assert_eq!(a.len(), 13, "10 real users + 20 % new: 2.5 → 3");
        assert_eq!(a.iter().filter(|u| u.new).count(), 3);
        assert!(a.iter().filter(|u| u.new).all(|u| u.id >= 900_000 && u.future.len() == 1));
        assert_ne!(a, build(&futures, &PopulationSpec { seed: 8, ..spec }));
    }
}
