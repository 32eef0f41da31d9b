//! Feedback loop and popularity bias.
//!
//! Exposure: a movie's share of all recommendation slots of the 200 answers in the range.
//! Watches: first watches of a (user, movie) in the range (`user_watched.first_ts`); a watch is
//! *recommended* when an answer to that user listed the movie within the conversion window
//! before it, else *organic*. A movie whose exposure share is far above its organic watch share
//! is pushed by the recommender more than users seek it out: the loop that makes popular movies
//! more popular. Coverage and the Gini of exposure (every catalog movie, zeros included) say how
//! concentrated the recommendations are; the Gini of organic watches is the users' own level.

use serde::Serialize;
use sqlx::PgPool;

use crate::{Range, gini};

/// One movie's row.
#[derive(Debug, Clone, Serialize)]
pub struct MovieExposure {
    /// The movie.
    pub movie_id: String,
    /// Recommendation slots it got.
    pub slots: u64,
    /// Its share of all slots.
    pub exposure_share: f64,
    /// First watches of it in the range.
    pub watches: u64,
    /// Of them, organic (no answer listed it before).
    pub organic: u64,
    /// Its share of all organic first watches.
    pub organic_share: f64,
    /// exposure share / organic share (None when it was never watched organically).
    pub amplification: Option<f64>,
}

/// The section.
#[derive(Debug, Clone, Serialize)]
pub struct Exposure {
    /// Movies in the catalog.
    pub catalog: u64,
    /// Distinct movies recommended at least once.
    pub recommended_movies: u64,
    /// recommended_movies / catalog.
    pub coverage: f64,
    /// All recommendation slots.
    pub slots: u64,
    /// Share of slots that went to the 10 most recommended movies.
    pub top10_share: f64,
    /// Gini of exposure over the catalog (zeros included).
    pub gini_exposure: f64,
    /// Gini of organic first watches over the catalog.
    pub gini_organic: f64,
    /// First watches in the range.
    pub watches: u64,
    /// Of them, after an answer that listed the movie.
    pub recommended_watches: u64,
    /// The most recommended movies.
    pub top: Vec<MovieExposure>,
    /// The Lorenz curve of exposure over the catalog (100 steps; zeros included).
    pub lorenz_exposure: Vec<(f64, f64)>,
    /// The Lorenz curve of organic first watches over the catalog.
    pub lorenz_organic: Vec<(f64, f64)>,
}

/// (movie, slots, first watches, organic first watches).
type MovieRow = (String, i64, i64, i64);

