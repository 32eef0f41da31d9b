//! The parser on the real course lines, on injected anomalies and on generated input.

use db::event::{Event, RecommendationResult, Timestamp};
use db::parse::{ParseConfig, RejectReason, parse_line};
use proptest::prelude::*;

use crate::data::shared_data;

fn cfg() -> ParseConfig {
    ParseConfig::default()
}

#[test]
fn every_line_of_the_valid_course_sample_parses() {
    let Some(data) = shared_data() else { return };
    let text = std::fs::read_to_string(data.join("course/events/kafka_lines_valid.txt")).expect("valid lines");
    let mut kinds = [0usize; 4];
    for (i, line) in text.lines().enumerate() {
        match parse_line(line.as_bytes(), &cfg()) {
            Ok(Event::Watch { .. }) => kinds[0] += 1,
            Ok(Event::Rate { .. }) => kinds[1] += 1,
            Ok(Event::Recommendation { result: RecommendationResult::Movies(ids), .. }) => {
                assert_eq!(ids.len(), 20, "line {}", i + 1);
                kinds[2] += 1;
            }
            Ok(other) => panic!("line {} parsed as unexpected {other:?}", i + 1),
            Err(r) => panic!("line {} rejected: {r}: {line}", i + 1),
        }
    }
    assert_eq!(kinds.iter().sum::<usize>(), text.lines().count());
    assert!(kinds[0] > 0 && kinds[1] > 0 && kinds[2] > 0, "{kinds:?}");
}

#[test]
fn the_anomalous_course_sample_is_rejected_for_the_right_reasons_and_minute_timestamps_are_accepted() {
    let Some(data) = shared_data() else { return };
    let text = std::fs::read_to_string(data.join("course/events/kafka_lines_anomalous.txt")).expect("anomalous lines");
    let lines: Vec<&str> = text.lines().collect();
    let reason = |i: usize| parse_line(lines[i].as_bytes(), &cfg()).err().map(|r| r.reason);
    // The five injected faults at the top of the file.
    assert_eq!(reason(0), Some(RejectReason::BadTimestamp), "{}", lines[0]);
    assert_eq!(reason(1), Some(RejectReason::NegativeUserId), "{}", lines[1]);
    assert_eq!(reason(2), Some(RejectReason::BadTimestamp), "{}", lines[2]);
    assert_eq!(reason(3), Some(RejectReason::UserIdOutOfRange), "{}", lines[3]);
    assert_eq!(reason(4), Some(RejectReason::BadUserId), "{}", lines[4]);
    // Epoch timestamps with non-numeric users at the end.
    let n = lines.len();
    assert_eq!(reason(n - 2), Some(RejectReason::BadTimestamp));
    assert_eq!(reason(n - 1), Some(RejectReason::BadTimestamp));
    // Between them: real ratings whose timestamps stop at the minute.
    for line in &lines[5..n - 2] {
        match parse_line(line.as_bytes(), &cfg()) {
            Ok(Event::Rate { ts, .. }) => assert_eq!((ts.second, ts.micros), (0, 0), "{line}"),
            other => panic!("{line}: {other:?}"),
        }
    }
}

fn csv_rows(path: &std::path::Path) -> Vec<csv::StringRecord> {
    let mut reader = csv::Reader::from_path(path).expect("csv");
    reader.records().map(|r| r.expect("record")).collect()
}

