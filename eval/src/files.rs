//! Benchmark files in the two layouts public recommender datasets ship:
//! - **interactions**: `user item [rating [timestamp]]` per line, separated by a tab, a comma or
//!   `::` (MovieLens `u1.base` / `ratings.dat` / `ratings.csv`; a header line is recognised by
//!   its non-numeric rating or timestamp, or `user…` as its first field);
//! - **lists**: `user item item …` separated by spaces, one line per user, in order.
//!
//! Ids are opaque strings. A malformed line is an error naming the file and line number.

use std::io::{BufRead, Write};
use std::path::Path;

use crate::dataset::Row;

/// The layout of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Decide from the first data line: `::`, tab or comma → interactions; spaces → lists.
    Auto,
    /// `user item [rating [timestamp]]`.
    Interactions,
    /// `user item item …`.
    Lists,
}

/// A file that cannot be read as a dataset.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A bad line.
    #[error("{path}:{line}: {why}")]
    Line {
        /// File.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// Nothing in it.
    #[error("{0}: no interactions")]
    Empty(String),
}

fn separator(line: &str) -> Option<&'static str> {
    if line.contains("::") {
        Some("::")
    } else if line.contains('\t') {
        Some("\t")
    } else if line.contains(',') {
        Some(",")
    } else {
        None
    }
}

/// Reads a file. `rating_scale` is the top of the file's rating scale (5 for MovieLens, 10 for
/// the 2026 course); ratings become stars out of 5.
pub fn read(path: &Path, layout: Layout, rating_scale: f64) -> Result<Vec<Row>, FileError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| FileError::Io { path: name.clone(), source })?;
    let mut rows = Vec::new();
    let mut layout = layout;
    let mut sep: Option<&'static str> = None;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = n + 1;
        let line = line.map_err(|source| FileError::Io { path: name.clone(), source })?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| FileError::Line { path: name.clone(), line: number, why };
        if layout == Layout::Auto {
            sep = separator(line);
            layout = if sep.is_some() { Layout::Interactions } else { Layout::Lists };
        }
        match layout {
            Layout::Interactions => {
                let s = *sep.get_or_insert_with(|| separator(line).unwrap_or("\t"));
                let fields: Vec<&str> = line.split(s).map(str::trim).collect();
                if fields.len() < 2 || fields.len() > 4 {
                    return Err(bad(format!(
                        "expected `user{s}item[{s}rating[{s}timestamp]]`, found {} field(s)",
                        fields.len()
                    )));
                }
                if fields[0].is_empty() || fields[1].is_empty() {
                    return Err(bad("empty user or item id".into()));
                }
                let rating = fields.get(2).filter(|r| !r.is_empty()).map(|r| r.parse::<f64>());
                let time = fields.get(3).map(|t| t.parse::<f64>());
                let header = fields[0].to_ascii_lowercase().starts_with("user")
                    || matches!(rating, Some(Err(_)))
                    || matches!(time, Some(Err(_)));
                if header {
                    if rows.is_empty() {
                        continue;
                    }
                    let what = if matches!(time, Some(Err(_))) { "timestamp" } else { "rating" };
                    return Err(bad(format!("the {what} is not a number")));
                }
                let rating = match rating {
                    Some(Ok(r)) if r.is_finite() && r >= 0.0 && r <= rating_scale => Some(r * 5.0 / rating_scale),
                    Some(Ok(r)) => return Err(bad(format!("rating {r} outside 0..={rating_scale}"))),
                    Some(Err(_)) | None => None,
                };
                let order = match time {
                    Some(Ok(t)) if t.is_finite() => t as i64,
                    Some(Ok(_)) | Some(Err(_)) | None => number as i64,
                };
                rows.push(Row { user: fields[0].into(), item: fields[1].into(), rating, order });
            }
            Layout::Lists => {
                let mut fields = line.split_whitespace();
                let Some(user) = fields.next() else { continue };
                let before = rows.len();
                for (position, item) in fields.enumerate() {
                    rows.push(Row { user: user.into(), item: item.into(), rating: None, order: position as i64 });
                }
                if rows.len() == before {
                    return Err(bad(format!("user {user} has no items (expected `user item item …`)")));
                }
            }
            Layout::Auto => unreachable!("resolved above"),
        }
    }
    if rows.is_empty() {
        return Err(FileError::Empty(name));
    }
    Ok(rows)
}

/// Writes rows as `user<TAB>item<TAB>rating<TAB>timestamp` (rating in stars out of 5; an empty
/// field when unrated, read back as unrated).
pub fn write(path: &Path, rows: &[Row]) -> Result<(), FileError> {
    let name = path.display().to_string();
    let io = |source| FileError::Io { path: name.clone(), source };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for r in rows {
        let rating = r.rating.map(|x| x.to_string()).unwrap_or_default();
        writeln!(out, "{}\t{}\t{rating}\t{}", r.user, r.item, r.order).map_err(io)?;
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str, layout: Layout) -> Result<Vec<Row>, FileError> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f");
        std::fs::write(&path, text).expect("write");
        read(&path, layout, 5.0)
    }

    #[test]
    fn all_three_interaction_separators_and_headers_are_read() {
        for text in [
            "196\t242\t3\t881250949\n186\t302\t3\t891717742\n",
            "userId,movieId,rating,timestamp\n196,242,3,881250949\n186,302,3.0,891717742\n",
            "196::242::3::881250949\n186::302::3::891717742\n",
        ] {
            let rows = read_str(text, Layout::Auto).expect(text);
            assert_eq!(rows.len(), 2, "{text}");
            assert_eq!(rows[0], Row { user: "196".into(), item: "242".into(), rating: Some(3.0), order: 881250949 });
        }
        let rows = read_str("u1,i1\nu1,i2\n", Layout::Auto).expect("two fields");
        assert_eq!((rows[1].rating, rows[1].order), (None, 2));
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w");
        let written = vec![
            Row { user: "a".into(), item: "x".into(), rating: Some(4.5), order: 10 },
            Row { user: "a".into(), item: "y".into(), rating: None, order: 11 },
        ];
        write(&path, &written).expect("write");
        assert_eq!(read(&path, Layout::Auto, 5.0).expect("read back"), written);
    }

    #[test]
    fn per_user_lists_are_read_in_order() {
        let rows = read_str("7 a b c\n8 c\n", Layout::Auto).expect("lists");
        let got: Vec<(&str, &str, i64)> = rows.iter().map(|r| (r.user.as_str(), r.item.as_str(), r.order)).collect();
        assert_eq!(got, vec![("7", "a", 0), ("7", "b", 1), ("7", "c", 2), ("8", "c", 0)]);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        let e = read_str("1\t2\t3\t4\n1\t2\tfive\t4\n", Layout::Auto).expect_err("bad rating");
        assert!(e.to_string().contains(":2: the rating is not a number"), "{e}");
        let e = read_str("1\t2\t3\t4\n1\t2\t3\t4\t5\n", Layout::Auto).expect_err("five fields");
        assert!(e.to_string().contains(":2: expected"), "{e}");
        let e = read_str("1\t2\t9\t4\n", Layout::Auto).expect_err("out of scale");
        assert!(e.to_string().contains(":1: rating 9 outside"), "{e}");
        let e = read_str("1 a\n2\n", Layout::Lists).expect_err("no items");
        assert!(e.to_string().contains(":2: user 2 has no items"), "{e}");
        assert!(matches!(read_str("\n", Layout::Auto), Err(FileError::Empty(_))));
    }
}