/// Computes the section.
pub async fn compute(
    pool: &PgPool,
    range: &Range,
    window: chrono::TimeDelta,
    top: usize,
) -> Result<Exposure, sqlx::Error> {
    let rows: Vec<MovieRow> = sqlx::query_as(
        "WITH rec AS (
           SELECT m AS movie_id, count(*) AS slots
           FROM recommendations_history h, unnest(h.movie_ids) m
           WHERE h.ts >= $1 AND h.ts < $2 AND h.status = 200
           GROUP BY m
         ), watched AS (
           SELECT w.movie_id,
                  EXISTS (SELECT 1 FROM recommendations_history h
                          WHERE h.user_id = w.user_id AND h.status = 200 AND w.movie_id = ANY (h.movie_ids)
                            AND watch_converts(h.ts, w.first_ts, $3 * interval '1 second')) AS recommended
           FROM user_watched w WHERE w.first_ts >= $1 AND w.first_ts < $2
         ), per_movie AS (
           SELECT movie_id, count(*) AS watches, count(*) FILTER (WHERE NOT recommended) AS organic
           FROM watched GROUP BY movie_id
         )
         SELECT movie_id, coalesce(r.slots, 0), coalesce(p.watches, 0), coalesce(p.organic, 0)
         FROM rec r FULL JOIN per_movie p USING (movie_id)",
    )
    .bind(range.since)
    .bind(range.until)
    .bind(window.num_milliseconds() as f64 / 1000.0)
    .fetch_all(pool)
    .await?;
    let catalog: i64 = sqlx::query_scalar("SELECT count(*) FROM movies").fetch_one(pool).await?;
    let catalog = (catalog.max(0) as u64).max(rows.len() as u64);
    let slots: u64 = rows.iter().map(|r| r.1.max(0) as u64).sum();
    let watches: u64 = rows.iter().map(|r| r.2.max(0) as u64).sum();
    let organic: u64 = rows.iter().map(|r| r.3.max(0) as u64).sum();
    let share = |x: u64, total: u64| if total == 0 { 0.0 } else { x as f64 / total as f64 };
    // Catalog movies absent from `rows` were neither recommended nor watched: zeros.
    let zeros = (catalog as usize).saturating_sub(rows.len());
    let with_zeros = |f: &dyn Fn(&MovieRow) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.extend(std::iter::repeat_n(0.0, zeros));
        v
    };
    let (exposure_amounts, organic_amounts) = (with_zeros(&|r| r.1 as f64), with_zeros(&|r| r.3 as f64));
    let gini_exposure = gini(&exposure_amounts);
    let gini_organic = gini(&organic_amounts);
    let mut movies: Vec<MovieExposure> = rows
        .iter()
        .filter(|r| r.1 > 0)
        .map(|(movie_id, s, w, o)| {
            let (s, w, o) = (*s as u64, *w as u64, *o as u64);
            let (exposure_share, organic_share) = (share(s, slots), share(o, organic));
            MovieExposure {
                movie_id: movie_id.clone(),
                slots: s,
                exposure_share,
                watches: w,
                organic: o,
                organic_share,
                amplification: (organic_share > 0.0).then(|| exposure_share / organic_share),
            }
        })
        .collect();
    movies.sort_by(|a, b| b.slots.cmp(&a.slots).then_with(|| a.movie_id.cmp(&b.movie_id)));
    let top10: u64 = movies.iter().take(10).map(|m| m.slots).sum();
    let recommended_movies = movies.len() as u64;
    movies.truncate(top);
    Ok(Exposure {
        catalog,
        recommended_movies,
        coverage: share(recommended_movies, catalog),
        slots,
        top10_share: share(top10, slots),
        gini_exposure,
        gini_organic,
        watches,
        recommended_watches: watches - organic,
        top: movies,
        lorenz_exposure: crate::lorenz(&exposure_amounts, 100),
        lorenz_organic: crate::lorenz(&organic_amounts, 100),
    })
}

impl Exposure {
    /// Text.
    pub fn render(&self) -> String {
        let mut out = String::from("## Popularity bias and the feedback loop\n");
        out.push_str(&format!(
            "coverage: {} of {} catalog movies recommended ({:.1} %); the 10 most recommended take {:.1} % of {} slots\n",
            self.recommended_movies,
            self.catalog,
            100.0 * self.coverage,
            100.0 * self.top10_share,
            self.slots
        ));
        out.push_str(&format!(
            "Gini of exposure {:.3} vs Gini of organic watching {:.3}; {} of {} first watches followed a recommendation ({:.1} %)\n",
            self.gini_exposure,
            self.gini_organic,
            self.recommended_watches,
            self.watches,
            if self.watches == 0 { 0.0 } else { 100.0 * self.recommended_watches as f64 / self.watches as f64 }
        ));
        out.push_str(&format!(
            "{:<48} {:>8} {:>9} {:>8} {:>8} {:>9} {:>8}\n",
            "most recommended", "slots", "exposure", "watches", "organic", "organic%", "× organic"
        ));
        for m in &self.top {
            out.push_str(&format!(
                "{:<48} {:>8} {:>8.2}% {:>8} {:>8} {:>8.2}% {:>8}\n",
                truncate(&m.movie_id, 48),
                m.slots,
                100.0 * m.exposure_share,
                m.watches,
                m.organic,
                100.0 * m.organic_share,
                m.amplification.map_or_else(|| "—".to_string(), |a| format!("{a:.1}"))
            ));
        }
        out
    }
}

pub(crate) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_string() } else { s.chars().take(n - 1).chain(['…']).collect() }
}
