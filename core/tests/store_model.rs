//! Model test of the session store under interleaved workers.
//!
//! Envoy runs one VM per worker over one shared-data map. Here, simulated workers run store
//! operations over [`FakeShared`] (the host's exact CAS semantics, including "a write to a
//! missing key succeeds whatever the cas"); before any host call of one operation, another
//! worker may run a whole operation of its own, which is exactly the window a real race
//! opens. The reference model of which sessions exist (`testkit::StoreModel`, which the
//! store fuzz target checks against too) is checked after every step, over thousands of
//! seeded random schedules. The two workers (the one in flight and the one that preempts it)
//! reserve through pools of their own (`SlotPool`: blocks of fresh slots, batches of freed
//! ones, slots taken from another pool at the limit), and activate young reservations with
//! the unconditional write: a clobbered session shows up as a live session not found. At the
//! end of each schedule, a table filled to its limit must hand out a slot freed by DELETE to
//! the very next initialize.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use mcp_session_core::record::Record;
use mcp_session_core::session_id::SessionId;
use mcp_session_core::store::local::{slot_key, SlotPool, Store};
use mcp_session_core::store::{Ended, Limits, Lookup, SharedData, WriteError};
use mcp_session_core::testkit::{live_records, FakeShared, Known, KnownState, Rng, StoreModel, T0};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

const IDLE: u64 = 2_000;
const LIFETIME: u64 = 7_000;
const MAX: u32 = 6;

fn limits() -> Limits {
    Limits {
        idle_ms: IDLE,
        lifetime_ms: LIFETIME,
        max_sessions: MAX,
        bind_identity: false,
        per_identity: None,
    }
}

/// Reservations answered by their owner only: (slot, secret) to the pending record, and
/// whether the owner's answer is in flight.
type Owned = HashMap<(u32, [u8; 16]), (Record, bool)>;

struct World {
    shared: FakeShared,
    now: Cell<u64>,
    rng: RefCell<Rng>,
    model: RefCell<StoreModel>,
    /// Preemption depth: a nested operation runs to completion without being preempted.
    depth: Cell<u32>,
    preempt_percent: u64,
    /// The session the operation in flight (end, release, lookup) may free, at which depth,
    /// and what the model held for it when that operation emptied its slot. `end` and friends
    /// go on writing after that (the free hint), and a worker preempting them then must
    /// already see it gone.
    freeing: Cell<Option<(SessionId, u32)>>,
    freed_from: Cell<Option<KnownState>>,
    /// How often each outcome came up, so the test can show it reached them all.
    tally: RefCell<BTreeMap<&'static str, u64>>,
    /// The slot pools of the worker in flight (0) and of the one preempting it (1).
    pools: [RefCell<SlotPool>; 2],
    /// The reservations answered as the filter answers them: only by the exchange that made
    /// them, once, and activated with the unconditional write of their pending record while
    /// young. The flag: that answer is in flight (no other worker may answer it meanwhile,
    /// as no other exchange knows its secret). The others are answered by whichever worker
    /// picks them, possibly two at once (the compare-and-swap decides).
    reserved: RefCell<Owned>,
}

fn count(world: &Rc<World>, outcome: &'static str) {
    *world.tally.borrow_mut().entry(outcome).or_insert(0) += 1;
}

/// The shared data as one worker sees it: before each host call, another worker may run.
struct Worker<'a>(&'a Rc<World>);

impl SharedData for Worker<'_> {
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        maybe_preempt(self.0);
        self.0.shared.get(key)
    }
    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        maybe_preempt(self.0);
        let result = self.0.shared.set(key, value, cas);
        if result.is_ok() && value.is_empty() {
            freed(self.0, key);
        }
        result
    }
}

/// The store just emptied `key`: if the operation in flight did (not one that preempted it)
/// and it is the slot of the session that operation may free, the model forgets the session
/// now, not when the operation returns.
fn freed(world: &Rc<World>, key: &[u8]) {
    let Some((id, depth)) = world.freeing.get() else {
        return;
    };
    if depth == world.depth.get() && &*slot_key(id.slot) == key && world.freed_from.get().is_none()
    {
        world.freed_from.set(world.model.borrow_mut().gone(&id));
    }
}

/// Runs `call`, an operation that may free the session `id`; returns its result and, if it
/// freed the session, the model's state for it just before.
fn freeing<T>(
    world: &Rc<World>,
    id: SessionId,
    call: impl FnOnce() -> T,
) -> (T, Option<KnownState>) {
    let saved = (
        world.freeing.replace(Some((id, world.depth.get()))),
        world.freed_from.replace(None),
    );
    let out = call();
    let prior = world.freed_from.get();
    world.freeing.set(saved.0);
    world.freed_from.set(saved.1);
    (out, prior)
}

