//! What a simulated user does with a list of recommendations: a pure function of the user's
//! remaining future, the list and a random stream, so that it can be tested and replayed.

use rand::Rng;

use crate::population::FutureItem;

/// How users respond.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Behaviour {
    /// Probability that a user looks at a recommended movie they would like (one in their
    /// future) at the top of the list and watches it.
    pub accept: f64,
    /// The same probability shrinks by this factor per list position (position bias).
    pub position_decay: f64,
    /// Probability of watching some recommended movie anyway, liked or not (noise).
    pub noise: f64,
    /// Probability of watching the next movie of their own future when no recommendation was
    /// taken (organic watching).
    pub organic: f64,
    /// Probability of rating a watched movie (with their real rating, when known).
    pub rate: f64,
    /// Minutes watched per movie: uniform in `1..=max_minutes` (one log line each).
    pub max_minutes: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self { accept: 0.6, position_decay: 0.9, noise: 0.02, organic: 0.3, rate: 0.5, max_minutes: 8 }
    }
}

impl Behaviour {
    /// Checks the probabilities are probabilities.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("accept", self.accept),
            ("position decay", self.position_decay),
            ("noise", self.noise),
            ("organic", self.organic),
            ("rate", self.rate),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name} must be between 0 and 1, got {p}"));
            }
        }
        if self.max_minutes == 0 {
            return Err("max minutes must be at least 1".into());
        }
        Ok(())
    }
}

/// Why a movie was watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A recommended movie from the user's future.
    Liked,
    /// A recommended movie picked by chance.
    Noise,
    /// The next movie of the user's future, not from the list.
    Organic,
}

impl Reason {
    /// Whether the watch counts as a conversion of the recommendation.
    pub fn converted(self) -> bool {
        match self {
            Reason::Liked | Reason::Noise => true,
            Reason::Organic => false,
        }
    }
}

/// What the user does after one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The movie watched.
    pub movie: std::sync::Arc<str>,
    /// Why.
    pub reason: Reason,
    /// Minutes watched (one log line each).
    pub minutes: u32,
    /// The rating given, if any.
    pub rating: Option<i16>,
    /// Position in the list (for recommended movies).
    pub position: Option<usize>,
}

/// Decides what the user does after seeing `list` (empty when the request failed), and removes
/// the watched movie from `future`.
pub fn respond(
    behaviour: &Behaviour,
    future: &mut Vec<FutureItem>,
    list: &[String],
    rng: &mut impl Rng,
) -> Option<Action> {
    let mut chosen: Option<(usize, Reason, Option<usize>)> = None;
    let mut p = behaviour.accept;
    for (position, movie) in list.iter().enumerate() {
        if let Some(i) = future.iter().position(|f| *f.movie == **movie)
            && rng.random_bool(p)
        {
            chosen = Some((i, Reason::Liked, Some(position)));
            break;
        }
        p *= behaviour.position_decay;
    }
    let mut noise_pick: Option<(std::sync::Arc<str>, usize)> = None;
    if chosen.is_none() && !list.is_empty() && rng.random_bool(behaviour.noise) {
        let position = rng.random_range(0..list.len());
        match future.iter().position(|f| *f.movie == *list[position]) {
            Some(i) => chosen = Some((i, Reason::Noise, Some(position))),
            None => noise_pick = Some((std::sync::Arc::from(list[position].as_str()), position)),
        }
    }
    if chosen.is_none() && noise_pick.is_none() && !future.is_empty() && rng.random_bool(behaviour.organic) {
        chosen = Some((0, Reason::Organic, None));
    }
    let minutes = rng.random_range(1..=behaviour.max_minutes);
    let rates = rng.random_bool(behaviour.rate);
    if let Some((movie, position)) = noise_pick {
        return Some(Action { movie, reason: Reason::Noise, minutes, rating: None, position: Some(position) });
    }
    let (index, reason, position) = chosen?;
    let item = future.remove(index);
    Some(Action { movie: item.movie, reason, minutes, rating: if rates { item.rating } else { None }, position })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn future(ids: &[&str]) -> Vec<FutureItem> {
        ids.iter().map(|m| FutureItem { movie: Arc::from(*m), rating: Some(8) }).collect()
    }

    fn list(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_certain_user_takes_the_first_liked_recommendation_and_it_leaves_their_future() {
        let b = Behaviour { accept: 1.0, position_decay: 1.0, noise: 0.0, organic: 0.0, rate: 1.0, max_minutes: 3 };
        let mut f = future(&["a", "b", "c"]);
        let mut rng = StdRng::seed_from_u64(1);
        let action = respond(&b, &mut f, &list(&["x", "c", "b"]), &mut rng).expect("watches");
        assert_eq!(
            (&*action.movie, action.reason, action.position, action.rating),
            ("c", Reason::Liked, Some(1), Some(8))
        );
        assert!((1..=3).contains(&action.minutes));
        assert_eq!(f, future(&["a", "b"]));
    }

    #[test]
    fn without_a_liked_recommendation_the_user_watches_their_next_movie_or_nothing() {
        let organic = Behaviour { accept: 1.0, noise: 0.0, organic: 1.0, ..Behaviour::default() };
        let mut f = future(&["a", "b"]);
        let mut rng = StdRng::seed_from_u64(1);
        let action = respond(&organic, &mut f, &list(&["x", "y"]), &mut rng).expect("watches");
        assert_eq!((&*action.movie, action.reason, action.position), ("a", Reason::Organic, None));
        assert!(!action.reason.converted());
        let idle = Behaviour { organic: 0.0, ..organic };
        assert_eq!(respond(&idle, &mut f, &list(&["x"]), &mut rng), None);
        assert_eq!(respond(&idle, &mut Vec::new(), &[], &mut rng), None);
    }

    #[test]
    fn better_lists_convert_more_often() {
        let b = Behaviour::default();
        let mut rng = StdRng::seed_from_u64(3);
        let mut converted = [0u32; 2];
        for _ in 0..2_000 {
            for (k, l) in [list(&["x", "y", "a"]), list(&["a", "x", "y"])].iter().enumerate() {
                let mut f = future(&["a", "b"]);
                if respond(&b, &mut f, l, &mut rng).is_some_and(|a| a.reason.converted()) {
                    converted[k] += 1;
                }
            }
        }
        assert!(converted[1] > converted[0] + 100, "{converted:?}");
    }
}
