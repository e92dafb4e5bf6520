//! The etcd session store: sessions valid on every Envoy of a fleet. No I/O here: this module
//! turns the request machine's [`StoreOp`]s into etcd v3 gRPC calls ([`Call`]), and the
//! answers the host feeds back ([`Reply`]) into [`StoreResult`]s; the host adapter only
//! sends bytes and hands them back.
//!
//! Layout in etcd (docs/DESIGN.md, "The etcd store"):
//! - one key per live session, `<prefix><32 hex: SHA-256 of the session ID>`: the key holds
//!   only a digest, so reading etcd gives no usable ID; the value is the session record with
//!   its secret zeroed (the ID's secret proves itself by hashing to the key);
//! - every write carries a lease shared by all the writes of one time window of this VM
//!   (never one lease per session), with a TTL of idle + 3 windows: a session nobody touches
//!   disappears within that, through etcd's own expiry;
//! - a session is touched (its `last_seen` rewritten, under a CAS on its mod revision) at most
//!   once per touch interval, by the first Envoy that sees it due; a CAS that loses to a DELETE
//!   never brings a session back.
//!
//! Each VM keeps a Watch on the prefix: a DELETE anywhere empties that VM's cache of validated
//! sessions within milliseconds. While the watch is not known to be healthy, cached sessions
//! are trusted for at most [`STALE_TRUST_MS`].

pub mod fallback;
pub mod proto;

use super::{Ended, Limits, Lookup, Next, Reservation, Source, StoreOp, StoreResult, Verdict};
use crate::config::EtcdConfig;
use crate::digest;
use crate::record::{Record, State};
use crate::session_id::SessionId;
use prost::Message;
use proto::request_op::Request;
use proto::response_op::Response;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

/// gRPC service of reads, writes and transactions.
pub const KV: &str = "etcdserverpb.KV";
/// gRPC service of leases.
pub const LEASE: &str = "etcdserverpb.Lease";
/// gRPC service of watches.
pub const WATCH: &str = "etcdserverpb.Watch";
/// Metadata every watch stream carries: a member cut off from the leader cancels the watch
/// instead of going silent.
pub const WATCH_METADATA: (&str, &[u8]) = ("hasleader", b"true");
/// How long a cached session is trusted while the watch is not known to be healthy.
pub const STALE_TRUST_MS: u64 = 1000;
/// The watch is healthy while it answered within this (a progress request goes each tick).
pub const WATCH_FRESH_MS: u64 = 1500;
/// The VM's timer period with the etcd store: progress requests, lease grants, counts.
pub const TICK_MS: u64 = 500;
/// How often a VM counts the sessions in etcd (for `max_sessions`, best effort).
pub const COUNT_EVERY_MS: u64 = 5000;
/// Most sessions awaiting `notifications/initialized` a VM remembers the read of.
const UNMARKED_LIMIT: usize = 1024;
/// Most calls one failing operation makes (the first and its retries).
const MAX_ATTEMPTS: u32 = 4;
/// Most writes one backlog flush sends (etcd's default limit is 128 operations per Txn).
const BACKLOG_BATCH: usize = 64;
/// Most writes kept while etcd is away with `unavailable: local`.
const BACKLOG_LIMIT: usize = 16_384;

/// A gRPC call for the host to make on the store's cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Service, e.g. `etcdserverpb.KV`.
    pub service: &'static str,
    /// Method, e.g. `Txn`.
    pub method: &'static str,
    /// The encoded request.
    pub message: Vec<u8>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// gRPC status OK, with the response message.
    Ok(&'a [u8]),
    /// Any other status (the host's timeout comes back as one too).
    Failed(u32),
}

impl<'a> Reply<'a> {
    /// A call's answer as a host reports it: its gRPC status, and the message, which counts
    /// only when the status is OK (0).
    pub fn of(status: u32, message: &'a [u8]) -> Reply<'a> {
        match status {
            0 => Reply::Ok(message),
            status => Reply::Failed(status),
        }
    }
}

/// The store's timing, from the idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A session is touched at most once per this, across all Envoys.
    pub touch_ms: u64,
    /// Writes of one window share a lease.
    pub window_ms: u64,
    /// The leases' TTL, seconds: idle + 3 windows.
    pub lease_ttl_s: i64,
}

impl Timing {
    /// clamp(idle/20, min(5 s, idle/4), 60 s) for touches; windows of at least 5 s.
    pub fn new(idle_ms: u64) -> Timing {
        let floor = (idle_ms / 4).clamp(1, 5000);
        let touch_ms = (idle_ms / 20).clamp(floor, 60_000);
        let window_ms = touch_ms.max(5000);
        let ttl_ms = idle_ms.saturating_add(window_ms.saturating_mul(3));
        Timing {
            touch_ms,
            window_ms,
            lease_ttl_s: i64::try_from(ttl_ms.div_ceil(1000)).unwrap_or(i64::MAX),
        }
    }
}

/// The key of session `id`: the prefix and 128 bits of the ID's SHA-256, in hex.
pub fn key(prefix: &str, id: &SessionId) -> Vec<u8> {
    let digest: [u8; 16] = digest::digest_prefix(&[b"mcp-session-id\0", id.encode().as_bytes()]);
    let mut key = Vec::with_capacity(prefix.len() + 32);
    key.extend_from_slice(prefix.as_bytes());
    for byte in digest {
        key.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    key
}

/// The end of the key range of `prefix` (etcd's "prefix + 1").
pub fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Envoy's `envoy.config.core.v3.GrpcService` naming `cluster`, as a proxy-wasm host takes the
/// upstream of a gRPC call: passing the bare name also works, unless the name's bytes happen to
/// parse as that message (Envoy tries that first; "h1" does). The SDK takes it as a `&str`: the
/// message is ASCII for any ASCII name under 120 bytes (its tags and lengths are single bytes
/// below 0x80); any other name goes bare.
pub fn grpc_service(cluster: &str) -> String {
    let message = encode(&proto::GrpcService {
        envoy_grpc: Some(proto::EnvoyGrpc {
            cluster_name: cluster.to_owned(),
        }),
    });
    String::from_utf8(message).unwrap_or_else(|_| cluster.to_owned())
}

/// The value stored for a record: its encoding with the secret zeroed.
pub fn value(record: &Record) -> Vec<u8> {
    let mut stored = record.clone();
    stored.secret = [0; crate::session_id::SECRET_LEN];
    stored.encode()
}

/// The record in a value read back for `id` (the key matched, so the secret is the ID's).
pub fn record_of(value: &[u8], id: &SessionId) -> Option<Record> {
    let mut record = Record::decode(value)?;
    record.secret = id.secret;
    (record.state == State::Live).then_some(record)
}

fn encode(message: &impl Message) -> Vec<u8> {
    message.encode_to_vec()
}

fn range(key: &[u8]) -> proto::RangeRequest {
    proto::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

fn put(key: &[u8], record: &Record, lease: i64) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(Request::Put(proto::PutRequest {
            key: key.to_vec(),
            value: value(record),
            lease,
        })),
    }
}

