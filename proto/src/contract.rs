//! The recommendation contract as it crosses a process boundary — client → load balancer →
//! server — over HTTP (`GET /recommend/{user_id}?limit=N`: a text line plus provenance headers,
//! or JSON) and gRPC (`recommender.v1`).
//!
//! One definition for every side: the header names, the [`Answer`] both servers render and the
//! load balancer decodes, [`Variant`] / [`Served`] / [`Kind`], the input rules
//! ([`parse_user_id`], [`parse_limit`], [`grpc_request`]) with their typed [`RequestError`], the
//! request-id rules, and the rank score of a popularity list. A renamed field or header is a
//! compile error in both crates, not a backend failure at run time.

use std::fmt;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::recommender_v1::{RecommendRequest, RecommendResponse, RecommendedItem};

/// Response headers carrying provenance (also the gRPC metadata keys).
pub mod headers {
    /// Model version that answered.
    pub const MODEL_VERSION: &str = "x-model-version";
    /// Who answered: main, nightly (load balancer: also fallback, or none for a rejected request).
    pub const VARIANT: &str = "x-variant";
    /// The user's assigned variant (load balancer).
    pub const ASSIGNED_VARIANT: &str = "x-assigned-variant";
    /// The request id.
    pub const REQUEST_ID: &str = "x-request-id";
    /// The data watermark of the answer.
    pub const DATA_WATERMARK: &str = "x-data-watermark";
    /// Present on degraded answers: why.
    pub const DEGRADED: &str = "x-degraded";
    /// personal, cold_start, degraded, fallback.
    pub const KIND: &str = "x-recommendation-kind";
    /// What the answer was computed from beyond the watermark: a [`super::DataVersions`] as a
    /// JSON object (`{"popularity":3,"collection":"movies_…"}`).
    pub const DATA_VERSIONS: &str = "x-data-versions";
}

/// The longest request id kept, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// How much of an invalid input (user id, limit) an error echoes and the response log keeps:
/// the first bytes, then its length. A hostile request cannot make the error or the row big.
pub const MAX_ECHOED_INPUT_BYTES: usize = 64;

/// `given` as errors and logs show it: whole when short, else its first
/// [`MAX_ECHOED_INPUT_BYTES`] (on a character boundary) and its length.
pub fn echoed_input(given: &str) -> String {
    if given.len() <= MAX_ECHOED_INPUT_BYTES {
        return given.to_string();
    }
    let mut end = MAX_ECHOED_INPUT_BYTES;
    while !given.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &given[..end], given.len())
}

/// A variant of the service behind the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The released model.
    Main,
    /// The candidate under evaluation.
    Nightly,
}

impl Variant {
    /// `main` or `nightly`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Main => "main",
            Variant::Nightly => "nightly",
        }
    }

    /// The other variant (where a request fails over to).
    pub fn other(self) -> Variant {
        match self {
            Variant::Main => Variant::Nightly,
            Variant::Nightly => Variant::Main,
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "main" => Ok(Variant::Main),
            "nightly" => Ok(Variant::Nightly),
            other => Err(DecodeError::BadValue { field: "variant", value: other.to_string() }),
        }
    }
}

/// Who produced an answer: a variant's server, or the load balancer's fallback list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Served {
    /// A main server.
    Main,
    /// A nightly server.
    Nightly,
    /// The load balancer's cached popularity list (no server answered).
    Fallback,
}

impl Served {
    /// `main`, `nightly` or `fallback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Main => "main",
            Served::Nightly => "nightly",
            Served::Fallback => "fallback",
        }
    }
}

impl From<Variant> for Served {
    fn from(v: Variant) -> Self {
        match v {
            Variant::Main => Served::Main,
            Variant::Nightly => Served::Nightly,
        }
    }
}

impl FromStr for Served {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "main" => Ok(Served::Main),
            "nightly" => Ok(Served::Nightly),
            "fallback" => Ok(Served::Fallback),
            other => Err(DecodeError::BadValue { field: "variant", value: other.to_string() }),
        }
    }
}