fn maybe_preempt(world: &Rc<World>) {
    if world.depth.get() > 0 {
        return;
    }
    let roll = world.rng.borrow_mut().below(100);
    if roll < world.preempt_percent {
        count(world, "preempted");
        world.depth.set(1);
        step(world);
        world.depth.set(0);
    }
}

fn store(world: &Rc<World>) -> Store<Worker<'_>> {
    Store::new(Worker(world), limits())
}

fn pick(world: &Rc<World>) -> Option<Known> {
    let which = world.rng.borrow_mut().next_u64();
    world.model.borrow().pick(which)
}

/// The model's view of a session now (another worker may have changed it meanwhile).
fn current(world: &Rc<World>, id: &SessionId) -> Known {
    world.model.borrow().get(id).unwrap().clone()
}

fn may_be_expired(world: &Rc<World>, k: &Known, now: u64) -> bool {
    world.model.borrow().may_be_expired(k, now)
}

/// The store reported `id` expired at `now`, live (`prior`) until the operation freed it: the
/// model agrees it may have expired by then, and counts it.
fn expired(world: &Rc<World>, id: &SessionId, prior: Option<KnownState>, now: u64) {
    let k = current(world, id);
    assert!(
        prior == Some(KnownState::Live) && may_be_expired(world, &k, now),
        "{k:?} was {prior:?}"
    );
    world.model.borrow_mut().ended(id);
}

/// The store found no `id`: if the model holds it live, it may have expired by the latest time
/// any worker has seen, and someone else reclaimed it (counted there).
fn not_found(world: &Rc<World>, id: &SessionId) {
    let k = current(world, id);
    let latest = world.now.get();
    assert!(
        k.state != KnownState::Live || may_be_expired(world, &k, latest),
        "live session {k:?} not found at {latest}"
    );
    if k.state == KnownState::Live {
        world.model.borrow_mut().gone(id);
    }
}

