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

mod chores;
mod codec;
pub mod fallback;
mod flight;
pub mod proto;
mod watch;

use chores::Backlog;
pub use chores::Chore;
use codec::{
    compare, count, counted_at, delete, encode, failure_read, none_created_since, put, put_index,
    read, read_op, revision_tag, txn, txn_of,
};
pub use codec::{
    grpc_service, identity_prefix, index_key, key, range_end, range_end_of, record_of, session_id,
    sessions_range, value, INDEX,
};
pub use flight::Flight;
use watch::WatchState;
pub use watch::{WatchAction, WatchNews};

use super::{Ended, Limits, Lookup, Next, Reservation, Source, StoreOp, StoreResult, Verdict};
use crate::config::EtcdConfig;
use crate::record::{Record, State, DIGEST_LEN};
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
/// Most creates one `initialize` tries when other sessions of its caller keep appearing
/// between its count and its create (`max_sessions_per_identity`).
const MAX_CREATES: u32 = 3;
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

impl Call {
    /// The call as an HTTP/2 request to `authority` (Envoy's cluster name), for a host that
    /// makes HTTP calls but not gRPC ones ([`crate::grpc`]); a unary call carries its
    /// `timeout_ms` to etcd as a deadline, as Envoy's gRPC client sends it (a stream: `None`).
    pub fn http(
        &self,
        authority: &str,
        metadata: &[(&str, &[u8])],
        timeout_ms: Option<u64>,
    ) -> crate::grpc::Request {
        let mut request = crate::grpc::Request::new(
            authority,
            self.service,
            self.method,
            &self.message,
            metadata,
        );
        if let Some(timeout_ms) = timeout_ms {
            request.set_deadline_ms(timeout_ms);
        }
        request
    }
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
    /// The writes of the backlog flush in flight, as sent: on success exactly these leave the
    /// backlog (a write made meanwhile for one of their keys replaces it there, and stays).
    flushing: RefCell<Vec<Backlog>>,
    /// A VM serving requests keeps the watch and leases; one that never did (the main
    /// thread's) makes no calls.
    active: Cell<bool>,
    /// Timer chores in flight (one of each kind at a time).
    chores: RefCell<Vec<Chore>>,
    /// Sessions not initialized yet, as their lookups read them (record and mod revision): the
    /// `notifications/initialized` that follows marks them with one CAS, without reading again.
    unmarked: RefCell<HashMap<Vec<u8>, (Record, i64)>>,
    /// Whether each session bound to an identity has an index key (`max_sessions_per_identity`).
    indexed: bool,
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
            flushing: RefCell::new(Vec::new()),
            active: Cell::new(false),
            chores: RefCell::new(Vec::new()),
            unmarked: RefCell::new(HashMap::new()),
            indexed: false,
        }
    }

    /// The store with (`true`) or without each caller's index of sessions, which
    /// `max_sessions_per_identity` counts: every session bound to an identity then has an
    /// index key, written, leased and deleted with its session key.
    pub fn indexed(mut self, indexed: bool) -> Remote {
        self.indexed = indexed;
        self
    }

    /// The index key of the session under `key` bound to `identity`, when sessions are indexed.
    pub(super) fn index_of(
        &self,
        key: &[u8],
        identity: Option<&[u8; DIGEST_LEN]>,
    ) -> Option<Vec<u8>> {
        let identity = identity.filter(|_| self.indexed)?;
        Some(index_key(&self.config.prefix, identity, key))
    }

    /// The writes of `record` under `key` on `lease`: the session key, and its index key.
    pub(super) fn puts(&self, key: &[u8], record: &Record, lease: i64) -> Vec<proto::RequestOp> {
        let mut ops = vec![put(key, record, lease)];
        if let Some(index) = self.index_of(key, record.identity.as_ref()) {
            ops.push(put_index(index, lease));
        }
        ops
    }

    /// The settings.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The timing.
    pub fn timing(&self) -> Timing {
        self.timing
    }
}

#[cfg(test)]
mod tests;
