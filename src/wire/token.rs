//! Bearer tokens, checked against the SHA-256 hashes a topology lists
//! (fleets for ingest, operators for subscriptions), in constant time: every
//! hash is compared in full, so the time taken says nothing about how close
//! a guess came or which entry matched.

use sha2::{Digest, Sha256};

/// The SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The index of the first hash `token` matches, comparing all of them.
pub fn find(hashes: impl IntoIterator<Item = [u8; 32]>, token: &str) -> Option<usize> {
    let digest = digest(token);
    let mut found = None;
    for (i, h) in hashes.into_iter().enumerate() {
        let same = h.iter().zip(digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same && found.is_none() {
            found = Some(i);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_matching_hash_only() {
        let hashes = [digest("a"), digest("b"), digest("b")];
        assert_eq!(find(hashes, "b"), Some(1));
        assert_eq!(find(hashes, "a"), Some(0));
        assert_eq!(find(hashes, "c"), None);
        assert_eq!(find([], "a"), None);
    }
}