#[test]
fn the_real_captured_events_parse_when_replayed_as_log_lines() {
    let Some(data) = shared_data() else { return };
    let events = data.join("course/events");
    let mut lines = Vec::new();
    for r in csv_rows(&events.join("cmu-f24-ratings.csv")) {
        lines.push(format!("{},{},GET /rate/{}={}", &r[0], &r[1], &r[2], &r[5]));
    }
    for r in csv_rows(&events.join("cmu-f24-watches.csv")) {
        lines.push(format!("{},{},GET /data/m/{}/{}.mpg", &r[0], &r[1], &r[2], &r[5]));
    }
    for r in csv_rows(&events.join("mcgill-f22-interactions.csv")) {
        let secs: f64 = r[0].parse().expect("epoch seconds");
        let ts = Timestamp::from_unix_micros((secs * 1e6) as i64);
        lines.push(format!("{},{},GET /data/m/{}/0.mpg", ts.to_log_string(), &r[1], &r[2]));
    }
    assert!(lines.len() > 59_000);
    let mut rejected = Vec::new();
    for line in &lines {
        if let Err(r) = parse_line(line.as_bytes(), &cfg()) {
            rejected.push((line.clone(), r.reason));
        }
    }
    // One captured rating is "15" on the 1-5 scale: unrecoverable, so rejected with its reason.
    // Everything else parses, including ids with stray spaces (`city+of+ god+2002`, repaired).
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].0.ends_with("GET /rate/das+boot+1981=15"), "{rejected:?}");
    assert_eq!(rejected[0].1, RejectReason::RatingOutOfRange);
}

fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
    (0i64..4_000_000_000).prop_map(|secs| Timestamp::from_unix_micros(secs * 1_000_000))
}

fn arb_movie() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9+_.\\-]{0,40}\\+(19|20)[0-9]{2}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_line(&bytes, &cfg());
    }

    #[test]
    fn the_parser_never_panics_on_mutated_valid_lines(
        prefix in "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9](:[0-5][0-9](\\.[0-9]{1,9})?)?",
        user in "-?[0-9a-z]{0,12}",
        rest in "(GET /data/m/|GET /rate/|recommendation request |GET /create_account)[ -~]{0,80}",
    ) {
        let line = format!("{prefix},{user},{rest}");
        let _ = parse_line(line.as_bytes(), &cfg());
    }

    #[test]
    fn generated_watch_and_rate_lines_round_trip(
        ts in arb_timestamp(), user in 0i64..=1_000_000, movie in arb_movie(),
        minute in 0i32..500, rating in 1i16..=5, kind in 0u8..2,
    ) {
        let line = if kind == 0 {
            format!("{},{user},GET /data/m/{movie}/{minute}.mpg", ts.to_log_string())
        } else {
            format!("{},{user},GET /rate/{movie}={rating}", ts.to_log_string())
        };
        let parsed = parse_line(line.as_bytes(), &cfg()).map_err(|r| TestCaseError::fail(format!("{line}: {r}")))?;
        let expected = if kind == 0 {
            Event::Watch { ts, user_id: user, movie_id: movie.as_str().into(), minute }
        } else {
            Event::Rate { ts, user_id: user, movie_id: movie.as_str().into(), rating }
        };
        prop_assert_eq!(parsed, expected);
    }

    #[test]
    fn recommendation_lines_round_trip(
        ts in arb_timestamp(), user in 0i64..=1_000_000,
        ids in proptest::collection::vec(arb_movie(), 0..20), latency in 0i32..5_000,
    ) {
        let line = format!("{},{user},recommendation request team-1.example:8082, status 200, result: {}, {latency} ms", ts.to_log_string(), ids.join(", "));
        let parsed = parse_line(line.as_bytes(), &cfg()).map_err(|r| TestCaseError::fail(format!("{line}: {r}")))?;
        let Event::Recommendation { result: RecommendationResult::Movies(got), latency_ms, status, .. } = parsed else {
            return Err(TestCaseError::fail("not a recommendation"));
        };
        prop_assert_eq!(got.iter().map(|id| id.as_ref()).collect::<Vec<_>>(), ids.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!((latency_ms, status), (latency, 200));
    }

    #[test]
    fn a_broken_timestamp_is_always_rejected_as_such(
        ts in arb_timestamp(), cut in 1usize..15, user in 0i64..1000,
    ) {
        let t = ts.to_log_string();
        let line = format!("{},{user},GET /rate/a+1999=3", &t[..t.len().saturating_sub(cut).max(1)]);
        let truncated_to_minutes = t.len() - cut == 16;
        let rejection = parse_line(line.as_bytes(), &cfg()).err().map(|r| r.reason);
        if truncated_to_minutes {
            prop_assert_eq!(rejection, None);
        } else if t.len() - cut != 19 {
            prop_assert_eq!(rejection, Some(RejectReason::BadTimestamp));
        }
    }
}