fn compare(key: &[u8], target: proto::compare::TargetUnion) -> proto::Compare {
    proto::Compare {
        result: proto::EQUAL,
        target: match target {
            proto::compare::TargetUnion::CreateRevision(_) => proto::TARGET_CREATE,
            proto::compare::TargetUnion::ModRevision(_) => proto::TARGET_MOD,
        },
        key: key.to_vec(),
        target_union: Some(target),
    }
}

/// A Txn: if `key` still has `target`, run `then`; else read the key.
fn txn(key: &[u8], target: proto::compare::TargetUnion, then: proto::RequestOp) -> Call {
    Call {
        service: KV,
        method: "Txn",
        message: encode(&proto::TxnRequest {
            compare: vec![compare(key, target)],
            success: vec![then],
            failure: vec![proto::RequestOp {
                request: Some(Request::Range(range(key))),
            }],
        }),
    }
}

/// The key-value a Txn's failure branch read, if any.
fn failure_read(response: &proto::TxnResponse) -> Option<&proto::KeyValue> {
    response.responses.iter().find_map(|r| match &r.response {
        Some(Response::Range(range)) => range.kvs.first(),
        _ => None,
    })
}

/// Where an operation in flight is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Lookup, MarkInitialized: read the key (linearizable).
    Read,
    /// Lookup: restart the idle clock (CAS on the mod revision read).
    Touch { record: Record },
    /// Lookup: the record had expired; delete it (CAS), whoever wins counts it.
    Expire,
    /// MarkInitialized, Activate: write the record (CAS).
    Mark { record: Record },
    /// End: delete, reading what was there.
    Delete,
    /// Reserve: create-if-absent.
    Create { record: Record },
    /// Get a lease for this window first, then make `then`'s write.
    Grant { then: Box<Stage>, revision: i64 },
}

/// One store operation in flight: the host makes [`Flight::call`], then feeds the answer to
/// [`Remote::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    op: StoreOp,
    id: SessionId,
    key: Vec<u8>,
    stage: Stage,
    call: Call,
    attempts: u32,
    started_ms: u64,
    /// CAS retries after losing a race (bounded).
    races: u32,
}

impl Flight {
    /// The call to make now.
    pub fn call(&self) -> &Call {
        &self.call
    }
}

/// What a VM's calls from its timer are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chore {
    /// A lease for this window.
    Grant(u64),
    /// Counting the sessions.
    Count,
    /// Writing this many backlog operations.
    Flush(usize),
}

/// What the host does with the watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchAction {
    /// Nothing.
    Idle,
    /// Open the stream (`WATCH`/`Watch`, with [`WATCH_METADATA`]) and send this first.
    Open(Vec<u8>),
    /// Send this on the open stream.
    Send(Vec<u8>),
    /// Close the stream (it will be reopened).
    Close,
}

/// What a watch message means for the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchNews {
    /// Ends may have been missed: empty the cache.
    pub flush: bool,
    /// The watch was cancelled: close the stream.
    pub close: bool,
    /// Session keys deleted: forget those sessions.
    pub deleted: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchState {
    /// No stream; open one at the next tick.
    Closed,
    /// Stream opened, create request sent, not confirmed.
    Opening { since_ms: u64 },
    /// Confirmed; `heard_ms` is the last message.
    Open { heard_ms: u64 },
}

/// A write kept while etcd was away (`unavailable: local`), sent when it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Backlog {
    Put(Vec<u8>, Record),
    Delete(Vec<u8>),
}

/// One VM's etcd store: its settings, leases, watch and backlog.
#[derive(Debug)]
pub struct Remote {
    config: EtcdConfig,
    timing: Timing,
    /// Lease per window, granted by this VM.
    leases: RefCell<BTreeMap<u64, i64>>,
    watch: Cell<WatchState>,
    /// Last revision the watch reported (a reopened watch resumes after it).
    revision: Cell<i64>,
    /// Sessions in etcd at the last count, when, and those this VM created since.
    count: Cell<(u64, u64, u64)>,
    backlog: RefCell<Vec<Backlog>>,
    /// A VM serving requests keeps the watch and leases; one that never did (the main
    /// thread's) makes no calls.
    active: Cell<bool>,
    /// Timer chores in flight (one of each kind at a time).
    chores: RefCell<Vec<Chore>>,
    /// Sessions not initialized yet, as their lookups read them (record and mod revision): the
    /// `notifications/initialized` that follows marks them with one CAS, without reading again.
    unmarked: RefCell<HashMap<Vec<u8>, (Record, i64)>>,
}