/// One operation by some worker.
fn step(world: &Rc<World>) {
    let op = world.rng.borrow_mut().below(100);
    let now = world.now.get();
    let s = store(world);
    match op {
        0..=24 => {
            // initialize: reserve, and (usually) activate at once; through this worker's pool
            // (with a few probes) half of the time.
            let mut secret = [0u8; 16];
            world.rng.borrow_mut().fill(&mut secret);
            let mut probe_rng = Rng::new(world.rng.borrow_mut().next_u64());
            let pooled = world.rng.borrow_mut().below(2) == 0;
            let probes = world.rng.borrow_mut().below(3) as u32;
            let reservation = if pooled {
                let worker = world.depth.get().min(1) as usize;
                let mut pool = world.pools[worker].borrow_mut();
                s.reserve_pooled(
                    now,
                    secret,
                    None,
                    &mut probe_rng.probes(),
                    probes,
                    &mut pool,
                )
            } else {
                s.reserve(now, secret, None, &mut probe_rng.probes())
            };
            let Some(r) = reservation else {
                count(world, "reserve refused");
                return;
            };
            if pooled {
                count(world, "reserve pooled");
            }
            if world.rng.borrow_mut().below(2) == 0 {
                world
                    .reserved
                    .borrow_mut()
                    .insert((r.id.slot, r.id.secret), (r.record.clone(), false));
            }
            count(world, "reserve");
            if r.expired > 0 {
                count(world, "reserve reclaimed an expired session");
            }
            // Whatever held this slot before must have been gone or legitimately expired.
            let displaced = world
                .model
                .borrow_mut()
                .reserved(r.id, None, now, r.expired);
            // A nested operation may have freed the old holder at a later time than this
            // one's `now`: judge by the latest time any worker has seen.
            let latest = world.now.get();
            for k in displaced {
                assert!(
                    k.state == KnownState::Pending && latest.saturating_sub(k.last_use_ms) >= IDLE
                        || may_be_expired(world, &k, latest),
                    "slot {} reused while {:?} still valid at {now}; store now {:?}; reservation {:?}",
                    r.id.slot,
                    k,
                    world.shared.get(&slot_key(r.id.slot)).0.and_then(|b| Record::decode(&b)),
                    r
                );
            }
        }
        25..=34 => {
            // the initialize is answered: activate (or, sometimes, it failed: release).
            let Some(k) = pick(world) else { return };
            let id = k.id;
            if k.state != KnownState::Pending {
                return;
            }
            // A reservation with a single owner: only that owner answers it, once.
            let owned = {
                let mut reserved = world.reserved.borrow_mut();
                match reserved.get_mut(&(id.slot, id.secret)) {
                    Some((_, true)) => return, // its owner is answering it right now
                    Some((record, in_flight)) => {
                        *in_flight = true;
                        Some(record.clone())
                    }
                    None => None,
                }
            };
            let answer = if world.rng.borrow_mut().below(5) == 0 {
                let (released, prior) = freeing(world, id, || s.release(&id));
                if released {
                    count(world, "release");
                    assert_eq!(prior, Some(KnownState::Pending), "released {k:?}");
                }
                None
            } else if let Some(record) = &owned {
                count(world, "activate reserved");
                Some(s.activate_reserved(&id, record, now, None))
            } else {
                Some(s.activate(&id, now, None))
            };
            if owned.is_some() {
                world.reserved.borrow_mut().remove(&(id.slot, id.secret));
            }
            let Some(activated) = answer else { return };
            if activated {
                count(world, "activate");
                world.model.borrow_mut().activated(&id, now);
            } else {
                count(world, "activate refused");
                // Only a stale reservation, reclaimed by a sweep or a later initialize, can
                // fail to activate.
                // (The model lets two workers answer one initialize; the loser fails here.)
                let latest = world.now.get();
                let k = current(world, &id);
                match k.state {
                    KnownState::Live | KnownState::Gone => {}
                    KnownState::Pending => {
                        assert!(
                            may_be_expired(world, &k, latest),
                            "activate failed for {k:?} at {latest}"
                        );
                        world.model.borrow_mut().gone(&id);
                    }
                }
            }
        }
        35..=69 => {
            // a request on a session: look up, touch.
            let Some(Known { id, .. }) = pick(world) else {
                return;
            };
            let (found, prior) = freeing(world, id, || s.lookup(&id, now, None));
            match found {
                Lookup::Live(record, cas) => {
                    count(world, "lookup live");
                    let k = current(world, &id);
                    assert_eq!(k.state, KnownState::Live, "found {k:?} live at {now}");
                    assert!(
                        !world.model.borrow().must_be_expired(&k, now),
                        "found {k:?} live at {now}, after expiry"
                    );
                    s.touch(&id, &record, cas, now);
                    world.model.borrow_mut().used(&id, now);
                }
                Lookup::Expired => {
                    count(world, "lookup expired");
                    expired(world, &id, prior, now);
                }
                Lookup::NotFound => {
                    count(world, "lookup not found");
                    not_found(world, &id);
                }
            }
        }
        70..=79 => {
            // DELETE.
            let Some(k) = pick(world) else { return };
            let id = k.id;
            let (ended, prior) = freeing(world, id, || s.end(&id, now));
            match ended {
                Ended::Ended(_) => {
                    count(world, "end");
                    assert_eq!(prior, Some(KnownState::Live), "{k:?}");
                    world.model.borrow_mut().ended(&id);
                }
                Ended::Expired => {
                    count(world, "end expired");
                    expired(world, &id, prior, now);
                }
                Ended::EndedEarlier => panic!("the local store never retries an end"),
                Ended::NotFound => {
                    count(world, "end not found");
                    not_found(world, &id);
                }
            }
        }
        80..=84 => {
            let Some(k) = pick(world) else { return };
            if s.mark_initialized(&k.id, now) {
                count(world, "mark initialized");
                assert_eq!(current(world, &k.id).state, KnownState::Live, "{k:?}");
                // The upstream's answer to a request is a use of the session too.
                world.model.borrow_mut().used(&k.id, now);
            }
        }
        85 => {
            // A configuration goes away: its worker hands its pool back.
            let worker = world.depth.get().min(1) as usize;
            if let Ok(mut pool) = world.pools[worker].try_borrow_mut() {
                if !pool.is_empty() {
                    count(world, "pool returned");
                }
                s.return_pool(&mut pool);
            }
        }
        86..=92 => {
            let report = s.sweep(now);
            if report.expired > 0 {
                count(world, "sweep expired");
            }
            world.model.borrow_mut().swept(report.expired);
        }
        _ => {
            // Time moves between operations, not inside one: a real worker's host calls
            // are microseconds apart, so a preempting worker sees the same clock.
            if world.depth.get() == 0 {
                let dt = world.rng.borrow_mut().below(900);
                world.now.set(now + dt);
            }
        }
    }
}

