#![no_main]
//! The etcd store against whatever etcd (or something posing as it) answers, in three parts,
//! each with its oracle:
//!
//! 1. **One operation, any answers.** Never a panic or a loop: at most 8 calls. When every
//!    answer so far says nothing (a failed call, any status; bytes that do not decode as the
//!    call's response; a lease grant that grants nothing), the operation is retried (4 calls
//!    at most) or ends in `Next::Unavailable` with the operation given back (the driver's
//!    503), never in an answer: no "not found", no `Done(false)`, from a failure.
//! 2. **`unavailable: local`** (`fallback::answer`, after the operation failed as the driver
//!    runs it), checked step by step against a model of what this Envoy knows: a session the
//!    worker cached serves a lookup however old its entry (while its lifetime, idle timeout,
//!    secret and identity allow); a session created while etcd is away (Activate) is found by
//!    any worker through shared data, and is queued for etcd; a session never seen here is
//!    unavailable (503), never not found, and so is the end of one; the timer's flush
//!    (`Remote::chores`) sends exactly the queued writes in order, 64 at most, only once this
//!    window has a lease, and a flush answered drains exactly its batch.
//! 3. **The watch.** Any message (built from arbitrary fields, or raw bytes) changes what the
//!    cache may serve as a small model says: DELETE events list their keys, in order, and
//!    nothing else does; the cache is flushed when a watch is created from revision 0, is
//!    cancelled, or says something undecodable, or confirmed below where it resumed; the
//!    stream is closed when cancelled or undecodable; a reopened watch resumes after the last
//!    revision seen in an event (from now after a compaction).
#[path = "common/says_nothing.rs"]
mod common;

use arbitrary::Arbitrary;
use common::says_nothing;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::config::EtcdConfig;
use mcp_session_core::record::{identity_digest, Record};
use mcp_session_core::session_id::SessionId;
use mcp_session_core::store::cache::SessionCache;
use mcp_session_core::store::etcd::fallback::{self, shared_key, Answer};
use mcp_session_core::store::etcd::proto::{self, request_op::Request, watch_request};
use mcp_session_core::store::etcd::session_id;
use mcp_session_core::store::etcd::{
    key, value, Call, Chore, Remote, Reply, WatchAction, WatchNews,
};
use mcp_session_core::store::{Ended, Limits, Lookup, Next, SharedData, StoreOp, StoreResult};
use mcp_session_core::store::{Reservation, Source};
use mcp_session_core::testkit::{live_record, FakeShared, T0};
use prost::Message;
use std::collections::HashMap;

const PREFIX: &str = "p/";
const TIMEOUT_MS: u64 = 1000;
const BATCH: usize = 64;
const BACKLOG_LIMIT: usize = 16_384;

#[derive(Arbitrary, Debug)]
struct Case {
    op: u8,
    idle_s: u16,
    replies: Vec<(Answer0, u16)>,
    fallback: Fallback,
    watch: Vec<WatchInput>,
}

/// What etcd answers a call: a failure, raw bytes, or a well-formed message of some kind.
#[derive(Arbitrary, Debug)]
enum Answer0 {
    Failed(u32),
    Bytes(Vec<u8>),
    Range {
        found: Option<Stored>,
        mod_revision: i64,
    },
    Deleted {
        prev: Option<Stored>,
    },
    Txn {
        succeeded: bool,
        revision: i64,
        read: Option<(Stored, i64)>,
    },
    Grant {
        id: i64,
        error: bool,
    },
}

/// A record as etcd holds it, relative to now.
#[derive(Arbitrary, Debug)]
struct Stored {
    live: bool,
    initialized: bool,
    created_back_ms: u32,
    seen_back_ms: u32,
}

