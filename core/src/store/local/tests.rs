use super::*;
use crate::testkit::{FakeShared, Rng, T0};

fn limits() -> Limits {
    Limits {
        idle_ms: 10_000,
        lifetime_ms: 60_000,
        max_sessions: 4,
        bind_identity: false,
        per_identity: None,
    }
}

/// [`limits`] with room for `max` sessions.
fn capped(max: u32) -> Limits {
    Limits {
        max_sessions: max,
        ..limits()
    }
}

fn secret(n: u8) -> [u8; SECRET_LEN] {
    [n; SECRET_LEN]
}

/// Reserves `secret(n)` at `now` for no identity, probing with `rng`.
fn reserve(store: &Store<&FakeShared>, now: u64, n: u8, rng: &mut Rng) -> Option<Reservation> {
    store.reserve(now, secret(n), None, &mut rng.probes())
}

/// Opens session `secret(n)` at `now`: reserved, then activated.
fn open_with(store: &Store<&FakeShared>, n: u8, now: u64, rng: &mut Rng) -> SessionId {
    let r = reserve(store, now, n, rng).unwrap();
    assert!(store.activate(&r.id, now, None));
    r.id
}

/// Whether a lookup at `now`, for no identity, finds `id` live.
fn is_live(store: &Store<&FakeShared>, id: &SessionId, now: u64) -> bool {
    matches!(store.lookup(id, now, None), Lookup::Live(..))
}

/// Looks `id` up at `now`, as a request does (it must be live), and touches it: whether
/// that wrote.
fn touched(store: &Store<&FakeShared>, id: &SessionId, now: u64) -> bool {
    let Lookup::Live(record, cas) = store.lookup(id, now, None) else {
        panic!("{id:?} not live at {now}")
    };
    store.touch(id, &record, cas, now)
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
    let store = Store::new(shared, capped(max));
    let mut rng = Rng::new(21);
    let ids = (0..max)
        .map(|n| open_with(&store, (n % 251) as u8, now, &mut rng))
        .collect();
    assert_eq!(store.high_water(), max);
    (store, ids)
}

/// A store of [`limits`] with one session open, opened at `T0`.
fn one_open(shared: &FakeShared) -> (Store<&FakeShared>, SessionId) {
    let store = Store::new(shared, limits());
    let id = open(&store, 1, T0);
    (store, id)
}

/// [`open_with`], probing with a generator of its own.
fn open(store: &Store<&FakeShared>, n: u8, now: u64) -> SessionId {
    open_with(store, n, now, &mut Rng::new(u64::from(n) + 7))
}

#[test]
fn probing_before_growing_reclaims_expired_sessions_the_sweep_has_not_reached() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, limits());
    let mut rng = Rng::new(7);
    for n in 0..3 {
        reserve(&store, T0, n, &mut rng).unwrap();
    }
    let later = T0 + limits().idle_ms; // all three expired, none swept
    let without = reserve(&store, later, 9, &mut rng).unwrap();
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
    assert!(store.sweeps_for(1, T0), "nothing recorded yet: 1 takes it");
    assert!(!store.sweeps_for(2, T0), "and 2 does not, while 1 ticks");
    assert!(store.adopt_configuration(2, T0));
    assert!(!store.sweeps_for(1, T0), "the old configuration stops");
    assert!(store.sweeps_for(2, T0));
    assert!(store.adopt_configuration(1, T0), "a rollback takes it back");
    assert!(store.sweeps_for(1, T0) && !store.sweeps_for(2, T0));
    // The newest keeps its place as long as it ticks.
    let mut now = T0;
    for _ in 0..20 {
        now += SWEEP_PERIOD_MS;
        assert!(store.sweeps_for(1, now) && !store.sweeps_for(2, now));
    }
}

