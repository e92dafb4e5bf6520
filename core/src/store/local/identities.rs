//! `max_sessions_per_identity` on the local store: how many live sessions each caller holds.
//!
//! Counts live in shared data under a fixed number of bucket keys (shared-data keys cannot be
//! deleted, so one key per caller would grow with every caller ever seen): each bucket holds
//! the callers of that bucket with at least one session, as (identity digest, count) pairs, so
//! its size follows the callers holding sessions now. A count is taken when a reservation is
//! written (before the upstream sees the `initialize`) and given back whenever a record bound to
//! an identity leaves its slot: released, ended, found expired, swept, or overwritten by a
//! reservation that reclaimed it. Every change is a compare-and-swap, so no worker loses one.

use super::*;
use crate::record::DIGEST_LEN;

/// Bucket keys (`mcps/idn/000` to `mcps/idn/3ff`).
const BUCKETS: u16 = 1024;
/// One entry: the identity digest, then its count (u32, little-endian).
const ENTRY: usize = DIGEST_LEN + 4;

fn bucket_key(digest: &[u8; DIGEST_LEN]) -> String {
    let [a, b, ..] = *digest;
    format!("mcps/idn/{:03x}", u16::from_le_bytes([a, b]) % BUCKETS)
}

/// The counts of a bucket's value, in order; junk at the end is dropped.
pub(super) fn decode_counts(bytes: &[u8]) -> Vec<([u8; DIGEST_LEN], u32)> {
    bytes
        .chunks_exact(ENTRY)
        .filter_map(|entry| {
            let (digest, count) = entry.split_at(DIGEST_LEN);
            Some((
                digest.try_into().ok()?,
                u32::from_le_bytes(count.try_into().ok()?),
            ))
        })
        .collect()
}

fn encode_counts(counts: &[([u8; DIGEST_LEN], u32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(counts.len() * ENTRY);
    for (digest, count) in counts.iter().filter(|(_, count)| *count > 0) {
        out.extend_from_slice(digest);
        out.extend_from_slice(&count.to_le_bytes());
    }
    out
}

impl<S: SharedData> Store<S> {
    /// Live sessions (and reservations) the caller with identity `digest` holds.
    pub fn identity_sessions(&self, digest: &[u8; DIGEST_LEN]) -> u32 {
        let bytes = self
            .shared
            .get(bucket_key(digest).as_bytes())
            .0
            .unwrap_or_default();
        decode_counts(&bytes)
            .into_iter()
            .find(|(d, _)| d == digest)
            .map_or(0, |(_, count)| count)
    }

    /// Takes a place for one more session of the caller `digest`: false when it holds
    /// `limit` already (or the count cannot be written: refusing is the safe side).
    pub(super) fn take_identity_place(&self, digest: &[u8; DIGEST_LEN], limit: u32) -> bool {
        self.change_count(digest, |count| (count < limit).then(|| count + 1))
    }

    /// Gives back the place of a session bound to an identity that left its slot (when the
    /// limit is configured: without it nothing was taken).
    pub(super) fn forget_identity(&self, record: &Record) {
        if let (Some(_), Some(digest)) = (self.limits.per_identity, &record.identity) {
            self.change_count(digest, |count| Some(count.saturating_sub(1)));
        }
    }

    /// [`Store::forget_identity`] for a reservation never written.
    pub(super) fn give_identity_place(&self, digest: &[u8; DIGEST_LEN]) {
        self.change_count(digest, |count| Some(count.saturating_sub(1)));
    }

    /// Rewrites the count of `digest` with `next` (`None`: leave it, and answer false).
    fn change_count(&self, digest: &[u8; DIGEST_LEN], next: impl Fn(u32) -> Option<u32>) -> bool {
        let key = bucket_key(digest).into_bytes();
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, cas) = self.shared.get(&key);
            let mut counts = decode_counts(bytes.as_deref().unwrap_or_default());
            let at = counts.iter().position(|(d, _)| d == digest);
            let count = at
                .and_then(|i| counts.get(i))
                .map_or(0, |(_, count)| *count);
            let Some(new) = next(count) else {
                return false;
            };
            match at.and_then(|i| counts.get_mut(i)) {
                Some(entry) => entry.1 = new,
                None => counts.push((*digest, new)),
            }
            match self
                .shared
                .set(&key, &encode_counts(&counts), cas.or(CREATE_ONLY))
            {
                Ok(()) => return true,
                Err(WriteError::CasMismatch) => continue,
                Err(WriteError::Host) => return false,
            }
        }
        false
    }
}
