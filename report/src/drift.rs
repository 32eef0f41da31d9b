//! Drift of the inputs between two windows: how long users watch (minutes per user and movie),
//! how they rate (stars), how many users are new (no answer, watch or rating before the window:
//! a history table that starts with the window does not make everyone new) and how many
//! answers were cold starts. Distributions are compared with the population stability index
//! (PSI = Σ (c − b) · ln(c / b) over bins; < 0.1 stable, 0.1–0.25 moderate, > 0.25 a shift).

use serde::Serialize;
use sqlx::PgPool;

use crate::{Range, Share};

/// Bins of minutes watched per (user, movie) in a window.
pub const WATCH_BINS: [&str; 7] = ["1", "2-5", "6-15", "16-30", "31-60", "61-120", "121+"];
/// Star ratings (a 10-point scale is halved, rounded).
pub const RATING_BINS: [&str; 5] = ["1", "2", "3", "4", "5"];

/// A distribution in one window.
#[derive(Debug, Clone, Serialize)]
pub struct Distribution {
    /// Observations.
    pub n: u64,
    /// Its mean (minutes, stars).
    pub mean: f64,
    /// Count per bin.
    pub counts: Vec<u64>,
}

impl Distribution {
    fn shares(&self) -> Vec<f64> {
        self.counts.iter().map(|&c| if self.n == 0 { 0.0 } else { c as f64 / self.n as f64 }).collect()
    }
}

/// One compared distribution.
#[derive(Debug, Clone, Serialize)]
pub struct Compared {
    /// What.
    pub name: String,
    /// Bin labels.
    pub bins: Vec<String>,
    /// In the baseline window.
    pub baseline: Distribution,
    /// In the current window.
    pub current: Distribution,
    /// Population stability index (None when a window has no observations).
    pub psi: Option<f64>,
}

/// The section.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// The baseline window.
    pub baseline: Range,
    /// The current window.
    pub current: Range,
    /// Watch length and ratings.
    pub distributions: Vec<Compared>,
    /// Users answered in the window with no answer, watch or rating before it: baseline, current.
    pub new_users: (Share, Share),
    /// Answers that were cold starts (no history): baseline, current.
    pub cold_start_answers: (Share, Share),
}

/// PSI of two share vectors (each bin floored at 1e-4 so empty bins stay finite).
pub fn psi(baseline: &[f64], current: &[f64]) -> f64 {
    baseline
        .iter()
        .zip(current)
        .map(|(&b, &c)| {
            let (b, c) = (b.max(1e-4), c.max(1e-4));
            (c - b) * (c / b).ln()
        })
        .sum()
}

async fn watch_lengths(pool: &PgPool, w: &Range) -> Result<Distribution, sqlx::Error> {
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT CASE WHEN n = 1 THEN 0 WHEN n <= 5 THEN 1 WHEN n <= 15 THEN 2 WHEN n <= 30 THEN 3
                     WHEN n <= 60 THEN 4 WHEN n <= 120 THEN 5 ELSE 6 END, count(*), sum(n)::bigint
         FROM (SELECT user_id, movie_id, count(*) AS n FROM watch_events WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2) x
         GROUP BY 1",
    )
    .bind(w.since)
    .bind(w.until)
    .fetch_all(pool)
    .await?;
    Ok(distribution(WATCH_BINS.len(), &rows))
}

async fn ratings(pool: &PgPool, w: &Range) -> Result<Distribution, sqlx::Error> {
    let rows: Vec<(i32, i64, i64)> = sqlx::query_as(
        "SELECT s - 1, count(*), (s * count(*))::bigint
         FROM (SELECT greatest(1, least(5, round(rating * 5.0 / scale)))::int AS s
               FROM rating_events WHERE ts >= $1 AND ts < $2 AND scale > 0) x
         GROUP BY s",
    )
    .bind(w.since)
    .bind(w.until)
    .fetch_all(pool)
    .await?;
    Ok(distribution(RATING_BINS.len(), &rows))
}

/// (bin, count, sum of values) rows → a distribution.
fn distribution(bins: usize, rows: &[(i32, i64, i64)]) -> Distribution {
    let mut counts = vec![0_u64; bins];
    let (mut n, mut sum) = (0_u64, 0_f64);
    for &(bin, count, total) in rows {
        if let Some(slot) = usize::try_from(bin).ok().and_then(|b| counts.get_mut(b)) {
            *slot += count.max(0) as u64;
            n += count.max(0) as u64;
            sum += total as f64;
        }
    }
    Distribution { n, mean: if n == 0 { 0.0 } else { sum / n as f64 }, counts }
}

