//! Finding a slot for a new session: the free hint, random probes, the table's growth, and
//! each worker's pool of slots taken in blocks.

use super::*;

/// Slots one worker holds for its next initializes, so that an initialize makes one store
/// write before the upstream answers instead of two: fresh slots above the old high-water mark
/// come in blocks (one CAS of the mark for up to [`SlotPool::BLOCK`]), slots freed by others
/// come off the free hint in batches (one CAS of the hint for up to [`SlotPool::BLOCK`]).
///
/// A fresh slot's key does not exist until its owner creates it with a create-only write, so
/// no other worker can take it (probes and the sweep pass over keys that were never created);
/// a batch of freed slots can be taken by another worker's probe meanwhile, which the owner's
/// claim (a CAS that requires the slot still free) finds out. Fresh slots the worker has not
/// used when its configuration goes away are handed back with [`Store::return_pool`]; a VM that
/// crashes loses at most one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPool {
    /// Slots above the old high-water mark, granted to this worker and never created.
    pub(super) fresh: Vec<u32>,
    /// Slots taken off the free hint.
    pub(super) freed: Vec<u32>,
    /// The high-water mark as of this worker's last grant: where its probes look.
    pub(super) high: u32,
    /// Slots taken per grant or batch (1 for no pooling).
    pub(super) block: u32,
    /// A grant takes at most 1/`spread` of the room left below the limit.
    pub(super) spread: u32,
}

impl Default for SlotPool {
    /// [`SlotPool::new`].
    fn default() -> SlotPool {
        SlotPool::new()
    }
}

impl SlotPool {
    /// Most slots a worker takes at once.
    pub const BLOCK: u32 = 8;

    /// Of the room left below the limit, the share a grant takes at most (1/64).
    pub const SPREAD: u32 = 64;

    /// A pool taking up to [`SlotPool::BLOCK`] slots at once.
    pub fn new() -> SlotPool {
        SlotPool::with(SlotPool::BLOCK, SlotPool::SPREAD)
    }

    /// No pooling: one slot per grant and per hint pop (the store's behaviour without a pool).
    pub fn unpooled() -> SlotPool {
        SlotPool::with(1, SlotPool::SPREAD)
    }

    /// A pool taking up to `block` slots at once, and a grant at most 1/`spread` of the room
    /// (tests use a spread of 1 to make small tables hand out whole blocks).
    pub fn with(block: u32, spread: u32) -> SlotPool {
        SlotPool {
            fresh: Vec::new(),
            freed: Vec::new(),
            high: 0,
            block: block.max(1),
            spread: spread.max(1),
        }
    }

    /// Slots held.
    pub fn len(&self) -> usize {
        self.fresh.len() + self.freed.len()
    }

    /// Whether no slot is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S: SharedData> Store<S> {
    /// Number of slots ever created.
    pub fn high_water(&self) -> u32 {
        read_u32(&self.shared.get(HIGH_WATER_KEY).0)
    }

    /// Takes a free slot for an `initialize` in flight. `secret` is the new session's secret
    /// (from the host CSPRNG), `identity` the identity header's value, `random` a cheap source
    /// of probe positions. `None`: the store is full.
    ///
    /// In order: a slot from the free hint; else a new slot, while the table is below its
    /// limit; else, at the limit, CAP_PROBES random slots. Two reads in the common cases
    /// (from the hint, or growing), at most 2 * HINT_CLAIMS + 1 + CAP_PROBES when refused.
    pub fn reserve(
        &self,
        now_ms: u64,
        secret: [u8; SECRET_LEN],
        identity: Option<&[u8]>,
        random: &mut dyn FnMut() -> u32,
    ) -> Option<Reservation> {
        self.reserve_probing(now_ms, secret, identity, random, 0)
    }

    /// [`Store::reserve`], probing up to `probes` random slots below the high-water mark
    /// before growing the table. The hint holds what ends and the sweep freed, but sessions
    /// that expired and were not swept yet (the sweep passes over the table in up to 30 s) are
    /// only found by probing: without it, a store with a short idle timeout and a high
    /// initialize rate grows to several times its live set. The caller adapts `probes` to
    /// how often they find something (see [`Source`]).
    pub fn reserve_probing(
        &self,
        now_ms: u64,
        secret: [u8; SECRET_LEN],
        identity: Option<&[u8]>,
        random: &mut dyn FnMut() -> u32,
        probes: u32,
    ) -> Option<Reservation> {
        let mut pool = SlotPool::unpooled();
        self.reserve_pooled(now_ms, secret, identity, random, probes, &mut pool)
    }