impl Remote {
    /// The store of one VM.
    pub fn new(config: EtcdConfig, idle_ms: u64) -> Remote {
        Remote {
            config,
            timing: Timing::new(idle_ms),
            leases: RefCell::new(BTreeMap::new()),
            watch: Cell::new(WatchState::Closed),
            revision: Cell::new(0),
            count: Cell::new((0, 0, 0)),
            backlog: RefCell::new(Vec::new()),
            active: Cell::new(false),
            chores: RefCell::new(Vec::new()),
            unmarked: RefCell::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Whether the watch answered recently: then a DELETE anywhere reaches this VM within
    /// milliseconds and cached sessions may serve for a whole touch interval.
    pub fn watch_fresh(&self, now_ms: u64) -> bool {
        matches!(self.watch.get(), WatchState::Open { heard_ms } if now_ms.saturating_sub(heard_ms) <= WATCH_FRESH_MS)
    }

    /// How long a cached session may serve without asking etcd.
    pub fn trust_ms(&self, now_ms: u64) -> u64 {
        if self.watch_fresh(now_ms) {
            self.timing.touch_ms
        } else {
            STALE_TRUST_MS.min(self.timing.touch_ms)
        }
    }

    fn lease(&self, now_ms: u64) -> Option<i64> {
        let window = now_ms / self.timing.window_ms;
        self.leases.borrow().get(&window).copied()
    }

    /// Starts an operation. An `initialize`'s session is written (created, live and not
    /// initialized) when it is reserved, before the upstream sees the request; its activation
    /// writes only what the answer taught, if anything; a release goes to the backlog.
    pub fn begin(&self, op: StoreOp, limits: &Limits) -> Next {
        self.active.set(true);
        match op {
            StoreOp::Reserve {
                secret,
                ref identity,
                now_ms,
            } => {
                let (counted, _, created) = self.count.get();
                if counted.saturating_add(created) >= u64::from(limits.max_sessions) {
                    return Next::Done(StoreResult::Reserved(None));
                }
                let id = session_id(secret);
                // Recorded before the initialize goes upstream, live and not initialized: its
                // ID is revealed only on a successful answer, so nobody can use it before.
                let pending =
                    Record::pending(now_ms, secret, identity.as_deref(), limits.bind_identity);
                let record = pending.activated(now_ms, None);
                let flight = self.flight(op, id, now_ms);
                Next::Call(Box::new(self.write(flight, Stage::Create { record }, 0)))
            }
            StoreOp::Release { id } => {
                // An initialize that failed (or whose stream ended first): its record goes with
                // the timer's next backlog flush; the stream does not wait for it.
                let key = key(&self.config.prefix, &id);
                if let Ok(mut unmarked) = self.unmarked.try_borrow_mut() {
                    unmarked.remove(&key);
                }
                self.defer_delete(key);
                Next::Done(StoreResult::Done(true))
            }
            StoreOp::Lookup { id, now_ms, .. }
            | StoreOp::End { id, now_ms }
            | StoreOp::MarkInitialized { id, now_ms } => {
                let key = key(&self.config.prefix, &id);
                let (stage, call) = match op {
                    StoreOp::End { .. } => (
                        Stage::Delete,
                        Call {
                            service: KV,
                            method: "DeleteRange",
                            message: encode(&proto::DeleteRangeRequest {
                                key: key.clone(),
                                prev_kv: true,
                            }),
                        },
                    ),
                    _ => (Stage::Read, read(&key)),
                };
                let read_before = match op {
                    StoreOp::MarkInitialized { .. } => self.unmarked.borrow_mut().remove(&key),
                    _ => None,
                };
                let flight = Flight {
                    op,
                    id,
                    key,
                    stage,
                    call,
                    attempts: 1,
                    started_ms: now_ms,
                    races: 0,
                };
                match read_before {
                    // The request's own lookup read it a moment ago: straight to the CAS
                    // (which reads it again if it lost).
                    Some((mut record, revision)) => {
                        record.initialized = true;
                        Next::Call(Box::new(self.write(
                            flight,
                            Stage::Mark { record },
                            revision,
                        )))
                    }
                    None => Next::Call(Box::new(flight)),
                }
            }
            StoreOp::Activate {
                id,
                ref reserved,
                ref upstream_id,
                now_ms,
            } => {
                // The reservation is the live record already; only what the answer taught (the
                // upstream's own session ID, the host that answered) is left to write.
                if upstream_id.is_none() && reserved.upstream_host.is_none() {
                    return Next::Done(StoreResult::Done(true));
                }
                let flight = self.flight(op.clone(), id, now_ms);
                let read_before = self
                    .unmarked
                    .try_borrow_mut()
                    .ok()
                    .and_then(|mut unmarked| unmarked.remove(&flight.key));
                match read_before {
                    Some((found, revision)) => {
                        let record = with_upstream(found, &op);
                        Next::Call(Box::new(self.write(
                            flight,
                            Stage::Mark { record },
                            revision,
                        )))
                    }
                    None => Next::Call(Box::new(flight)),
                }
            }
        }
    }

    /// A new flight for `op` on session `id`: a read of its key, to start with.
    fn flight(&self, op: StoreOp, id: SessionId, now_ms: u64) -> Flight {
        let key = key(&self.config.prefix, &id);
        Flight {
            op,
            id,
            call: read(&key),
            key,
            stage: Stage::Read,
            attempts: 1,
            started_ms: now_ms,
            races: 0,
        }
    }

    /// Moves `flight` to a write `stage`: through a lease grant first if this window has no
    /// lease yet. `revision` is the mod revision the CAS expects (0: create).
    fn write(&self, mut flight: Flight, stage: Stage, revision: i64) -> Flight {
        let now_ms = flight.op.now_ms();
        flight.attempts = 1;
        let Some(lease) = self.lease(now_ms) else {
            flight.call = Call {
                service: LEASE,
                method: "LeaseGrant",
                message: encode(&proto::LeaseGrantRequest {
                    ttl: self.timing.lease_ttl_s,
                }),
            };
            flight.stage = Stage::Grant {
                then: Box::new(stage),
                revision,
            };
            return flight;
        };
        flight.call = match &stage {
            Stage::Create { record } => txn(
                &flight.key,
                proto::compare::TargetUnion::CreateRevision(0),
                put(&flight.key, record, lease),
            ),
            Stage::Touch { record } | Stage::Mark { record } => txn(
                &flight.key,
                proto::compare::TargetUnion::ModRevision(revision),
                put(&flight.key, record, lease),
            ),
            Stage::Expire => txn(
                &flight.key,
                proto::compare::TargetUnion::ModRevision(revision),
                proto::RequestOp {
                    request: Some(Request::DeleteRange(proto::DeleteRangeRequest {
                        key: flight.key.clone(),
                        prev_kv: false,
                    })),
                },
            ),
            Stage::Read | Stage::Delete | Stage::Grant { .. } => flight.call.clone(),
        };
        flight.stage = stage;
        flight
    }

    /// Feeds the answer to a flight's call.
    pub fn advance(
        &self,
        mut flight: Box<Flight>,
        reply: Reply<'_>,
        limits: &Limits,
        now_ms: u64,
    ) -> Next {
        let Reply::Ok(bytes) = reply else {
            return self.failed(flight, now_ms);
        };
        let op = flight.op.clone();
        let stage = std::mem::replace(&mut flight.stage, Stage::Read);
        let decoded = match stage {
            Stage::Read => proto::RangeResponse::decode(bytes)
                .ok()
                .map(|r| self.on_read(*flight, r.kvs.first(), limits)),
            Stage::Delete => proto::DeleteRangeResponse::decode(bytes).ok().map(|r| {
                let ended = match r
                    .prev_kvs
                    .first()
                    .and_then(|kv| record_of(&kv.value, &flight.id))
                {
                    // The delete is not idempotent: a retry after an attempt whose answer was
                    // lost (it may have landed) finds nothing. Not a 404 for the client.
                    None if flight.attempts > 1 => Ended::EndedEarlier,
                    None => Ended::NotFound,
                    Some(record)
                        if record.expired(
                            flight.op.now_ms(),
                            limits.idle_ms,
                            limits.lifetime_ms,
                        ) =>
                    {
                        Ended::Expired
                    }
                    Some(record) => Ended::Ended(record),
                };
                Next::Done(StoreResult::Ended(ended))
            }),
            Stage::Grant { then, revision } => proto::LeaseGrantResponse::decode(bytes)
                .ok()
                .filter(|r| r.id != 0 && r.error.is_empty())
                .map(|r| {
                    self.remember_lease(flight.op.now_ms(), r.id);
                    Next::Call(Box::new(self.write(*flight, *then, revision)))
                }),
            Stage::Create { record } => proto::TxnResponse::decode(bytes).ok().map(|r| {
                // A retried create whose first attempt landed finds its own record.
                let revision = if r.succeeded {
                    r.header.as_ref().map(|h| h.revision)
                } else {
                    failure_read(&r)
                        .filter(|kv| {
                            record_of(&kv.value, &flight.id)
                                .is_some_and(|found| found.created_ms == record.created_ms)
                        })
                        .map(|kv| kv.mod_revision)
                };
                let Some(revision) = revision else {
                    // Another session holds this key: only a repeated secret could.
                    return Next::Done(StoreResult::Reserved(None));
                };
                if r.succeeded {
                    let (n, at, created) = self.count.get();
                    self.count.set((n, at, created.saturating_add(1)));
                }
                self.note_unmarked(&flight.key, &record, revision);
                Next::Done(StoreResult::Reserved(Some(Reservation {
                    id: flight.id,
                    record,
                    expired: 0,
                    from: Source::Hint,
                })))
            }),
            Stage::Touch { record } => proto::TxnResponse::decode(bytes).ok().map(|r| {
                if r.succeeded {
                    let revision = r.header.map_or(0, |h| h.revision);
                    Next::Done(StoreResult::Lookup(Lookup::Live(
                        record,
                        revision_tag(revision),
                    )))
                } else {
                    self.raced(*flight, failure_read(&r), limits)
                }
            }),
            Stage::Mark { .. } => proto::TxnResponse::decode(bytes).ok().map(|r| {
                if r.succeeded {
                    Next::Done(StoreResult::Done(true))
                } else {
                    self.raced(*flight, failure_read(&r), limits)
                }
            }),
            Stage::Expire => proto::TxnResponse::decode(bytes).ok().map(|r| {
                Next::Done(StoreResult::Lookup(if r.succeeded {
                    Lookup::Expired
                } else {
                    Lookup::NotFound
                }))
            }),
        };
        decoded.unwrap_or_else(|| {
            log::warn!("etcd answered with bytes that do not decode");
            Next::Unavailable(op)
        })
    }

    /// A CAS lost (another Envoy touched or ended the session): decide again on what the
    /// failure branch read, at most twice.
    fn raced(&self, mut flight: Flight, kv: Option<&proto::KeyValue>, limits: &Limits) -> Next {
        flight.races += 1;
        if flight.races > 2 {
            return Next::Done(match flight.op {
                StoreOp::MarkInitialized { .. } | StoreOp::Activate { .. } => {
                    StoreResult::Done(false)
                }
                _ => StoreResult::Lookup(Lookup::NotFound),
            });
        }
        self.on_read(flight, kv, limits)
    }

    /// Decides on a record read (or its absence).
    fn on_read(&self, flight: Flight, kv: Option<&proto::KeyValue>, limits: &Limits) -> Next {
        let found = kv.and_then(|kv| Some((record_of(&kv.value, &flight.id)?, kv.mod_revision)));
        match flight.op {
            StoreOp::Lookup {
                ref identity,
                now_ms,
                ..
            } => {
                let Some((record, revision)) = found else {
                    return Next::Done(StoreResult::Lookup(Lookup::NotFound));
                };
                let verdict = limits.judge(
                    &record,
                    &flight.id.secret,
                    identity.as_deref(),
                    now_ms,
                    self.timing.touch_ms,
                );
                if verdict == Verdict::Expired {
                    return Next::Call(Box::new(self.write(flight, Stage::Expire, revision)));
                }
                if !verdict.serves() {
                    return Next::Done(StoreResult::Lookup(Lookup::NotFound));
                }
                if !record.initialized {
                    self.note_unmarked(&flight.key, &record, revision);
                }
                if verdict == Verdict::Fresh {
                    return Next::Done(StoreResult::Lookup(Lookup::Live(
                        record,
                        revision_tag(revision),
                    )));
                }
                let mut touched = record;
                touched.last_seen_ms = now_ms;
                Next::Call(Box::new(self.write(
                    flight,
                    Stage::Touch { record: touched },
                    revision,
                )))
            }
            StoreOp::MarkInitialized { .. } => {
                let Some((mut record, revision)) = found else {
                    return Next::Done(StoreResult::Done(false));
                };
                if record.initialized {
                    return Next::Done(StoreResult::Done(true));
                }
                record.initialized = true;
                Next::Call(Box::new(self.write(
                    flight,
                    Stage::Mark { record },
                    revision,
                )))
            }
            StoreOp::Activate { .. } => {
                let Some((found, revision)) = found else {
                    return Next::Done(StoreResult::Done(false));
                };
                let record = with_upstream(found, &flight.op);
                Next::Call(Box::new(self.write(
                    flight,
                    Stage::Mark { record },
                    revision,
                )))
            }
            _ => Next::Done(StoreResult::Done(false)),
        }
    }

    /// Remembers a record not initialized yet as read or written at `revision`: the
    /// `notifications/initialized` (or the activation) that follows writes it with one CAS.
    fn note_unmarked(&self, key: &[u8], record: &Record, revision: i64) {
        if let Ok(mut unmarked) = self.unmarked.try_borrow_mut() {
            if unmarked.len() >= UNMARKED_LIMIT {
                unmarked.clear();
            }
            unmarked.insert(key.to_vec(), (record.clone(), revision));
        }
    }

    /// A call failed: again (Envoy's round robin picks another member; a leader election
    /// passes) while a quarter of the operation's deadline is left, at most
    /// [`MAX_ATTEMPTS`] times in all; else etcd is unavailable for this operation.
    fn failed(&self, mut flight: Box<Flight>, now_ms: u64) -> Next {
        if flight.attempts < MAX_ATTEMPTS
            && self.time_left(&flight, now_ms) > self.config.timeout_ms / 4
        {
            flight.attempts += 1;
            return Next::Call(flight);
        }
        Next::Unavailable(flight.op)
    }

    /// What is left of the operation's deadline (`timeout_ms` from its start): the timeout
    /// of its next call.
    pub fn time_left(&self, flight: &Flight, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(flight.started_ms);
        self.config.timeout_ms.saturating_sub(elapsed).max(10)
    }

    fn remember_lease(&self, now_ms: u64, lease: i64) {
        let window = now_ms / self.timing.window_ms;
        let mut leases = self.leases.borrow_mut();
        leases.insert(window, lease);
        // Windows before the previous one are done with.
        leases.retain(|w, _| w + 1 >= window);
    }

    /// Writes `record` under `key` when etcd is back (`unavailable: local`); the session is
    /// kept in this Envoy's memory meanwhile.
    pub fn defer_put(&self, key: Vec<u8>, record: Record) {
        self.defer(Backlog::Put(key, record));
    }

    /// Deletes `key` when etcd is back (`unavailable: local`).
    pub fn defer_delete(&self, key: Vec<u8>) {
        self.defer(Backlog::Delete(key));
    }

    fn defer(&self, write: Backlog) {
        let mut backlog = self.backlog.borrow_mut();
        // One write per key, the last: etcd refuses a transaction that names a key twice, and
        // a flush is one transaction.
        let key = match &write {
            Backlog::Put(key, _) | Backlog::Delete(key) => key,
        };
        backlog.retain(|queued| match queued {
            Backlog::Put(k, _) | Backlog::Delete(k) => k != key,
        });
        if backlog.len() >= BACKLOG_LIMIT {
            log::warn!("etcd store backlog full ({BACKLOG_LIMIT}): a write made while etcd was away is dropped");
            return;
        }
        backlog.push(write);
    }

    /// The calls this VM's timer makes now: a lease for the next window ahead of time, a count
    /// of the sessions, a backlog flush. At most one of each kind in flight.
    pub fn chores(&self, now_ms: u64) -> Vec<(Chore, Call)> {
        let mut calls = Vec::new();
        if !self.active.get() {
            return calls;
        }
        let busy = |chore: &dyn Fn(&Chore) -> bool| self.chores.borrow().iter().any(chore);
        let window = now_ms / self.timing.window_ms;
        let ahead = (now_ms + self.timing.window_ms / 2) / self.timing.window_ms;
        for w in [window, ahead] {
            if !self.leases.borrow().contains_key(&w) && !busy(&|c| matches!(c, Chore::Grant(_))) {
                calls.push((
                    Chore::Grant(w),
                    Call {
                        service: LEASE,
                        method: "LeaseGrant",
                        message: encode(&proto::LeaseGrantRequest {
                            ttl: self.timing.lease_ttl_s,
                        }),
                    },
                ));
                break;
            }
        }
        let (_, counted_at, _) = self.count.get();
        if now_ms.saturating_sub(counted_at) >= COUNT_EVERY_MS && !busy(&|c| *c == Chore::Count) {
            calls.push((
                Chore::Count,
                Call {
                    service: KV,
                    method: "Range",
                    message: encode(&proto::RangeRequest {
                        key: self.config.prefix.as_bytes().to_vec(),
                        range_end: range_end(&self.config.prefix),
                        count_only: true,
                    }),
                },
            ));
        }
        let lease = self.lease(now_ms);
        let backlog = self.backlog.borrow();
        if let (Some(lease), false) = (lease, backlog.is_empty()) {
            if !busy(&|c| matches!(c, Chore::Flush(_))) {
                let batch: Vec<proto::RequestOp> = backlog
                    .iter()
                    .take(BACKLOG_BATCH)
                    .map(|op| match op {
                        Backlog::Put(key, record) => put(key, record, lease),
                        Backlog::Delete(key) => proto::RequestOp {
                            request: Some(Request::DeleteRange(proto::DeleteRangeRequest {
                                key: key.clone(),
                                prev_kv: false,
                            })),
                        },
                    })
                    .collect();
                calls.push((
                    Chore::Flush(batch.len()),
                    Call {
                        service: KV,
                        method: "Txn",
                        message: encode(&proto::TxnRequest {
                            compare: Vec::new(),
                            success: batch,
                            failure: Vec::new(),
                        }),
                    },
                ));
            }
        }
        self.chores
            .borrow_mut()
            .extend(calls.iter().map(|(chore, _)| *chore));
        calls
    }

    /// The answer to a timer chore: `None` if it failed, else the keys a backlog flush wrote
    /// (none for the other chores).
    pub fn chore_done(&self, chore: Chore, reply: Reply<'_>, now_ms: u64) -> Option<Vec<Vec<u8>>> {
        self.chores.borrow_mut().retain(|c| *c != chore);
        let Reply::Ok(bytes) = reply else {
            return None;
        };
        match chore {
            Chore::Grant(window) => match proto::LeaseGrantResponse::decode(bytes) {
                Ok(r) if r.id != 0 && r.error.is_empty() => {
                    self.leases.borrow_mut().insert(window, r.id);
                    let current = now_ms / self.timing.window_ms;
                    self.leases.borrow_mut().retain(|w, _| w + 1 >= current);
                    Some(Vec::new())
                }
                _ => None,
            },
            Chore::Count => match proto::RangeResponse::decode(bytes) {
                Ok(r) => {
                    self.count
                        .set((u64::try_from(r.count).unwrap_or(0), now_ms, 0));
                    Some(Vec::new())
                }
                Err(_) => None,
            },
            Chore::Flush(n) => match proto::TxnResponse::decode(bytes) {
                Ok(r) if r.succeeded => {
                    let mut backlog = self.backlog.borrow_mut();
                    let n = n.min(backlog.len());
                    Some(
                        backlog
                            .drain(..n)
                            .map(|op| match op {
                                Backlog::Put(key, _) | Backlog::Delete(key) => key,
                            })
                            .collect(),
                    )
                }
                _ => None,
            },
        }
    }

    /// Sessions in etcd at the last count.
    pub fn counted(&self) -> u64 {
        self.count.get().0
    }

    /// The timer's step for the watch stream.
    pub fn watch_tick(&self, now_ms: u64) -> WatchAction {
        if !self.active.get() {
            return WatchAction::Idle;
        }
        match self.watch.get() {
            WatchState::Closed => {
                self.watch.set(WatchState::Opening { since_ms: now_ms });
                let start = self.revision.get();
                WatchAction::Open(encode(&proto::WatchRequest {
                    request_union: Some(proto::watch_request::RequestUnion::Create(
                        proto::WatchCreateRequest {
                            key: self.config.prefix.as_bytes().to_vec(),
                            range_end: range_end(&self.config.prefix),
                            start_revision: if start > 0 { start + 1 } else { 0 },
                            progress_notify: true,
                        },
                    )),
                }))
            }
            WatchState::Opening { since_ms } => {
                if now_ms.saturating_sub(since_ms) > self.config.timeout_ms.max(WATCH_FRESH_MS) {
                    WatchAction::Close
                } else {
                    WatchAction::Idle
                }
            }
            WatchState::Open { heard_ms } => {
                if now_ms.saturating_sub(heard_ms) > 2 * WATCH_FRESH_MS {
                    WatchAction::Close
                } else {
                    WatchAction::Send(encode(&proto::WatchRequest {
                        request_union: Some(proto::watch_request::RequestUnion::Progress(
                            proto::WatchProgressRequest {},
                        )),
                    }))
                }
            }
        }
    }

    /// A message on the watch stream.
    pub fn watch_message(&self, bytes: &[u8], now_ms: u64) -> WatchNews {
        let Ok(response) = proto::WatchResponse::decode(bytes) else {
            return WatchNews {
                flush: true,
                close: true,
                deleted: Vec::new(),
            };
        };
        // A watch that starts from now (the first, or after a compaction) says nothing of the
        // ends before it: what the cache holds from then must go.
        let mut news = WatchNews {
            flush: response.created && self.revision.get() == 0,
            ..WatchNews::default()
        };
        if response.canceled {
            // Compacted past where it resumed (or cut off from the leader): events may be
            // lost; start over from now, with an empty cache.
            if response.compact_revision > 0 {
                self.revision.set(0);
            }
            news.flush = true;
            news.close = true;
            self.watch.set(WatchState::Closed);
            return news;
        }
        for event in &response.events {
            if let Some(kv) = &event.kv {
                self.revision.set(self.revision.get().max(kv.mod_revision));
                if event.r#type == proto::EVENT_DELETE {
                    news.deleted.push(kv.key.clone());
                }
            }
        }
        if let Some(header) = response.header {
            // Progress notifications carry the revision everything before has been sent at.
            if response.events.is_empty() && !response.created {
                self.revision.set(self.revision.get().max(header.revision));
            }
            if response.created && self.revision.get() == 0 {
                self.revision.set(header.revision);
            }
        }
        self.watch.set(WatchState::Open { heard_ms: now_ms });
        news
    }

    /// The watch stream closed (or never opened): reopen at the next tick.
    pub fn watch_closed(&self) {
        self.watch.set(WatchState::Closed);
    }
}

/// The session ID of a new session with `secret`. The slot only keys the caches: any bits of
/// the secret will do.
pub fn session_id(secret: [u8; crate::session_id::SECRET_LEN]) -> SessionId {
    let [a, b, c, d, ..] = secret;
    SessionId {
        slot: u32::from_le_bytes([a, b, c, d]),
        secret,
    }
}

/// `found` with what an activation learnt from the answer (the upstream's own session ID,
/// the host that answered).
fn with_upstream(mut found: Record, op: &StoreOp) -> Record {
    if let StoreOp::Activate {
        reserved,
        upstream_id,
        ..
    } = op
    {
        found.upstream_id.clone_from(upstream_id);
        found.upstream_host.clone_from(&reserved.upstream_host);
    }
    found
}

/// The mod revision, as the `u32` tag a lookup carries (unused by the machine).
fn revision_tag(revision: i64) -> u32 {
    u32::try_from(revision & 0xffff_ffff).unwrap_or(0)
}

fn read(key: &[u8]) -> Call {
    Call {
        service: KV,
        method: "Range",
        message: encode(&range(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{live_record, T0};

    const IDLE: u64 = 600_000;

    fn remote() -> Remote {
        Remote::new(
            EtcdConfig {
                cluster: "etcd".into(),
                prefix: "mcp-sessions/".into(),
                timeout_ms: 1000,
                fall_back_to_local: false,
            },
            IDLE,
        )
    }

    fn limits() -> Limits {
        Limits {
            idle_ms: IDLE,
            lifetime_ms: 86_400_000,
            max_sessions: 100,
            bind_identity: false,
        }
    }

    fn id() -> SessionId {
        SessionId {
            slot: 7,
            secret: [0xab; 16],
        }
    }

    fn kv(record: &Record, mod_revision: i64) -> proto::KeyValue {
        proto::KeyValue {
            key: key("mcp-sessions/", &id()),
            create_revision: 5,
            mod_revision,
            value: value(record),
            lease: 1,
        }
    }

    fn bytes(message: &impl Message) -> Vec<u8> {
        message.encode_to_vec()
    }

    fn call(next: Next) -> Box<Flight> {
        match next {
            Next::Call(flight) => flight,
            other => panic!("expected a call, got {other:?}"),
        }
    }

    fn done(next: Next) -> StoreResult {
        match next {
            Next::Done(result) => result,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn granted(r: &Remote, flight: Box<Flight>, now: u64) -> Box<Flight> {
        assert_eq!(flight.call().method, "LeaseGrant");
        let grant = bytes(&proto::LeaseGrantResponse {
            id: 99,
            ttl: r.timing().lease_ttl_s,
            ..Default::default()
        });
        call(r.advance(flight, Reply::Ok(&grant), &limits(), now))
    }

    #[test]
    fn the_cluster_is_named_by_a_grpc_service_message() {
        // field 1 (envoy_grpc), length 6; inside it field 1 (cluster_name), length 4.
        assert_eq!(grpc_service("etcd"), "\u{a}\u{6}\u{a}\u{4}etcd");
        let decoded = proto::GrpcService::decode(grpc_service("h1").as_bytes()).unwrap();
        assert_eq!(decoded.envoy_grpc.unwrap().cluster_name, "h1");
        // A name whose message would not be ASCII goes bare.
        let long = "c".repeat(200);
        assert_eq!(grpc_service(&long), long);
    }

    #[test]
    fn timing_follows_the_idle_timeout() {
        let t = Timing::new(1_800_000);
        assert_eq!(t.touch_ms, 60_000);
        assert_eq!(t.window_ms, 60_000);
        assert_eq!(t.lease_ttl_s, 1800 + 180);
        let t = Timing::new(600_000);
        assert_eq!(t.touch_ms, 30_000);
        let t = Timing::new(4_000);
        assert_eq!((t.touch_ms, t.window_ms, t.lease_ttl_s), (1_000, 5_000, 19));
    }

    #[test]
    fn keys_and_values_hold_no_session_id() {
        let id = id();
        let key = key("p/", &id);
        assert_eq!(key.len(), 2 + 32);
        assert_eq!(key, super::key("p/", &id), "deterministic");
        let encoded = id.encode();
        assert!(!String::from_utf8_lossy(&key).contains(&encoded[8..]));
        let stored = value(&live_record(id.secret, T0));
        assert!(!stored.windows(16).any(|w| w == id.secret));
        let back = record_of(&stored, &id).unwrap();
        assert_eq!(back, live_record(id.secret, T0));
        assert_eq!(range_end("mcp-sessions/"), b"mcp-sessions0".to_vec());
        assert_eq!(range_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn a_lookup_of_a_recently_touched_session_is_one_read() {
        let r = remote();
        let now = T0 + 1_000;
        let op = StoreOp::Lookup {
            id: id(),
            identity: None,
            now_ms: now,
        };
        let flight = call(r.begin(op, &limits()));
        assert_eq!((flight.call().service, flight.call().method), (KV, "Range"));
        let answer = bytes(&proto::RangeResponse {
            kvs: vec![kv(&live_record(id().secret, T0), 12)],
            ..Default::default()
        });
        let result = done(r.advance(flight, Reply::Ok(&answer), &limits(), now));
        assert!(
            matches!(result, StoreResult::Lookup(Lookup::Live(record, 12)) if record.last_seen_ms == T0)
        );
    }

    #[test]
    fn a_lookup_due_a_touch_writes_once_under_a_cas_with_a_shared_lease() {
        let r = remote();
        let now = T0 + r.timing().touch_ms;
        let op = StoreOp::Lookup {
            id: id(),
            identity: None,
            now_ms: now,
        };
        let flight = call(r.begin(op.clone(), &limits()));
        let answer = bytes(&proto::RangeResponse {
            kvs: vec![kv(&live_record(id().secret, T0), 12)],
            ..Default::default()
        });
        let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
        let flight = granted(&r, flight, now);
        let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
        assert_eq!(txn.compare.len(), 1);
        assert_eq!(
            txn.compare[0].target_union,
            Some(proto::compare::TargetUnion::ModRevision(12))
        );
        let Some(Request::Put(put)) = &txn.success[0].request else {
            panic!("a put")
        };
        assert_eq!(put.lease, 99);
        let ok = bytes(&proto::TxnResponse {
            header: Some(proto::ResponseHeader { revision: 13 }),
            succeeded: true,
            responses: Vec::new(),
        });
        let result = done(r.advance(flight, Reply::Ok(&ok), &limits(), now));
        assert!(
            matches!(result, StoreResult::Lookup(Lookup::Live(record, 13)) if record.last_seen_ms == now)
        );

        // The next touch in the same window reuses the lease: no grant.
        let flight = call(r.begin(op, &limits()));
        let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
        assert_eq!(flight.call().method, "Txn");
    }

    #[test]
    fn a_touch_that_loses_to_a_delete_finds_nothing() {
        let r = remote();
        let now = T0 + r.timing().touch_ms;
        r.remember_lease(now, 5);
        let op = StoreOp::Lookup {
            id: id(),
            identity: None,
            now_ms: now,
        };
        let flight = call(r.begin(op, &limits()));
        let answer = bytes(&proto::RangeResponse {
            kvs: vec![kv(&live_record(id().secret, T0), 12)],
            ..Default::default()
        });
        let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
        let lost = bytes(&proto::TxnResponse {
            succeeded: false,
            responses: vec![proto::ResponseOp {
                response: Some(Response::Range(proto::RangeResponse::default())),
            }],
            ..Default::default()
        });
        let result = done(r.advance(flight, Reply::Ok(&lost), &limits(), now));
        assert_eq!(result, StoreResult::Lookup(Lookup::NotFound));
    }

    #[test]
    fn an_expired_record_is_deleted_under_a_cas_and_counted_once() {
        let r = remote();
        let now = T0 + IDLE + 1;
        r.remember_lease(now, 5);
        let op = StoreOp::Lookup {
            id: id(),
            identity: None,
            now_ms: now,
        };
        let flight = call(r.begin(op, &limits()));
        let answer = bytes(&proto::RangeResponse {
            kvs: vec![kv(&live_record(id().secret, T0), 12)],
            ..Default::default()
        });
        let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
        let won = bytes(&proto::TxnResponse {
            succeeded: true,
            ..Default::default()
        });
        let result = done(r.advance(flight, Reply::Ok(&won), &limits(), now));
        assert_eq!(result, StoreResult::Lookup(Lookup::Expired));
    }

    #[test]
    fn a_reservation_is_one_create_if_absent_and_a_retried_create_recognises_itself() {
        let r = remote();
        r.remember_lease(T0, 5);
        let secret = id().secret;
        let op = StoreOp::Reserve {
            secret,
            identity: None,
            now_ms: T0,
        };
        let flight = call(r.begin(op.clone(), &limits()));
        let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
        assert_eq!(
            txn.compare[0].target_union,
            Some(proto::compare::TargetUnion::CreateRevision(0))
        );
        let ok = bytes(&proto::TxnResponse {
            succeeded: true,
            header: Some(proto::ResponseHeader { revision: 7 }),
            ..Default::default()
        });
        let StoreResult::Reserved(Some(reservation)) =
            done(r.advance(flight, Reply::Ok(&ok), &limits(), T0))
        else {
            panic!("a reservation")
        };
        // Written live, not initialized, before the upstream sees the initialize.
        assert_eq!(reservation.id, session_id(secret));
        assert_eq!(reservation.record.state, State::Live);
        assert!(!reservation.record.initialized);
        // The first attempt landed but its answer was lost: the retry finds its own record.
        let flight = call(r.begin(op.clone(), &limits()));
        let mut mine = live_record(secret, T0);
        mine.initialized = false;
        let found = |record: &Record| {
            bytes(&proto::TxnResponse {
                succeeded: false,
                responses: vec![proto::ResponseOp {
                    response: Some(Response::Range(proto::RangeResponse {
                        kvs: vec![kv(record, 3)],
                        ..Default::default()
                    })),
                }],
                ..Default::default()
            })
        };
        assert!(matches!(
            done(r.advance(flight, Reply::Ok(&found(&mine)), &limits(), T0)),
            StoreResult::Reserved(Some(_))
        ));
        // Someone else's record under the same key: not ours.
        let flight = call(r.begin(op, &limits()));
        let theirs = live_record(secret, T0 - 5);
        assert_eq!(
            done(r.advance(flight, Reply::Ok(&found(&theirs)), &limits(), T0)),
            StoreResult::Reserved(None)
        );
    }

    /// Issue 16: an activation writes nothing unless the answer taught something to record;
    /// then one CAS on the revision the reservation's create was answered at. A release makes
    /// no call: its delete waits in the backlog for the timer.
    #[test]
    fn an_activation_writes_only_what_the_answer_taught_and_a_release_is_deferred() {
        let r = remote();
        r.remember_lease(T0, 5);
        let secret = id().secret;
        let reserve = StoreOp::Reserve {
            secret,
            identity: None,
            now_ms: T0,
        };
        let flight = call(r.begin(reserve, &limits()));
        let ok = bytes(&proto::TxnResponse {
            succeeded: true,
            header: Some(proto::ResponseHeader { revision: 7 }),
            ..Default::default()
        });
        let StoreResult::Reserved(Some(reservation)) =
            done(r.advance(flight, Reply::Ok(&ok), &limits(), T0))
        else {
            panic!("a reservation")
        };
        let plain = StoreOp::Activate {
            id: reservation.id,
            reserved: reservation.record.clone(),
            upstream_id: None,
            now_ms: T0 + 5,
        };
        assert_eq!(done(r.begin(plain, &limits())), StoreResult::Done(true));
        let mapped = StoreOp::Activate {
            id: reservation.id,
            reserved: reservation.record.clone(),
            upstream_id: Some("up-1".into()),
            now_ms: T0 + 5,
        };
        let flight = call(r.begin(mapped.clone(), &limits()));
        let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
        assert_eq!(
            txn.compare[0].target_union,
            Some(proto::compare::TargetUnion::ModRevision(7))
        );
        let Some(proto::request_op::Request::Put(put)) = &txn.success[0].request else {
            panic!("a put")
        };
        let written = record_of(&put.value, &reservation.id).unwrap();
        assert_eq!(written.upstream_id.as_deref(), Some("up-1"));
        assert_eq!(
            done(r.advance(flight, Reply::Ok(&ok), &limits(), T0 + 5)),
            StoreResult::Done(true)
        );
        // Without the create's revision at hand: a read first.
        let flight = call(r.begin(mapped, &limits()));
        assert_eq!(flight.call().method, "Range");
        // A release: no call; the timer's next flush deletes the key.
        assert_eq!(
            done(r.begin(StoreOp::Release { id: reservation.id }, &limits())),
            StoreResult::Done(true)
        );
        let chores = r.chores(T0 + 10);
        let flush = chores
            .iter()
            .find(|(chore, _)| matches!(chore, Chore::Flush(1)))
            .expect("a flush of the release");
        let txn = proto::TxnRequest::decode(flush.1.message.as_slice()).unwrap();
        assert!(matches!(
            &txn.success[0].request,
            Some(proto::request_op::Request::DeleteRange(d)) if d.key == key("mcp-sessions/", &reservation.id)
        ));
    }

    /// A put then a delete of the same key while etcd is away (a session made and ended in an
    /// outage): one write per key in the backlog, the last, since etcd refuses a transaction
    /// that names a key twice. Failed before: the flush carried both and was refused forever.
    #[test]
    fn the_backlog_keeps_one_write_per_key_the_last() {
        let r = remote();
        r.remember_lease(T0, 5);
        let (a, b) = (b"mcps/a".to_vec(), b"mcps/b".to_vec());
        r.defer_put(a.clone(), live_record([1; 16], T0));
        r.defer_put(b.clone(), live_record([2; 16], T0));
        r.defer_delete(a.clone());
        let _ = r.begin(StoreOp::Release { id: id() }, &limits()); // makes the VM active
        let chores = r.chores(T0);
        let (_, flush) = chores
            .iter()
            .find(|(chore, _)| matches!(chore, Chore::Flush(_)))
            .expect("a flush");
        let txn = proto::TxnRequest::decode(flush.message.as_slice()).unwrap();
        let keys: Vec<(bool, Vec<u8>)> = txn
            .success
            .iter()
            .map(|op| match &op.request {
                Some(proto::request_op::Request::Put(p)) => (true, p.key.clone()),
                Some(proto::request_op::Request::DeleteRange(d)) => (false, d.key.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let released = key("mcp-sessions/", &id());
        assert_eq!(keys, vec![(true, b), (false, a), (false, released)]);
    }

    #[test]
    fn an_end_is_one_delete_that_reports_what_it_removed() {
        let r = remote();
        let op = StoreOp::End {
            id: id(),
            now_ms: T0 + 5,
        };
        let flight = call(r.begin(op.clone(), &limits()));
        assert_eq!(flight.call().method, "DeleteRange");
        let deleted = bytes(&proto::DeleteRangeResponse {
            deleted: 1,
            prev_kvs: vec![kv(&live_record(id().secret, T0), 4)],
            ..Default::default()
        });
        assert!(matches!(
            done(r.advance(flight, Reply::Ok(&deleted), &limits(), T0 + 5)),
            StoreResult::Ended(Ended::Ended(_))
        ));
        let flight = call(r.begin(op.clone(), &limits()));
        let nothing = bytes(&proto::DeleteRangeResponse::default());
        assert_eq!(
            done(r.advance(flight, Reply::Ok(&nothing), &limits(), T0 + 5)),
            StoreResult::Ended(Ended::NotFound)
        );
        // The first attempt timed out (it may have landed); the retry finds nothing: that is
        // this end's own doing, not a 404. Seen in test_cluster's leader kill under load.
        let flight = call(r.begin(op, &limits()));
        let retry = call(r.advance(flight, Reply::Failed(4), &limits(), T0 + 600));
        assert_eq!(retry.call().method, "DeleteRange");
        assert_eq!(
            done(r.advance(retry, Reply::Ok(&nothing), &limits(), T0 + 600)),
            StoreResult::Ended(Ended::EndedEarlier)
        );
    }

    #[test]
    fn a_failed_call_is_made_once_more_then_etcd_is_unavailable() {
        let r = remote();
        let op = StoreOp::Lookup {
            id: id(),
            identity: None,
            now_ms: T0,
        };
        let mut flight = call(r.begin(op.clone(), &limits()));
        for at in [10, 20, 30] {
            flight = call(r.advance(flight, Reply::Failed(14), &limits(), T0 + at));
            assert_eq!(flight.call().method, "Range");
            assert_eq!(r.time_left(&flight, T0 + at), 1000 - at);
        }
        assert!(matches!(
            r.advance(flight, Reply::Failed(14), &limits(), T0 + 40),
            Next::Unavailable(o) if o == op
        ));
        // A failure with less than a quarter of the deadline left is not retried.
        let flight = call(r.begin(op, &limits()));
        assert!(matches!(
            r.advance(flight, Reply::Failed(4), &limits(), T0 + 760),
            Next::Unavailable(_)
        ));
        // Garbage is a failure too, never a 404.
        let flight = call(r.begin(
            StoreOp::Lookup {
                id: id(),
                identity: None,
                now_ms: T0,
            },
            &limits(),
        ));
        assert!(matches!(
            r.advance(flight, Reply::Ok(&[0xff, 0xff, 0xff]), &limits(), T0),
            Next::Unavailable(_)
        ));
    }

    #[test]
    fn marking_initialized_after_the_requests_own_lookup_is_one_cas() {
        let r = remote();
        r.remember_lease(T0, 5);
        let mut fresh = live_record(id().secret, T0);
        fresh.initialized = false;
        let lookup = StoreOp::Lookup {
            id: id(),
            identity: None,
            now_ms: T0 + 1,
        };
        let flight = call(r.begin(lookup, &limits()));
        let answer = bytes(&proto::RangeResponse {
            kvs: vec![kv(&fresh, 8)],
            ..Default::default()
        });
        let _ = done(r.advance(flight, Reply::Ok(&answer), &limits(), T0 + 1));
        let mark = StoreOp::MarkInitialized {
            id: id(),
            now_ms: T0 + 2,
        };
        let flight = call(r.begin(mark.clone(), &limits()));
        let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
        assert_eq!(
            txn.compare[0].target_union,
            Some(proto::compare::TargetUnion::ModRevision(8))
        );
        // Without a lookup just before: a read first.
        let flight = call(r.begin(mark, &limits()));
        assert_eq!(flight.call().method, "Range");
    }

    #[test]
    fn reserve_respects_the_counted_sessions() {
        let r = remote();
        let op = StoreOp::Reserve {
            secret: [1; 16],
            identity: None,
            now_ms: T0,
        };
        assert!(matches!(r.begin(op.clone(), &limits()), Next::Call(_)));
        let counted = bytes(&proto::RangeResponse {
            count: 100,
            ..Default::default()
        });
        assert!(r
            .chore_done(Chore::Count, Reply::Ok(&counted), T0)
            .is_some());
        assert_eq!(done(r.begin(op, &limits())), StoreResult::Reserved(None));
    }

    #[test]
    fn the_watch_opens_confirms_flushes_on_deletes_and_reopens_after_compaction() {
        let r = remote();
        assert_eq!(
            r.watch_tick(T0),
            WatchAction::Idle,
            "idle until the VM serves"
        );
        let _ = r.begin(StoreOp::Release { id: id() }, &limits());
        let WatchAction::Open(create) = r.watch_tick(T0) else {
            panic!("open")
        };
        let create = proto::WatchRequest::decode(create.as_slice()).unwrap();
        assert!(matches!(
            create.request_union,
            Some(proto::watch_request::RequestUnion::Create(ref c)) if c.start_revision == 0 && c.range_end == b"mcp-sessions0"
        ));
        assert!(!r.watch_fresh(T0));
        assert_eq!(r.trust_ms(T0), STALE_TRUST_MS);
        let created = bytes(&proto::WatchResponse {
            header: Some(proto::ResponseHeader { revision: 40 }),
            created: true,
            ..Default::default()
        });
        let news = r.watch_message(&created, T0 + 5);
        assert!(!news.close);
        assert!(
            news.flush,
            "entries cached before a watch from now may have missed an end"
        );
        assert!(r.watch_fresh(T0 + 5));
        assert_eq!(r.trust_ms(T0 + 5), r.timing().touch_ms);
        assert!(matches!(r.watch_tick(T0 + 500), WatchAction::Send(_)));
        let deleted = bytes(&proto::WatchResponse {
            events: vec![proto::Event {
                r#type: proto::EVENT_DELETE,
                kv: Some(proto::KeyValue {
                    mod_revision: 41,
                    ..Default::default()
                }),
            }],
            ..Default::default()
        });
        let news = r.watch_message(&deleted, T0 + 600);
        assert!(!news.flush);
        assert_eq!(news.deleted, vec![Vec::<u8>::new()]);
        // Silent too long: closed, and cached sessions are trusted for a second only.
        assert!(!r.watch_fresh(T0 + 600 + WATCH_FRESH_MS + 1));
        assert_eq!(
            r.watch_tick(T0 + 600 + 2 * WATCH_FRESH_MS + 1),
            WatchAction::Close
        );
        r.watch_closed();
        // Reopened after the last revision seen.
        let WatchAction::Open(create) = r.watch_tick(T0 + 5000) else {
            panic!("reopen")
        };
        let create = proto::WatchRequest::decode(create.as_slice()).unwrap();
        assert!(matches!(
            create.request_union,
            Some(proto::watch_request::RequestUnion::Create(ref c)) if c.start_revision == 42
        ));
        // Compacted past it: cancelled, flushed, and the next watch starts from now.
        let compacted = bytes(&proto::WatchResponse {
            canceled: true,
            compact_revision: 60,
            ..Default::default()
        });
        let news = r.watch_message(&compacted, T0 + 5010);
        assert!(news.flush && news.close);
        let WatchAction::Open(create) = r.watch_tick(T0 + 5500) else {
            panic!("reopen")
        };
        let create = proto::WatchRequest::decode(create.as_slice()).unwrap();
        assert!(matches!(
            create.request_union,
            Some(proto::watch_request::RequestUnion::Create(ref c)) if c.start_revision == 0
        ));
    }
}
