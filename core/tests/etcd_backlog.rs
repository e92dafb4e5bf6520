//! The etcd store's backlog (`unavailable: local`): writes made while etcd was away
//! ([`Remote::defer_put`], [`Remote::defer_delete`]) go to etcd from the timer
//! ([`Remote::chores`], [`Remote::chore_done`]) once etcd answers again. Promised here, through
//! the public API only:
//! - the writes reach etcd in the order they were made;
//! - one flush is one `Txn` of at most 64 writes (etcd's default limit is 128 operations);
//! - a flush that fails (any status, an answer that does not decode, a Txn that did not
//!   succeed) keeps every write, and the next flush sends the same batch;
//! - a flush that succeeds removes exactly its batch, and returns its keys in order (the
//!   driver empties this Envoy's copy of those sessions): writes made while it was in flight
//!   stay for the next one;
//! - at most 16,384 writes are kept: further writes are dropped, none made before;
//! - no flush goes before this VM holds a lease for the current window (every Put carries
//!   it), nor from a VM that never served a request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use mcp_session_core::record::Record;
use mcp_session_core::store::etcd::proto::{self, request_op::Request};
use mcp_session_core::store::etcd::{value, Call, Chore, Remote, Reply};
use mcp_session_core::store::Limits;
use mcp_session_core::testkit::{etcd_remote, live_record, start_serving, T0};
use prost::Message;

const IDLE: u64 = 600_000;
const BATCH: usize = 64;
const LIMIT: usize = 16_384;

/// With `unavailable: local`: the configuration that keeps a backlog.
fn remote() -> Remote {
    etcd_remote("p/", IDLE, true)
}

fn limits() -> Limits {
    Limits {
        idle_ms: IDLE,
        lifetime_ms: 0,
        max_sessions: 100,
        bind_identity: false,
        per_identity: None,
    }
}

/// A VM that serves requests keeps chores; one that never did makes no calls.
fn serving() -> Remote {
    let r = remote();
    start_serving(&r, &limits());
    r
}

fn key(i: usize) -> Vec<u8> {
    format!("p/{i:032x}").into_bytes()
}

fn record(i: usize) -> Record {
    live_record([(i % 251) as u8; 16], T0 + i as u64)
}

/// One write as a flush sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(Vec<u8>),
}

/// Write `i` of a test: a put for most, a delete for every third.
fn make(r: &Remote, i: usize) -> Sent {
    if i % 3 == 2 {
        r.defer_delete(key(i));
        Sent::Delete(key(i))
    } else {
        r.defer_put(key(i), record(i));
        Sent::Put {
            key: key(i),
            value: value(&record(i)),
            lease: 0,
        }
    }
}

/// Makes writes `range` of a test; what a flush under lease 7 sends for them.
fn made_under_7(r: &Remote, range: std::ops::Range<usize>) -> Vec<Sent> {
    let made: Vec<Sent> = range.map(|i| make(r, i)).collect();
    with_lease(&made, 7)
}

fn with_lease(sent: &[Sent], lease: i64) -> Vec<Sent> {
    sent.iter()
        .map(|s| match s {
            Sent::Put { key, value, .. } => Sent::Put {
                key: key.clone(),
                value: value.clone(),
                lease,
            },
            other => other.clone(),
        })
        .collect()
}

fn keys(sent: &[Sent]) -> Vec<Vec<u8>> {
    sent.iter()
        .map(|s| match s {
            Sent::Put { key, .. } | Sent::Delete(key) => key.clone(),
        })
        .collect()
}

fn ok<M: Message>(message: &M) -> Vec<u8> {
    message.encode_to_vec()
}

fn grant_answer(lease: i64) -> Vec<u8> {
    ok(&proto::LeaseGrantResponse {
        id: lease,
        ttl: 60,
        ..Default::default()
    })
}

fn succeeded() -> Vec<u8> {
    ok(&proto::TxnResponse {
        succeeded: true,
        ..Default::default()
    })
}

/// Runs the timer's chores at `now`: grants answered with `lease` (or failed when `None`), counts
/// failed. Returns the flush it asked for, if any, left in flight.
fn tick(r: &Remote, now: u64, lease: Option<i64>) -> Option<(Chore, Call)> {
    let mut flush = None;
    for (chore, call) in r.chores(now) {
        match chore {
            Chore::Grant(_) => {
                let answer = lease.map(grant_answer);
                let reply = match &answer {
                    Some(bytes) => Reply::Ok(bytes),
                    None => Reply::Failed(14),
                };
                let _ = r.chore_done(chore, reply, now);
            }
            Chore::Count => {
                let _ = r.chore_done(chore, Reply::Failed(14), now);
            }
            Chore::Flush(_) => {
                assert!(flush.is_none(), "one flush at a time");
                flush = Some((chore, call));
            }
        }
    }
    flush
}