    /// [`Store::reserve_probing`] drawing on a worker's [`SlotPool`]: one write (the claim or
    /// the creation of the slot) per reservation, plus one per block or batch the pool takes.
    ///
    /// In order: a slot freed by others (the pool's batch, refilled from the free hint); a
    /// few random probes below the mark as of the pool's last grant (read afresh when not
    /// pooling); a fresh slot (the pool's block, refilled by moving the mark, while below the
    /// limit); at the limit, CAP_PROBES random slots.
    pub fn reserve_pooled(
        &self,
        now_ms: u64,
        secret: [u8; SECRET_LEN],
        identity: Option<&[u8]>,
        random: &mut dyn FnMut() -> u32,
        probes: u32,
        pool: &mut SlotPool,
    ) -> Option<Reservation> {
        let record = Record::pending(now_ms, secret, identity, self.limits.bind_identity);
        let encoded = record.encoded();
        let reserved = |slot, was_live: bool, from| Reservation {
            id: SessionId { slot, secret },
            record: record.clone(),
            expired: u32::from(was_live),
            from,
        };

        // 1. A slot freed by others.
        if let Some((slot, was_live)) = self.claim_freed(now_ms, &encoded, pool) {
            return Some(reserved(slot, was_live, Source::Hint));
        }
        // 2. A few random slots, when the caller asks for them. Without a pool, the mark read
        // for them is the first one growing uses (its CAS catches a mark that moved since).
        let mut mark = None;
        if probes > 0 {
            let high = if pool.block > 1 {
                pool.high
            } else {
                let (high, cas) = self.read_high_water();
                mark = Some((high, cas));
                high
            };
            if let Some((slot, was_live)) =
                self.probe(probes, high, random, now_ms, &encoded, false)
            {
                return Some(reserved(slot, was_live, Source::Probe));
            }
        }
        // 3. A fresh slot, while below the limit.
        loop {
            if pool.fresh.is_empty() && !self.grant(pool, mark.take()) {
                break;
            }
            let Some(slot) = pool.fresh.pop() else { break };
            // Create-only: nobody else can have created it, but never overwrite if they did.
            if self
                .shared
                .set(&slot_key(slot), &encoded, CREATE_ONLY)
                .is_ok()
            {
                return Some(reserved(slot, false, Source::Grown));
            }
        }
        // 4. At the limit, and nothing freed: a few random slots, which finds expired sessions
        // the sweep has not reached yet and free slots the hint lost. No full scan: a refused
        // initialize costs a bounded number of reads.
        // The mark as the refused grant just read it.
        let (slot, was_live) = self.probe(CAP_PROBES, pool.high, random, now_ms, &encoded, true)?;
        Some(reserved(slot, was_live, Source::AtLimit))
    }

    /// Moves the high-water mark past a block of fresh slots for `pool` (starting from `mark`,
    /// a read of it, when given). The block is smaller near the limit, so that slots held by
    /// one worker do not leave another refusing while there is room: at most 1/64 of the room
    /// left (one slot at a time, as without a pool, within 128 of the limit). False at the
    /// limit.
    pub(super) fn grant(&self, pool: &mut SlotPool, mut mark: Option<(u32, Option<u32>)>) -> bool {
        for _ in 0..CAS_ATTEMPTS {
            let (high, cas) = mark.take().unwrap_or_else(|| self.read_high_water());
            pool.high = pool.high.max(high);
            let room = self.limits.max_sessions.saturating_sub(high);
            if room == 0 {
                return false;
            }
            let n = (room / pool.spread.max(1)).clamp(1, pool.block.max(1));
            let Some(next) = high.checked_add(n) else {
                return false;
            };
            if self
                .shared
                .set(HIGH_WATER_KEY, &next.to_le_bytes(), cas.or(CREATE_ONLY))
                .is_ok()
            {
                // This worker alone moved the mark past `high`: slots high..next are its own.
                pool.fresh.extend((high..next).rev());
                pool.high = next;
                return true;
            }
        }
        false
    }

    /// Hands a pool's slots back when its worker stops using it: fresh slots become free slots
    /// (their keys are created empty) and go to the free hint with the freed ones.
    pub fn return_pool(&self, pool: &mut SlotPool) {
        let mut slots = std::mem::take(&mut pool.freed);
        for slot in std::mem::take(&mut pool.fresh) {
            if self.shared.set(&slot_key(slot), &[], CREATE_ONLY).is_ok() {
                slots.push(slot);
            }
        }
        self.hint_free(&slots);
    }

    /// Claims the first of `count` random slots below min(`high`, the limit) that is free or
    /// holds an expired session: the slot, and whether it held a live session.
    pub(super) fn probe(
        &self,
        count: u32,
        high: u32,
        random: &mut dyn FnMut() -> u32,
        now_ms: u64,
        encoded: &[u8],
        at_limit: bool,
    ) -> Option<(u32, bool)> {
        let usable = high.min(self.limits.max_sessions);
        for _ in 0..count {
            let slot = random().checked_rem(usable)?; // None: an empty table
            if let Claim::Taken { was_live } = self.claim(slot, now_ms, encoded, at_limit) {
                return Some((slot, was_live));
            }
        }
        None
    }

    pub(super) fn read_high_water(&self) -> (u32, Option<u32>) {
        let (bytes, cas) = self.shared.get(HIGH_WATER_KEY);
        (read_u32(&bytes), cas)
    }

    /// Claims `slot` for `encoded` if it is free or holds an expired session.
    pub(super) fn try_claim(&self, slot: u32, now_ms: u64, encoded: &[u8]) -> Claim {
        self.claim(slot, now_ms, encoded, false)
    }

