//! The recommendation pipeline as one pure function: [`Model::answer`].
//!
//! The server, the replayer and the evaluator each supply the inputs their own way (Postgres and
//! the live store under deadlines; the history as of a watermark and the recorded collection;
//! exact lists from a training split) and call the same function, so nothing else decides an
//! answer: its items, its [`Kind`] and the [`DataVersions`] it names.
//!
//! A [`Model`] is what is recorded in `models`: a registered strategy, its resolved parameters
//! and the [`Search`] parameters its neighbour lists are fetched with. Its version is
//! `<strategy>@<hash>+<git sha>`, the hash over the parameters (and the search parameters when
//! they are not the defaults, so versions recorded before search parameters were part of the
//! model keep their meaning).

use std::sync::Arc;

use proto::contract::{DataVersions, Exclude, Item, Kind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::input::{History, Popularity};
use crate::strategies::{self, ModelSpec, Neighbours, Plan, Strategy, StrategyError};

/// The git sha this binary was built from (`LAZYREC_GIT_SHA` at build time, else `git`).
pub const GIT_SHA: &str = env!("LAZYREC_GIT_SHA");

/// How neighbour lists are searched: part of the model, since another `ef` can give another
/// list (and so another answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Search {
    /// Exhaustive search instead of the HNSW index (answers independent of the index layout).
    pub exact: bool,
    /// HNSW search breadth `ef`; `None`: the engine's default.
    pub ef: Option<usize>,
}

impl Default for Search {
    /// The defaults every model was served with before search parameters were recorded.
    fn default() -> Self {
        Self { exact: false, ef: Some(256) }
    }
}

/// A servable model: strategy, parameters, search parameters, version.
#[derive(Debug, Clone)]
pub struct Model {
    strategy: Arc<dyn Strategy>,
    search: Search,
    version: String,
}

/// What the supplier could read before the deadline, in pipeline order.
#[derive(Debug, Clone, Copy)]
pub enum Stage<'a> {
    /// The user's history could not be read (Postgres failed, was late or shed the request).
    NoHistory,
    /// The history was read; the neighbour lists its plan needs could not be.
    NoNeighbours(&'a History),
    /// Everything the plan needs: the history and, for [`Model::plan`]'s seeds, their lists
    /// with the collection they came from (`None` when the plan needed no list).
    Ready {
        /// The user's history.
        history: &'a History,
        /// Lists aligned with the plan's seeds.
        neighbours: &'a Neighbours,
        /// The collection the lists were read from.
        collection: Option<&'a str>,
    },
}

/// The pipeline's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Best first, at most the limit.
    pub items: Vec<Item>,
    /// Personal, cold start or degraded.
    pub kind: Kind,
    /// What it was computed from beyond the watermark.
    pub data_versions: DataVersions,
}

impl Model {
    /// Builds the model a spec and search parameters name.
    pub fn build(spec: &ModelSpec, search: Search) -> Result<Model, StrategyError> {
        let strategy = strategies::build(spec)?;
        let version = version_of(strategy.as_ref(), search);
        Ok(Model { strategy, search, version })
    }

    /// `<strategy>@<hash>+<git sha>`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The strategy's registry name.
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }

    /// The resolved parameters (what `models.params` records).
    pub fn params(&self) -> serde_json::Value {
        self.strategy.params()
    }

    /// The search parameters (what `models.search` records).
    pub fn search(&self) -> Search {
        self.search
    }

    /// Which neighbour lists an answer for `history` needs (none for an empty history: a cold
    /// start reads none).
    pub fn plan(&self, history: &History) -> Plan {
        if history.watched.is_empty() { Plan::default() } else { self.strategy.plan(history) }
    }

    /// The spaces and list lengths any answer of this model may read (for warming a cache).
    pub fn spaces(&self) -> Vec<(vectorstore::Space, usize)> {
        self.strategy.plan(&History::default()).spaces().collect()
    }

    /// True when answers read the item-weights space (one sparse query).
    pub fn uses_items(&self) -> bool {
        self.strategy.plan(&History::default()).items > 0
    }

    /// The answer: the one place that decides what a user is recommended.
    ///
    /// - no history read → degraded: the popularity list as it is (`exclude: none`);
    /// - history read, lists not → degraded: the popularity list minus what was watched;
    /// - an empty history → cold start: the popularity list;
    /// - otherwise the strategy ranks (watched movies never come back).
    ///
    /// `run` is the popularity run `popularity` came from (0: the catalog order).
    pub fn answer(&self, stage: Stage<'_>, popularity: &Popularity, run: i64, limit: usize) -> Decision {
        let versions = |collection: Option<&str>, exclude| DataVersions {
            popularity: run,
            collection: collection.map(str::to_string),
            exclude,
        };
        match stage {
            Stage::NoHistory => Decision {
                items: popularity.top_excluding(&Default::default(), limit),
                kind: Kind::Degraded,
                data_versions: versions(None, Some(Exclude::None)),
            },
            Stage::NoNeighbours(history) => Decision {
                items: popularity.top_excluding(&history.seen(), limit),
                kind: Kind::Degraded,
                data_versions: versions(None, Some(Exclude::History)),
            },
            Stage::Ready { history, .. } if history.watched.is_empty() => Decision {
                items: popularity.top_excluding(&Default::default(), limit),
                kind: Kind::ColdStart,
                data_versions: versions(None, None),
            },
            Stage::Ready { history, neighbours, collection } => Decision {
                items: self.strategy.rank(history, neighbours, popularity, limit),
                kind: Kind::Personal,
                data_versions: versions(collection, None),
            },
        }
    }
}