impl Stored {
    fn kv(&self, id: &SessionId, now: u64, mod_revision: i64) -> proto::KeyValue {
        let mut record = live_record(
            id.secret,
            now.saturating_sub(u64::from(self.created_back_ms)),
        );
        record.last_seen_ms = now.saturating_sub(u64::from(self.seen_back_ms));
        record.initialized = self.initialized;
        if !self.live {
            record.state = mcp_session_core::record::State::Pending;
        }
        proto::KeyValue {
            key: key(PREFIX, id),
            create_revision: 1,
            mod_revision,
            value: value(&record),
            lease: 1,
        }
    }
}

impl Answer0 {
    /// The status and bytes of this answer.
    fn encode(&self, id: &SessionId, now: u64) -> Result<Vec<u8>, u32> {
        let kv = |stored: &Stored, revision| stored.kv(id, now, revision);
        Ok(match self {
            Answer0::Failed(status) => return Err(*status),
            Answer0::Bytes(bytes) => bytes.clone(),
            Answer0::Range {
                found,
                mod_revision,
            } => proto::RangeResponse {
                kvs: found.iter().map(|s| kv(s, *mod_revision)).collect(),
                ..Default::default()
            }
            .encode_to_vec(),
            Answer0::Deleted { prev } => proto::DeleteRangeResponse {
                deleted: i64::from(prev.is_some()),
                prev_kvs: prev.iter().map(|s| kv(s, 3)).collect(),
                ..Default::default()
            }
            .encode_to_vec(),
            Answer0::Txn {
                succeeded,
                revision,
                read,
            } => proto::TxnResponse {
                header: Some(proto::ResponseHeader {
                    revision: *revision,
                }),
                succeeded: *succeeded,
                responses: read
                    .iter()
                    .map(|(s, r)| proto::ResponseOp {
                        response: Some(proto::response_op::Response::Range(proto::RangeResponse {
                            kvs: vec![kv(s, *r)],
                            ..Default::default()
                        })),
                    })
                    .collect(),
            }
            .encode_to_vec(),
            Answer0::Grant { id, error } => proto::LeaseGrantResponse {
                id: *id,
                ttl: 60,
                error: if *error { "no".into() } else { String::new() },
                ..Default::default()
            }
            .encode_to_vec(),
        })
    }
}

fn remote(idle_ms: u64, fall_back_to_local: bool) -> Remote {
    Remote::new(
        EtcdConfig {
            cluster: "etcd".into(),
            prefix: PREFIX.into(),
            timeout_ms: TIMEOUT_MS,
            fall_back_to_local,
        },
        idle_ms,
    )
}

