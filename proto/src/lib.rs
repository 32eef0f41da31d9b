//! The gRPC contract shared by the server and the load balancer: package `recommender.v1`.
//!
//! Fields and methods are only ever added; a breaking change is a new package.

#![allow(missing_docs, clippy::all)]

/// `recommender.v1`, generated from `proto/recommender/v1/recommender.proto`.
pub mod recommender_v1 {
    tonic::include_proto!("recommender.v1");
}

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("recommender_v1_descriptor");

/// Input rules of the HTTP contract (`GET /recommend/{user_id}?limit=N`), shared by the server
/// and the load balancer so both refuse the same requests with the same one-line reasons.
pub mod contract {
    /// Response headers carrying provenance (server and load balancer).
    pub mod headers {
        /// Model version that answered.
        pub const MODEL_VERSION: &str = "x-model-version";
        /// The variant that answered: main, nightly (load balancer: also fallback).
        pub const VARIANT: &str = "x-variant";
        /// The user's assigned variant (load balancer).
        pub const ASSIGNED_VARIANT: &str = "x-assigned-variant";
        /// The request id.
        pub const REQUEST_ID: &str = "x-request-id";
        /// The data watermark of the answer.
        pub const DATA_WATERMARK: &str = "x-data-watermark";
        /// Present on degraded answers: why.
        pub const DEGRADED: &str = "x-degraded";
        /// personal, cold_start, degraded (load balancer: also fallback).
        pub const KIND: &str = "x-recommendation-kind";
    }

    /// Parses a user id: a non-negative integer that fits i64.
    pub fn parse_user_id(raw: &str) -> Result<i64, String> {
        raw.parse::<i64>()
            .ok()
            .filter(|&id| id >= 0)
            .ok_or_else(|| format!("invalid user id {raw:?}: expected a non-negative integer"))
    }

    /// Parses `limit=` from a query string (`default` when absent; must be in `1..=max`).
    pub fn parse_limit(query: Option<&str>, default: usize, max: usize) -> Result<usize, String> {
        let Some(query) = query else { return Ok(default) };
        let mut limit = default;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key == "limit" {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=max).contains(l))
                    .ok_or_else(|| format!("invalid limit {value:?}: expected an integer in 1..={max}"))?;
            }
        }
        Ok(limit)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn user_ids_and_limits_are_validated_with_a_reason() {
            assert_eq!(parse_user_id("42"), Ok(42));
            assert!(parse_user_id("-1").expect_err("negative").contains("non-negative"));
            assert!(parse_user_id("abc").is_err());
            assert!(parse_user_id("99999999999999999999").is_err());
            assert_eq!(parse_limit(None, 20, 100), Ok(20));
            assert_eq!(parse_limit(Some("limit=5&x=1"), 20, 100), Ok(5));
            assert!(parse_limit(Some("limit=0"), 20, 100).is_err());
            assert!(parse_limit(Some("limit=101"), 20, 100).is_err());
        }
    }
}
