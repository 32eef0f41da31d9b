//! Datasets: interactions with opaque string ids, mapped to dense indexes, split into a training
//! part (what models see) and per-user held-out test items.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One interaction as read (file line or Postgres row).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// User id (opaque).
    pub user: String,
    /// Item id (opaque).
    pub item: String,
    /// Rating as stars out of 5, when known.
    pub rating: Option<f64>,
    /// Order within the user's history (timestamp, event id or line number): larger is later.
    pub order: i64,
}

/// One training interaction of a user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    /// Item index.
    pub item: u32,
    /// Stars out of 5.
    pub rating: Option<f64>,
    /// Larger is later.
    pub order: i64,
}

/// How the test items were chosen (also how a validation split is carved from training).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Split {
    /// Each user's most recent `holdout` share (users with at least `min_items`).
    Temporal {
        /// Share held out (rounded up).
        holdout: f64,
        /// Users with fewer items are not tested.
        min_items: usize,
    },
    /// A random `share` of all interactions.
    Random {
        /// Share held out.
        share: f64,
        /// Seed.
        seed: u64,
    },
    /// Strong generalisation (the EASE papers' protocol): a random `users` share of the users
    /// (with at least `min_items`) is held out of training; each gives a random `1 − holdout`
    /// of their items as input and is tested on the rest. Models never train on them.
    HeldOutUsers {
        /// Share of users held out.
        users: f64,
        /// Share of a held-out user's items tested (rounded up).
        holdout: f64,
        /// Users with fewer items stay in training.
        min_items: usize,
        /// Seed.
        seed: u64,
    },
    /// Given train and test files.
    Files,
}

impl Split {
    /// One line for reports.
    pub fn describe(&self) -> String {
        match self {
            Split::Temporal { holdout, min_items } => format!(
                "per-user temporal split: each user's latest {:.0}% held out (users with ≥ {min_items} items)",
                holdout * 100.0
            ),
            Split::Random { share, seed } => {
                format!("random split: {:.0}% of interactions held out (seed {seed})", share * 100.0)
            }
            Split::HeldOutUsers { users, holdout, min_items, seed } => format!(
                "held-out users: {:.0}% of users (≥ {min_items} items) never trained on, each tested on a random {:.0}% of their items from the rest (seed {seed})",
                users * 100.0,
                holdout * 100.0
            ),
            Split::Files => "train and test files as given".into(),
        }
    }
}

/// A split dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Name for reports.
    pub name: String,
    /// How it was split.
    pub split: Split,
    /// User ids by index.
    pub users: Vec<String>,
    /// Item ids by index.
    pub items: Vec<String>,
    /// Per user: training interactions (one per item, the latest).
    pub train: Vec<Vec<Entry>>,
    /// Per user: held-out items (never in the user's training part).
    pub test: Vec<Vec<u32>>,
    /// Test interactions dropped because the user had the item in training already.
    pub test_seen_in_train: usize,
    /// What models are told of each user when they recommend (default: the training part);
    /// models are always fitted on all of `train`.
    pub query: Option<Vec<Vec<Entry>>>,
}

/// Sizes for reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Name.
    pub name: String,
    /// The split.
    pub split: String,
    /// Users.
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Training interactions.
    pub train_interactions: usize,
    /// Test interactions.
    pub test_interactions: usize,
    /// Users with test items (evaluated).
    pub test_users: usize,
    /// Users without test items (skipped).
    pub skipped_users: usize,
}

#[derive(Default)]
struct Interner {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl Interner {
    fn get(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.to_string());
        self.index.insert(id.to_string(), i);
        i
    }
}

/// Keeps one entry per item (the latest; its rating, or an earlier one when it has none).
fn dedup_latest(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| a.item.cmp(&b.item).then(b.order.cmp(&a.order)));
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some(last) if last.item == e.item => {
                if last.rating.is_none() {
                    last.rating = e.rating;
                }
            }
            _ => out.push(e),
        }
    }
    out
}

