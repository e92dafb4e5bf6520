//! The session store: sessions in Envoy shared data, so every worker agrees.
//!
//! Envoy can neither delete nor list shared-data keys, so the store keeps a table of slots
//! that grows to the peak number of concurrent sessions (never past `max_sessions`) and
//! reuses them; a free slot holds an empty value. A short shared list of slots believed free
//! (the free hint) lets `reserve` find one in a couple of reads instead of searching the
//! table. The layout and the write protocol are in docs/DESIGN.md. Every read-modify-write
//! is a compare-and-swap, retried a bounded number of times, so no update is lost whichever
//! worker runs it.
//!
//! The store speaks to the host only through [`SharedData`], which keeps it testable on the
//! host. [`Local`] is one worker's side of it: its slot pool and probe budget, and the one
//! place that runs a [`StoreOp`] against the table.

use super::{
    Ended, Limits, Lookup, Reservation, SharedData, Source, StoreOp, StoreResult, Verdict,
    WriteError,
};
use crate::record::{Record, State};
use crate::session_id::{SessionId, SECRET_LEN};
use std::cell::{Cell, RefCell};

/// The cas for a create-only write: a missing key accepts any cas, and an existing key's cas
/// is a counter that starts at 1 and would have to reach 2^32-1 to match.
const CREATE_ONLY: Option<u32> = Some(u32::MAX);
/// Attempts at one compare-and-swap before giving up.
const CAS_ATTEMPTS: usize = 32;
/// Most slot numbers the free hint holds (4 bytes each); a freed slot that finds it full is
/// left for the sweep to find again.
const HINT_MAX: usize = 128;
/// Attempts at adding freed slots to the free hint: losing them only delays their reuse
/// until the sweep passes, so a busy hint is not fought over for long.
const HINT_PUSH_ATTEMPTS: usize = 8;
/// Slots taken from the free hint that may turn out not to be free, per reservation.
const HINT_CLAIMS: usize = 4;
/// Random slots probed for a free or expired one when the hint is empty and the table is at
/// its limit; then the reservation is refused. Bounded, so a flood of refused initializes
/// costs a fixed number of reads each.
const CAP_PROBES: u32 = 16;
/// How much younger than the idle timeout a reservation must be to be activated without a
/// compare-and-swap (see [`Store::activate_reserved`]).
const ACTIVATION_MARGIN_MS: u64 = 1000;
/// Time between two sweep steps, across all workers.
pub const SWEEP_PERIOD_MS: u64 = 1000;
/// Smallest sweep step, in slots.
const SWEEP_MIN_CHUNK: u32 = 1024;
/// A full pass over the table takes at most this many sweep steps.
const SWEEP_STEPS_PER_PASS: u32 = 30;

const HIGH_WATER_KEY: &str = "mcps/hw";
const SWEEP_KEY: &str = "mcps/sw";
const FREE_KEY: &str = "mcps/free";
const CONFIG_KEY: &str = "mcps/cfg";

/// The shared-data key of a slot.
pub fn slot_key(slot: u32) -> String {
    format!("mcps/{slot:08x}")
}

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
    fresh: Vec<u32>,
    freed: Vec<u32>,
    /// The high-water mark as of this worker's last grant: where its probes look.
    high: u32,
    /// Slots taken per grant or batch (1 for no pooling).
    block: u32,
    /// A grant takes at most 1/`spread` of the room left below the limit.
    spread: u32,
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

/// What a sweep step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Slots read.
    pub scanned: u32,
    /// Live sessions found expired and reclaimed.
    pub expired: u32,
    /// Pending reservations found stale and freed.
    pub stale_pending: u32,
}

/// Most random slots an initialize probes before the table grows.
pub const MAX_PROBES: u32 = 8;
/// While probes keep finding nothing (the table only grows), one initialize in this many
/// probes: a probe is a read of a live record, the costliest part of an initialize then.
pub const PROBE_EVERY: u32 = 16;

/// One worker's side of the local store: the slots it holds for its next initializes and how
/// hard its next reserve probes. Its operations answer at once.
#[derive(Debug)]
pub struct Local {
    /// xorshift state for probe positions (not for secrets: those come from the CSPRNG).
    probe_state: Cell<u64>,
    /// Random slots to probe before growing the table: back to the most when a probe found a
    /// slot, halved (to 1) when they all failed and the table grew.
    probe_budget: Cell<u32>,
    /// Initializes this worker reserved for.
    reserves: Cell<u32>,
    /// Slots this worker holds for its next initializes.
    pool: RefCell<SlotPool>,
}

impl Local {
    /// A worker's side, its probe positions drawn from `seed`.
    pub fn new(seed: u64) -> Local {
        Local {
            probe_state: Cell::new(seed | 1),
            probe_budget: Cell::new(MAX_PROBES),
            reserves: Cell::new(0),
            pool: RefCell::new(SlotPool::new()),
        }
    }

    /// Runs `op` against the store, at once.
    pub fn run<S: SharedData>(&self, store: &Store<S>, op: StoreOp) -> StoreResult {
        match op {
            StoreOp::Lookup {
                id,
                identity,
                now_ms,
            } => StoreResult::Lookup(match store.lookup(&id, now_ms, identity.as_deref()) {
                Lookup::Live(mut record, cas) => {
                    if store.touch(&id, &record, cas, now_ms) {
                        record.last_seen_ms = now_ms;
                    }
                    Lookup::Live(record, cas)
                }
                other => other,
            }),
            StoreOp::End { id, now_ms } => StoreResult::Ended(store.end(&id, now_ms)),
            StoreOp::Reserve {
                secret,
                identity,
                now_ms,
            } => {
                let budget = self.probe_budget.get();
                let n = self.reserves.get().wrapping_add(1);
                self.reserves.set(n);
                let probes = if budget > 1 || n % PROBE_EVERY == 0 {
                    budget
                } else {
                    0
                };
                let mut probe = || self.next_probe();
                let reservation = match self.pool.try_borrow_mut() {
                    Ok(mut pool) => store.reserve_pooled(
                        now_ms,
                        secret,
                        identity.as_deref(),
                        &mut probe,
                        probes,
                        &mut pool,
                    ),
                    Err(_) => store.reserve_probing(
                        now_ms,
                        secret,
                        identity.as_deref(),
                        &mut probe,
                        probes,
                    ),
                };
                if let Some(reservation) = &reservation {
                    let next = reservation.from.next_probe_budget(budget, MAX_PROBES);
                    self.probe_budget.set(next);
                }
                StoreResult::Reserved(reservation)
            }
            StoreOp::Activate {
                id,
                reserved,
                upstream_id,
                now_ms,
            } => StoreResult::Done(store.activate_reserved(
                &id,
                &reserved,
                now_ms,
                upstream_id.as_deref(),
            )),
            StoreOp::Release { id } => StoreResult::Done(store.release(&id)),
            StoreOp::MarkInitialized { id, now_ms } => {
                StoreResult::Done(store.mark_initialized(&id, now_ms))
            }
        }
    }

