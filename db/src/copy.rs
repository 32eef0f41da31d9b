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

/// Appends a `text[]` column value. Elements are double-quoted; quotes and backslashes inside
/// elements are escaped for the array literal and then again for COPY.
pub fn text_array<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a str>) {
    out.push(b'{');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        for ch in item.chars() {
            match ch {
                '"' => out.extend_from_slice(b"\\\\\""),
                '\\' => out.extend_from_slice(b"\\\\\\\\"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                other => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                }
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