fn by_user(rows: &[Row], users: &mut Interner, items: &mut Interner) -> Vec<Vec<Entry>> {
    let mut out: Vec<Vec<Entry>> = Vec::new();
    for r in rows {
        let u = users.get(&r.user) as usize;
        if out.len() <= u {
            out.resize_with(u + 1, Vec::new);
        }
        out[u].push(Entry { item: items.get(&r.item), rating: r.rating, order: r.order });
    }
    out.into_iter().map(dedup_latest).collect()
}

/// Latest first, ties by item index: the order a temporal split cuts in.
fn latest_first(entries: &mut [Entry]) {
    entries.sort_by(|a, b| b.order.cmp(&a.order).then(a.item.cmp(&b.item)));
}

fn temporal(per_user: Vec<Vec<Entry>>, holdout: f64, min_items: usize) -> (Vec<Vec<Entry>>, Vec<Vec<u32>>) {
    let mut train = Vec::with_capacity(per_user.len());
    let mut test = Vec::with_capacity(per_user.len());
    for mut entries in per_user {
        if entries.len() < min_items.max(2) {
            train.push(entries);
            test.push(Vec::new());
            continue;
        }
        latest_first(&mut entries);
        let hidden = ((entries.len() as f64 * holdout).ceil() as usize).clamp(1, entries.len() - 1);
        let kept = entries.split_off(hidden);
        test.push(entries.iter().map(|e| e.item).collect());
        train.push(kept);
    }
    (train, test)
}

fn random(per_user: Vec<Vec<Entry>>, share: f64, seed: u64) -> (Vec<Vec<Entry>>, Vec<Vec<u32>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut train = Vec::with_capacity(per_user.len());
    let mut test = Vec::with_capacity(per_user.len());
    for mut entries in per_user {
        entries.sort_by(|a, b| a.order.cmp(&b.order).then(a.item.cmp(&b.item)));
        let (mut keep, mut held) = (Vec::new(), Vec::new());
        for e in entries {
            if rng.random::<f64>() < share { held.push(e.item) } else { keep.push(e) }
        }
        train.push(keep);
        test.push(held);
    }
    (train, test)
}

/// A split's training entries, test items and (when they differ from training) input histories.
type Parts = (Vec<Vec<Entry>>, Vec<Vec<u32>>, Option<Vec<Vec<Entry>>>);

/// The held-out-users split: training, test and the query (input) histories.
fn held_out_users(per_user: Vec<Vec<Entry>>, users: f64, holdout: f64, min_items: usize, seed: u64) -> Parts {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut train, mut test, mut query) = (Vec::new(), Vec::new(), Vec::new());
    for mut entries in per_user {
        let chosen = rng.random::<f64>() < users;
        if !chosen || entries.len() < min_items.max(2) {
            query.push(entries.clone());
            train.push(entries);
            test.push(Vec::new());
            continue;
        }
        entries.sort_by(|a, b| a.order.cmp(&b.order).then(a.item.cmp(&b.item)));
        // A seeded shuffle picks the tested items; the input keeps its order (recency).
        let hidden = ((entries.len() as f64 * holdout).ceil() as usize).clamp(1, entries.len() - 1);
        let mut picks: Vec<usize> = (0..entries.len()).collect();
        for i in (1..picks.len()).rev() {
            picks.swap(i, rng.random_range(0..=i));
        }
        let tested: std::collections::HashSet<usize> = picks[..hidden].iter().copied().collect();
        let (mut input, mut held) = (Vec::new(), Vec::new());
        for (k, e) in entries.into_iter().enumerate() {
            if tested.contains(&k) { held.push(e.item) } else { input.push(e) }
        }
        train.push(Vec::new());
        test.push(held);
        query.push(input);
    }
    (train, test, Some(query))
}

/// Splits rows at random (each row to the test part with probability `share`), keeping their
/// order: the split written as benchmark files.
pub fn random_split_rows(rows: Vec<Row>, share: f64, seed: u64) -> (Vec<Row>, Vec<Row>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    rows.into_iter().partition(|_| rng.random::<f64>() >= share)
}

