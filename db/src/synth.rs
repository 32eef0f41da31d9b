//! A deterministic generator of course-format log lines with a realistic mix, for benchmarks
//! and tests: ~80 % watched minutes (in sessions of consecutive minutes), ~5 % ratings, ~15 %
//! recommendation requests with 20 ids, a few create_account lines and a sprinkle of malformed
//! lines. Movie popularity is Zipf-distributed.

use std::io::{self, Write};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::event::Timestamp;

/// Shape of the generated log.
#[derive(Debug, Clone)]
pub struct SynthSpec {
    /// Lines to write.
    pub lines: u64,
    /// Distinct users (ids 1..=users).
    pub users: u64,
    /// Distinct movies.
    pub movies: usize,
    /// Random seed: the same spec writes the same bytes.
    pub seed: u64,
    /// One malformed line in this many (0 = none).
    pub malformed_every: u64,
}

impl Default for SynthSpec {
    fn default() -> Self {
        Self { lines: 10_000_000, users: 100_000, movies: 27_000, seed: 42, malformed_every: 2_000 }
    }
}

/// What was written, by kind (malformed lines are counted apart).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynthCounts {
    /// Watch lines.
    pub watch: u64,
    /// Rate lines.
    pub rate: u64,
    /// Recommendation lines.
    pub recommendation: u64,
    /// create_account lines.
    pub create_account: u64,
    /// Deliberately malformed lines.
    pub malformed: u64,
}

struct Session {
    user: u64,
    movie: usize,
    minute: u32,
    remaining: u32,
}

/// The synthetic movie id of movie `i`.
pub fn movie_id(i: usize) -> String {
    format!("synthetic+movie+{i}+{}", 1950 + (i % 75))
}

/// Writes `spec.lines` lines to `out`.
pub fn write_log(spec: &SynthSpec, out: &mut impl Write) -> io::Result<SynthCounts> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let movies: Vec<String> = (0..spec.movies).map(movie_id).collect();
    // Zipf(1.0) CDF over movies.
    let mut cdf = Vec::with_capacity(spec.movies);
    let mut acc = 0.0;
    for rank in 1..=spec.movies {
        acc += 1.0 / rank as f64;
        cdf.push(acc);
    }
    let pick_movie = |rng: &mut StdRng| -> usize {
        let x = rng.random::<f64>() * acc;
        cdf.partition_point(|c| *c < x).min(spec.movies - 1)
    };
    let new_session = |rng: &mut StdRng| Session {
        user: rng.random_range(1..=spec.users),
        movie: pick_movie(rng),
        minute: 0,
        remaining: rng.random_range(5..120),
    };
    let mut sessions: Vec<Session> = (0..2_000).map(|_| new_session(&mut rng)).collect();
    let mut counts = SynthCounts::default();
    let mut micros = Timestamp { year: 2025, month: 1, day: 1, hour: 0, minute: 0, second: 0, micros: 0 }.unix_micros();
    let mut line = String::with_capacity(1024);
    for n in 0..spec.lines {
        micros += rng.random_range(0..500_000);
        let ts = Timestamp::from_unix_micros(micros);
        // The course writes 0, 3 or 6 fractional digits, sometimes minutes only.
        let time = match n % 4 {
            0 => ts.to_log_string()[..19].to_string(),
            1 => format!("{}.{:03}", &ts.to_log_string()[..19], ts.micros / 1000),
            2 => format!("{}.{:06}", &ts.to_log_string()[..19], ts.micros),
            _ if n % 40 == 3 => ts.to_log_string()[..16].to_string(),
            _ => ts.to_log_string()[..19].to_string(),
        };
        line.clear();
        if spec.malformed_every > 0 && n % spec.malformed_every == spec.malformed_every - 1 {
            counts.malformed += 1;
            let user = rng.random_range(1..=spec.users);
            match rng.random_range(0..4) {
                0 => line.push_str(&format!("{time},-{user},GET /data/m/{}/1.mpg", movies[0])),
                1 => line.push_str(&format!("{time},{user}x,GET /rate/{}=3", movies[1])),
                2 => line.push_str(&format!("{},{user},GET /data/m/{}/1.mpg", &time[..10], movies[2])),
                _ => line.push_str(&format!("{time},{user},GET /rate/{}=99", movies[3])),
            }
        } else {
            let roll = rng.random_range(0..1000);
            if roll < 800 {
                counts.watch += 1;
                let i = rng.random_range(0..sessions.len());
                let s = &mut sessions[i];
                line.push_str(&format!("{time},{},GET /data/m/{}/{}.mpg", s.user, movies[s.movie], s.minute));
                s.minute += 1;
                s.remaining -= 1;
                if s.remaining == 0 {
                    sessions[i] = new_session(&mut rng);
                }
            } else if roll < 850 {
                counts.rate += 1;
                let user = rng.random_range(1..=spec.users);
                let movie = pick_movie(&mut rng);
                line.push_str(&format!("{time},{user},GET /rate/{}={}", movies[movie], rng.random_range(1..=5)));
            } else if roll < 998 {
                counts.recommendation += 1;
                let user = rng.random_range(1..=spec.users);
                line.push_str(&format!("{time},{user},recommendation request 17645-team01.isri.cmu.edu:8082, status "));
                if rng.random_range(0..100) < 97 {
                    line.push_str("200, result: ");
                    for k in 0..20 {
                        if k > 0 {
                            line.push_str(", ");
                        }
                        line.push_str(&movies[pick_movie(&mut rng)]);
                    }
                    line.push_str(&format!(", {} ms", rng.random_range(3..300)));
                } else {
                    line.push_str("0, result: java.util.concurrent.TimeoutException: Request timeout to 17645-team01.isri.cmu.edu/128.2.220.1:8082 after 800 ms, 815 ms");
                }
            } else {
                counts.create_account += 1;
                let user = rng.random_range(1..=spec.users);
                line.push_str(&format!("{time},{user},GET /create_account"));
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(counts)
}
