//! One worker's side of the local store, and the one place that runs a [`StoreOp`] on it.

use super::*;
use crate::record::identity_digest;

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
            StoreOp::End { id, now_ms, .. } => StoreResult::Ended(store.end(&id, now_ms)),
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
                // A place among the caller's sessions first (given back if no slot is found).
                let counted = match (store.limits.per_identity, store.limits.bind_identity) {
                    (Some(limit), true) => {
                        let digest = identity_digest(identity.as_deref());
                        if !store.take_identity_place(&digest, limit) {
                            return StoreResult::IdentityLimit;
                        }
                        Some(digest)
                    }
                    _ => None,
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
                } else if let Some(digest) = &counted {
                    store.give_identity_place(digest);
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
            StoreOp::Release { id, .. } => StoreResult::Done(store.release(&id)),
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
