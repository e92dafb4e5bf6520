#![no_main]
//! `store::Store` over `testkit::FakeShared` (the host's CAS semantics), driven by a
//! sequence of operations decoded from the input, with slots overwritten by junk now and then,
//! and checked against `testkit::StoreModel` (the reference model `core/tests/store_model.rs`
//! uses too). Checks after every step: the table never passes `max_sessions`; a session
//! ended, released or reported expired is never found (or counted) again; a live lookup is
//! the caller's own live record, and only for its own identity; a guessed secret never finds
//! anything; and the live count the filter keeps (created - terminated - expired) equals the
//! live records held.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::record::{Record, State, MAX_UPSTREAM_ID};
use mcp_session_core::session_id::SessionId;
use mcp_session_core::store::local::{slot_key, Store};
use mcp_session_core::store::{Ended, Limits, Lookup, SharedData};
use mcp_session_core::testkit::{live_records, FakeShared, KnownState, Rng, StoreModel, T0};

#[derive(Arbitrary, Debug)]
struct Input {
    max_sessions: u8,
    idle_s: u8,
    lifetime_s: u8,
    bind_identity: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Reserve {
        identity: Option<Vec<u8>>,
        probe: u32,
    },
    Activate {
        which: u8,
        upstream: Option<String>,
    },
    Release {
        which: u8,
    },
    Lookup {
        which: u8,
        other: Option<Option<Vec<u8>>>,
    },
    Touch {
        which: u8,
    },
    MarkInitialized {
        which: u8,
    },
    End {
        which: u8,
    },
    Sweep,
    Wait {
        ms: u16,
    },
    Corrupt {
        slot: u8,
        bytes: Vec<u8>,
    },
    Guess {
        slot: u8,
        secret: [u8; 16],
    },
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        idle_ms: 1000 * (1 + u64::from(input.idle_s % 30)),
        lifetime_ms: 1000 * u64::from(input.lifetime_s % 60),
        max_sessions: 1 + u32::from(input.max_sessions % 8),
        bind_identity: input.bind_identity,
        per_identity: None,
    };
    let shared = FakeShared::default();
    let store = Store::new(&shared, limits);
    let mut now = T0;
    let mut model = StoreModel::new(limits);
    // Distinct secrets, as the CSPRNG gives them: splitmix64's outputs never repeat within
    // its period, so no two secrets drawn from one stream are equal.
    let mut secrets = Rng::new(0);
    for op in input.ops {
        match op {
            Op::Reserve { identity, probe } => {
                let mut secret = [0u8; 16];
                secrets.fill(&mut secret);
                let probes = probe % 4; // 0 (hint or growth only) to 3 probes before growing
                let mut rng = Rng::new(u64::from(probe));
                let mut random = rng.probes();
                if let Some(r) =
                    store.reserve_probing(now, secret, identity.as_deref(), &mut random, probes)
                {
                    assert_eq!(r.id.secret, secret);
                    model.reserved(r.id, identity, now, r.expired);
                }
            }
            Op::Activate { which, upstream } => {
                let Some(k) = model.pick(u64::from(which)) else {
                    continue;
                };
                // The glue stores only visible-ASCII upstream IDs of 1 to MAX_UPSTREAM_ID bytes.
                let upstream = upstream.filter(|u| {
                    !u.is_empty()
                        && u.len() <= MAX_UPSTREAM_ID
                        && u.bytes().all(|b| (0x21..=0x7e).contains(&b))
                });
                if store.activate(&k.id, now, upstream.as_deref()) {
                    assert_eq!(
                        model.activated(&k.id, now),
                        Some(KnownState::Pending),
                        "activated twice or after its end"
                    );
                    // Usable at once, unless the answer came after the absolute lifetime.
                    match store.lookup(&k.id, now, k.identity.as_deref()) {
                        Lookup::Live(..) => {}
                        Lookup::Expired
                            if limits.lifetime_ms > 0
                                && now - k.created_ms >= limits.lifetime_ms =>
                        {
                            model.ended(&k.id);
                        }
                        other => panic!("a session just activated: {other:?}"),
                    }
                }
            }
            Op::Release { which } => {
                let Some(k) = model.pick(u64::from(which)) else {
                    continue;
                };
                if store.release(&k.id) {
                    assert_eq!(
                        model.gone(&k.id),
                        Some(KnownState::Pending),
                        "released a live or ended session"
                    );
                }
            }
            Op::Lookup { which, other } => {
                let Some(k) = model.pick(u64::from(which)) else {
                    continue;
                };
                let presented = other.unwrap_or_else(|| k.identity.clone());
                match store.lookup(&k.id, now, presented.as_deref()) {
                    Lookup::Live(record, _) => {
                        assert_eq!(
                            k.state,
                            KnownState::Live,
                            "found a pending or ended session"
                        );
                        assert!(record.secret == k.id.secret && record.state == State::Live);
                        assert!(
                            !limits.bind_identity || presented == k.identity,
                            "other identity"
                        );
                        model.used(&k.id, now);
                    }
                    Lookup::Expired => {
                        assert_eq!(
                            model.ended(&k.id),
                            Some(KnownState::Live),
                            "expired counted twice"
                        );
                    }
                    Lookup::NotFound => {}
                }
            }
            Op::Touch { which } => {
                let Some(k) = model.pick(u64::from(which)) else {
                    continue;
                };
                match store.lookup(&k.id, now, k.identity.as_deref()) {
                    Lookup::Live(record, cas) => {
                        store.touch(&k.id, &record, cas, now);
                        model.used(&k.id, now);
                    }
                    Lookup::Expired => {
                        assert_eq!(
                            model.ended(&k.id),
                            Some(KnownState::Live),
                            "expired counted twice"
                        );
                    }
                    Lookup::NotFound => {}
                }
            }
            Op::MarkInitialized { which } => {
                let Some(k) = model.pick(u64::from(which)) else {
                    continue;
                };
                if store.mark_initialized(&k.id, now) {
                    assert_eq!(k.state, KnownState::Live);
                    model.used(&k.id, now);
                }
            }
            Op::End { which } => {
                let Some(k) = model.pick(u64::from(which)) else {
                    continue;
                };
                match store.end(&k.id, now) {
                    Ended::Ended(record) => {
                        assert_eq!(record.secret, k.id.secret);
                        assert_eq!(model.ended(&k.id), Some(KnownState::Live));
                    }
                    Ended::Expired => {
                        assert_eq!(model.ended(&k.id), Some(KnownState::Live), "ended twice");
                    }
                    Ended::NotFound => {}
                    Ended::EndedEarlier => panic!("the local store never retries an end"),
                }
            }
            Op::Sweep => model.swept(store.sweep(now).expired),
            Op::Wait { ms } => now += u64::from(ms),
            Op::Corrupt { slot, bytes } => {
                let high = store.high_water();
                if high == 0 || Record::decode(&bytes).is_some() {
                    continue; // junk only: a forged record would be a forged session
                }
                let key = slot_key(u32::from(slot) % high);
                let old = shared.get(&key).0.as_deref().and_then(Record::decode);
                if old.is_some_and(|r| r.state == State::Live) {
                    model.live_gauge -= 1; // destroyed without being counted by the store
                }
                shared.set(&key, &bytes, None).expect("unconditional write");
            }
            Op::Guess { slot, secret } => {
                if model.sessions().iter().any(|k| k.id.secret == secret) {
                    continue;
                }
                let id = SessionId {
                    slot: u32::from(slot),
                    secret,
                };
                assert_eq!(
                    store.lookup(&id, now, None),
                    Lookup::NotFound,
                    "a guess hit"
                );
                assert_eq!(
                    store.end(&id, now),
                    Ended::NotFound,
                    "a guess ended a session"
                );
            }
        }
        let high = store.high_water();
        assert!(
            high <= limits.max_sessions,
            "{high} slots for {}",
            limits.max_sessions
        );
        assert!(
            shared.key_count() <= high as usize + 3, // the mark, the sweep cursor, the free hint
            "keys outside the slot table"
        );
        assert_eq!(
            model.live_gauge,
            live_records(&shared, high),
            "the live count drifted"
        );
    }
});