/// What kind of answer this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Ranked from the user's history.
    Personal,
    /// No history: the popularity list.
    ColdStart,
    /// A stage failed or was late: the popularity list (minus what is known to be watched).
    Degraded,
    /// No server answered: the load balancer's cached popularity list.
    Fallback,
}

impl Kind {
    /// The wire name (headers, JSON, gRPC, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Personal => "personal",
            Kind::ColdStart => "cold_start",
            Kind::Degraded => "degraded",
            Kind::Fallback => "fallback",
        }
    }
}

impl FromStr for Kind {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "personal" => Ok(Kind::Personal),
            "cold_start" => Ok(Kind::ColdStart),
            "degraded" => Ok(Kind::Degraded),
            "fallback" => Ok(Kind::Fallback),
            other => Err(DecodeError::BadValue { field: "kind", value: other.to_string() }),
        }
    }
}

/// What an answer was computed from beyond its watermark: the popularity run, the vector
/// collection, and for a degraded answer which list cut the popularity list. One rendering: a
/// JSON object, in the `x-data-versions` header, the JSON answer, and the history row's
/// `inputs.data_versions` (which SQL reads as an object: `inputs #>> '{data_versions,collection}'`).
///
/// Rows journaled before this type existed hold the old text form
/// (`popularity=3;collection=movies_x;exclude=history`); [`DataVersions`] deserialises both.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct DataVersions {
    /// The popularity run whose list was read (0: the catalog order, before any run).
    pub popularity: i64,
    /// The vector collection neighbour lists were read from (none when no list was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Degraded answers only: what cut the popularity list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Exclude>,
}

/// What a degraded answer removed from the popularity list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclude {
    /// The user's history had been read: watched movies were removed.
    History,
    /// Nothing was known about the user: the list as it is.
    None,
}

impl DataVersions {
    /// The JSON object (the header value and the stored form).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads the JSON object or the old text form.
    pub fn parse(raw: &str) -> Result<DataVersions, DecodeError> {
        let bad = || DecodeError::BadValue { field: headers::DATA_VERSIONS, value: raw.to_string() };
        if raw.trim_start().starts_with('{') {
            return serde_json::from_str::<Object>(raw).map(DataVersions::from).map_err(|_| bad());
        }
        // The text form of answers recorded before this type: `key=value` pairs joined by `;`.
        let (mut popularity, mut v) = (None, DataVersions::default());
        for part in raw.split(';').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("popularity", x)) => popularity = Some(x.parse().map_err(|_| bad())?),
                Some(("collection", x)) if !x.is_empty() => v.collection = Some(x.to_string()),
                Some(("exclude", "history")) => v.exclude = Some(Exclude::History),
                Some(("exclude", "none")) => v.exclude = Some(Exclude::None),
                _ => return Err(bad()),
            }
        }
        v.popularity = popularity.ok_or_else(bad)?;
        Ok(v)
    }
}

/// The serde shape of the object (kept apart so [`DataVersions`]' own `Deserialize` can also
/// take the old text form).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Object {
    popularity: i64,
    #[serde(default)]
    collection: Option<String>,
    #[serde(default)]
    exclude: Option<Exclude>,
}

impl From<Object> for DataVersions {
    fn from(o: Object) -> Self {
        DataVersions { popularity: o.popularity, collection: o.collection, exclude: o.exclude }
    }
}

impl<'de> Deserialize<'de> for DataVersions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Object(Object),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Object(o) => Ok(o.into()),
            Either::Text(t) => DataVersions::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for DataVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// One recommended movie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Course movie id.
    pub movie_id: String,
    /// The model's score, higher is better; comparable only within one answer (0 when the
    /// answer travelled as a text line, which carries no scores).
    pub score: f64,
}

/// The score of rank `rank` (0-based) in a popularity list of `n` movies: `1 − rank / n`.
/// Shared by the server's cold-start/degraded answers and the load balancer's fallback list.
pub fn popularity_score(rank: usize, n: usize) -> f64 {
    1.0 - rank as f64 / (n.max(1)) as f64
}

