//! Conversion and exposure by user group: age band, gender and occupation from `users` (the
//! course's user data, `lazyrec-db import-users`); users without a profile are `unknown`.
//!
//! Conversion: a 200 answer whose conversion window closed within the range, followed within
//! the window by the user's first watch of one of its movies (the release controller's
//! definition). Exposure: the share of the group's recommendation slots that went to the most
//! popular movies (the current popularity list's top N) — a group served mostly blockbusters
//! gets less personalisation.

use serde::Serialize;
use sqlx::PgPool;

use crate::{Range, Share};

/// One group.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// age, gender or occupation.
    pub dimension: String,
    /// The group (e.g. `25-34`, `F`, `scientist`, `unknown`).
    pub group: String,
    /// Distinct users.
    pub users: u64,
    /// Conversion of their answers.
    pub conversion: Share,
    /// Share of their slots that were popular movies.
    pub popular_exposure: Share,
}

/// The section.
#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    /// "Popular" = the top this many of the popularity list.
    pub popular: i64,
    /// Users in the range with a profile in `users`.
    pub users_with_profile: u64,
    /// Users in the range.
    pub users: u64,
    /// Groups, by dimension then size.
    pub groups: Vec<Group>,
}

type Row = (String, String, i64, i64, i64, i64, i64);

/// Computes the section.
pub async fn compute(
    pool: &PgPool,
    range: &Range,
    window: chrono::TimeDelta,
    popular: i64,
) -> Result<Fairness, sqlx::Error> {
    let closed_before = range.until - window;
    let rows: Vec<Row> = sqlx::query_as(
        // `top` materialised and probed with IN: a hashed lookup per slot (an array's `= ANY`
        // compared every slot with every popular movie: 10× slower on an hour of course traffic).
        "WITH top AS MATERIALIZED (SELECT movie_id FROM popularity ORDER BY rank LIMIT $4),
         answers AS MATERIALIZED (
           SELECT h.user_id, u.age, u.gender, u.occupation,
                  EXISTS (SELECT 1 FROM user_watched w
                          WHERE w.user_id = h.user_id AND w.movie_id = ANY (h.movie_ids)
                            AND watch_converts(h.ts, w.first_ts, $5 * interval '1 second')) AS converted,
                  (SELECT count(*) FROM unnest(h.movie_ids) m WHERE m IN (SELECT movie_id FROM top)) AS popular_slots,
                  cardinality(h.movie_ids) AS slots
           FROM recommendations_history h LEFT JOIN users u USING (user_id)
           WHERE h.ts >= $1 AND h.ts < $2 AND h.ts < $3 AND h.status = 200 AND h.user_id IS NOT NULL
         )
         SELECT g.dimension, g.grp, count(DISTINCT a.user_id), count(*), count(*) FILTER (WHERE a.converted),
                sum(a.popular_slots)::bigint, sum(a.slots)::bigint
         FROM answers a
         CROSS JOIN LATERAL (VALUES
           ('age', CASE WHEN a.age IS NULL THEN 'unknown' WHEN a.age < 18 THEN 'under 18' WHEN a.age < 25 THEN '18-24'
                        WHEN a.age < 35 THEN '25-34' WHEN a.age < 45 THEN '35-44' WHEN a.age < 55 THEN '45-54'
                        ELSE '55+' END),
           ('gender', coalesce(a.gender, 'unknown')),
           ('occupation', coalesce(a.occupation, 'unknown'))) g(dimension, grp)
         GROUP BY g.dimension, g.grp
         ORDER BY g.dimension, count(*) DESC, g.grp",
    )
    .bind(range.since)
    .bind(range.until)
    .bind(closed_before)
    .bind(popular)
    .bind(window.num_milliseconds() as f64 / 1000.0)
    .fetch_all(pool)
    .await?;
    let (users, with_profile): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT h.user_id), count(DISTINCT u.user_id)
         FROM recommendations_history h LEFT JOIN users u USING (user_id)
         WHERE h.ts >= $1 AND h.ts < $2 AND h.status = 200 AND h.user_id IS NOT NULL",
    )
    .bind(range.since)
    .bind(range.until)
    .fetch_one(pool)
    .await?;
    let groups = rows
        .into_iter()
        .map(|(dimension, group, users, answers, converted, popular_slots, slots)| Group {
            dimension,
            group,
            users: users.max(0) as u64,
            conversion: Share::wilson(converted.max(0) as u64, answers.max(0) as u64),
            popular_exposure: Share::wilson(popular_slots.max(0) as u64, slots.max(0) as u64),
        })
        .collect();
    Ok(Fairness { popular, users_with_profile: with_profile.max(0) as u64, users: users.max(0) as u64, groups })
}

impl Fairness {
    /// Text.
    pub fn render(&self) -> String {
        let mut out = String::from("## Fairness: conversion and exposure by user group\n");
        out.push_str(&format!(
            "{} of {} users have a profile (age, gender, occupation); exposure = share of slots given to the top {} popular movies\n",
            self.users_with_profile, self.users, self.popular
        ));
        out.push_str(&format!(
            "{:<11} {:<26} {:>7} {:>9} {:>27} {:>27}\n",
            "dimension", "group", "users", "answers", "conversion [95 % CI]", "popular exposure [95 % CI]"
        ));
        for g in &self.groups {
            out.push_str(&format!(
                "{:<11} {:<26} {:>7} {:>9} {:>27} {:>27}\n",
                g.dimension,
                crate::exposure::truncate(&g.group, 26),
                g.users,
                g.conversion.n,
                crate::render_share(&g.conversion),
                crate::render_share(&g.popular_exposure)
            ));
        }
        out
    }
}
