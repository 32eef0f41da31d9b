//! The course event-log parser: one line in, one [`Event`] or one [`Rejection`] out.
//!
//! Formats (`../shared/data/course/spec`):
//!
//! ```text
//! <time>,<userid>,GET /data/m/<movieid>/<minute>.mpg
//! <time>,<userid>,GET /rate/<movieid>=<rating>
//! <time>,<userid>,recommendation request <server>, status <code>, result: <ids or error>, <N> ms
//! <time>,<userid>,GET /create_account
//! ```
//!
//! `<time>` is `YYYY-MM-DDTHH:MM[:SS[.fraction]]` (0 to 9 fractional digits, or minutes only).
//! Movie ids are the course's `+`-joined slugs: punctuation replaced by `_`, sometimes
//! percent-encoded, a trailing `+` when the year is missing. The parser never panics and never
//! allocates on the accepting path; everything it does not recognise is a [`Rejection`] with a
//! stable [`RejectReason`] code.

use std::borrow::Cow;
use std::fmt;

use crate::event::{Event, RecommendationResult, Timestamp};

/// Limits the parser enforces; they come from the deployment, not from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseConfig {
    /// Highest rating of the scale this log uses (5 for the older course, 10 from 2026).
    pub rating_scale: i16,
    /// Largest plausible user id (the course has ~1M users; larger ids are injected garbage).
    pub max_user_id: i64,
}

impl Default for ParseConfig {
    fn default() -> Self {
        Self { rating_scale: 5, max_user_id: DEFAULT_MAX_USER_ID }
    }
}

/// The default bound on user ids.
pub const DEFAULT_MAX_USER_ID: i64 = 1_000_000;
/// Lines longer than this are rejected unread (a 20-id recommendation line is ~1 KiB).
pub const MAX_LINE_BYTES: usize = 16 * 1024;
const MAX_MOVIE_ID_BYTES: usize = 256;
const MAX_MINUTE: i32 = 100_000;
const MAX_LATENCY_MS: i64 = 86_400_000;

/// Why a line was rejected. The `code()` strings are stored in `rejected_lines.reason` and are
/// part of the product's interface (dashboards, alerts): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Nothing on the line.
    EmptyLine,
    /// Longer than [`MAX_LINE_BYTES`].
    LineTooLong,
    /// Not valid UTF-8.
    NotUtf8,
    /// Fewer than three comma-separated fields.
    MissingField,
    /// The time field is not a valid course timestamp.
    BadTimestamp,
    /// The user id is not a decimal number.
    BadUserId,
    /// The user id is negative.
    NegativeUserId,
    /// The user id is larger than the configured bound.
    UserIdOutOfRange,
    /// The request is none of the known kinds.
    UnknownRequest,
    /// The movie id is empty, too long or has characters course ids never have.
    BadMovieId,
    /// The watched minute is not a small non-negative number.
    BadMinute,
    /// The rating is not a number.
    BadRating,
    /// The rating is outside 1..=scale.
    RatingOutOfRange,
    /// The recommendation-request line does not have its parts.
    BadRecommendation,
}

impl RejectReason {
    /// Every reason, in a stable order (for reports).
    pub const ALL: [RejectReason; 14] = [
        RejectReason::EmptyLine,
        RejectReason::LineTooLong,
        RejectReason::NotUtf8,
        RejectReason::MissingField,
        RejectReason::BadTimestamp,
        RejectReason::BadUserId,
        RejectReason::NegativeUserId,
        RejectReason::UserIdOutOfRange,
        RejectReason::UnknownRequest,
        RejectReason::BadMovieId,
        RejectReason::BadMinute,
        RejectReason::BadRating,
        RejectReason::RatingOutOfRange,
        RejectReason::BadRecommendation,
    ];