/// Runs one schedule; returns how often each outcome came up.
fn run(seed: u64, steps: usize, preempt_percent: u64) -> BTreeMap<&'static str, u64> {
    let world = Rc::new(World {
        shared: FakeShared::default(),
        now: Cell::new(T0),
        rng: RefCell::new(Rng::new(seed)),
        model: RefCell::new(StoreModel::new(limits())),
        depth: Cell::new(0),
        preempt_percent,
        freeing: Cell::new(None),
        freed_from: Cell::new(None),
        tally: RefCell::new(BTreeMap::new()),
        // Spread 1: small tables hand out whole blocks, so pools hold most of the table.
        pools: [0, 1].map(|_| RefCell::new(SlotPool::with(SlotPool::BLOCK, 1))),
        reserved: RefCell::new(HashMap::new()),
    });
    for _ in 0..steps {
        step(&world);
    }
    let high = store(&world).high_water();
    assert!(high <= MAX, "seed {seed}: {high} slots for max {MAX}");
    assert!(
        world.shared.key_count() <= MAX as usize + 3,
        "seed {seed}: keys leak (the slots, the high-water mark, the sweep cursor, the hint)"
    );
    assert_eq!(
        world.model.borrow().live_gauge,
        live_records(&world.shared, high),
        "seed {seed}: the live gauge drifted from the store"
    );
    // Far in the future, sweeps reclaim everything and the gauge returns to zero. The workers'
    // configurations go away first, handing their pools back.
    world.depth.set(1);
    let s = store(&world);
    for pool in &world.pools {
        s.return_pool(&mut pool.borrow_mut());
    }
    let mut later = world.now.get() + LIFETIME + IDLE;
    for _ in 0..4 {
        later += 1_000;
        let report = s.sweep(later);
        world.model.borrow_mut().swept(report.expired);
    }
    assert_eq!(
        world.model.borrow().live_gauge,
        0,
        "seed {seed}: gauge after the final sweeps"
    );
    assert_eq!(live_records(&world.shared, high), 0, "seed {seed}");

    // Whatever the schedule left in the free hint (stale or lost entries), the sweeps have
    // listed every free slot: the table fills to its limit, and at the limit a slot freed by
    // DELETE goes to the very next initialize.
    let mut probe_rng = Rng::new(!seed);
    let mut probe = probe_rng.probes();
    let mut open = Vec::new();
    for n in 0..MAX {
        let mut secret = [0xA5; 16];
        secret[..4].copy_from_slice(&n.to_le_bytes());
        let r = s
            .reserve(later, secret, None, &mut probe)
            .unwrap_or_else(|| panic!("seed {seed}: no slot for session {n} of {MAX}"));
        assert_eq!(r.expired, 0, "seed {seed}");
        assert!(s.activate(&r.id, later, None), "seed {seed}");
        open.push(r.id);
    }
    assert_eq!(s.high_water(), MAX, "seed {seed}");
    assert_eq!(
        s.reserve(later, [0x5A; 16], None, &mut probe),
        None,
        "seed {seed}: full"
    );
    for round in 0..3u8 {
        let victim = open.remove(world.rng.borrow_mut().below(open.len() as u64) as usize);
        assert!(
            matches!(s.end(&victim, later), Ended::Ended(_)),
            "seed {seed}"
        );
        let r = s
            .reserve(later, [0x60 + round; 16], None, &mut probe)
            .unwrap_or_else(|| panic!("seed {seed}: the slot freed at the limit was not found"));
        assert_eq!(r.id.slot, victim.slot, "seed {seed}");
        assert!(s.activate(&r.id, later, None), "seed {seed}");
        open.push(r.id);
        assert_eq!(
            s.reserve(later, [0x5B; 16], None, &mut probe),
            None,
            "seed {seed}"
        );
    }
    world.tally.take()
}

/// Every outcome the schedules must reach, with the fewest times each must come up over all
/// of them (a tenth or less of what they reach).
const REACHED: [(&str, u64); 18] = [
    ("preempted", 100_000),
    ("reserve", 10_000),
    ("reserve pooled", 5_000),
    ("activate reserved", 1_000),
    ("pool returned", 500),
    ("reserve refused", 50_000),
    ("reserve reclaimed an expired session", 300),
    ("release", 1_000),
    ("activate", 5_000),
    ("activate refused", 40),
    ("lookup live", 10_000),
    ("lookup expired", 60),
    ("lookup not found", 50_000),
    ("end", 4_000),
    ("end expired", 20),
    ("end not found", 20_000),
    ("mark initialized", 2_000),
    ("sweep expired", 100),
];

#[test]
fn random_schedules_keep_the_store_consistent() {
    let mut schedules = 0;
    let mut tally = BTreeMap::new();
    let mut add = |counts: BTreeMap<&'static str, u64>| {
        for (outcome, n) in counts {
            *tally.entry(outcome).or_insert(0) += n;
        }
    };
    for seed in 1..=3_000u64 {
        add(run(seed, 300, 30));
        schedules += 1;
    }
    for seed in 10_000..10_500u64 {
        add(run(seed, 300, 90)); // nearly every host call preempted
        schedules += 1;
    }
    println!("{schedules} schedules run: {tally:?}");
    for (outcome, least) in REACHED {
        let n = tally.get(outcome).copied().unwrap_or(0);
        assert!(n >= least, "{outcome}: {n} times, fewer than {least}");
    }
}