/// The defect the review found: Envoy builds an update's configuration before it decides
/// to reject it, and the rejected one, recorded as the newest, never ticked again; the one
/// still serving took itself for an old one and did not sweep, so nothing ever did.
#[test]
fn a_configuration_that_stopped_ticking_hands_the_sweep_over() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, limits());
    assert!(store.adopt_configuration(1, T0));
    assert!(store.adopt_configuration(2, T0 + 10)); // built, then dropped: no tick
    let mut now = T0 + 10;
    while now < T0 + 10 + CONFIG_STALE_MS {
        assert!(!store.sweeps_for(1, now), "{now}");
        now += SWEEP_PERIOD_MS / 2;
    }
    assert!(store.sweeps_for(1, now), "1 takes over");
    assert!(!store.sweeps_for(3, now), "and holds it against others");
    assert!(store.sweeps_for(1, now + CONFIG_STALE_MS));
    // A value written before the tick was recorded (the token alone) is taken over at once.
    shared.set(CONFIG_KEY, &7u64.to_le_bytes(), None).unwrap();
    assert!(store.sweeps_for(1, now) && !store.sweeps_for(7, now));
}

#[test]
fn session_lifecycle() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, limits());
    let mut rng = Rng::new(1);
    let r = reserve(&store, T0, 1, &mut rng).unwrap();
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
    let (store, id) = one_open(&shared);
    let mut guess = id;
    guess.secret[15] ^= 1;
    assert_eq!(store.lookup(&guess, T0, None), Lookup::NotFound);
    assert_eq!(store.end(&guess, T0), Ended::NotFound);
    let mut other_slot = id;
    other_slot.slot = 3;
    assert_eq!(store.lookup(&other_slot, T0, None), Lookup::NotFound);
    other_slot.slot = u32::MAX;
    assert_eq!(store.lookup(&other_slot, T0, None), Lookup::NotFound);
    assert!(is_live(&store, &id, T0), "still there");
}

#[test]
fn capacity_is_enforced_and_slots_are_reused() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, limits());
    let ids: Vec<_> = (1..=4).map(|n| open(&store, n, T0)).collect();
    let mut rng = Rng::new(99);
    assert_eq!(reserve(&store, T0, 9, &mut rng), None, "full");
    assert!(matches!(store.end(&ids[2], T0), Ended::Ended(_)));
    let r = reserve(&store, T0, 9, &mut rng).unwrap();
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
    let (store, id) = one_open(&shared);
    assert!(is_live(&store, &id, T0 + 9_999));
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
    let (store, id) = one_open(&shared);
    assert!(
        !touched(&store, &id, T0 + 100),
        "within the touch interval: no write"
    );
    assert!(touched(&store, &id, T0 + 9_000));
    assert!(is_live(&store, &id, T0 + 18_999));
    assert_eq!(store.lookup(&id, T0 + 19_000, None), Lookup::Expired);
}

#[test]
fn absolute_lifetime_ends_even_busy_sessions() {
    let shared = FakeShared::default();
    let (store, id) = one_open(&shared);
    let mut now = T0;
    while now + 5_000 < T0 + 60_000 {
        now += 5_000;
        touched(&store, &id, now);
    }
    assert_eq!(store.lookup(&id, T0 + 60_000, None), Lookup::Expired);
}

#[test]
fn identity_binding() {
    let shared = FakeShared::default();
    let store = Store::new(
        &shared,
        Limits {
            bind_identity: true,
            ..limits()
        },
    );
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
    let r = reserve(&store, T0, 1, &mut rng).unwrap();
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
    let _pending = reserve(&store, T0, 3, &mut rng).unwrap();
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
    let store = Store::new(&shared, capped(1000));
    let mut rng = Rng::new(11);
    let mut open_ids = Vec::new();
    for round in 0..20_000u64 {
        let now = T0 + round;
        let r = reserve(&store, now, (round % 250) as u8, &mut rng).unwrap();
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
        shared.set(b"k", b"a", CREATE_ONLY).is_ok(),
        "missing key: created"
    );
    assert_eq!(
        shared.set(b"k", b"b", CREATE_ONLY),
        Err(WriteError::CasMismatch)
    );
    assert_eq!(shared.get(b"k").0.as_deref(), Some(&b"a"[..]));
}

