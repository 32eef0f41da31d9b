//! Sticky assignment: a pure function of the experiment salt and the user id.
//!
//! `bucket = u64::from_be_bytes(sha256(salt ‖ ":" ‖ user_id)[..8]) mod 10000`, and the user is in
//! `nightly` when `bucket < share × 10000`. No state, no database: the same user gets the same
//! variant across restarts and on every load-balancer replica, and a new experiment (new salt)
//! reshuffles everyone independently of the last one. SHA-256 is used for its stability across
//! versions and platforms (std's hasher is randomised per process), not for secrecy.

use sha2::{Digest, Sha256};

/// Buckets per experiment: shares are configurable in steps of 0.01 %.
pub const BUCKETS: u32 = 10_000;

pub use proto::contract::Variant;

/// The user's bucket in `0..BUCKETS` under `salt`.
pub fn bucket(salt: &str, user_id: i64) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(b":");
    hasher.update(user_id.to_string().as_bytes());
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(head) % u64::from(BUCKETS)) as u32
}

/// The number of buckets that go to nightly for `share` (clamped to 0..=1).
pub fn nightly_buckets(share: f64) -> u32 {
    (share.clamp(0.0, 1.0) * f64::from(BUCKETS)).round() as u32
}

/// The variant of a bucket.
pub fn variant_of(bucket: u32, share: f64) -> Variant {
    if bucket < nightly_buckets(share) { Variant::Nightly } else { Variant::Main }
}

/// The user's variant under `salt` and `share`.
pub fn assign(salt: &str, share: f64, user_id: i64) -> (u32, Variant) {
    let b = bucket(salt, user_id);
    (b, variant_of(b, share))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_over_100k_users_is_within_one_percent_of_the_share() {
        for (salt, share) in [("release-1", 0.2), ("release-2", 0.2), ("another salt", 0.05), ("x", 0.5)] {
            let nightly = (1..=100_000).filter(|&u| assign(salt, share, u).1 == Variant::Nightly).count();
            let observed = nightly as f64 / 100_000.0;
            println!("salt {salt:?} share {share}: observed {observed:.4}");
            assert!((observed - share).abs() <= 0.01, "salt {salt:?}: share {share}, observed {observed}");
        }
    }

    #[test]
    fn assignment_is_pure_and_a_new_salt_reshuffles() {
        for u in [0, 1, 42, 1_000_000, i64::MAX] {
            assert_eq!(assign("s", 0.2, u), assign("s", 0.2, u));
            assert!(bucket("s", u) < BUCKETS);
        }
        // Known values (computed independently with Python's hashlib) pin the function:
        // changing it would silently move every user of a running experiment.
        assert_eq!(bucket("release-1", 1), 8);
        assert_eq!(bucket("default", 42), 4259);
        let moved = (1..=10_000).filter(|&u| assign("a", 0.2, u).1 != assign("b", 0.2, u).1).count();
        // Independent 20 % draws differ for 2 × 0.2 × 0.8 = 32 % of users.
        assert!((2_800..3_600).contains(&moved), "{moved}");
        // Share 0 → everyone on main; share 1 → everyone on nightly.
        assert!((1..=1_000).all(|u| assign("s", 0.0, u).1 == Variant::Main));
        assert!((1..=1_000).all(|u| assign("s", 1.0, u).1 == Variant::Nightly));
        // Growing the share only moves users from main to nightly, never back.
        assert!(
            (1..=10_000).all(|u| assign("s", 0.1, u).1 == Variant::Main || assign("s", 0.2, u).1 == Variant::Nightly)
        );
    }
}