/// Part 1: one operation, any answers.
fn one_operation(case: &Case, idle_ms: u64) {
    let remote = remote(idle_ms, false);
    let limits = Limits {
        idle_ms,
        lifetime_ms: 0,
        max_sessions: 10,
        bind_identity: false,
        per_identity: None,
    };
    let id = SessionId {
        slot: 1,
        secret: [9; 16],
    };
    let now = T0;
    let op = match case.op % 5 {
        0 => StoreOp::Lookup {
            id,
            identity: None,
            now_ms: now,
        },
        1 => StoreOp::End {
            id,
            identity: None,
            now_ms: now,
        },
        2 => StoreOp::MarkInitialized { id, now_ms: now },
        3 => StoreOp::Activate {
            id,
            reserved: Record::pending(now.saturating_sub(5), id.secret, None, false),
            upstream_id: None,
            now_ms: now,
        },
        _ => StoreOp::Reserve {
            secret: id.secret,
            identity: None,
            now_ms: now,
        },
    };
    let mut next = remote.begin(op.clone(), &limits);
    let mut replies = case.replies.iter();
    let mut calls = 0;
    let mut all_said_nothing = true;
    while let Next::Call(flight) = next {
        calls += 1;
        assert!(calls <= 8, "an operation that does not end");
        let Some((answer, delay)) = replies.next() else {
            break;
        };
        let at = now + u64::from(*delay);
        let encoded = answer.encode(&id, now);
        let reply = match &encoded {
            Ok(bytes) => Reply::Ok(bytes),
            Err(status) => Reply::Failed(*status),
        };
        all_said_nothing &= says_nothing(flight.call(), reply);
        next = remote.advance(flight, reply, &limits, at);
        match &next {
            Next::Unavailable(given) => assert_eq!(given, &op, "the operation given back"),
            Next::Done(result) if all_said_nothing => {
                panic!("{op:?}: answers that said nothing became {result:?}")
            }
            Next::Call(_) if all_said_nothing => {
                assert!(
                    calls < 4,
                    "{op:?}: more than 4 calls for answers that say nothing"
                )
            }
            Next::Done(_) | Next::Call(_) => {}
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Fallback {
    bind_identity: bool,
    lifetime_s: u8,
    capacity: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// A lookup through etcd found the session live a while ago: the worker cached it.
    Cache {
        session: u8,
        identity: u8,
        seen_back_ms: u16,
    },
    Lookup {
        session: u8,
        identity: u8,
    },
    End {
        session: u8,
    },
    Activate {
        session: u8,
        identity: u8,
        upstream: bool,
    },
    MarkInitialized {
        session: u8,
    },
    /// A session ended somewhere in this Envoy.
    Epoch,
    Wait(u32),
    /// The timer: grants answered with `lease` (failed when 0), a flush answered as `flushed`.
    Chores {
        lease: i64,
        flushed: bool,
    },
}

/// Five sessions, and one forged ID (the slot of the first, another secret), only looked up
/// and ended. In the etcd store a session's slot is drawn from its secret (`session_id`).
fn session(n: u8, forged_too: bool) -> SessionId {
    let n = n % if forged_too { 6 } else { 5 };
    let real = |n: u8| session_id([n + 1; 16]);
    if n == 5 {
        SessionId {
            secret: [0xee; 16],
            ..real(0)
        }
    } else {
        real(n)
    }
}

fn identity(n: u8) -> Option<Vec<u8>> {
    match n % 3 {
        0 => None,
        1 => Some(b"alice".to_vec()),
        _ => Some(b"bob".to_vec()),
    }
}

/// A write the backlog holds, as the model expects it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Queued {
    Put(Vec<u8>, Record),
    Delete(Vec<u8>),
}

impl Queued {
    fn key(&self) -> &[u8] {
        match self {
            Queued::Put(key, _) | Queued::Delete(key) => key,
        }
    }
}

/// What this Envoy knows while etcd is away.
struct Model {
    /// The worker's cache: its epoch and entries by slot (as `SessionCache` keeps them: an
    /// entry holds its slot until replaced, taken, or the cache is emptied).
    epoch: u64,
    cache: HashMap<u32, (SessionId, Record)>,
    capacity: usize,
    /// Sessions created here, readable by every worker in shared data, by etcd key.
    shared: HashMap<Vec<u8>, Record>,
    backlog: Vec<Queued>,
    /// Leases granted, by window.
    granted: HashMap<u64, i64>,
    /// Sessions this VM created while etcd was away (they count toward max_sessions).
    created: u32,
}

impl Model {
    fn sync(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.cache.clear();
            self.epoch = epoch;
        }
    }

    fn put(&mut self, epoch: u64, id: SessionId, record: Record) {
        self.sync(epoch);
        if self.cache.len() >= self.capacity && !self.cache.contains_key(&id.slot) {
            self.cache.clear();
        }
        self.cache.insert(id.slot, (id, record));
    }

    /// One write per key, the last (etcd refuses a transaction that names a key twice).
    fn queue(&mut self, write: Queued) {
        let key = match &write {
            Queued::Put(key, _) | Queued::Delete(key) => key.clone(),
        };
        self.backlog
            .retain(|q| !matches!(q, Queued::Put(k, _) | Queued::Delete(k) if *k == key));
        if self.backlog.len() < BACKLOG_LIMIT {
            self.backlog.push(write);
        }
    }
}

/// Runs `op` as the driver does while etcd fails (its call fails with the deadline gone),
/// then answers it from this Envoy's memory.
fn fall_back(
    remote: &Remote,
    cache: &mut SessionCache,
    shared: &FakeShared,
    epoch: u64,
    limits: &Limits,
    op: StoreOp,
) -> Answer {
    let now = op.now_ms();
    let flight = match remote.begin(op.clone(), limits) {
        Next::Call(flight) => flight,
        // Answered without etcd (a reservation past max_sessions).
        Next::Done(result) => return result.into(),
        Next::Unavailable(op) => panic!("{op:?} unavailable before any call"),
    };
    let given = match remote.advance(flight, Reply::Failed(14), limits, now + 10 * TIMEOUT_MS) {
        Next::Unavailable(given) => given,
        other => panic!("a failure with no time left: {other:?}"),
    };
    assert_eq!(given, op);
    let answer = fallback::answer(remote, cache, shared, epoch, limits, given);
    // The driver caches what the fallback made.
    if let Some((id, record)) = &answer.made {
        cache.put(epoch, id.slot, record.clone());
    }
    answer
}

/// Part 2: `unavailable: local`.
fn fallback_memory(input: &Fallback, idle_ms: u64) {
    let remote = remote(idle_ms, true);
    let limits = Limits {
        idle_ms,
        lifetime_ms: u64::from(input.lifetime_s) * 1000,
        max_sessions: 10,
        bind_identity: input.bind_identity,
        per_identity: None,
    };
    let capacity = 1 + usize::from(input.capacity % 8);
    let mut cache = SessionCache::new(capacity);
    let shared = FakeShared::default();
    let mut model = Model {
        epoch: 0,
        cache: HashMap::new(),
        capacity,
        shared: HashMap::new(),
        backlog: Vec::new(),
        granted: HashMap::new(),
        created: 0,
    };
    let mut epoch = 1;
    let mut now = T0;
    let mut active = false;
    let window = |now: u64| now / remote.timing().window_ms;
    for step in input.steps.iter().take(64) {
        match *step {
            Step::Cache {
                session: n,
                identity: who,
                seen_back_ms,
            } => {
                let id = session(n, false);
                let mut record =
                    live_record(id.secret, now.saturating_sub(u64::from(seen_back_ms)));
                record.identity = limits
                    .bind_identity
                    .then(|| identity_digest(identity(who).as_deref()));
                cache.put(epoch, id.slot, record.clone());
                model.put(epoch, id, record);
            }
            Step::Lookup {
                session: n,
                identity: who,
            } => {
                let id = session(n, true);
                let identity = identity(who);
                let op = StoreOp::Lookup {
                    id,
                    identity: identity.clone(),
                    now_ms: now,
                };
                let got = fall_back(&remote, &mut cache, &shared, epoch, &limits, op);
                active = true;
                model.sync(epoch);
                let judge = |record: &Record, fresh_ms| {
                    limits.judge(record, &id.secret, identity.as_deref(), now, fresh_ms)
                };
                let cached = model
                    .cache
                    .get(&id.slot)
                    .filter(|(held, record)| *held == id && judge(record, u64::MAX).serves());
                let expected = if let Some((_, record)) = cached {
                    // However old the entry: etcd cannot say it ended.
                    Answer {
                        stale: true,
                        ..StoreResult::Lookup(Lookup::Live(record.clone(), 0)).into()
                    }
                } else {
                    match model.shared.get(&key(PREFIX, &id)) {
                        // Never seen here: it may well be live in etcd.
                        None => StoreResult::Unavailable.into(),
                        Some(record) if judge(record, 0).serves() => {
                            StoreResult::Lookup(Lookup::Live(record.clone(), 0)).into()
                        }
                        // Created here, and expired, or another identity's.
                        Some(_) => StoreResult::Lookup(Lookup::NotFound).into(),
                    }
                };
                assert_eq!(got, expected, "lookup of {id:?} at {now}");
            }
            Step::End { session: n } => {
                let id = session(n, true);
                let op = StoreOp::End {
                    id,
                    identity: None,
                    now_ms: now,
                };
                let got = fall_back(&remote, &mut cache, &shared, epoch, &limits, op);
                active = true;
                // The cache gives up its entry for the slot whatever secret it holds, and does
                // not look at the epoch first (`SessionCache::take`). (Through the driver a
                // forged ID never gets here: a DELETE looks its session up first.)
                let expected = match model.cache.remove(&id.slot) {
                    Some((held, record)) if held == id => {
                        let key = key(PREFIX, &id);
                        model.shared.remove(&key);
                        model.queue(Queued::Delete(key));
                        StoreResult::Ended(Ended::Ended(record))
                    }
                    // Not known here: it may well be live in etcd; not "nothing to end".
                    _ => StoreResult::Unavailable,
                };
                assert_eq!(got, expected.into(), "end of {id:?}");
            }
            Step::Activate {
                session: n,
                identity: who,
                upstream,
            } => {
                let id = session(n, false);
                let identity = identity(who);
                // The session is written when it is reserved, before the upstream sees the
                // initialize; while etcd is away this Envoy keeps it. An activation writes only
                // what the answer taught: a stateful upstream's own ID.
                let reserve = StoreOp::Reserve {
                    secret: id.secret,
                    identity: identity.clone(),
                    now_ms: now,
                };
                let got = fall_back(&remote, &mut cache, &shared, epoch, &limits, reserve);
                active = true;
                if model.created >= limits.max_sessions {
                    assert_eq!(got, StoreResult::Reserved(None).into(), "max_sessions");
                    continue;
                }
                model.created += 1;
                let mut live =
                    Record::pending(now, id.secret, identity.as_deref(), limits.bind_identity)
                        .activated(now, None);
                live.initialized = true;
                let reserved = Reservation {
                    id,
                    record: live.clone(),
                    expired: 0,
                    from: Source::Hint,
                };
                assert_eq!(
                    got.result,
                    StoreResult::Reserved(Some(reserved)),
                    "reserve {id:?}"
                );
                assert_eq!(got.made.as_ref().map(|(made, _)| *made), Some(id));
                let key = key(PREFIX, &id);
                model.shared.insert(key.clone(), live.clone());
                model.queue(Queued::Put(key.clone(), live.clone()));
                model.put(epoch, id, live.clone());
                if upstream {
                    let upstream_id = Some("upstream-1".to_owned());
                    let op = StoreOp::Activate {
                        id,
                        reserved: live.clone(),
                        upstream_id: upstream_id.clone(),
                        now_ms: now,
                    };
                    let got = fall_back(&remote, &mut cache, &shared, epoch, &limits, op);
                    assert_eq!(got.result, StoreResult::Done(true), "activate {id:?}");
                    live = live.activated(now, upstream_id.as_deref());
                    model.shared.insert(key.clone(), live.clone());
                    model.queue(Queued::Put(key, live.clone()));
                    model.put(epoch, id, live.clone());
                }
                // Another worker of this Envoy, with nothing cached, finds it at once.
                let mut other = SessionCache::new(4);
                let lookup = StoreOp::Lookup {
                    id,
                    identity,
                    now_ms: now,
                };
                let found = fallback::answer(&remote, &mut other, &shared, epoch, &limits, lookup);
                assert_eq!(
                    found,
                    StoreResult::Lookup(Lookup::Live(live, 0)).into(),
                    "another worker's lookup of a session just created here"
                );
            }
            Step::MarkInitialized { session: n } => {
                let id = session(n, false);
                let op = StoreOp::MarkInitialized { id, now_ms: now };
                let got = fall_back(&remote, &mut cache, &shared, epoch, &limits, op);
                active = true;
                assert_eq!(got, StoreResult::Done(true).into());
            }
            Step::Epoch => epoch += 1,
            Step::Wait(ms) => now += u64::from(ms),
            Step::Chores { lease, flushed } => {
                let lease_now = model.granted.get(&window(now)).copied();
                let calls = remote.chores(now);
                if !active {
                    assert!(calls.is_empty(), "a VM that never served makes no calls");
                }
                let flushes: Vec<&(Chore, Call)> = calls
                    .iter()
                    .filter(|(c, _)| matches!(c, Chore::Flush(_)))
                    .collect();
                let expect_flush = active && lease_now.is_some() && !model.backlog.is_empty();
                assert_eq!(
                    flushes.len(),
                    usize::from(expect_flush),
                    "a flush exactly when writes wait and this window has a lease: {calls:?}"
                );
                for (chore, call) in calls {
                    match chore {
                        Chore::Grant(w) => {
                            let answer = proto::LeaseGrantResponse {
                                id: lease,
                                ttl: 60,
                                ..Default::default()
                            }
                            .encode_to_vec();
                            let got = remote.chore_done(chore, Reply::Ok(&answer), now);
                            assert_eq!(got.is_some(), lease != 0, "grant of {lease}");
                            if lease != 0 {
                                model.granted.insert(w, lease);
                            }
                        }
                        Chore::Count => {
                            assert_eq!(remote.chore_done(chore, Reply::Failed(14), now), None);
                        }
                        Chore::Flush(n) => {
                            let lease = lease_now.expect("a flush under a lease");
                            let batch = model.backlog.len().min(BATCH);
                            assert_eq!(n, batch);
                            let expected: Vec<proto::RequestOp> = model.backlog[..batch]
                                .iter()
                                .map(|write| proto::RequestOp {
                                    request: Some(match write {
                                        Queued::Put(key, record) => {
                                            Request::Put(proto::PutRequest {
                                                key: key.clone(),
                                                value: value(record),
                                                lease,
                                            })
                                        }
                                        Queued::Delete(key) => {
                                            Request::DeleteRange(proto::DeleteRangeRequest {
                                                key: key.clone(),
                                                prev_kv: false,
                                            })
                                        }
                                    }),
                                })
                                .collect();
                            let txn =
                                proto::TxnRequest::decode(call.message.as_slice()).expect("a Txn");
                            assert!(txn.compare.is_empty() && txn.failure.is_empty());
                            assert_eq!(txn.success, expected, "the queued writes, in order");
                            if flushed {
                                let ok = proto::TxnResponse {
                                    succeeded: true,
                                    ..Default::default()
                                }
                                .encode_to_vec();
                                let written = remote
                                    .chore_done(chore, Reply::Ok(&ok), now)
                                    .expect("a flush that succeeded");
                                let keys: Vec<Vec<u8>> = model
                                    .backlog
                                    .drain(..batch)
                                    .map(|w| w.key().to_vec())
                                    .collect();
                                assert_eq!(written, keys);
                                // As the driver does: etcd has them now.
                                for key in written {
                                    let _ = shared.set(&shared_key(&key), &[], None);
                                    model.shared.remove(&key);
                                }
                            } else {
                                assert_eq!(remote.chore_done(chore, Reply::Failed(14), now), None);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A watch message: raw bytes, or one built from arbitrary fields.
#[derive(Arbitrary, Debug)]
enum WatchInput {
    Raw(Vec<u8>),
    Message {
        header: Option<i64>,
        watch_id: i64,
        created: bool,
        canceled: bool,
        compact_revision: i64,
        cancel_reason: String,
        events: Vec<(EventKind, Option<(Vec<u8>, i64)>)>,
    },
}

#[derive(Arbitrary, Debug)]
enum EventKind {
    Put,
    Delete,
    Other(i32),
}

impl WatchInput {
    fn bytes(&self) -> Vec<u8> {
        match self {
            WatchInput::Raw(bytes) => bytes.clone(),
            WatchInput::Message {
                header,
                watch_id,
                created,
                canceled,
                compact_revision,
                cancel_reason,
                events,
            } => proto::WatchResponse {
                header: header.map(|revision| proto::ResponseHeader { revision }),
                watch_id: *watch_id,
                created: *created,
                canceled: *canceled,
                compact_revision: *compact_revision,
                cancel_reason: cancel_reason.clone(),
                events: events
                    .iter()
                    .map(|(kind, kv)| proto::Event {
                        r#type: match kind {
                            EventKind::Put => 0,
                            EventKind::Delete => proto::EVENT_DELETE,
                            EventKind::Other(t) => *t,
                        },
                        kv: kv.as_ref().map(|(key, mod_revision)| proto::KeyValue {
                            key: key.clone(),
                            mod_revision: *mod_revision,
                            ..Default::default()
                        }),
                    })
                    .collect(),
            }
            .encode_to_vec(),
        }
    }
}

/// Part 3: the watch, against a model of its news and of the revision it resumes after.
fn watch(messages: &[WatchInput], idle_ms: u64) {
    let remote = remote(idle_ms, false);
    let _ = remote.begin(
        StoreOp::Lookup {
            id: session(0, false),
            identity: None,
            now_ms: T0,
        },
        &Limits {
            idle_ms,
            lifetime_ms: 0,
            max_sessions: 10,
            bind_identity: false,
            per_identity: None,
        },
    );
    let mut revision: i64 = 0;
    let mut now = T0;
    for message in messages.iter().take(32) {
        now += 100;
        let bytes = message.bytes();
        if matches!(message, WatchInput::Message { .. }) {
            assert!(proto::WatchResponse::decode(bytes.as_slice()).is_ok());
        }
        let news = remote.watch_message(&bytes, now);
        let expected = match proto::WatchResponse::decode(bytes.as_slice()) {
            Err(_) => WatchNews {
                flush: true,
                close: true,
                deleted: Vec::new(),
            },
            Ok(r) if r.canceled => {
                if r.compact_revision > 0 {
                    revision = 0; // the next watch starts from now
                }
                WatchNews {
                    flush: true,
                    close: true,
                    deleted: Vec::new(),
                }
            }
            Ok(r) => {
                let mut flush = r.created && revision == 0;
                let mut deleted = Vec::new();
                for event in &r.events {
                    if let Some(kv) = &event.kv {
                        revision = revision.max(kv.mod_revision);
                        if event.r#type == proto::EVENT_DELETE {
                            deleted.push(kv.key.clone());
                        }
                    }
                }
                // The resume point moves with events only (not progress notifications); a
                // watch confirmed below it starts over from etcd's revision, cache flushed.
                if let Some(header) = r.header {
                    if r.created && revision == 0 {
                        revision = header.revision;
                    } else if r.created && header.revision < revision {
                        revision = header.revision;
                        flush = true;
                    }
                }
                WatchNews {
                    flush,
                    close: false,
                    deleted,
                }
            }
        };
        assert_eq!(news, expected, "{message:?}");
        if news.close {
            assert!(!remote.watch_fresh(now), "a cancelled watch is not fresh");
        } else {
            assert!(remote.watch_fresh(now), "a watch that spoke is fresh");
        }
        // Reopen it to read where it resumes.
        remote.watch_closed();
        let WatchAction::Open(create) = remote.watch_tick(now) else {
            panic!("a closed watch reopens");
        };
        let create = proto::WatchRequest::decode(create.as_slice()).expect("a WatchRequest");
        let Some(watch_request::RequestUnion::Create(create)) = create.request_union else {
            panic!("a create request");
        };
        let resume = if revision > 0 {
            revision.saturating_add(1)
        } else {
            0
        };
        assert_eq!(
            create.start_revision, resume,
            "resumes after revision {revision}"
        );
    }
}

fuzz_target!(|case: Case| {
    let idle_ms = u64::from(case.idle_s.max(1)) * 1000;
    one_operation(&case, idle_ms);
    fallback_memory(&case.fallback, idle_ms);
    watch(&case.watch, idle_ms);
});