    /// [`Store::try_claim`], and with `uncreated` also a slot below the mark whose key was
    /// never created: one granted to a worker's pool and not used yet (or about to be created
    /// by the worker that just moved the mark). Both sides create it with a create-only
    /// write, so exactly one gets it. Used at the limit only, so that slots held in pools do
    /// not keep an initialize out while the store has room.
    pub(super) fn claim(&self, slot: u32, now_ms: u64, encoded: &[u8], uncreated: bool) -> Claim {
        let key = slot_key(slot);
        let (bytes, Some(cas)) = self.shared.get(&key) else {
            if uncreated && self.shared.set(&key, encoded, CREATE_ONLY).is_ok() {
                return Claim::Taken { was_live: false };
            }
            return Claim::Busy; // never created: only its pool's owner creates it
        };
        let expired = match bytes.as_deref().and_then(Record::decode) {
            None => None,
            Some(record) if self.is_expired(&record, now_ms) => Some(record),
            Some(_) => return Claim::Busy,
        };
        match self.shared.set(&key, encoded, Some(cas)) {
            Ok(()) => {
                if let Some(record) = &expired {
                    self.forget_identity(record);
                }
                let was_live = expired.is_some_and(|r| r.state == State::Live);
                Claim::Taken { was_live }
            }
            Err(_) => Claim::Busy,
        }
    }

    /// Claims the first slot of the pool's batch of freed slots that really is free or holds
    /// an expired session, refilling the batch from the free hint (one CAS write of the
    /// shortened list per batch), trying at most HINT_CLAIMS slots. A hint entry can be stale
    /// (the slot was taken again behind the hint's back): the claim itself is a CAS on the slot
    /// that requires it empty or expired, so a stale entry costs reads, never a shared slot,
    /// and is dropped. `None`: nothing usable was freed.
    pub(super) fn claim_freed(
        &self,
        now_ms: u64,
        encoded: &[u8],
        pool: &mut SlotPool,
    ) -> Option<(u32, bool)> {
        for _ in 0..HINT_CLAIMS {
            if pool.freed.is_empty() && !self.take_from_hint(pool) {
                return None;
            }
            let slot = pool.freed.pop()?;
            if slot >= self.limits.max_sessions {
                continue; // the limit was lowered since
            }
            if let Claim::Taken { was_live } = self.try_claim(slot, now_ms, encoded) {
                return Some((slot, was_live));
            }
        }
        None
    }

    /// Moves up to a block of slots from the free hint into the pool. False when the hint had
    /// none (or could not be written).
    pub(super) fn take_from_hint(&self, pool: &mut SlotPool) -> bool {
        for _ in 0..CAS_ATTEMPTS {
            let (bytes, Some(cas)) = self.shared.get(FREE_KEY) else {
                return false; // no slot was ever freed
            };
            let mut hint = decode_hint(bytes.as_deref());
            if hint.is_empty() {
                return false;
            }
            let keep = hint.len().saturating_sub(pool.block.max(1) as usize);
            let taken = hint.split_off(keep);
            match self.shared.set(FREE_KEY, &encode_hint(&hint), Some(cas)) {
                Ok(()) => {
                    // The last entry is claimed first, as the hint is a stack.
                    pool.freed.extend(taken);
                    return true;
                }
                Err(WriteError::CasMismatch) => continue, // another worker took or gave one
                Err(WriteError::Host) => return false,
            }
        }
        false
    }

    /// Adds `slots`, just found free, to the free hint, while it has room and leaving out
    /// those it already holds. Best effort: a slot left out is found again by the sweep.
    pub(super) fn hint_free(&self, slots: &[u32]) {
        let usable = |slot: &&u32| **slot < self.limits.max_sessions;
        if !slots.iter().any(|slot| usable(&slot)) {
            return;
        }
        for _ in 0..HINT_PUSH_ATTEMPTS {
            let (bytes, cas) = self.shared.get(FREE_KEY);
            let mut hint = decode_hint(bytes.as_deref());
            let held = hint.len();
            for &slot in slots.iter().filter(usable) {
                if hint.len() >= HINT_MAX {
                    break;
                }
                if !hint.contains(&slot) {
                    hint.push(slot);
                }
            }
            if hint.len() == held {
                return; // full, or every slot is already there
            }
            match self
                .shared
                .set(FREE_KEY, &encode_hint(&hint), cas.or(CREATE_ONLY))
            {
                Err(WriteError::CasMismatch) => continue,
                Ok(()) | Err(WriteError::Host) => return,
            }
        }
    }
}

pub(super) enum Claim {
    Taken { was_live: bool },
    Busy,
}

/// The free hint's slots: u32 LE each, at most HINT_MAX (a trailing partial entry, or junk
/// past the limit, is ignored).
pub(super) fn decode_hint(bytes: Option<&[u8]>) -> Vec<u32> {
    bytes
        .unwrap_or_default()
        .chunks_exact(4)
        .filter_map(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .take(HINT_MAX)
        .collect()
}

pub(super) fn encode_hint(slots: &[u32]) -> Vec<u8> {
    slots.iter().flat_map(|slot| slot.to_le_bytes()).collect()
}