/// One answer: the JSON body (`Accept: application/json`), the text line + headers (the course
/// contract), and the gRPC response are three renderings of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The user asked about.
    pub user_id: i64,
    /// Best first.
    pub items: Vec<Item>,
    /// The model version that answered (`<strategy>@<params hash>+<git sha>`).
    pub model_version: String,
    /// Who answered.
    pub variant: Served,
    /// The user's assigned variant (set by the load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_variant: Option<Variant>,
    /// The request id.
    pub request_id: String,
    /// The ingest watermark the answer was computed from.
    pub data_watermark: i64,
    /// What kind of answer.
    pub kind: Kind,
    /// Why the answer is degraded (None otherwise).
    pub degraded: Option<String>,
    /// The popularity run and vector collection the answer read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_versions: Option<DataVersions>,
}

/// An answer (or its headers) that does not follow the contract.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header or field holds a value outside the contract.
    #[error("bad {field} {value:?}")]
    BadValue {
        /// The header or field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// The body is not an answer.
    #[error("bad body: {0}")]
    BadBody(String),
}

/// Sets a header, skipping values that are not valid header text.
pub fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(header_name(name), v);
    }
}

/// The contract's header names, made once at compile time (parsing a name costs more than
/// writing its value, on every request of a proxy).
pub fn header_name(name: &'static str) -> HeaderName {
    const MODEL_VERSION: HeaderName = HeaderName::from_static(headers::MODEL_VERSION);
    const VARIANT: HeaderName = HeaderName::from_static(headers::VARIANT);
    const ASSIGNED_VARIANT: HeaderName = HeaderName::from_static(headers::ASSIGNED_VARIANT);
    const REQUEST_ID: HeaderName = HeaderName::from_static(headers::REQUEST_ID);
    const DATA_WATERMARK: HeaderName = HeaderName::from_static(headers::DATA_WATERMARK);
    const DEGRADED: HeaderName = HeaderName::from_static(headers::DEGRADED);
    const KIND: HeaderName = HeaderName::from_static(headers::KIND);
    const DATA_VERSIONS: HeaderName = HeaderName::from_static(headers::DATA_VERSIONS);
    match name {
        headers::MODEL_VERSION => MODEL_VERSION,
        headers::VARIANT => VARIANT,
        headers::ASSIGNED_VARIANT => ASSIGNED_VARIANT,
        headers::REQUEST_ID => REQUEST_ID,
        headers::DATA_WATERMARK => DATA_WATERMARK,
        headers::DEGRADED => DEGRADED,
        headers::KIND => KIND,
        headers::DATA_VERSIONS => DATA_VERSIONS,
        other => HeaderName::from_static(other),
    }
}

fn header<'a>(h: &'a HeaderMap, name: &'static str) -> Result<&'a str, DecodeError> {
    let v = h.get(header_name(name)).ok_or(DecodeError::MissingHeader(name))?;
    v.to_str().map_err(|_| DecodeError::BadValue { field: name, value: String::from_utf8_lossy(v.as_bytes()).into() })
}