    /// Hands the slots this worker holds back to the store (its configuration goes away, or a
    /// newer one makes the sessions now).
    pub fn return_slots<S: SharedData>(&self, store: &Store<S>) {
        if let Ok(mut pool) = self.pool.try_borrow_mut() {
            if !pool.is_empty() {
                store.return_pool(&mut pool);
            }
        }
    }

    fn next_probe(&self) -> u32 {
        let mut x = self.probe_state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.probe_state.set(x);
        (x >> 32) as u32
    }
}

/// The session store.
pub struct Store<S> {
    shared: S,
    limits: Limits,
}

impl<S: SharedData> Store<S> {
    /// A store over `shared` with `limits`.
    pub fn new(shared: S, limits: Limits) -> Store<S> {
        Store { shared, limits }
    }

    /// The backend.
    pub fn shared(&self) -> &S {
        &self.shared
    }

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
        let encoded = record.encode();
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
    fn grant(&self, pool: &mut SlotPool, mut mark: Option<(u32, Option<u32>)>) -> bool {
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
    fn probe(
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

    /// Turns a reservation into a live session once the upstream answered `initialize` with a
    /// result, remembering the upstream's own session ID. False if the reservation is gone.
    pub fn activate(&self, id: &SessionId, now_ms: u64, upstream_id: Option<&str>) -> bool {
        self.update(id, |record| {
            if record.state != State::Pending {
                return None;
            }
            record.state = State::Live;
            record.last_seen_ms = now_ms;
            record.upstream_id = upstream_id.map(str::to_owned);
            Some(())
        })
        .is_some()
    }

    /// [`Store::activate`] for the reservation that wrote `pending`, with one write and no
    /// read while the reservation is young. A pending record can change only by expiring (a
    /// probe or the sweep then takes the slot) or through its secret, which only the exchange
    /// that reserved it holds and which nothing accepts on a pending session; so until its idle
    /// timeout (less a margin for clocks read on different threads) the slot still holds
    /// exactly `pending`, and the live record can replace it without a compare-and-swap. An
    /// older reservation goes through [`Store::activate`]'s compare-and-swap.
    pub fn activate_reserved(
        &self,
        id: &SessionId,
        pending: &Record,
        now_ms: u64,
        upstream_id: Option<&str>,
    ) -> bool {
        let young = now_ms.saturating_add(ACTIVATION_MARGIN_MS)
            < pending.created_ms.saturating_add(self.limits.idle_ms);
        if !young || pending.state != State::Pending || !pending.secret_matches(&id.secret) {
            return self.activate(id, now_ms, upstream_id);
        }
        let live = pending.activated(now_ms, upstream_id);
        self.shared
            .set(&slot_key(id.slot), &live.encode(), None)
            .is_ok()
    }

    /// Frees a reservation whose `initialize` failed. False if it was not pending.
    pub fn release(&self, id: &SessionId) -> bool {
        self.free_if(id, |record| record.state == State::Pending)
            .is_some()
    }

    /// Finds the live session `id` for a caller presenting `identity`; reclaims it if expired.
    pub fn lookup(&self, id: &SessionId, now_ms: u64, identity: Option<&[u8]>) -> Lookup {
        let key = slot_key(id.slot);
        let (Some(bytes), Some(cas)) = self.shared.get(&key) else {
            return Lookup::NotFound;
        };
        let Some(record) = Record::decode(&bytes) else {
            return Lookup::NotFound;
        };
        match self.limits.judge(&record, &id.secret, identity, now_ms, 0) {
            Verdict::NotFound => Lookup::NotFound,
            // Whoever wins this write counts the expiry; a loser reports not found.
            Verdict::Expired => match self.shared.set(&key, &[], Some(cas)) {
                Ok(()) => {
                    self.hint_free(&[id.slot]);
                    Lookup::Expired
                }
                Err(_) => Lookup::NotFound,
            },
            Verdict::Fresh | Verdict::Stale => Lookup::Live(record, cas),
        }
    }

    /// Restarts the idle clock of a session just looked up, writing only when `last_seen` is
    /// older than the touch interval. A lost race is fine: the winner wrote a newer time or
    /// ended the session.
    pub fn touch(&self, id: &SessionId, record: &Record, cas: u32, now_ms: u64) -> bool {
        if now_ms.saturating_sub(record.last_seen_ms) < self.limits.touch_interval_ms() {
            return false;
        }
        let mut fresh = record.clone();
        fresh.last_seen_ms = now_ms;
        self.shared
            .set(&slot_key(id.slot), &fresh.encode(), Some(cas))
            .is_ok()
    }

    /// Records that the upstream accepted `notifications/initialized`.
    pub fn mark_initialized(&self, id: &SessionId, now_ms: u64) -> bool {
        self.update(id, |record| {
            if record.state != State::Live {
                return None;
            }
            record.initialized = true;
            record.last_seen_ms = record.last_seen_ms.max(now_ms);
            Some(())
        })
        .is_some()
    }

    /// Ends a live session, for every worker at once.
    pub fn end(&self, id: &SessionId, now_ms: u64) -> Ended {
        let mut was_expired = false;
        let freed = self.free_if(id, |record| {
            was_expired = self.is_expired(record, now_ms);
            record.state == State::Live
        });
        match freed {
            Some(_) if was_expired => Ended::Expired,
            Some(record) => Ended::Ended(record),
            None => Ended::NotFound,
        }
    }

    /// Records that the configuration with fingerprint `token` is the newest one on this
    /// store: from now on only its root contexts sweep (see [`Store::sweeps_for`]).
    pub fn adopt_configuration(&self, token: u64) -> bool {
        self.shared
            .set(CONFIG_KEY, &token.to_le_bytes(), None)
            .is_ok()
    }

    /// Whether the configuration with fingerprint `token` is the newest (or none was recorded).
    /// After a configuration update with the same `vm_id`, the old configuration's root
    /// contexts keep ticking until its filter chains drain; they must not sweep with the old
    /// timeouts, which would end sessions the new ones keep.
    pub fn sweeps_for(&self, token: u64) -> bool {
        match self.shared.get(CONFIG_KEY).0 {
            Some(bytes) => bytes.as_slice() == token.to_le_bytes().as_slice(),
            None => true,
        }
    }

    /// One sweep step, if it is this worker's turn: the worker that advances the shared
    /// cursor by compare-and-swap reclaims expired sessions in the next chunk of slots.
    pub fn sweep(&self, now_ms: u64) -> Sweep {
        let mut report = Sweep::default();
        let (bytes, cas) = self.shared.get(SWEEP_KEY);
        let (cursor, last_ms) = read_sweep(bytes.as_deref());
        if cas.is_some() && now_ms.saturating_sub(last_ms) < SWEEP_PERIOD_MS {
            return report;
        }
        let high = self.high_water();
        let chunk = (high / SWEEP_STEPS_PER_PASS).max(SWEEP_MIN_CHUNK).min(high);
        let start = if high == 0 { 0 } else { cursor % high };
        let next = if high == 0 {
            0
        } else {
            start.wrapping_add(chunk) % high
        };
        let value = encode_sweep(next, now_ms);
        if self
            .shared
            .set(SWEEP_KEY, &value, cas.or(CREATE_ONLY))
            .is_err()
        {
            return report; // another worker took this step
        }
        // Slots found free or freed here, for the free hint (which holds at most HINT_MAX).
        let mut free = Vec::new();
        let mut note_free = |slot: u32| {
            if free.len() < HINT_MAX && slot < self.limits.max_sessions {
                free.push(slot);
            }
        };
        for offset in 0..chunk {
            let slot = start.wrapping_add(offset) % high;
            report.scanned += 1;
            let key = slot_key(slot);
            let (bytes, Some(cas)) = self.shared.get(&key) else {
                continue; // never created
            };
            let Some(bytes) = bytes else {
                note_free(slot);
                continue;
            };
            let Some(record) = Record::decode(&bytes) else {
                continue;
            };
            if self.is_expired(&record, now_ms) && self.shared.set(&key, &[], Some(cas)).is_ok() {
                match record.state {
                    State::Live => report.expired += 1,
                    State::Pending => report.stale_pending += 1,
                }
                note_free(slot);
            }
        }
        self.hint_free(&free);
        report
    }

    fn is_expired(&self, record: &Record, now_ms: u64) -> bool {
        record.expired(now_ms, self.limits.idle_ms, self.limits.lifetime_ms)
    }

    fn read_high_water(&self) -> (u32, Option<u32>) {
        let (bytes, cas) = self.shared.get(HIGH_WATER_KEY);
        (read_u32(&bytes), cas)
    }

    /// Claims `slot` for `encoded` if it is free or holds an expired session.
    fn try_claim(&self, slot: u32, now_ms: u64, encoded: &[u8]) -> Claim {
        self.claim(slot, now_ms, encoded, false)
    }

    /// [`Store::try_claim`], and with `uncreated` also a slot below the mark whose key was
    /// never created: one granted to a worker's pool and not used yet (or about to be created
    /// by the worker that just moved the mark). Both sides create it with a create-only
    /// write, so exactly one gets it. Used at the limit only, so that slots held in pools do
    /// not keep an initialize out while the store has room.
    fn claim(&self, slot: u32, now_ms: u64, encoded: &[u8], uncreated: bool) -> Claim {
        let key = slot_key(slot);
        let (bytes, Some(cas)) = self.shared.get(&key) else {
            if uncreated && self.shared.set(&key, encoded, CREATE_ONLY).is_ok() {
                return Claim::Taken { was_live: false };
            }
            return Claim::Busy; // never created: only its pool's owner creates it
        };
        let was_live = match bytes.as_deref().and_then(Record::decode) {
            None => false,
            Some(record) if self.is_expired(&record, now_ms) => record.state == State::Live,
            Some(_) => return Claim::Busy,
        };
        match self.shared.set(&key, encoded, Some(cas)) {
            Ok(()) => Claim::Taken { was_live },
            Err(_) => Claim::Busy,
        }
    }

    /// Read-modify-write of the record `id` names; `change` returns `None` to leave it alone.
    fn update(
        &self,
        id: &SessionId,
        mut change: impl FnMut(&mut Record) -> Option<()>,
    ) -> Option<()> {
        self.rewrite(id, |record| {
            let mut changed = record.clone();
            change(&mut changed)?;
            Some(changed.encode())
        })
        .map(|_| ())
    }

    /// Empties the slot `id` names when `approve` accepts its record, and offers the slot to
    /// the free hint; returns the record.
    fn free_if(&self, id: &SessionId, mut approve: impl FnMut(&Record) -> bool) -> Option<Record> {
        let freed = self.rewrite(id, |record| approve(record).then(Vec::new))?;
        self.hint_free(&[id.slot]);
        Some(freed)
    }

    /// Claims the first slot of the pool's batch of freed slots that really is free or holds
    /// an expired session, refilling the batch from the free hint (one CAS write of the
    /// shortened list per batch), trying at most HINT_CLAIMS slots. A hint entry can be stale
    /// (the slot was taken again behind the hint's back): the claim itself is a CAS on the slot
    /// that requires it empty or expired, so a stale entry costs reads, never a shared slot,
    /// and is dropped. `None`: nothing usable was freed.
    fn claim_freed(&self, now_ms: u64, encoded: &[u8], pool: &mut SlotPool) -> Option<(u32, bool)> {
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
    fn take_from_hint(&self, pool: &mut SlotPool) -> bool {
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
    fn hint_free(&self, slots: &[u32]) {
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

    /// The compare-and-swap loop under `update` and `free_if`: reads the record `id` names
    /// (its secret must match), asks `next` for the bytes to write in its place (`None`: leave
    /// it), and retries when another worker wrote first. Returns the record that was replaced.
    fn rewrite(
        &self,
        id: &SessionId,
        mut next: impl FnMut(&Record) -> Option<Vec<u8>>,
    ) -> Option<Record> {
        let key = slot_key(id.slot);
        for _ in 0..CAS_ATTEMPTS {
            let (Some(bytes), Some(cas)) = self.shared.get(&key) else {
                return None;
            };
            let record = Record::decode(&bytes)?;
            if !record.secret_matches(&id.secret) {
                return None;
            }
            let value = next(&record)?;
            match self.shared.set(&key, &value, Some(cas)) {
                Ok(()) => return Some(record),
                Err(WriteError::CasMismatch) => continue,
                Err(WriteError::Host) => return None,
            }
        }
        None
    }
}

enum Claim {
    Taken { was_live: bool },
    Busy,
}

fn read_u32(bytes: &Option<Vec<u8>>) -> u32 {
    bytes
        .as_deref()
        .and_then(|b| b.get(..4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The free hint's slots: u32 LE each, at most HINT_MAX (a trailing partial entry, or junk
/// past the limit, is ignored).
fn decode_hint(bytes: Option<&[u8]>) -> Vec<u32> {
    bytes
        .unwrap_or_default()
        .chunks_exact(4)
        .filter_map(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .take(HINT_MAX)
        .collect()
}

fn encode_hint(slots: &[u32]) -> Vec<u8> {
    slots.iter().flat_map(|slot| slot.to_le_bytes()).collect()
}

fn read_sweep(bytes: Option<&[u8]>) -> (u32, u64) {
    let Some(bytes) = bytes else {
        return (0, 0);
    };
    let cursor = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    let last = bytes
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    (cursor, last)
}

fn encode_sweep(cursor: u32, now_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&cursor.to_le_bytes());
    out.extend_from_slice(&now_ms.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{FakeShared, Rng, T0};

    fn limits() -> Limits {
        Limits {
            idle_ms: 10_000,
            lifetime_ms: 60_000,
            max_sessions: 4,
            bind_identity: false,
        }
    }

    fn secret(n: u8) -> [u8; SECRET_LEN] {
        [n; SECRET_LEN]
    }

    fn hint(shared: &FakeShared) -> Vec<u32> {
        decode_hint(shared.get(FREE_KEY).0.as_deref())
    }

    fn set_hint(shared: &FakeShared, slots: &[u32]) {
        shared.set(FREE_KEY, &encode_hint(slots), None).unwrap();
    }

    /// Reads one call makes.
    fn gets_of<T>(shared: &FakeShared, call: impl FnOnce() -> T) -> (T, u64) {
        let before = shared.gets();
        let out = call();
        (out, shared.gets() - before)
    }

    /// A store of `max` slots, every one holding a live session opened at `now`.
    fn full(shared: &FakeShared, max: u32, now: u64) -> (Store<&FakeShared>, Vec<SessionId>) {
        let mut l = limits();
        l.max_sessions = max;
        let store = Store::new(shared, l);
        let mut rng = Rng::new(21);
        let ids = (0..max)
            .map(|n| {
                let r = store
                    .reserve(now, secret((n % 251) as u8), None, &mut rng.probes())
                    .unwrap();
                assert!(store.activate(&r.id, now, None));
                r.id
            })
            .collect();
        assert_eq!(store.high_water(), max);
        (store, ids)
    }

    fn open(store: &Store<&FakeShared>, n: u8, now: u64) -> SessionId {
        let mut rng = Rng::new(u64::from(n) + 7);
        let r = store
            .reserve(now, secret(n), None, &mut rng.probes())
            .unwrap();
        assert!(store.activate(&r.id, now, None));
        r.id
    }

    #[test]
    fn probing_before_growing_reclaims_expired_sessions_the_sweep_has_not_reached() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let mut rng = Rng::new(7);
        for n in 0..3 {
            store
                .reserve(T0, secret(n), None, &mut rng.probes())
                .unwrap();
        }
        let later = T0 + limits().idle_ms; // all three expired, none swept
        let without = store
            .reserve(later, secret(9), None, &mut rng.probes())
            .unwrap();
        assert_eq!(
            without.from,
            Source::Grown,
            "the hint is empty: the table grows"
        );
        let with = store
            .reserve_probing(later, secret(10), None, &mut rng.probes(), 8)
            .unwrap();
        assert_eq!(with.from, Source::Probe);
        assert!(with.id.slot < 3);
        assert_eq!(
            store.high_water(),
            4,
            "no growth when a probe found an expired slot"
        );
    }

    #[test]
    fn the_probe_budget_follows_what_probes_find() {
        let mut budget = 8;
        for want in [4, 2, 1, 1] {
            budget = Source::Grown.next_probe_budget(budget, 8);
            assert_eq!(budget, want);
        }
        assert_eq!(Source::Hint.next_probe_budget(budget, 8), 1);
        assert_eq!(Source::AtLimit.next_probe_budget(budget, 8), 1);
        assert_eq!(Source::Probe.next_probe_budget(budget, 8), 8);
    }

    #[test]
    fn only_the_newest_configuration_sweeps() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        assert!(store.sweeps_for(1), "nothing recorded yet");
        assert!(store.adopt_configuration(1));
        assert!(store.sweeps_for(1));
        assert!(store.adopt_configuration(2));
        assert!(!store.sweeps_for(1), "the old configuration stops");
        assert!(store.sweeps_for(2));
        assert!(store.adopt_configuration(1), "a rollback takes it back");
        assert!(store.sweeps_for(1) && !store.sweeps_for(2));
    }

    #[test]
    fn session_lifecycle() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let mut rng = Rng::new(1);
        let r = store
            .reserve(T0, secret(1), None, &mut rng.probes())
            .unwrap();
        assert_eq!(
            store.lookup(&r.id, T0, None),
            Lookup::NotFound,
            "pending is not usable"
        );
        assert!(store.activate(&r.id, T0, Some("up-1")));
        assert!(!store.activate(&r.id, T0, None), "activates once");
        let Lookup::Live(record, _) = store.lookup(&r.id, T0 + 1, None) else {
            panic!("live session not found");
        };
        assert_eq!(record.upstream_id.as_deref(), Some("up-1"));
        assert!(!record.initialized);
        assert!(store.mark_initialized(&r.id, T0 + 2));
        let Lookup::Live(record, _) = store.lookup(&r.id, T0 + 3, None) else {
            panic!();
        };
        assert!(record.initialized);
        assert!(matches!(store.end(&r.id, T0 + 4), Ended::Ended(_)));
        assert_eq!(store.end(&r.id, T0 + 5), Ended::NotFound, "second DELETE");
        assert_eq!(store.lookup(&r.id, T0 + 6, None), Lookup::NotFound);
    }

    #[test]
    fn wrong_secret_or_slot_is_not_found() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let id = open(&store, 1, T0);
        let mut guess = id;
        guess.secret[15] ^= 1;
        assert_eq!(store.lookup(&guess, T0, None), Lookup::NotFound);
        assert_eq!(store.end(&guess, T0), Ended::NotFound);
        let mut other_slot = id;
        other_slot.slot = 3;
        assert_eq!(store.lookup(&other_slot, T0, None), Lookup::NotFound);
        other_slot.slot = u32::MAX;
        assert_eq!(store.lookup(&other_slot, T0, None), Lookup::NotFound);
        assert!(
            matches!(store.lookup(&id, T0, None), Lookup::Live(..)),
            "still there"
        );
    }

    #[test]
    fn capacity_is_enforced_and_slots_are_reused() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let ids: Vec<_> = (1..=4).map(|n| open(&store, n, T0)).collect();
        let mut rng = Rng::new(99);
        assert_eq!(
            store.reserve(T0, secret(9), None, &mut rng.probes()),
            None,
            "full"
        );
        assert!(matches!(store.end(&ids[2], T0), Ended::Ended(_)));
        let r = store
            .reserve(T0, secret(9), None, &mut rng.probes())
            .unwrap();
        assert_eq!(r.id.slot, ids[2].slot, "the freed slot is reused");
        assert_eq!(store.high_water(), 4);
        assert_eq!(
            shared.key_count(),
            4 + 2,
            "4 slots, the high-water mark and the free hint"
        );
    }

    #[test]
    fn expired_sessions_are_refused_then_reclaimed_once() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let id = open(&store, 1, T0);
        assert!(matches!(
            store.lookup(&id, T0 + 9_999, None),
            Lookup::Live(..)
        ));
        assert_eq!(store.lookup(&id, T0 + 10_000, None), Lookup::Expired);
        assert_eq!(
            store.lookup(&id, T0 + 10_001, None),
            Lookup::NotFound,
            "counted once"
        );
    }

    #[test]
    fn touch_restarts_the_idle_clock_but_not_on_every_request() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let id = open(&store, 1, T0);
        let Lookup::Live(r, cas) = store.lookup(&id, T0 + 100, None) else {
            panic!()
        };
        assert!(
            !store.touch(&id, &r, cas, T0 + 100),
            "within the touch interval: no write"
        );
        let Lookup::Live(r, cas) = store.lookup(&id, T0 + 9_000, None) else {
            panic!()
        };
        assert!(store.touch(&id, &r, cas, T0 + 9_000));
        assert!(matches!(
            store.lookup(&id, T0 + 18_999, None),
            Lookup::Live(..)
        ));
        assert_eq!(store.lookup(&id, T0 + 19_000, None), Lookup::Expired);
    }

    #[test]
    fn absolute_lifetime_ends_even_busy_sessions() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let id = open(&store, 1, T0);
        let mut now = T0;
        while now + 5_000 < T0 + 60_000 {
            now += 5_000;
            let Lookup::Live(r, cas) = store.lookup(&id, now, None) else {
                panic!("at {now}")
            };
            store.touch(&id, &r, cas, now);
        }
        assert_eq!(store.lookup(&id, T0 + 60_000, None), Lookup::Expired);
    }

    #[test]
    fn identity_binding() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.bind_identity = true;
        let store = Store::new(&shared, l);
        let mut rng = Rng::new(5);
        let r = store
            .reserve(T0, secret(1), Some(b"alice"), &mut rng.probes())
            .unwrap();
        store.activate(&r.id, T0, None);
        assert!(matches!(
            store.lookup(&r.id, T0, Some(b"alice")),
            Lookup::Live(..)
        ));
        assert_eq!(store.lookup(&r.id, T0, Some(b"bob")), Lookup::NotFound);
        assert_eq!(store.lookup(&r.id, T0, None), Lookup::NotFound);
        let raw = shared.get(&slot_key(r.id.slot)).0.unwrap();
        assert!(
            !raw.windows(5).any(|w| w == b"alice"),
            "the value itself is never stored"
        );
    }