    /// The stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::EmptyLine => "empty_line",
            RejectReason::LineTooLong => "line_too_long",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::BadUserId => "bad_user_id",
            RejectReason::NegativeUserId => "negative_user_id",
            RejectReason::UserIdOutOfRange => "user_id_out_of_range",
            RejectReason::UnknownRequest => "unknown_request",
            RejectReason::BadMovieId => "bad_movie_id",
            RejectReason::BadMinute => "bad_minute",
            RejectReason::BadRating => "bad_rating",
            RejectReason::RatingOutOfRange => "rating_out_of_range",
            RejectReason::BadRecommendation => "bad_recommendation",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected line: the reason and a short human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The stable reason.
    pub reason: RejectReason,
    /// What exactly was wrong (for the operator; not parsed by anything).
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Parses one log line (without its line terminator; a trailing `\r` is tolerated).
pub fn parse_line<'a>(line: &'a [u8], cfg: &ParseConfig) -> Result<Event<'a>, Rejection> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE_BYTES {
        return Err(Rejection::new(RejectReason::LineTooLong, format!("{} bytes", line.len())));
    }
    let line = std::str::from_utf8(line).map_err(|e| Rejection::new(RejectReason::NotUtf8, e.to_string()))?;
    if line.trim().is_empty() {
        return Err(Rejection::new(RejectReason::EmptyLine, "blank line"));
    }
    let mut fields = line.splitn(3, ',');
    let (Some(time), Some(user), Some(request)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(Rejection::new(RejectReason::MissingField, "expected <time>,<userid>,<request>"));
    };
    let ts = parse_timestamp(time).ok_or_else(|| Rejection::new(RejectReason::BadTimestamp, clip(time)))?;
    let user_id = parse_user_id(user, cfg)?;
    if let Some(rest) = request.strip_prefix("GET /data/m/") {
        let (movie, minute) = rest
            .rsplit_once('/')
            .ok_or_else(|| Rejection::new(RejectReason::UnknownRequest, "watch request without /<minute>.mpg"))?;
        let minute =
            minute.strip_suffix(".mpg").ok_or_else(|| Rejection::new(RejectReason::BadMinute, clip(minute)))?;
        let minute = parse_small_uint(minute)
            .filter(|m| *m <= i64::from(MAX_MINUTE))
            .ok_or_else(|| Rejection::new(RejectReason::BadMinute, clip(minute)))? as i32;
        let movie_id = check_movie_id(movie)?;
        return Ok(Event::Watch { ts, user_id, movie_id, minute });
    }
    if let Some(rest) = request.strip_prefix("GET /rate/") {
        let (movie, rating) = rest
            .rsplit_once('=')
            .ok_or_else(|| Rejection::new(RejectReason::BadRating, "rate request without =<rating>"))?;
        let movie_id = check_movie_id(movie)?;
        let rating = parse_small_uint(rating).ok_or_else(|| Rejection::new(RejectReason::BadRating, clip(rating)))?;
        if rating < 1 || rating > i64::from(cfg.rating_scale) {
            return Err(Rejection::new(
                RejectReason::RatingOutOfRange,
                format!("{rating} is outside 1..={}", cfg.rating_scale),
            ));
        }
        return Ok(Event::Rate { ts, user_id, movie_id, rating: rating as i16 });
    }
    if let Some(rest) = request.strip_prefix("recommendation request ") {
        return parse_recommendation(ts, user_id, rest);
    }
    if request.trim_end() == "GET /create_account" {
        return Ok(Event::CreateAccount { ts, user_id });
    }
    Err(Rejection::new(RejectReason::UnknownRequest, clip(request)))
}

fn parse_recommendation<'a>(ts: Timestamp, user_id: i64, rest: &'a str) -> Result<Event<'a>, Rejection> {
    let bad = |what: &str| Rejection::new(RejectReason::BadRecommendation, what.to_string());
    let (server, rest) = rest.split_once(", status ").ok_or_else(|| bad("missing ', status '"))?;
    if server.is_empty() || server.contains(char::is_whitespace) {
        return Err(bad("bad server name"));
    }
    let (status, rest) = rest.split_once(", result: ").ok_or_else(|| bad("missing ', result: '"))?;
    let status = parse_small_uint(status).filter(|s| *s <= 999).ok_or_else(|| bad("bad status"))? as i32;
    let (result, latency) = match rest.rsplit_once(", ") {
        Some(parts) => parts,
        // An empty result leaves no ", " between "result: " and the latency.
        None => ("", rest),
    };
    let latency = latency.strip_suffix(" ms").ok_or_else(|| bad("missing '<N> ms'"))?;
    let latency_ms =
        parse_small_uint(latency).filter(|l| *l <= MAX_LATENCY_MS).ok_or_else(|| bad("bad latency"))? as i32;
    let result = if status == 200 {
        let mut ids = Vec::with_capacity(20);
        if !result.trim().is_empty() {
            for id in result.split(',') {
                ids.push(check_movie_id(id.trim())?);
            }
        }
        RecommendationResult::Movies(ids)
    } else {
        RecommendationResult::Error(result)
    };
    Ok(Event::Recommendation { ts, user_id, server, status, result, latency_ms })
}

fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A decimal number of at most 9 digits, no sign.
fn parse_small_uint(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0')))
}

fn parse_user_id(s: &str, cfg: &ParseConfig) -> Result<i64, Rejection> {
    if let Some(digits) = s.strip_prefix('-')
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Rejection::new(RejectReason::NegativeUserId, clip(s)));
    }
    if s.is_empty() || s.len() > 18 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::new(RejectReason::BadUserId, clip(s)));
    }
    let id = s.bytes().fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
    if id > cfg.max_user_id {
        return Err(Rejection::new(RejectReason::UserIdOutOfRange, format!("{id} > {}", cfg.max_user_id)));
    }
    Ok(id)
}

/// Accepts the characters course ids are made of; `%` must start a `%XX` escape. Stray spaces
/// (`city+of+ god+2002`, seen in real captured logs) are removed.
fn check_movie_id(s: &str) -> Result<Cow<'_, str>, Rejection> {
    if s.contains(' ') {
        let squeezed: String = s.chars().filter(|c| *c != ' ').collect();
        return check_movie_id(&squeezed).map(|id| Cow::Owned(id.into_owned()));
    }
    let bytes = s.as_bytes();
    let bad = || Rejection::new(RejectReason::BadMovieId, clip(s));
    if bytes.is_empty() || bytes.len() > MAX_MOVIE_ID_BYTES || bytes.iter().all(|b| *b == b'+') {
        return Err(bad());
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'+'
            | b'_'
            | b'.'
            | b'-'
            | b'*'
            | b'\''
            | b'!'
            | b'&'
            | b'('
            | b')'
            | b'~'
            | b':'
            | b';'
            | b'?'
            | b'@'
            | b'$'
            | b'#' => i += 1,
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(bad());
                }
                i += 3;
            }
            _ => return Err(bad()),
        }
    }
    Ok(Cow::Borrowed(s))
}