/// The writes a flush sends, checked to be one unconditional Txn.
fn sent(call: &Call) -> Vec<Sent> {
    assert_eq!((call.service, call.method), ("etcdserverpb.KV", "Txn"));
    let txn = proto::TxnRequest::decode(call.message.as_slice()).unwrap();
    assert!(txn.compare.is_empty() && txn.failure.is_empty(), "{txn:?}");
    txn.success
        .into_iter()
        .map(|op| match op.request {
            Some(Request::Put(put)) => Sent::Put {
                key: put.key,
                value: put.value,
                lease: put.lease,
            },
            Some(Request::DeleteRange(delete)) => {
                assert!(!delete.prev_kv);
                Sent::Delete(delete.key)
            }
            other => panic!("not a write: {other:?}"),
        })
        .collect()
}

/// Runs the next flush at `now`, which must send `batch` and nothing else, and has etcd take
/// it: the keys reported written are `batch`'s.
fn flush_taken(r: &Remote, now: u64, batch: &[Sent]) {
    let (chore, call) = tick(r, now, None).expect("a flush");
    assert_eq!(chore, Chore::Flush(batch.len()));
    assert_eq!(sent(&call), batch);
    let written = r.chore_done(chore, Reply::Ok(&succeeded()), now);
    assert_eq!(written, Some(keys(batch)));
}

/// A serving VM with lease 7 for the window of `T0`.
fn leased() -> Remote {
    let r = serving();
    assert!(tick(&r, T0, Some(7)).is_none(), "nothing to flush yet");
    r
}

#[test]
fn the_writes_reach_etcd_in_the_order_they_were_made() {
    let r = leased();
    let mut made = made_under_7(&r, 0..10);
    // The same key again, deleted after its put: the last write of a key is the one kept (a
    // transaction naming a key twice is refused by etcd: "duplicate key given in txn request").
    r.defer_delete(key(0));
    made.remove(0);
    made.push(Sent::Delete(key(0)));
    flush_taken(&r, T0, &made);
    assert!(tick(&r, T0, None).is_none(), "all written");
}

#[test]
fn a_flush_is_a_batch_of_at_most_64_writes() {
    let r = leased();
    let made = made_under_7(&r, 0..150);
    let mut at = 0;
    for expected in [BATCH, BATCH, 150 - 2 * BATCH] {
        flush_taken(&r, T0, &made[at..at + expected]);
        at += expected;
    }
    assert!(tick(&r, T0, None).is_none());
}

#[test]
fn a_failed_flush_keeps_every_write_and_the_next_sends_the_same_batch() {
    let r = leased();
    let made = made_under_7(&r, 0..100);
    let (chore, first) = tick(&r, T0, None).expect("a flush");
    assert_eq!(chore, Chore::Flush(BATCH));
    assert_eq!(sent(&first), &made[..BATCH]);
    let not_succeeded = ok(&proto::TxnResponse {
        succeeded: false,
        ..Default::default()
    });
    let failures: [Reply<'_>; 6] = [
        Reply::Failed(14),
        Reply::Failed(4),
        Reply::Failed(0),
        Reply::Ok(&[0xff, 0xff, 0xff]),
        Reply::Ok(&not_succeeded),
        Reply::Ok(&[]), // decodes as a Txn that did not succeed
    ];
    let mut chore = chore;
    for failure in failures {
        assert_eq!(r.chore_done(chore, failure, T0), None, "{failure:?}");
        let (again, call) = tick(&r, T0, None).expect("the same flush again");
        assert_eq!(again, Chore::Flush(BATCH));
        assert_eq!(call, first, "after {failure:?}");
        chore = again;
    }
    assert_eq!(
        r.chore_done(chore, Reply::Ok(&succeeded()), T0),
        Some(keys(&made[..BATCH]))
    );
    let (chore, call) = tick(&r, T0, None).expect("the rest");
    assert_eq!(chore, Chore::Flush(100 - BATCH));
    assert_eq!(sent(&call), &made[BATCH..]);
}

#[test]
fn a_flush_removes_exactly_its_batch_and_writes_made_meanwhile_wait_for_the_next() {
    let r = leased();
    let first = made_under_7(&r, 0..3);
    let (chore, call) = tick(&r, T0, None).expect("a flush");
    assert_eq!(chore, Chore::Flush(3));
    assert_eq!(sent(&call), first);
    // While it is in flight: two more writes, and no second flush.
    let later = made_under_7(&r, 3..5);
    assert!(
        tick(&r, T0 + 500, None).is_none(),
        "one flush in flight at a time"
    );
    let written = r.chore_done(chore, Reply::Ok(&succeeded()), T0 + 600);
    assert_eq!(written, Some(keys(&first)));
    // The writes made meanwhile.
    flush_taken(&r, T0 + 1000, &later);
    assert!(tick(&r, T0 + 1000, None).is_none());
}