impl Answer {
    /// The course contract's body: the ids, comma-separated, on one line.
    pub fn ids_line(&self) -> String {
        let mut line = String::with_capacity(self.items.len() * 24);
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&item.movie_id);
        }
        line
    }

    /// Writes the provenance headers of this answer.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        set_header(h, headers::MODEL_VERSION, &self.model_version);
        set_header(h, headers::VARIANT, self.variant.as_str());
        if let Some(assigned) = self.assigned_variant {
            set_header(h, headers::ASSIGNED_VARIANT, assigned.as_str());
        }
        set_header(h, headers::REQUEST_ID, &self.request_id);
        set_header(h, headers::DATA_WATERMARK, &self.data_watermark.to_string());
        set_header(h, headers::KIND, self.kind.as_str());
        if let Some(reason) = &self.degraded {
            set_header(h, headers::DEGRADED, reason);
        }
        if let Some(versions) = &self.data_versions {
            set_header(h, headers::DATA_VERSIONS, &versions.to_json());
        }
    }

    /// Decodes a text answer (the ids line) and its headers, as [`Answer::write_headers`] wrote
    /// them. Scores are 0: the line carries none.
    pub fn from_text(user_id: i64, h: &HeaderMap, body: &[u8]) -> Result<Answer, DecodeError> {
        let line = std::str::from_utf8(body).map_err(|e| DecodeError::BadBody(e.to_string()))?;
        let watermark = header(h, headers::DATA_WATERMARK)?;
        Ok(Answer {
            user_id,
            items: line
                .trim()
                .split(',')
                .filter(|m| !m.is_empty())
                .map(|m| Item { movie_id: m.to_string(), score: 0.0 })
                .collect(),
            model_version: header(h, headers::MODEL_VERSION)?.to_string(),
            variant: header(h, headers::VARIANT)?.parse()?,
            assigned_variant: match h.get(header_name(headers::ASSIGNED_VARIANT)) {
                Some(_) => Some(header(h, headers::ASSIGNED_VARIANT)?.parse()?),
                None => None,
            },
            request_id: header(h, headers::REQUEST_ID)?.to_string(),
            data_watermark: watermark
                .parse()
                .map_err(|_| DecodeError::BadValue { field: headers::DATA_WATERMARK, value: watermark.into() })?,
            kind: header(h, headers::KIND)?.parse()?,
            degraded: match h.get(header_name(headers::DEGRADED)) {
                Some(_) => Some(header(h, headers::DEGRADED)?.to_string()),
                None => None,
            },
            data_versions: match h.get(header_name(headers::DATA_VERSIONS)) {
                Some(_) => Some(DataVersions::parse(header(h, headers::DATA_VERSIONS)?)?),
                None => None,
            },
        })
    }

    /// Decodes a JSON answer.
    pub fn from_json(body: &[u8]) -> Result<Answer, DecodeError> {
        serde_json::from_slice(body).map_err(|e| DecodeError::BadBody(e.to_string()))
    }

    /// The gRPC rendering: the response and its metadata (the same provenance as the headers).
    pub fn into_grpc(self) -> tonic::Response<RecommendResponse> {
        let mut h = HeaderMap::new();
        self.write_headers(&mut h);
        h.remove(headers::KIND);
        h.remove(headers::DEGRADED);
        let mut response = tonic::Response::new(RecommendResponse {
            items: self.items.into_iter().map(|i| RecommendedItem { movie_id: i.movie_id, score: i.score }).collect(),
            model_version: self.model_version,
            variant: self.variant.as_str().to_string(),
            request_id: self.request_id,
            data_watermark: self.data_watermark,
            degraded: self.degraded.is_some(),
            degraded_reason: self.degraded.unwrap_or_default(),
            kind: self.kind.as_str().to_string(),
        });
        *response.metadata_mut() = tonic::metadata::MetadataMap::from_headers(h);
        response
    }
}

/// A request that breaks the input rules: answered 400 / `INVALID_ARGUMENT`, never routed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The user id is not a non-negative integer that fits i64 (the id as [`echoed_input`]).
    #[error("invalid user id {0:?}: expected a non-negative integer")]
    InvalidUserId(String),
    /// The limit is not an integer in `1..=max`.
    #[error("invalid limit {given:?}: expected an integer in 1..={max}")]
    InvalidLimit {
        /// What was given, as [`echoed_input`].
        given: String,
        /// The largest limit accepted.
        max: usize,
    },
}

impl RequestError {
    /// The HTTP status of this refusal.
    pub fn http_status(&self) -> StatusCode {
        match self {
            RequestError::InvalidUserId(_) | RequestError::InvalidLimit { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code of this refusal.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            RequestError::InvalidUserId(_) | RequestError::InvalidLimit { .. } => tonic::Code::InvalidArgument,
        }
    }

    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RequestError::InvalidUserId(_) => "invalid_user_id",
            RequestError::InvalidLimit { .. } => "invalid_limit",
        }
    }
}