    #[test]
    fn release_frees_only_pending_reservations() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let mut rng = Rng::new(3);
        let r = store
            .reserve(T0, secret(1), None, &mut rng.probes())
            .unwrap();
        assert!(store.release(&r.id));
        assert!(
            !store.activate(&r.id, T0, None),
            "released reservations cannot go live"
        );
        let live = open(&store, 2, T0);
        assert!(!store.release(&live), "a live session is not released");
    }

    #[test]
    fn sweep_reclaims_expired_sessions_one_step_per_period() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits());
        let a = open(&store, 1, T0);
        let _b = open(&store, 2, T0 + 5_000);
        let mut rng = Rng::new(8);
        let _pending = store
            .reserve(T0, secret(3), None, &mut rng.probes())
            .unwrap();
        let first = store.sweep(T0 + 10_000);
        assert_eq!(
            first,
            Sweep {
                scanned: 3,
                expired: 1,
                stale_pending: 1
            }
        );
        assert_eq!(
            store.sweep(T0 + 10_500),
            Sweep::default(),
            "not this period"
        );
        assert_eq!(
            store.lookup(&a, T0 + 10_600, None),
            Lookup::NotFound,
            "already reclaimed"
        );
        let later = store.sweep(T0 + 16_000);
        assert_eq!(later.expired, 1);
        let mut free = hint(&shared);
        free.sort_unstable();
        assert_eq!(free, vec![0, 1, 2], "every slot freed is in the hint, once");
        assert_eq!(
            shared.value_bytes(),
            4 + 12 + 3 * 4,
            "only the meta keys hold bytes"
        );
    }

    #[test]
    fn keys_track_peak_sessions_not_sessions_ever_created() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 1000;
        let store = Store::new(&shared, l);
        let mut rng = Rng::new(11);
        let mut open_ids = Vec::new();
        for round in 0..20_000u64 {
            let now = T0 + round;
            let r = store
                .reserve(now, secret((round % 250) as u8), None, &mut rng.probes())
                .unwrap();
            store.activate(&r.id, now, None);
            open_ids.push(r.id);
            if open_ids.len() > 50 {
                let old = open_ids.remove(0);
                assert!(matches!(store.end(&old, now), Ended::Ended(_)));
            }
        }
        let keys = shared.key_count();
        assert!(keys < 200, "{keys} keys for a peak of 51 live sessions");
    }

    #[test]
    fn create_only_write_cannot_overwrite_an_existing_key() {
        let shared = FakeShared::default();
        assert!(
            shared.set("k", b"a", CREATE_ONLY).is_ok(),
            "missing key: created"
        );
        assert_eq!(
            shared.set("k", b"b", CREATE_ONLY),
            Err(WriteError::CasMismatch)
        );
        assert_eq!(shared.get("k").0.as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn a_growing_table_costs_two_reads_per_reserve() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 10_000;
        let store = Store::new(&shared, l);
        let mut rng = Rng::new(4);
        for n in 0..2_000u32 {
            let (r, gets) = gets_of(&shared, || {
                store.reserve(T0, secret((n % 251) as u8), None, &mut rng.probes())
            });
            assert_eq!(r.unwrap().id.slot, n);
            // The hint (missing: nothing was ever freed) and the high-water mark.
            assert!(gets <= 2, "reserve {n} read {gets} keys");
        }
    }

    #[test]
    fn probing_then_growing_reads_the_high_water_mark_once() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 10_000;
        let store = Store::new(&shared, l);
        let mut rng = Rng::new(5);
        store
            .reserve(T0, secret(1), None, &mut rng.probes())
            .unwrap();
        for n in 1..200u32 {
            let (r, gets) = gets_of(&shared, || {
                store.reserve_probing(T0, secret(2), None, &mut rng.probes(), 1)
            });
            let r = r.unwrap();
            assert_eq!((r.id.slot, r.from), (n, Source::Grown));
            // The hint, the mark, one probed (live) slot: the mark is not read again to grow.
            assert_eq!(gets, 3, "reserve {n}");
        }
    }

    #[test]
    fn a_refused_reserve_at_the_cap_costs_a_bounded_number_of_reads() {
        let shared = FakeShared::default();
        let (store, ids) = full(&shared, 10_000, T0);
        let mut rng = Rng::new(6);
        for _ in 0..100 {
            let (r, gets) = gets_of(&shared, || {
                store.reserve(T0 + 1, secret(7), None, &mut rng.probes())
            });
            assert_eq!(r, None);
            // The hint, the high-water mark, CAP_PROBES random slots: 18, not 10,011.
            assert!(gets <= 20, "a refused reserve read {gets} keys");
        }
        // Worst case: a hint full of stale entries (slots taken again behind its back).
        let stale: Vec<u32> = (0..HINT_MAX as u32).collect();
        set_hint(&shared, &stale);
        let (r, gets) = gets_of(&shared, || {
            store.reserve(T0 + 1, secret(7), None, &mut rng.probes())
        });
        assert_eq!(r, None);
        // HINT_CLAIMS times the hint and a slot, the mark, CAP_PROBES slots.
        assert_eq!(gets, (2 * HINT_CLAIMS + 1) as u64 + u64::from(CAP_PROBES));
        assert_eq!(
            hint(&shared).len(),
            HINT_MAX - HINT_CLAIMS,
            "the stale entries tried are dropped"
        );
        for id in &ids {
            assert!(matches!(store.lookup(id, T0 + 1, None), Lookup::Live(..)));
        }
    }

    #[test]
    fn a_slot_freed_at_the_cap_is_found_by_the_next_reserve() {
        let shared = FakeShared::default();
        let (store, ids) = full(&shared, 5_000, T0);
        let mut rng = Rng::new(9);
        // Refused first: the hint is empty and every slot is live.
        assert_eq!(store.reserve(T0, secret(1), None, &mut rng.probes()), None);
        for (n, victim) in [17usize, 4_999, 0, 2_500].into_iter().enumerate() {
            let (ended, end_gets) = gets_of(&shared, || store.end(&ids[victim], T0));
            assert!(matches!(ended, Ended::Ended(_)));
            assert_eq!(end_gets, 2, "the slot and the hint");
            let (r, gets) = gets_of(&shared, || {
                store.reserve(T0, secret(n as u8), None, &mut rng.probes())
            });
            let r = r.unwrap();
            assert_eq!(r.id.slot, ids[victim].slot, "the freed slot, at once");
            assert_eq!(r.expired, 0);
            assert_eq!(gets, 2, "the hint and the slot");
            assert_eq!(store.reserve(T0, secret(1), None, &mut rng.probes()), None);
        }
        // A failed initialize's slot, likewise.
        assert!(matches!(store.end(&ids[1], T0), Ended::Ended(_)));
        let r = store
            .reserve(T0, secret(4), None, &mut rng.probes())
            .unwrap();
        assert!(store.release(&r.id));
        let again = store
            .reserve(T0, secret(5), None, &mut rng.probes())
            .unwrap();
        assert_eq!(again.id.slot, r.id.slot, "a released slot, at once");
        assert_eq!(store.high_water(), 5_000);
    }

    #[test]
    fn a_session_expired_by_lookup_frees_its_slot_for_the_next_reserve() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 3;
        let store = Store::new(&shared, l);
        let old = open(&store, 1, T0);
        let _b = open(&store, 2, T0 + 5_000);
        let _c = open(&store, 3, T0 + 5_000);
        assert_eq!(store.lookup(&old, T0 + 10_000, None), Lookup::Expired);
        assert_eq!(hint(&shared), vec![old.slot]);
        let mut rng = Rng::new(2);
        let r = store
            .reserve(T0 + 10_000, secret(4), None, &mut rng.probes())
            .unwrap();
        assert_eq!(r.id.slot, old.slot);
        assert_eq!(r.expired, 0, "counted by the lookup, not again here");
    }

    #[test]
    fn a_stale_hint_entry_is_never_double_claimed() {
        let shared = FakeShared::default();
        let (store, ids) = full(&shared, 8, T0);
        let mut rng = Rng::new(12);
        assert!(matches!(store.end(&ids[5], T0), Ended::Ended(_)));
        // Slot 2 and 6 were taken again behind the hint's back (slot 2 listed twice); the
        // hint is a stack, so they come first.
        set_hint(&shared, &[5, 2, 6, 2]);
        let before: Vec<_> = [2u32, 6]
            .iter()
            .map(|&slot| shared.get(&slot_key(slot)))
            .collect();
        let r = store
            .reserve(T0 + 1, secret(40), None, &mut rng.probes())
            .unwrap();
        assert_eq!(r.id.slot, 5, "the one really free slot");
        assert_eq!(r.expired, 0);
        let after: Vec<_> = [2u32, 6]
            .iter()
            .map(|&slot| shared.get(&slot_key(slot)))
            .collect();
        assert_eq!(before, after, "live slots untouched");
        assert!(hint(&shared).is_empty(), "stale entries dropped");
        assert_eq!(
            store.reserve(T0 + 1, secret(41), None, &mut rng.probes()),
            None
        );
        for (n, id) in ids.iter().enumerate() {
            let found = store.lookup(id, T0 + 2, None);
            assert_eq!(matches!(found, Lookup::Live(..)), n != 5, "slot {n}");
        }
        // A stale entry whose session has expired since: reclaimed, and reported.
        set_hint(&shared, &[3]);
        let r = store
            .reserve(T0 + 10_000, secret(42), None, &mut rng.probes())
            .unwrap();
        assert_eq!((r.id.slot, r.expired), (3, 1));
    }

    #[test]
    fn a_stale_hint_entry_from_a_race_is_never_double_claimed() {
        // Worker A ends the session in slot 1; before A adds slot 1 to the hint, worker B's
        // reserve (hint empty, table at its limit) probes slot 1 and takes it. A's entry is
        // then stale, and C's reserve must not take slot 1 from B.
        struct Racy<'a> {
            shared: &'a FakeShared,
            hook: std::cell::RefCell<Option<Box<dyn FnOnce() + 'a>>>,
        }
        impl SharedData for Racy<'_> {
            fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
                if key == FREE_KEY {
                    if let Some(hook) = self.hook.borrow_mut().take() {
                        hook();
                    }
                }
                self.shared.get(key)
            }
            fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
                self.shared.set(key, value, cas)
            }
        }
        let shared = FakeShared::default();
        let (store, ids) = full(&shared, 3, T0);
        let taken = std::rc::Rc::new(std::cell::Cell::new(None));
        let racy = Racy {
            shared: &shared,
            hook: std::cell::RefCell::new(None),
        };
        let taken_by_b = std::rc::Rc::clone(&taken);
        let store_b = Store::new(&shared, store.limits);
        *racy.hook.borrow_mut() = Some(Box::new(move || {
            let r = store_b.reserve(T0, secret(50), None, &mut || 1).unwrap();
            assert!(store_b.activate(&r.id, T0, None));
            taken_by_b.set(Some(r.id));
        }));
        let store_a = Store::new(&racy, store.limits);
        assert!(matches!(store_a.end(&ids[1], T0), Ended::Ended(_)));
        let b = taken.get().unwrap();
        assert_eq!(b.slot, 1, "B took the slot A freed");
        assert_eq!(hint(&shared), vec![1], "A's entry, stale");
        let mut rng = Rng::new(3);
        assert_eq!(
            store.reserve(T0, secret(51), None, &mut rng.probes()),
            None,
            "C finds nothing free"
        );
        assert!(matches!(store.lookup(&b, T0, None), Lookup::Live(..)));
    }

    #[test]
    fn the_sweep_refills_the_hint() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 1_000;
        let store = Store::new(&shared, l);
        let mut rng = Rng::new(13);
        let mut ids = Vec::new();
        for n in 0..400u32 {
            let now = if n % 4 == 0 { T0 } else { T0 + 5_000 };
            let r = store
                .reserve(now, secret((n % 251) as u8), None, &mut rng.probes())
                .unwrap();
            assert!(store.activate(&r.id, now, None));
            ids.push(r.id);
        }
        // Slots 1, 5, 9, ... freed behind the hint's back (as if their hint writes were
        // lost); slots 0, 4, 8, ... expire at T0 + 10 s.
        for slot in (1..400).step_by(4) {
            shared.set(&slot_key(slot), &[], None).unwrap();
        }
        assert!(hint(&shared).is_empty());
        let report = store.sweep(T0 + 10_000);
        assert_eq!(report.expired, 100);
        let held = hint(&shared);
        assert_eq!(held.len(), HINT_MAX, "filled to the brim");
        let mut unique = held.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), held.len(), "no duplicates");
        assert!(held.iter().all(|slot| slot % 4 <= 1), "only free slots");
        // Reserves now reuse them: no growth, two reads each.
        for n in 0..HINT_MAX {
            let (r, gets) = gets_of(&shared, || {
                store.reserve(T0 + 10_000, secret(n as u8), None, &mut rng.probes())
            });
            let r = r.unwrap();
            assert!(r.id.slot % 4 <= 1);
            assert_eq!(gets, 2);
        }
        assert_eq!(
            store.high_water(),
            400,
            "no new slot while free ones are known"
        );
        // The next pass finds the free slots the full hint left out.
        let report = store.sweep(T0 + 11_000);
        assert_eq!(report.expired, 0);
        assert_eq!(hint(&shared).len(), 200 - HINT_MAX);
        // A slot ended and then passed over by the sweep is listed once.
        let last = ids[399];
        assert!(matches!(store.end(&last, T0 + 11_000), Ended::Ended(_)));
        store.sweep(T0 + 12_000);
        let listed = hint(&shared).iter().filter(|&&s| s == last.slot).count();
        assert_eq!(listed, 1);
    }

    #[test]
    fn hint_entries_past_a_lowered_limit_are_dropped() {
        let shared = FakeShared::default();
        let (store, ids) = full(&shared, 8, T0);
        for id in &ids {
            assert!(matches!(store.end(id, T0), Ended::Ended(_)));
        }
        assert_eq!(hint(&shared).len(), 8);
        let mut l = limits();
        l.max_sessions = 4;
        let small = Store::new(&shared, l);
        let mut rng = Rng::new(14);
        let mut slots: Vec<u32> = (0..4)
            .map(|n| {
                small
                    .reserve(T0, secret(60 + n), None, &mut rng.probes())
                    .unwrap()
                    .id
                    .slot
            })
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, vec![0, 1, 2, 3]);
        assert_eq!(small.reserve(T0, secret(70), None, &mut rng.probes()), None);
        assert!(hint(&shared).is_empty());
    }

    #[test]
    fn the_hint_codec_ignores_junk() {
        assert_eq!(decode_hint(None), Vec::<u32>::new());
        assert_eq!(decode_hint(Some(&[1, 0, 0, 0, 2, 0, 0])), vec![1]);
        let long = encode_hint(&(0..1_000).collect::<Vec<u32>>());
        assert_eq!(decode_hint(Some(&long)).len(), HINT_MAX);
        assert_eq!(
            decode_hint(Some(&encode_hint(&[7, u32::MAX]))),
            vec![7, u32::MAX]
        );
    }

    fn pooled(
        store: &Store<&FakeShared>,
        pool: &mut SlotPool,
        n: u8,
        now: u64,
    ) -> Option<Reservation> {
        store.reserve_pooled(now, secret(n), None, &mut || 0, 0, pool)
    }

    #[test]
    fn pools_of_two_workers_take_distinct_blocks_and_write_once_per_reservation() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 1_000;
        let store = Store::new(&shared, l);
        let (mut a, mut b) = (SlotPool::new(), SlotPool::new());
        let mut slots = Vec::new();
        let mut writes = Vec::new();
        for n in 0..20u8 {
            let pool = if n % 2 == 0 { &mut a } else { &mut b };
            let before = shared.sets();
            let r = pooled(&store, pool, n, T0).unwrap();
            assert_eq!(r.from, Source::Grown);
            writes.push(shared.sets() - before);
            slots.push(r.id.slot);
        }
        let mut unique = slots.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 20, "{slots:?}");
        // A block per grant: 2 writes when the pool refills, 1 otherwise.
        assert_eq!(writes.iter().filter(|w| **w == 2).count(), 4, "{writes:?}");
        assert!(writes.iter().all(|w| (1..=2).contains(w)));
    }

    #[test]
    fn near_the_limit_a_grant_is_one_slot_so_no_worker_refuses_while_there_is_room() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits()); // 4 slots
        let (mut a, mut b) = (SlotPool::new(), SlotPool::new());
        assert!(pooled(&store, &mut a, 1, T0).is_some());
        assert_eq!(a.len(), 0, "room 4: a block of 1");
        for n in 2..5 {
            assert!(pooled(&store, &mut b, n, T0).is_some());
        }
        assert_eq!(pooled(&store, &mut a, 9, T0), None, "full");
    }

    #[test]
    fn returned_pools_give_their_slots_to_the_next_reservation() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 1_000;
        let store = Store::new(&shared, l);
        let mut a = SlotPool::new();
        let first = pooled(&store, &mut a, 1, T0).unwrap();
        assert_eq!(a.len(), 7, "the rest of its block");
        store.return_pool(&mut a);
        assert!(a.is_empty());
        assert_eq!(hint(&shared).len(), 7);
        // Another worker reuses them before growing the table.
        let mut b = SlotPool::new();
        let r = pooled(&store, &mut b, 2, T0).unwrap();
        assert_eq!(r.from, Source::Hint);
        assert_ne!(r.id.slot, first.id.slot);
        assert_eq!(store.high_water(), 8, "nothing new granted");
    }

    #[test]
    fn a_pooled_freed_slot_taken_meanwhile_is_skipped() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 1_000;
        let store = Store::new(&shared, l);
        let mut a = SlotPool::new();
        let ids: Vec<SessionId> = (0..3)
            .map(|n| {
                let r = pooled(&store, &mut a, n, T0).unwrap();
                assert!(store.activate(&r.id, T0, None));
                r.id
            })
            .collect();
        for id in &ids {
            assert!(matches!(store.end(id, T0), Ended::Ended(_)));
        }
        // Worker b takes all three freed slots into its pool; then an unpooled reservation
        // (another worker's probe, say) takes one of them behind its back.
        let mut b = SlotPool::new();
        let first = pooled(&store, &mut b, 10, T0).unwrap();
        assert_eq!(first.from, Source::Hint);
        assert_eq!(b.freed.len(), 2);
        let stolen = *b.freed.last().unwrap();
        assert!(matches!(
            store.try_claim(
                stolen,
                T0,
                &Record::decode(&shared.get(&slot_key(first.id.slot)).0.unwrap())
                    .unwrap()
                    .encode()
            ),
            Claim::Taken { .. }
        ));
        let next = pooled(&store, &mut b, 11, T0).unwrap();
        assert_ne!(
            next.id.slot, stolen,
            "the taken slot is not handed out twice"
        );
        assert_eq!(next.from, Source::Hint);
    }

    #[test]
    fn a_young_reservation_is_activated_with_one_write_and_no_read() {
        let shared = FakeShared::default();
        let store = Store::new(&shared, limits()); // idle 10 s
        let r = store.reserve(T0, secret(1), None, &mut || 0).unwrap();
        let (gets, sets) = (shared.gets(), shared.sets());
        assert!(store.activate_reserved(&r.id, &r.record, T0 + 8_000, Some("up")));
        assert_eq!((shared.gets() - gets, shared.sets() - sets), (0, 1));
        let Lookup::Live(live, _) = store.lookup(&r.id, T0 + 8_000, None) else {
            panic!("not live");
        };
        assert_eq!(live.upstream_id.as_deref(), Some("up"));
        assert_eq!((live.created_ms, live.last_seen_ms), (T0, T0 + 8_000));
    }

    #[test]
    fn an_old_reservation_taken_over_is_not_overwritten() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 1;
        let store = Store::new(&shared, l);
        let slow = store.reserve(T0, secret(1), None, &mut || 0).unwrap();
        // Its initialize outlives the idle timeout: another one takes the expired slot.
        let later = T0 + 10_001;
        let fast = store.reserve(later, secret(2), None, &mut || 0).unwrap();
        assert_eq!(fast.id.slot, slow.id.slot);
        assert!(!store.activate_reserved(&slow.id, &slow.record, later, None));
        assert!(store.activate_reserved(&fast.id, &fast.record, later, None));
        assert!(matches!(
            store.lookup(&fast.id, later, None),
            Lookup::Live(..)
        ));
        // Within the margin of the timeout, the compare-and-swap is used too.
        let edge = store.reserve(T0, secret(3), None, &mut || 0);
        assert_eq!(edge, None, "full");
        let (_, gets) = gets_of(&shared, || {
            store.activate_reserved(&fast.id, &fast.record, later + 9_500, None)
        });
        assert!(gets > 0, "read first");
    }

    #[test]
    fn at_the_limit_a_slot_left_in_another_workers_pool_is_taken() {
        let shared = FakeShared::default();
        let mut l = limits();
        l.max_sessions = 1_000;
        let store = Store::new(&shared, l);
        let mut a = SlotPool::new();
        let first = pooled(&store, &mut a, 1, T0).unwrap();
        assert_eq!((first.id.slot, a.len()), (0, 7));
        // The limit comes down to the mark (a configuration update): no room left to grant.
        l.max_sessions = 8;
        let small = Store::new(&shared, l);
        let mut b = SlotPool::new();
        let mut n = 0;
        let taken = small
            .reserve_pooled(
                T0,
                secret(2),
                None,
                &mut || {
                    n += 1;
                    n
                },
                0,
                &mut b,
            )
            .unwrap();
        assert_eq!(taken.from, Source::AtLimit);
        assert_ne!(taken.id.slot, 0);
        // The pool's owner finds it taken when it comes to it, and moves on.
        let mut mine = Vec::new();
        while let Some(r) = small.reserve_pooled(T0, secret(3), None, &mut || 0, 0, &mut a) {
            mine.push(r.id.slot);
            if a.is_empty() {
                break;
            }
        }
        assert!(!mine.contains(&taken.id.slot), "{mine:?} {taken:?}");
    }
}