#[test]
fn the_backlog_keeps_16384_writes_and_drops_only_those_after() {
    let r = leased();
    let made = made_under_7(&r, 0..LIMIT + 100);
    let mut written: Vec<Vec<u8>> = Vec::new();
    let mut flushes = 0;
    while let Some((chore, call)) = tick(&r, T0, None) {
        flushes += 1;
        assert!(flushes <= LIMIT / BATCH, "more flushes than writes kept");
        let Chore::Flush(n) = chore else {
            panic!("{chore:?}")
        };
        assert_eq!(n, BATCH);
        assert_eq!(sent(&call), &made[written.len()..written.len() + n]);
        written.extend(r.chore_done(chore, Reply::Ok(&succeeded()), T0).unwrap());
    }
    assert_eq!(flushes, LIMIT / BATCH);
    assert_eq!(written, keys(&made[..LIMIT]), "the first 16384, in order");
    // Room again once written.
    let again = with_lease(&[make(&r, LIMIT + 200)], 7);
    let (chore, call) = tick(&r, T0, None).expect("a flush");
    assert_eq!((chore, sent(&call)), (Chore::Flush(1), again));
}

#[test]
fn no_flush_goes_without_a_lease_for_the_current_window() {
    // A VM that never served a request makes no calls at all.
    let idle = remote();
    idle.defer_put(key(0), record(0));
    assert!(idle.chores(T0).is_empty());

    let r = serving();
    let made = (0..5).map(|i| make(&r, i)).collect::<Vec<_>>();
    // The grant fails, says no lease (id 0), says an error, or does not decode: no flush.
    assert!(tick(&r, T0, None).is_none());
    for refused in [
        grant_answer(0),
        ok(&proto::LeaseGrantResponse {
            id: 9,
            error: "too many leases".into(),
            ..Default::default()
        }),
        vec![0xff, 0xff],
    ] {
        let calls = r.chores(T0);
        assert!(calls.iter().all(|(c, _)| !matches!(c, Chore::Flush(_))));
        for (chore, _) in calls {
            let reply = match chore {
                Chore::Grant(_) => Reply::Ok(&refused),
                _ => Reply::Failed(14),
            };
            let _ = r.chore_done(chore, reply, T0);
        }
    }
    assert!(tick(&r, T0, None).is_none(), "still no lease");
    // Granted (the flush goes at the next tick: the grant is answered after this one).
    assert!(tick(&r, T0, Some(11)).is_none());
    let (chore, call) = tick(&r, T0, None).expect("a flush once a lease exists");
    assert_eq!(chore, Chore::Flush(5));
    assert_eq!(sent(&call), with_lease(&made, 11));
    assert_eq!(r.chore_done(chore, Reply::Failed(14), T0), None);
    // Two windows on, that lease is not this window's: no flush until a new grant.
    let later = T0 + 2 * r.timing().window_ms;
    assert!(tick(&r, later, None).is_none());
    assert!(tick(&r, later, Some(12)).is_none());
    let (_, call) = tick(&r, later, None).expect("a flush under the new lease");
    assert_eq!(sent(&call), with_lease(&made, 12));
}

/// Found in review: a write made for a key of the flush in flight replaces that key's queued
/// write, which shifted the backlog; the flush's answer then removed its first `n` writes by
/// position, among them one it never sent (here the DELETE of session 1: the session lived on
/// in etcd). Now exactly the writes sent leave it.
#[test]
fn a_write_replaced_while_its_flush_is_in_flight_stays_for_the_next() {
    let r = leased();
    r.defer_put(key(1), record(1));
    r.defer_put(key(2), record(2));
    let (chore, call) = tick(&r, T0, None).expect("a flush");
    assert_eq!(keys(&sent(&call)), vec![key(1), key(2)]);
    r.defer_delete(key(1)); // session 1 ends meanwhile
    r.defer_delete(key(9));
    let written = r.chore_done(chore, Reply::Ok(&succeeded()), T0 + 100);
    assert_eq!(
        written,
        Some(vec![key(2)]),
        "the put of 1 was replaced: not reported"
    );
    let (_, call) = tick(&r, T0 + 1000, None).expect("the next flush");
    assert_eq!(
        sent(&call),
        vec![Sent::Delete(key(1)), Sent::Delete(key(9))]
    );
}