#[test]
fn a_growing_table_costs_two_reads_per_reserve() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, capped(10_000));
    let mut rng = Rng::new(4);
    for n in 0..2_000u32 {
        let (r, gets) = gets_of(&shared, || reserve(&store, T0, (n % 251) as u8, &mut rng));
        assert_eq!(r.unwrap().id.slot, n);
        // The hint (missing: nothing was ever freed) and the high-water mark.
        assert!(gets <= 2, "reserve {n} read {gets} keys");
    }
}

#[test]
fn probing_then_growing_reads_the_high_water_mark_once() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, capped(10_000));
    let mut rng = Rng::new(5);
    reserve(&store, T0, 1, &mut rng).unwrap();
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
        let (r, gets) = gets_of(&shared, || reserve(&store, T0 + 1, 7, &mut rng));
        assert_eq!(r, None);
        // The hint, the high-water mark, CAP_PROBES random slots: 18, not 10,011.
        assert!(gets <= 20, "a refused reserve read {gets} keys");
    }
    // Worst case: a hint full of stale entries (slots taken again behind its back).
    let stale: Vec<u32> = (0..HINT_MAX as u32).collect();
    set_hint(&shared, &stale);
    let (r, gets) = gets_of(&shared, || reserve(&store, T0 + 1, 7, &mut rng));
    assert_eq!(r, None);
    // HINT_CLAIMS times the hint and a slot, the mark, CAP_PROBES slots.
    assert_eq!(gets, (2 * HINT_CLAIMS + 1) as u64 + u64::from(CAP_PROBES));
    assert_eq!(
        hint(&shared).len(),
        HINT_MAX - HINT_CLAIMS,
        "the stale entries tried are dropped"
    );
    for id in &ids {
        assert!(is_live(&store, id, T0 + 1));
    }
}

#[test]
fn a_slot_freed_at_the_cap_is_found_by_the_next_reserve() {
    let shared = FakeShared::default();
    let (store, ids) = full(&shared, 5_000, T0);
    let mut rng = Rng::new(9);
    // Refused first: the hint is empty and every slot is live.
    assert_eq!(reserve(&store, T0, 1, &mut rng), None);
    for (n, victim) in [17usize, 4_999, 0, 2_500].into_iter().enumerate() {
        let (ended, end_gets) = gets_of(&shared, || store.end(&ids[victim], T0));
        assert!(matches!(ended, Ended::Ended(_)));
        assert_eq!(end_gets, 2, "the slot and the hint");
        let (r, gets) = gets_of(&shared, || reserve(&store, T0, n as u8, &mut rng));
        let r = r.unwrap();
        assert_eq!(r.id.slot, ids[victim].slot, "the freed slot, at once");
        assert_eq!(r.expired, 0);
        assert_eq!(gets, 2, "the hint and the slot");
        assert_eq!(reserve(&store, T0, 1, &mut rng), None);
    }
    // A failed initialize's slot, likewise.
    assert!(matches!(store.end(&ids[1], T0), Ended::Ended(_)));
    let r = reserve(&store, T0, 4, &mut rng).unwrap();
    assert!(store.release(&r.id));
    let again = reserve(&store, T0, 5, &mut rng).unwrap();
    assert_eq!(again.id.slot, r.id.slot, "a released slot, at once");
    assert_eq!(store.high_water(), 5_000);
}

#[test]
fn a_session_expired_by_lookup_frees_its_slot_for_the_next_reserve() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, capped(3));
    let old = open(&store, 1, T0);
    let _b = open(&store, 2, T0 + 5_000);
    let _c = open(&store, 3, T0 + 5_000);
    assert_eq!(store.lookup(&old, T0 + 10_000, None), Lookup::Expired);
    assert_eq!(hint(&shared), vec![old.slot]);
    let mut rng = Rng::new(2);
    let r = reserve(&store, T0 + 10_000, 4, &mut rng).unwrap();
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
    let slots_2_and_6 = || [2u32, 6].map(|slot| shared.get(&slot_key(slot)));
    let before = slots_2_and_6();
    let r = reserve(&store, T0 + 1, 40, &mut rng).unwrap();
    assert_eq!(r.id.slot, 5, "the one really free slot");
    assert_eq!(r.expired, 0);
    assert_eq!(before, slots_2_and_6(), "live slots untouched");
    assert!(hint(&shared).is_empty(), "stale entries dropped");
    assert_eq!(reserve(&store, T0 + 1, 41, &mut rng), None);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(is_live(&store, id, T0 + 2), n != 5, "slot {n}");
    }
    // A stale entry whose session has expired since: reclaimed, and reported.
    set_hint(&shared, &[3]);
    let r = reserve(&store, T0 + 10_000, 42, &mut rng).unwrap();
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
        fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
            if key == FREE_KEY {
                if let Some(hook) = self.hook.borrow_mut().take() {
                    hook();
                }
            }
            self.shared.get(key)
        }
        fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
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
        reserve(&store, T0, 51, &mut rng),
        None,
        "C finds nothing free"
    );
    assert!(is_live(&store, &b, T0));
}

