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

mod identities;
mod slots;
mod sweep;
mod worker;

pub use slots::SlotPool;
#[cfg(test)]
use slots::{decode_hint, encode_hint, Claim};
pub use sweep::Sweep;
pub use worker::{Local, MAX_PROBES, PROBE_EVERY};

/// The cas for a create-only write: a missing key accepts any cas, and an existing key's cas
/// is a counter that starts at 1 and would have to reach 2^32-1 to match.
pub(super) const CREATE_ONLY: Option<u32> = Some(u32::MAX);
/// Attempts at one compare-and-swap before giving up.
pub(super) const CAS_ATTEMPTS: usize = 32;
/// Most slot numbers the free hint holds (4 bytes each); a freed slot that finds it full is
/// left for the sweep to find again.
pub(super) const HINT_MAX: usize = 128;
/// Attempts at adding freed slots to the free hint: losing them only delays their reuse
/// until the sweep passes, so a busy hint is not fought over for long.
pub(super) const HINT_PUSH_ATTEMPTS: usize = 8;
/// Slots taken from the free hint that may turn out not to be free, per reservation.
pub(super) const HINT_CLAIMS: usize = 4;
/// Random slots probed for a free or expired one when the hint is empty and the table is at
/// its limit; then the reservation is refused. Bounded, so a flood of refused initializes
/// costs a fixed number of reads each.
pub(super) const CAP_PROBES: u32 = 16;
/// How much younger than the idle timeout a reservation must be to be activated without a
/// compare-and-swap (see [`Store::activate_reserved`]).
pub(super) const ACTIVATION_MARGIN_MS: u64 = 1000;
/// Time between two sweep steps, across all workers.
pub const SWEEP_PERIOD_MS: u64 = 1000;
/// How long the newest configuration of a store may go without a tick before another one
/// takes over its sweep ([`Store::sweeps_for`]).
pub const CONFIG_STALE_MS: u64 = 5 * SWEEP_PERIOD_MS;
/// Smallest sweep step, in slots.
pub(super) const SWEEP_MIN_CHUNK: u32 = 1024;
/// A full pass over the table takes at most this many sweep steps.
pub(super) const SWEEP_STEPS_PER_PASS: u32 = 30;

pub(super) const HIGH_WATER_KEY: &[u8] = b"mcps/hw";
pub(super) const SWEEP_KEY: &[u8] = b"mcps/sw";
pub(super) const FREE_KEY: &[u8] = b"mcps/free";
pub(super) const CONFIG_KEY: &[u8] = b"mcps/cfg";

/// The shared-data key of a slot.
pub fn slot_key(slot: u32) -> SlotKey {
    // Not `format!` nor a `String`: an initialize builds this key twice, and the formatting
    // machinery and the allocation cost more than the rest of the store's write (make
    // bench's native profile).
    let mut key = [0u8; 13];
    let (prefix, digits) = key.split_at_mut(SLOT_PREFIX.len());
    prefix.copy_from_slice(&SLOT_PREFIX);
    for (place, shift) in digits.iter_mut().zip((0..8).rev()) {
        *place = crate::session_id::hex_digit((slot >> (4 * shift)) as u8);
    }
    SlotKey(key)
}

/// The slot whose key [`slot_key`] spells as `key`, if it is one: `slot_key`'s inverse, so
/// that a table may keep slots' keys as places (`store::memory`). Another spelling of the same
/// number (upper case, other widths) is not a slot's key.
pub fn slot_of_key(key: &[u8]) -> Option<u32> {
    crate::session_id::decode_slot(key.strip_prefix(&SLOT_PREFIX[..])?)
}

/// What every slot's key begins with (then the slot in eight hex digits).
const SLOT_PREFIX: [u8; 5] = *b"mcps/";

/// A slot's key, `mcps/` and the slot in eight lowercase hex digits, on the stack. Keys are
/// bytes ([`SharedData`]): a `str` of it would check the thirteen bytes for UTF-8 each time it
/// is used, twice an initialize.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SlotKey([u8; 13]);

impl std::ops::Deref for SlotKey {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SlotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
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

    /// Turns a reservation into a live session once the upstream answered `initialize` with a
    /// result, remembering the upstream's own session ID. False if the reservation is gone.
    pub fn activate(&self, id: &SessionId, now_ms: u64, upstream_id: Option<&str>) -> bool {
        self.activate_with(id, now_ms, upstream_id, None)
    }

    /// [`Store::activate`], keeping the upstream host that answered (`affinity_header`) too.
    fn activate_with(
        &self,
        id: &SessionId,
        now_ms: u64,
        upstream_id: Option<&str>,
        upstream_host: Option<&str>,
    ) -> bool {
        self.update(id, |record| {
            if record.state != State::Pending {
                return None;
            }
            record.state = State::Live;
            record.last_seen_ms = now_ms;
            record.upstream_id = upstream_id.map(str::to_owned);
            if upstream_host.is_some() {
                record.upstream_host = upstream_host.map(str::to_owned);
            }
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
            let host = pending.upstream_host.as_deref();
            return self.activate_with(id, now_ms, upstream_id, host);
        }
        let live = pending.activated(now_ms, upstream_id);
        self.shared
            .set(&slot_key(id.slot), &live.encoded(), None)
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
                    self.forget_identity(&record);
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
            .set(&slot_key(id.slot), &fresh.encoded(), Some(cas))
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

    pub(super) fn is_expired(&self, record: &Record, now_ms: u64) -> bool {
        record.expired(now_ms, self.limits.idle_ms, self.limits.lifetime_ms)
    }

    /// Read-modify-write of the record `id` names; `change` returns `None` to leave it alone.
    pub(super) fn update(
        &self,
        id: &SessionId,
        mut change: impl FnMut(&mut Record) -> Option<()>,
    ) -> Option<()> {
        self.rewrite(id, |record| {
            let mut changed = record.clone();
            change(&mut changed)?;
            Some(changed.encoded())
        })
        .map(|_| ())
    }

    /// Empties the slot `id` names when `approve` accepts its record, and offers the slot to
    /// the free hint; returns the record.
    pub(super) fn free_if(
        &self,
        id: &SessionId,
        mut approve: impl FnMut(&Record) -> bool,
    ) -> Option<Record> {
        let freed = self.rewrite(id, |record| approve(record).then(Vec::new))?;
        self.forget_identity(&freed);
        self.hint_free(&[id.slot]);
        Some(freed)
    }

    /// The compare-and-swap loop under `update` and `free_if`: reads the record `id` names
    /// (its secret must match), asks `next` for the bytes to write in its place (`None`: leave
    /// it), and retries when another worker wrote first. Returns the record that was replaced.
    pub(super) fn rewrite<V: std::ops::Deref<Target = [u8]>>(
        &self,
        id: &SessionId,
        mut next: impl FnMut(&Record) -> Option<V>,
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

pub(super) fn read_u32(bytes: &Option<Vec<u8>>) -> u32 {
    bytes
        .as_deref()
        .and_then(|b| b.get(..4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

#[cfg(test)]
mod tests;