/// Parses `YYYY-MM-DDTHH:MM[:SS[.f{1,9}]]`.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 16 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    let hour = num(11..13)?;
    let minute = num(14..16)?;
    let (second, micros) = match b.len() {
        16 => (0, 0),
        19 if b[16] == b':' => (num(17..19)?, 0),
        n if (21..=29).contains(&n) && b[16] == b':' && b[19] == b'.' => {
            let frac = &b[20..];
            if !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let mut micros = 0u32;
            for i in 0..6 {
                micros = micros * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
            }
            (num(17..19)?, micros)
        }
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    Some(Timestamp {
        year: year as u16,
        month: month as u8,
        day: day as u8,
        hour: hour as u8,
        minute: minute as u8,
        second: second as u8,
        micros,
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Event<'_> {
        match parse_line(line.as_bytes(), &ParseConfig::default()) {
            Ok(e) => e,
            Err(r) => panic!("{line:?} rejected: {r}"),
        }
    }

    fn reason(line: &str) -> RejectReason {
        match parse_line(line.as_bytes(), &ParseConfig::default()) {
            Ok(e) => panic!("{line:?} accepted as {e:?}"),
            Err(r) => r.reason,
        }
    }

    #[test]
    fn watch_lines_carry_movie_and_minute() {
        let Event::Watch { ts, user_id, movie_id, minute } =
            ok("2022-10-28T04:23:23,579130,GET /data/m/inception+2010/115.mpg")
        else {
            panic!("not a watch")
        };
        assert_eq!(ts.to_log_string(), "2022-10-28T04:23:23");
        assert_eq!((user_id, movie_id.as_ref(), minute), (579130, "inception+2010", 115));
    }

    #[test]
    fn every_timestamp_precision_is_accepted() {
        for (t, micros) in [
            ("2022-10-28T04:23", 0),
            ("2022-10-28T04:23:23", 0),
            ("2022-10-28T04:23:23.097", 97_000),
            ("2022-10-28T04:23:23.097123", 97_123),
            ("2022-10-28T04:23:23.097123456", 97_123),
        ] {
            assert_eq!(parse_timestamp(t).map(|ts| ts.micros), Some(micros), "{t}");
        }
        for t in
            ["2022-10-28T 04:23:23", "2022-1k0-28T04:23:23", "1700000000", "2022-02-30T00:00:00", "2022-10-28T24:00"]
        {
            assert_eq!(parse_timestamp(t), None, "{t}");
        }
    }

    #[test]
    fn ratings_respect_the_configured_scale() {
        assert!(matches!(ok("2025-02-15T01:49:06,52141,GET /rate/criminal+2004=4"), Event::Rate { rating: 4, .. }));
        assert_eq!(reason("2025-02-15T01:49:06,52141,GET /rate/criminal+2004=7"), RejectReason::RatingOutOfRange);
        let ten = ParseConfig { rating_scale: 10, ..ParseConfig::default() };
        assert!(parse_line(b"2025-02-15T01:49:06,52141,GET /rate/criminal+2004=7", &ten).is_ok());
        assert_eq!(reason("2025-02-15T01:49:06,52141,GET /rate/criminal+2004=0"), RejectReason::RatingOutOfRange);
        assert_eq!(reason("2025-02-15T01:49:06,52141,GET /rate/criminal+2004=x"), RejectReason::BadRating);
    }

    #[test]
    fn recommendation_requests_with_ids_and_with_errors() {
        let line = "2022-10-28T04:23:23.097,44572,recommendation request fall2022-comp585-5.cs.mcgill.ca:8082, status 200, result: the+shawshank+redemption+1994, interstellar+2014, the+good_+the+bad+and+the+ugly+1966, 56 ms";
        let Event::Recommendation { status, result, latency_ms, server, .. } = ok(line) else { panic!() };
        assert_eq!((status, latency_ms, server), (200, 56, "fall2022-comp585-5.cs.mcgill.ca:8082"));
        assert_eq!(
            result,
            RecommendationResult::Movies(
                ["the+shawshank+redemption+1994", "interstellar+2014", "the+good_+the+bad+and+the+ugly+1966"]
                    .map(Cow::Borrowed)
                    .to_vec()
            )
        );
        let line = "2022-02-09T01:45:32.945123,284507,recommendation request 17645-team17.isri.cmu.edu:8082, status 0, result: java.util.concurrent.TimeoutException: Request timeout to 17645-team17.isri.cmu.edu/128.2.205.118:8082 after 800 ms, 815 ms";
        let Event::Recommendation { status, result, latency_ms, .. } = ok(line) else { panic!() };
        assert_eq!((status, latency_ms), (0, 815));
        assert!(
            matches!(result, RecommendationResult::Error(e) if e.starts_with("java.util.concurrent.TimeoutException"))
        );
        assert_eq!(
            reason("2022-10-28T04:23:23.097,44572,recommendation request x:8082, status 200, result: a+1, b/c, 5 ms"),
            RejectReason::BadMovieId
        );
        assert_eq!(
            reason("2022-10-28T04:23:23.097,44572,recommendation request x:8082, status 200"),
            RejectReason::BadRecommendation
        );
    }

    #[test]
    fn create_account_and_odd_movie_ids() {
        assert!(matches!(ok("2026-01-15T10:00:00,77,GET /create_account"), Event::CreateAccount { user_id: 77, .. }));
        assert!(
            matches!(ok("2022-10-28T04:23:23,1,GET /data/m/untitled+/3.mpg"), Event::Watch { movie_id, .. } if movie_id == "untitled+")
        );
        assert!(
            matches!(ok("2022-10-28T04:23:23,1,GET /rate/am%C3%A9lie+2001=5"), Event::Rate { movie_id, .. } if movie_id == "am%C3%A9lie+2001")
        );
        assert!(
            matches!(ok("2024-12-07T15:36:40,362897,GET /rate/city+of+ god+2002=5"), Event::Rate { movie_id: Cow::Owned(id), .. } if id == "city+of+god+2002")
        );
        assert_eq!(reason("2022-10-28T04:23:23,1,GET /rate/am%G3lie+2001=5"), RejectReason::BadMovieId);
    }

    #[test]
    fn user_ids_must_be_plausible() {
        assert_eq!(reason("2022-10-28T04:23:23,-25611,GET /data/m/a+1994/100.mpg"), RejectReason::NegativeUserId);
        assert_eq!(reason("2022-10-28T04:23:24,24f162,GET /data/m/a+1994/2.mpg"), RejectReason::BadUserId);
        assert_eq!(reason("2022-10-28T04:23:24,5521777,GET /data/m/a+1994/69.mpg"), RejectReason::UserIdOutOfRange);
        assert_eq!(reason("1700000000,user123,GET /rate/50=4"), RejectReason::BadTimestamp);
        assert_eq!(reason("2022-10-28T04:23:24,12"), RejectReason::MissingField);
        assert_eq!(reason("2022-10-28T04:23:24,12,POST /login"), RejectReason::UnknownRequest);
        assert_eq!(reason(""), RejectReason::EmptyLine);
    }
}