async fn users(pool: &PgPool, w: &Range) -> Result<(Share, Share), sqlx::Error> {
    let (users, new, answers, cold): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT h.user_id),
                count(DISTINCT h.user_id) FILTER (WHERE
                  NOT EXISTS (SELECT 1 FROM recommendations_history p WHERE p.user_id = h.user_id AND p.ts < $1)
                  AND NOT EXISTS (SELECT 1 FROM user_watched w WHERE w.user_id = h.user_id AND w.first_ts < $1)
                  AND NOT EXISTS (SELECT 1 FROM ratings r WHERE r.user_id = h.user_id AND r.ts < $1)),
                count(*), count(*) FILTER (WHERE h.inputs->>'kind' = 'cold_start')
         FROM recommendations_history h
         WHERE h.ts >= $1 AND h.ts < $2 AND h.user_id IS NOT NULL AND h.status = 200",
    )
    .bind(w.since)
    .bind(w.until)
    .fetch_one(pool)
    .await?;
    Ok((
        Share::wilson(new.max(0) as u64, users.max(0) as u64),
        Share::wilson(cold.max(0) as u64, answers.max(0) as u64),
    ))
}

/// Computes the section.
pub async fn compute(pool: &PgPool, baseline: &Range, current: &Range) -> Result<Drift, sqlx::Error> {
    let mut distributions = Vec::new();
    for (name, bins, b, c) in [
        (
            "minutes watched per user and movie",
            &WATCH_BINS[..],
            watch_lengths(pool, baseline).await?,
            watch_lengths(pool, current).await?,
        ),
        ("rating (stars)", &RATING_BINS[..], ratings(pool, baseline).await?, ratings(pool, current).await?),
    ] {
        let psi = (b.n > 0 && c.n > 0).then(|| psi(&b.shares(), &c.shares()));
        distributions.push(Compared {
            name: name.to_string(),
            bins: bins.iter().map(|s| s.to_string()).collect(),
            baseline: b,
            current: c,
            psi,
        });
    }
    let (new_b, cold_b) = users(pool, baseline).await?;
    let (new_c, cold_c) = users(pool, current).await?;
    Ok(Drift {
        baseline: *baseline,
        current: *current,
        distributions,
        new_users: (new_b, new_c),
        cold_start_answers: (cold_b, cold_c),
    })
}

impl Drift {
    /// Text.
    pub fn render(&self) -> String {
        let mut out = String::from("## Drift of the inputs\n");
        out.push_str(&format!("baseline {}  →  current {}\n", self.baseline.render(), self.current.render()));
        for d in &self.distributions {
            let verdict = match d.psi {
                None => "no data in a window".to_string(),
                Some(p) if p < 0.1 => format!("PSI {p:.3} (stable)"),
                Some(p) if p < 0.25 => format!("PSI {p:.3} (moderate shift)"),
                Some(p) => format!("PSI {p:.3} (shift)"),
            };
            out.push_str(&format!(
                "{}: mean {:.2} → {:.2} (n {} → {}), {verdict}\n",
                d.name, d.baseline.mean, d.current.mean, d.baseline.n, d.current.n
            ));
            let shares = |x: &Distribution| {
                x.shares().iter().map(|s| format!("{:5.1}", 100.0 * s)).collect::<Vec<_>>().join(" ")
            };
            out.push_str(&format!(
                "  bins      {}\n",
                d.bins.iter().map(|b| format!("{b:>5}")).collect::<Vec<_>>().join(" ")
            ));
            out.push_str(&format!("  baseline% {}\n  current%  {}\n", shares(&d.baseline), shares(&d.current)));
        }
        out.push_str(&format!(
            "new users (nothing before the window): {} → {}\n",
            crate::render_share(&self.new_users.0),
            crate::render_share(&self.new_users.1)
        ));
        out.push_str(&format!(
            "cold-start answers: {} → {}\n",
            crate::render_share(&self.cold_start_answers.0),
            crate::render_share(&self.cold_start_answers.1)
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() {
        let a = [0.2, 0.3, 0.5];
        assert!(psi(&a, &a).abs() < 1e-12);
        let small = psi(&a, &[0.25, 0.3, 0.45]);
        let large = psi(&a, &[0.6, 0.3, 0.1]);
        assert!(small > 0.0 && small < 0.1 && large > 0.25, "{small} {large}");
    }
}