#[test]
fn the_sweep_refills_the_hint() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, capped(1_000));
    let mut rng = Rng::new(13);
    let mut ids = Vec::new();
    for n in 0..400u32 {
        let now = if n % 4 == 0 { T0 } else { T0 + 5_000 };
        ids.push(open_with(&store, (n % 251) as u8, now, &mut rng));
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
        let (r, gets) = gets_of(&shared, || reserve(&store, T0 + 10_000, n as u8, &mut rng));
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
    let small = Store::new(&shared, capped(4));
    let mut rng = Rng::new(14);
    let mut slots: Vec<u32> = (0..4)
        .map(|n| reserve(&small, T0, 60 + n, &mut rng).unwrap().id.slot)
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, vec![0, 1, 2, 3]);
    assert_eq!(reserve(&small, T0, 70, &mut rng), None);
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

fn pooled(store: &Store<&FakeShared>, pool: &mut SlotPool, n: u8, now: u64) -> Option<Reservation> {
    store.reserve_pooled(now, secret(n), None, &mut || 0, 0, pool)
}

#[test]
fn pools_of_two_workers_take_distinct_blocks_and_write_once_per_reservation() {
    let shared = FakeShared::default();
    let store = Store::new(&shared, capped(1_000));
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
    let store = Store::new(&shared, capped(1_000));
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
    let store = Store::new(&shared, capped(1_000));
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
    let store = Store::new(&shared, capped(1));
    let slow = store.reserve(T0, secret(1), None, &mut || 0).unwrap();
    // Its initialize outlives the idle timeout: another one takes the expired slot.
    let later = T0 + 10_001;
    let fast = store.reserve(later, secret(2), None, &mut || 0).unwrap();
    assert_eq!(fast.id.slot, slow.id.slot);
    assert!(!store.activate_reserved(&slow.id, &slow.record, later, None));
    assert!(store.activate_reserved(&fast.id, &fast.record, later, None));
    assert!(is_live(&store, &fast.id, later));
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
    let store = Store::new(&shared, capped(1_000));
    let mut a = SlotPool::new();
    let first = pooled(&store, &mut a, 1, T0).unwrap();
    assert_eq!((first.id.slot, a.len()), (0, 7));
    // The limit comes down to the mark (a configuration update): no room left to grant.
    let small = Store::new(&shared, capped(8));
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

#[test]
fn a_slot_key_is_the_slot_in_eight_lowercase_hex_digits() {
    for (slot, key) in [
        (0, "mcps/00000000"),
        (0x1a2b, "mcps/00001a2b"),
        (0xdead_beef, "mcps/deadbeef"),
        (u32::MAX, "mcps/ffffffff"),
    ] {
        assert_eq!(&*slot_key(slot), key.as_bytes());
    }
}

#[test]
fn slot_of_key_reads_back_exactly_what_slot_key_spells() {
    for slot in [0, 1, 0x3ff, 0x400, 0x1a2b, 0xdead_beef, u32::MAX] {
        assert_eq!(slot_of_key(&slot_key(slot)), Some(slot));
    }
    for key in [
        "mcps/0000000",
        "mcps/000000000",
        "mcps/DEADBEEF",
        "mcps/hw",
        "mcps/free",
        "mcpx/00000000",
        "mcps/0000000g",
        "",
    ] {
        assert_eq!(slot_of_key(key.as_bytes()), None, "{key}");
    }
}
