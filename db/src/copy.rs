//! Encoding rows for Postgres `COPY ... FROM STDIN` (text format).
//!
//! Columns are tab-separated, rows end with `\n`, `\N` is NULL, and backslash, tab, newline and
//! carriage return inside values are backslash-escaped.

/// Appends `s` as one escaped text column value.
pub fn text(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            other => out.push(other),
        }
    }
}

/// Appends an integer column value.
pub fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Appends a `timestamptz` column value: `YYYY-MM-DD HH:MM:SS.ffffff+00` (UTC; microseconds,
/// always six digits, so that the text orders as the time does).
pub fn timestamp(out: &mut Vec<u8>, ts: chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, Timelike};
    fn pad(out: &mut Vec<u8>, v: u32, width: usize) {
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(v).as_bytes();
        out.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits.len())));
        out.extend_from_slice(digits);
    }
    let t = ts.naive_utc();
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside what the fixed form holds (never a clock's reading): chrono's own form.
        out.extend_from_slice(t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string().as_bytes());
        return;
    }
    pad(out, year as u32, 4);
    out.push(b'-');
    pad(out, t.month(), 2);
    out.push(b'-');
    pad(out, t.day(), 2);
    out.push(b' ');
    pad(out, t.hour(), 2);
    out.push(b':');
    pad(out, t.minute(), 2);
    out.push(b':');
    pad(out, t.second(), 2);
    out.push(b'.');
    // A leap second's nanoseconds run past one second: kept in the last microsecond.
    pad(out, (t.nanosecond() / 1_000).min(999_999), 6);
    out.extend_from_slice(b"+00");
}

/// Appends a `text[]` column value. Elements are double-quoted; quotes and backslashes inside
/// elements are escaped for the array literal and then again for COPY.
pub fn text_array<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a str>) {
    out.push(b'{');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        // Every byte escaped is ASCII, so going a byte at a time keeps UTF-8 whole.
        let bytes = item.as_bytes();
        if !bytes.iter().any(|b| matches!(b, b'"' | b'\\' | b'\t' | b'\n' | b'\r')) {
            out.extend_from_slice(bytes);
            out.push(b'"');
            continue;
        }
        for &b in bytes {
            match b {
                b'"' => out.extend_from_slice(b"\\\\\""),
                b'\\' => out.extend_from_slice(b"\\\\\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                other => out.push(other),
            }
        }
        out.push(b'"');
    }
    out.push(b'}');
}

/// Appends NULL.
pub fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\\N");
}

/// Appends the column separator.
pub fn tab(out: &mut Vec<u8>) {
    out.push(b'\t');
}

/// Ends the row.
pub fn end_row(out: &mut Vec<u8>) {
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_timestamp_is_written_in_the_fixed_form_postgres_reads() {
        let mut out = Vec::new();
        let ts = Utc.with_ymd_and_hms(2026, 3, 7, 4, 5, 6).unwrap() + chrono::Duration::microseconds(42);
        super::timestamp(&mut out, ts);
        assert_eq!(out, b"2026-03-07 04:05:06.000042+00");
        // The same as chrono's formatter gives.
        assert_eq!(String::from_utf8(out).unwrap(), ts.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string());
    }

    #[test]
    fn array_elements_are_escaped_for_the_literal_and_for_copy() {
        let mut out = Vec::new();
        super::text_array(&mut out, ["plain", "é\"q\\\t"]);
        assert_eq!(String::from_utf8(out).unwrap(), "{\"plain\",\"é\\\\\"q\\\\\\\\\\t\"}");
    }
}