/// Training part, test items and (held-out users only) the input histories.
fn split_users(per_user: Vec<Vec<Entry>>, split: Split) -> Parts {
    match split {
        Split::Temporal { holdout, min_items } => {
            let (train, test) = temporal(per_user, holdout, min_items);
            (train, test, None)
        }
        Split::Random { share, seed } => {
            let (train, test) = random(per_user, share, seed);
            (train, test, None)
        }
        Split::HeldOutUsers { users, holdout, min_items, seed } => {
            held_out_users(per_user, users, holdout, min_items, seed)
        }
        Split::Files => {
            let n = per_user.len();
            (per_user, vec![Vec::new(); n], None)
        }
    }
}

impl Dataset {
    /// Splits interactions with `split` (`Temporal` or `Random`).
    pub fn from_rows(name: &str, rows: &[Row], split: Split) -> Self {
        let (mut users, mut items) = (Interner::default(), Interner::default());
        let per_user = by_user(rows, &mut users, &mut items);
        let (train, test, query) = split_users(per_user, split);
        Self { name: name.into(), split, users: users.ids, items: items.ids, train, test, test_seen_in_train: 0, query }
    }

    /// Given training and test interactions (benchmark files). Test items the user already has
    /// in training are dropped and counted.
    pub fn from_train_test(name: &str, train_rows: &[Row], test_rows: &[Row]) -> Self {
        let (mut users, mut items) = (Interner::default(), Interner::default());
        let mut train = by_user(train_rows, &mut users, &mut items);
        let test_entries = by_user(test_rows, &mut users, &mut items);
        train.resize_with(users.ids.len(), Vec::new);
        let mut test = vec![Vec::new(); users.ids.len()];
        let mut seen_in_train = 0;
        for (u, entries) in test_entries.into_iter().enumerate() {
            let seen: std::collections::HashSet<u32> = train[u].iter().map(|e| e.item).collect();
            for e in entries {
                if seen.contains(&e.item) {
                    seen_in_train += 1;
                } else {
                    test[u].push(e.item);
                }
            }
        }
        Self {
            name: name.into(),
            split: Split::Files,
            users: users.ids,
            items: items.ids,
            train,
            test,
            test_seen_in_train: seen_in_train,
            query: None,
        }
    }

    /// A validation dataset carved from the training part only (the test part is not looked
    /// at): temporal datasets hold out each user's latest training items the same way; others a
    /// random share of the training interactions.
    pub fn validation(&self, share: f64, seed: u64) -> Self {
        let split = match self.split {
            Split::Temporal { min_items, .. } => Split::Temporal { holdout: share, min_items },
            // Other users held out of the training users, with another seed.
            Split::HeldOutUsers { users, holdout, min_items, seed: s } => {
                Split::HeldOutUsers { users, holdout, min_items, seed: s.wrapping_add(seed).wrapping_add(1) }
            }
            Split::Random { .. } | Split::Files => Split::Random { share, seed },
        };
        let (train, test, query) = split_users(self.train.clone(), split);
        Self {
            name: format!("{} (validation)", self.name),
            split,
            users: self.users.clone(),
            items: self.items.clone(),
            train,
            test,
            test_seen_in_train: 0,
            query,
        }
    }

    /// Cold users, simulated: models are fitted on all training data as before, but recommend
    /// for each user from their `n` latest training items only.
    pub fn truncate_histories(mut self, n: usize) -> Self {
        let query = (0..self.users.len())
            .map(|u| {
                let mut e = self.history(u).to_vec();
                latest_first(&mut e);
                e.truncate(n);
                e
            })
            .collect();
        self.query = Some(query);
        self.name = format!("{} (users known by their latest {n} training items)", self.name);
        self
    }

    /// What models are told of `user` when they recommend.
    pub fn history(&self, user: usize) -> &[Entry] {
        match &self.query {
            Some(q) => &q[user],
            None => &self.train[user],
        }
    }