/// Parses a user id: a non-negative integer that fits i64.
pub fn parse_user_id(raw: &str) -> Result<i64, RequestError> {
    raw.parse::<i64>().ok().filter(|&id| id >= 0).ok_or_else(|| RequestError::InvalidUserId(echoed_input(raw)))
}

/// Parses `limit=` from a query string (`default` when absent; must be in `1..=max`).
pub fn parse_limit(query: Option<&str>, default: usize, max: usize) -> Result<usize, RequestError> {
    let Some(query) = query else { return Ok(default) };
    let mut limit = default;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "limit" {
            limit = value
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=max).contains(l))
                .ok_or_else(|| RequestError::InvalidLimit { given: echoed_input(value), max })?;
        }
    }
    Ok(limit)
}

/// The user id and limit of a gRPC request (limit 0 means `default`).
pub fn grpc_request(req: &RecommendRequest, default: usize, max: usize) -> Result<(i64, usize), RequestError> {
    if req.user_id < 0 {
        return Err(RequestError::InvalidUserId(req.user_id.to_string()));
    }
    let limit = if req.limit == 0 { default } else { req.limit as usize };
    if !(1..=max).contains(&limit) {
        return Err(RequestError::InvalidLimit { given: req.limit.to_string(), max });
    }
    Ok((req.user_id, limit))
}

/// The request id a caller sent over gRPC: the message field, else the `x-request-id` metadata.
pub fn grpc_request_id<'a>(req: &'a RecommendRequest, metadata: &'a tonic::metadata::MetadataMap) -> Option<&'a str> {
    if req.request_id.is_empty() {
        metadata.get(headers::REQUEST_ID).and_then(|v| v.to_str().ok())
    } else {
        Some(req.request_id.as_str())
    }
}

/// The request-id rule (one for every service; see `RecommendRequest.request_id` in the proto):
/// a response's request id is the id its answer is recorded under. A server adopts a caller's
/// usable id (it records nothing; behind the load balancer the caller's id is the load
/// balancer's); the load balancer always assigns its own (its response log is keyed by it) and
/// records the caller's with [`recorded_request_id`].
///
/// A caller's request id usable as ours (echoed in headers and logs): visible ASCII, at most
/// [`MAX_REQUEST_ID_BYTES`]. Anything else is not used as an id (the caller gets a fresh one).
pub fn usable_request_id(given: Option<&str>) -> Option<&str> {
    given.filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES && id.bytes().all(|b| b.is_ascii_graphic()))
}

