//! The movie text that gets embedded: a deterministic template over the catalog fields.
//! Changing the template means a new [`TEMPLATE_VERSION`], which is part of every collection name.

use sha2::{Digest, Sha256};

/// Bump when [`movie_text`] changes in any way.
pub const TEMPLATE_VERSION: &str = "t1";

/// The catalog fields the template reads.
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct MovieFields {
    /// Course id.
    pub movie_id: String,
    /// Title.
    pub title: String,
    /// Year.
    pub year: Option<i32>,
    /// Genres.
    pub genres: Vec<String>,
    /// Overview.
    pub overview: Option<String>,
    /// Tagline.
    pub tagline: Option<String>,
    /// Keywords.
    pub keywords: Vec<String>,
}

/// `Title (Year). Genres: A, B. Tagline. Overview Keywords: k1, k2.` — absent parts are left out.
pub fn movie_text(m: &MovieFields) -> String {
    let mut s = m.title.trim().to_string();
    if let Some(year) = m.year {
        s.push_str(&format!(" ({year})"));
    }
    s.push('.');
    if !m.genres.is_empty() {
        s.push_str(&format!(" Genres: {}.", m.genres.join(", ")));
    }
    for part in [&m.tagline, &m.overview].into_iter().flatten() {
        let part = part.trim();
        if !part.is_empty() {
            s.push(' ');
            s.push_str(part);
        }
    }
    if !m.keywords.is_empty() {
        let keywords: Vec<&str> = m.keywords.iter().take(12).map(String::as_str).collect();
        s.push_str(&format!(" Keywords: {}.", keywords.join(", ")));
    }
    s
}

/// sha256 of the text, hex.
pub fn text_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_deterministic_and_skips_missing_parts() {
        let m = MovieFields {
            movie_id: "toy+story+1995".into(),
            title: "Toy Story".into(),
            year: Some(1995),
            genres: vec!["Animation".into(), "Comedy".into()],
            overview: Some("Woody and Buzz.".into()),
            tagline: None,
            keywords: vec!["toy".into()],
        };
        assert_eq!(movie_text(&m), "Toy Story (1995). Genres: Animation, Comedy. Woody and Buzz. Keywords: toy.");
        assert_eq!(movie_text(&MovieFields { title: "X".into(), ..MovieFields::default() }), "X.");
    }
}
