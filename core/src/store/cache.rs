//! A worker's memory of the sessions it validated a moment ago, so that most requests on a
//! session need no shared-data read (each read costs a VM crossing and an allocation callback:
//! BENCHMARKS.md).
//!
//! Serving from it never accepts a request the store would refuse, for two reasons:
//! - **Ends are announced.** A session becomes unusable only by being ended (DELETE, expiry,
//!   the upstream's 404), and whoever ends one increments a process-wide counter, the *epoch*
//!   (an Envoy stat, readable by every worker without an allocation), before the request that
//!   ended it is answered. The cache empties itself whenever the epoch differs from the one it
//!   was filled at, and the caller reads the epoch before it reads the store; so a request that
//!   starts after an end was answered, on any worker, is never served from a stale entry.
//! - **Entries are young.** An entry serves only while its `last_seen` is within the store's
//!   touch interval: the request that finds it older goes to the store, which restarts the idle
//!   clock there, so the store's clock is never staler than without the cache. Expiry by time
//!   needs no epoch: the cached `last_seen` can only be older than the store's.
//!
//! An epoch of 0 means the counter is not usable (a stats matcher that rejects the filter's
//! stats gives a counter that stays 0, while the filter bumps it when it starts): the caller
//! then skips the cache.

use super::{Limits, Verdict};
use crate::record::Record;
use crate::session_id::SessionId;
use crate::FastMap;

/// Sessions a worker validated recently, keyed by slot.
#[derive(Debug)]
pub struct SessionCache {
    epoch: u64,
    // Only sessions the store validated are inserted: no client chooses the keys.
    entries: FastMap<u32, Record>,
    capacity: usize,
}

impl SessionCache {
    /// An empty cache holding at most `capacity` sessions.
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache {
            epoch: 0,
            entries: FastMap::default(),
            capacity,
        }
    }

    /// The record of session `id` for a caller presenting `identity`, if this worker validated
    /// it recently enough and no session has ended anywhere since (`epoch` is current).
    pub fn get(
        &mut self,
        epoch: u64,
        id: &SessionId,
        identity: Option<&[u8]>,
        now_ms: u64,
        limits: &Limits,
    ) -> Option<&Record> {
        self.get_within(
            epoch,
            id,
            identity,
            now_ms,
            limits,
            limits.touch_interval_ms(),
        )
    }

    /// [`SessionCache::get`] for an entry whose `last_seen` is less than `trust_ms` old (the
    /// etcd store trusts its entries for a touch interval while its watch is healthy, and for
    /// a second otherwise).
    pub fn get_within(
        &mut self,
        epoch: u64,
        id: &SessionId,
        identity: Option<&[u8]>,
        now_ms: u64,
        limits: &Limits,
        trust_ms: u64,
    ) -> Option<&Record> {
        self.sync(epoch);
        let record = self.entries.get(&id.slot)?;
        let verdict = limits.judge(record, &id.secret, identity, now_ms, trust_ms);
        (verdict == Verdict::Fresh).then_some(record)
    }

    /// Remembers a live record just read from the store (with its `last_seen` as the store now
    /// has it), at the `epoch` read before that store read.
    pub fn put(&mut self, epoch: u64, slot: u32, record: Record) {
        self.sync(epoch);
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&slot) {
            self.entries.clear();
        }
        self.entries.insert(slot, record);
    }

    /// Forgets every session (a session ended elsewhere).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Forgets session `id`, returning its record if held.
    pub fn take(&mut self, id: &SessionId) -> Option<Record> {
        let record = self.entries.remove(&id.slot)?;
        record.secret_matches(&id.secret).then_some(record)
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn sync(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.entries.clear();
            self.epoch = epoch;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::identity_digest;
    use crate::testkit::{live_record, T0};

    fn limits(bind_identity: bool) -> Limits {
        Limits {
            idle_ms: 64_000, // a touch interval of 1 s
            lifetime_ms: 3_600_000,
            max_sessions: 100,
            bind_identity,
            per_identity: None,
        }
    }

    fn session(slot: u32, byte: u8, identity: Option<&[u8]>) -> (SessionId, Record) {
        let secret = [byte; 16];
        let record = Record {
            identity: Some(identity_digest(identity)),
            ..live_record(secret, T0)
        };
        (SessionId { slot, secret }, record)
    }

    #[test]
    fn serves_a_young_entry_at_the_same_epoch() {
        let mut cache = SessionCache::new(8);
        let (id, record) = session(3, 7, None);
        cache.put(5, 3, record.clone());
        assert_eq!(
            cache.get(5, &id, None, T0 + 999, &limits(false)),
            Some(&record)
        );
    }

    #[test]
    fn any_end_anywhere_empties_it() {
        let mut cache = SessionCache::new(8);
        let (id, record) = session(3, 7, None);
        cache.put(5, 3, record);
        assert_eq!(cache.get(6, &id, None, T0, &limits(false)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn an_entry_older_than_the_touch_interval_goes_back_to_the_store() {
        let mut cache = SessionCache::new(8);
        let (id, record) = session(3, 7, None);
        cache.put(5, 3, record);
        assert!(cache.get(5, &id, None, T0 + 999, &limits(false)).is_some());
        assert_eq!(cache.get(5, &id, None, T0 + 1000, &limits(false)), None);
    }

    #[test]
    fn the_lifetime_applies_to_cached_sessions() {
        let mut cache = SessionCache::new(8);
        let (id, mut record) = session(3, 7, None);
        record.last_seen_ms = T0 + 3_600_000;
        cache.put(5, 3, record);
        assert_eq!(
            cache.get(5, &id, None, T0 + 3_600_000, &limits(false)),
            None
        );
    }

    #[test]
    fn secret_and_identity_are_checked_on_every_hit() {
        let mut cache = SessionCache::new(8);
        let (id, record) = session(3, 7, Some(b"alice"));
        cache.put(5, 3, record);
        let wrong = SessionId {
            slot: 3,
            secret: [8; 16],
        };
        assert_eq!(
            cache.get(5, &wrong, Some(b"alice"), T0, &limits(true)),
            None
        );
        assert_eq!(cache.get(5, &id, Some(b"mallory"), T0, &limits(true)), None);
        assert_eq!(cache.get(5, &id, None, T0, &limits(true)), None);
        assert!(cache
            .get(5, &id, Some(b"alice"), T0, &limits(true))
            .is_some());
    }

    #[test]
    fn stays_within_its_capacity() {
        let mut cache = SessionCache::new(2);
        for slot in 0..5u32 {
            let (_, record) = session(slot, 1, None);
            cache.put(1, slot, record);
            assert!(cache.len() <= 2);
        }
        let (id, _) = session(4, 1, None);
        assert!(cache.get(1, &id, None, T0, &limits(false)).is_some());
        let mut none = SessionCache::new(0);
        none.put(1, 4, session(4, 1, None).1);
        assert!(none.is_empty());
    }
}