/// `<strategy>@<first 8 hex of sha256(params [+ search])>+<git sha>`.
fn version_of(strategy: &dyn Strategy, search: Search) -> String {
    let hashed = if search == Search::default() {
        strategy.params()
    } else {
        serde_json::json!({ "params": strategy.params(), "search": search })
    };
    let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
    let hash = hex::encode(&Sha256::digest(&bytes)[..4]);
    format!("{}@{hash}+{GIT_SHA}", strategy.name())
}

/// The `<strategy>@<hash>` part of a model version (what two builds of one model share; the
/// code's git sha may differ).
pub fn without_code(version: &str) -> &str {
    version.split_once('+').map_or(version, |(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Watched;
    use crate::strategies::{NeighboursV1, NeighboursV2};
    use vectorstore::Hit;

    fn spec(strategy: &str, params: serde_json::Value) -> ModelSpec {
        ModelSpec { strategy: strategy.into(), params }
    }

    #[test]
    fn the_version_changes_with_parameters_and_search_and_not_with_spelled_out_defaults() {
        let version = |params, search| {
            Model::build(&spec(NeighboursV1::NAME, params), search).expect("model").version().to_string()
        };
        let a = version(serde_json::json!({}), Search::default());
        assert_eq!(a, version(serde_json::json!({"max_seeds": 20}), Search::default()));
        assert_ne!(a, version(serde_json::json!({"max_seeds": 10}), Search::default()));
        assert_ne!(a, version(serde_json::json!({}), Search { ef: Some(64), ..Search::default() }));
        assert_ne!(a, version(serde_json::json!({}), Search { exact: true, ..Search::default() }));
        assert!(a.starts_with("neighbours-v1@"));
        assert_eq!(without_code("neighbours-v2@c93bdb1c+773ff4642c0f"), "neighbours-v2@c93bdb1c");
        // The version of the defaults is the hash of the parameters alone (what was recorded
        // before search parameters were part of the model).
        let params = serde_json::to_vec(&NeighboursV1::default()).expect("json");
        assert!(a.contains(&hex::encode(&Sha256::digest(&params)[..4])), "{a}");
    }

    #[test]
    fn every_stage_has_one_answer_and_names_what_it_read() {
        let spec = ModelSpec { strategy: NeighboursV2::NAME.into(), params: serde_json::json!({}) };
        let model = Model::build(&spec, Search::default()).expect("model");
        assert_eq!(model.strategy_name(), NeighboursV2::NAME);
        let popularity = Popularity { movies: vec!["p1".into(), "seen".into(), "p2".into()], ..Default::default() };
        let history = History {
            watermark: 9,
            watched: vec![Watched { movie_id: "seen".into(), last_event_id: 9, rating: None }],
        };
        let ids = |d: &Decision| d.items.iter().map(|i| i.movie_id.clone()).collect::<Vec<_>>();

        let none = model.answer(Stage::NoHistory, &popularity, 4, 2);
        assert_eq!((ids(&none), none.kind), (vec!["p1".to_string(), "seen".into()], Kind::Degraded));
        assert_eq!(none.data_versions, DataVersions { popularity: 4, collection: None, exclude: Some(Exclude::None) });

        let cut = model.answer(Stage::NoNeighbours(&history), &popularity, 4, 2);
        assert_eq!(ids(&cut), vec!["p1", "p2"]);
        assert_eq!(cut.data_versions.exclude, Some(Exclude::History));

        let empty = History::default();
        assert!(model.plan(&empty).seeds.is_empty(), "a cold start reads no list");
        let cold = model.answer(
            Stage::Ready { history: &empty, neighbours: &Neighbours::default(), collection: None },
            &popularity,
            4,
            2,
        );
        assert_eq!((ids(&cold), cold.kind), (vec!["p1".to_string(), "seen".into()], Kind::ColdStart));

        assert_eq!(model.plan(&history).seeds, vec![0]);
        let hit = |m: &str| Hit { id: 0, movie_id: m.into(), score: 0.9 };
        let lists = Neighbours {
            behaviour: vec![Arc::new(vec![hit("p2"), hit("seen")])],
            content: vec![Arc::new(Vec::new())],
            ..Neighbours::default()
        };
        let personal = model.answer(
            Stage::Ready { history: &history, neighbours: &lists, collection: Some("movies_x") },
            &popularity,
            4,
            2,
        );
        assert_eq!((ids(&personal), personal.kind), (vec!["p2".to_string(), "p1".into()], Kind::Personal));
        assert_eq!(personal.data_versions.collection.as_deref(), Some("movies_x"));
        assert_eq!(personal.data_versions.exclude, None);
    }
}