    /// Users with test items.
    pub fn test_users(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.users.len()).filter(|&u| !self.test[u].is_empty())
    }

    /// The training part as (user, item) pairs for [`behaviour::factorise`].
    pub fn interactions(&self) -> Vec<behaviour::Interaction> {
        self.train
            .iter()
            .enumerate()
            .flat_map(|(u, e)| e.iter().map(move |x| behaviour::Interaction { user: u as u32, item: x.item }))
            .collect()
    }

    /// Distinct training users per item, most first (ties: item id): the popularity list.
    pub fn popularity(&self) -> Vec<u32> {
        let counts = self.item_users();
        let mut order: Vec<u32> = (0..self.items.len() as u32).filter(|&i| counts[i as usize] > 0).collect();
        order.sort_by(|&a, &b| {
            counts[b as usize]
                .cmp(&counts[a as usize])
                .then_with(|| self.items[a as usize].cmp(&self.items[b as usize]))
        });
        order
    }

    /// Distinct training users of each item.
    pub fn item_users(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.items.len()];
        for entries in &self.train {
            for e in entries {
                counts[e.item as usize] += 1;
            }
        }
        counts
    }

    /// Sizes.
    pub fn summary(&self) -> Summary {
        let test_users = self.test_users().count();
        Summary {
            name: self.name.clone(),
            split: self.split.describe(),
            users: self.users.len(),
            items: self.items.len(),
            train_interactions: self.train.iter().map(Vec::len).sum(),
            test_interactions: self.test.iter().map(Vec::len).sum(),
            test_users,
            skipped_users: self.users.len() - test_users,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, item: &str, order: i64) -> Row {
        Row { user: user.into(), item: item.into(), rating: None, order }
    }

    #[test]
    fn a_temporal_split_holds_out_each_users_latest_items_and_skips_short_histories() {
        let mut rows: Vec<Row> = (0..10).map(|i| row("u", &format!("m{i}"), i)).collect();
        rows.push(row("short", "m0", 1));
        rows.push(row("u", "m3", 50)); // watched again later: one entry, the latest
        let d = Dataset::from_rows("t", &rows, Split::Temporal { holdout: 0.2, min_items: 5 });
        let u = d.users.iter().position(|x| x == "u").expect("u");
        let held: Vec<&str> = d.test[u].iter().map(|&i| d.items[i as usize].as_str()).collect();
        assert_eq!(held, vec!["m3", "m9"]);
        assert_eq!(d.train[u].len(), 8);
        let s = d.summary();
        assert_eq!((s.test_users, s.skipped_users), (1, 1));
        let v = d.validation(0.25, 1);
        assert_eq!(v.test[u].len(), 2, "validation comes from the 8 training items");
        assert!(v.test[u].iter().all(|i| !d.test[u].contains(i)), "never the test items");
    }

    #[test]
    fn given_files_drop_test_items_already_in_training() {
        let d =
            Dataset::from_train_test("f", &[row("a", "x", 1)], &[row("a", "x", 2), row("a", "y", 3), row("b", "z", 1)]);
        assert_eq!(d.test_seen_in_train, 1);
        assert_eq!(d.summary().test_interactions, 2);
        assert_eq!(d.train.len(), 2);
    }

    #[test]
    fn held_out_users_are_never_trained_on_and_are_tested_on_items_outside_their_input() {
        let rows: Vec<Row> = (0..200)
            .flat_map(|u| (0..10).map(move |i| row(&format!("u{u}"), &format!("m{}", (u + i) % 30), i)))
            .collect();
        let split = Split::HeldOutUsers { users: 0.2, holdout: 0.2, min_items: 5, seed: 7 };
        let d = Dataset::from_rows("h", &rows, split);
        let tested: Vec<usize> = d.test_users().collect();
        assert!((20..=60).contains(&tested.len()), "about 20 % of 200 users: {}", tested.len());
        for &u in &tested {
            assert!(d.train[u].is_empty(), "a held-out user trains nothing");
            assert_eq!((d.history(u).len(), d.test[u].len()), (8, 2));
            assert!(d.history(u).iter().all(|e| !d.test[u].contains(&e.item)), "tested on what the input lacks");
        }
        let kept = (0..d.users.len()).find(|u| !tested.contains(u)).expect("a training user");
        assert_eq!((d.train[kept].len(), d.history(kept).len()), (10, 10));
        let v = d.validation(0.2, 1);
        assert!(v.test_users().all(|u| !tested.contains(&u)), "validation users come from the training users");
        assert!(v.test_users().count() > 0);
    }
}
