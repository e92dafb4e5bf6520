//! Guessing session IDs: a million random, well-formed IDs never find a live session.
//!
//! The store is filled to capacity with live sessions whose secrets come from the same
//! CSPRNG call the filter makes; every guess aims at an occupied slot (the slot half of an ID
//! is no secret) with a random 128-bit secret, and goes through the steps of a request:
//! `Store::lookup` (and `Store::end`, for DELETE), some through the header text and
//! `SessionId::parse` first. None may
//! be found, none may change the shared data, and every real session must still be there.
//! The shared data is `FakeShared`, the native module's own `store::memory::Table` with its
//! reads counted, so this is also the native path's store.
//! (End to end, tests/e2e/test_hostile.py sends a few thousand guesses through Envoy, in the
//! Wasm and the native pass.)
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use mcp_session_core::session_id::{SessionId, SECRET_LEN};
use mcp_session_core::store::local::{slot_key, Store};
use mcp_session_core::store::{Ended, Limits, Lookup, SharedData};
use mcp_session_core::testkit::{FakeShared, Rng, T0};

const LIVE_SESSIONS: u32 = 10_000;
const GUESSES: u32 = 1_000_000;
/// Guesses also sent as DELETE (each one a read and, if it matched, a write).
const DELETE_GUESSES: u32 = 100_000;

fn snapshot(shared: &FakeShared, slots: u32) -> Vec<(Option<Vec<u8>>, Option<u32>)> {
    (0..slots).map(|slot| shared.get(&slot_key(slot))).collect()
}

#[test]
fn a_million_random_ids_never_hit_a_live_session() {
    let shared = FakeShared::default();
    let limits = Limits {
        idle_ms: 1_800_000,
        lifetime_ms: 86_400_000,
        max_sessions: LIVE_SESSIONS,
        bind_identity: false,
        per_identity: None,
    };
    let store = Store::new(&shared, limits);
    let mut probe = Rng::new(1);
    let mut live = Vec::new();
    for _ in 0..LIVE_SESSIONS {
        let mut secret = [0u8; SECRET_LEN];
        getrandom::fill(&mut secret).unwrap();
        let r = store
            .reserve(T0, secret, None, &mut probe.probes())
            .unwrap();
        assert!(store.activate(&r.id, T0, None));
        live.push(r.id);
    }
    assert_eq!(
        store.high_water(),
        LIVE_SESSIONS,
        "every slot holds a live session"
    );
    let before = snapshot(&shared, LIVE_SESSIONS);

    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let seed = u64::from_le_bytes(seed);
    // The guesses need to be many and reproducible (from the seed printed on a failure), not
    // secret.
    let mut guesser = Rng::new(seed);
    let now = T0 + 1_000;
    for n in 0..GUESSES {
        let target = &live[guesser.below(u64::from(LIVE_SESSIONS)) as usize];
        let mut guess = SessionId {
            slot: target.slot,
            secret: [0; SECRET_LEN],
        };
        guesser.fill(&mut guess.secret);
        // One guess in a hundred goes through the header text, as a request's would.
        let parsed = if n % 100 == 0 {
            SessionId::parse(&guess.encode()).unwrap()
        } else {
            guess
        };
        assert_eq!(
            store.lookup(&parsed, now, None),
            Lookup::NotFound,
            "guess {n} (seed {seed:#x}) found a session"
        );
        if n < DELETE_GUESSES {
            assert_eq!(
                store.end(&parsed, now),
                Ended::NotFound,
                "guess {n} ended a session"
            );
        }
    }

    assert!(
        before == snapshot(&shared, LIVE_SESSIONS),
        "a guess changed the shared data"
    );
    for id in &live {
        assert!(matches!(store.lookup(id, now, None), Lookup::Live(..)));
    }
}