/// A caller's request id as recorded next to ours: control characters removed, cut to at most
/// [`MAX_REQUEST_ID_BYTES`] on a character boundary (never inside a multi-byte character).
pub fn recorded_request_id(given: &str) -> String {
    let mut out = String::with_capacity(given.len().min(MAX_REQUEST_ID_BYTES));
    for c in given.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_REQUEST_ID_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_and_limits_are_validated_with_a_reason() {
        assert_eq!(parse_user_id("42"), Ok(42));
        assert!(parse_user_id("-1").expect_err("negative").to_string().contains("non-negative"));
        assert!(parse_user_id("abc").is_err());
        assert!(parse_user_id("99999999999999999999").is_err());
        let hostile = "é".repeat(30_000);
        let echoed = parse_user_id(&hostile).expect_err("not a number").to_string();
        assert!(echoed.len() < 3 * MAX_ECHOED_INPUT_BYTES, "a 60 kB id is echoed clipped: {} bytes", echoed.len());
        assert!(echoed.contains("(60000 bytes)"), "{echoed}");
        let limit = parse_limit(Some(&format!("limit={}", "9".repeat(10_000))), 20, 100).expect_err("too long");
        assert!(limit.to_string().len() < 3 * MAX_ECHOED_INPUT_BYTES, "{limit}");
        assert_eq!(parse_limit(None, 20, 100), Ok(20));
        assert_eq!(parse_limit(Some("limit=5&x=1"), 20, 100), Ok(5));
        assert!(parse_limit(Some("limit=0"), 20, 100).is_err());
        assert!(parse_limit(Some("limit=101"), 20, 100).is_err());
        let req = |user_id, limit| RecommendRequest { user_id, limit, request_id: String::new() };
        assert_eq!(grpc_request(&req(7, 0), 20, 100), Ok((7, 20)));
        assert_eq!(grpc_request(&req(-7, 0), 20, 100).map_err(|e| e.grpc_code()), Err(tonic::Code::InvalidArgument));
        assert!(grpc_request(&req(7, 101), 20, 100).is_err());
    }

    #[test]
    fn request_ids_are_cut_on_character_boundaries() {
        let long = format!("{}é{}", "a".repeat(127), "ü".repeat(100));
        let kept = recorded_request_id(&long);
        assert_eq!(kept, "a".repeat(127), "é would end at byte 129");
        assert!(kept.len() <= MAX_REQUEST_ID_BYTES);
        assert_eq!(recorded_request_id("a\nb"), "ab");
        let multi = "ü".repeat(200);
        assert_eq!(recorded_request_id(&multi).chars().count(), 64);
        assert_eq!(usable_request_id(Some("abc-1")), Some("abc-1"));
        assert_eq!(usable_request_id(Some("bad id")), None);
        assert_eq!(usable_request_id(Some(&multi)), None);
    }

    #[test]
    fn an_answer_survives_headers_and_text_and_json() {
        let answer = Answer {
            user_id: 3,
            items: vec![Item { movie_id: "a+1999".into(), score: 0.0 }, Item { movie_id: "b+2001".into(), score: 0.0 }],
            model_version: "neighbours-v1@x+y".into(),
            variant: Served::Nightly,
            assigned_variant: Some(Variant::Main),
            request_id: "r-1".into(),
            data_watermark: 42,
            kind: Kind::Degraded,
            degraded: Some("vector store deadline".into()),
            data_versions: Some(DataVersions {
                popularity: 3,
                collection: Some("movies_x".into()),
                exclude: Some(Exclude::History),
            }),
        };
        let mut h = HeaderMap::new();
        answer.write_headers(&mut h);
        assert_eq!(Answer::from_text(3, &h, answer.ids_line().as_bytes()), Ok(answer.clone()));
        let json = serde_json::to_vec(&answer).expect("json");
        assert_eq!(Answer::from_json(&json), Ok(answer.clone()));
        h.remove(headers::KIND);
        assert_eq!(Answer::from_text(3, &h, b""), Err(DecodeError::MissingHeader(headers::KIND)));
        h.insert(headers::KIND, HeaderValue::from_static("novel"));
        assert!(matches!(Answer::from_text(3, &h, b""), Err(DecodeError::BadValue { field: "kind", .. })));
        assert_eq!(popularity_score(0, 10), 1.0);
        assert!((popularity_score(5, 10) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn data_versions_are_one_json_object_and_the_old_text_form_still_reads() {
        let v = DataVersions { popularity: 12, collection: Some("movies_x".into()), exclude: None };
        assert_eq!(v.to_json(), r#"{"popularity":12,"collection":"movies_x"}"#);
        assert_eq!(DataVersions::parse(&v.to_json()), Ok(v.clone()));
        assert_eq!(DataVersions::parse("popularity=12;collection=movies_x"), Ok(v.clone()));
        let degraded = DataVersions { popularity: 3, collection: None, exclude: Some(Exclude::History) };
        assert_eq!(DataVersions::parse("popularity=3;exclude=history"), Ok(degraded.clone()));
        assert_eq!(degraded.to_json(), r#"{"popularity":3,"exclude":"history"}"#);
        // A journaled row of either age deserialises.
        let old: DataVersions = serde_json::from_str(r#""popularity=3;exclude=none""#).expect("text");
        assert_eq!(old.exclude, Some(Exclude::None));
        let new: DataVersions = serde_json::from_str(&degraded.to_json()).expect("object");
        assert_eq!(new, degraded);
        for bad in ["garbage", "collection=x", "popularity=x", r#"{"popularity":1,"extra":2}"#, "{"] {
            assert!(DataVersions::parse(bad).is_err(), "{bad}");
        }
    }
}
