//! Fuzz target: the course-log parser must never panic, and whatever it accepts must be
//! encodable as COPY rows.
#![no_main]

use db::ingest::EventRows;
use db::parse::{ParseConfig, parse_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for scale in [5, 10] {
        let cfg = ParseConfig { rating_scale: scale, ..ParseConfig::default() };
        if let Ok(event) = parse_line(data, &cfg) {
            let mut rows = EventRows::default();
            rows.push(1, &event, scale);
            assert!(rows.tables().iter().map(|t| t.len()).sum::<usize>() > 0);
            assert!(event.user_id() >= 0 && event.user_id() <= cfg.max_user_id);
        }
    }
});
