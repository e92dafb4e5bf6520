//! The session store: one interface, two backends.
//!
//! - [`local`]: sessions in Envoy shared data (every worker of one Envoy), answered at once.
//! - [`etcd`]: sessions in etcd (every Envoy of a fleet), answered later: an operation becomes
//!   gRPC calls the host makes and feeds back.
//! - [`cache`]: a worker's memory of sessions it validated a moment ago.
//! - [`memory`]: shared data in process memory, for a host whose workers are threads (the
//!   native module); the local store runs on it unchanged.
//!
//! The request machine asks for a [`StoreOp`] and gets a [`StoreResult`]; [`Backend::begin`]
//! starts an operation on either backend and says what comes [`Next`]. What a record means for
//! a caller at a time is decided in one place, [`Limits::judge`], used by both backends, the
//! cache and the etcd store's local fallback. Nothing here reads a clock or a random source:
//! times and secrets come in as arguments.

pub mod cache;
pub mod etcd;
pub mod local;
pub mod memory;

use crate::record::{Record, State};
use crate::session_id::{SessionId, SECRET_LEN};

/// A write that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The key changed since it was read (or, for a create-only write, it exists).
    CasMismatch,
    /// The host refused the write for another reason.
    Host,
}

/// The host's shared key-value store, with Envoy's semantics:
/// - `get` returns the value (`None` when missing or empty) and the cas (`None` when missing);
/// - `set` with `cas: None` writes unconditionally; with `Some(c)` it fails with
///   [`WriteError::CasMismatch`] unless the key is missing or its cas is `c`.
pub trait SharedData {
    /// Reads a key.
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes a key.
    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError>;
}

impl<T: SharedData + ?Sized> SharedData for &T {
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        (**self).get(key)
    }
    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        (**self).set(key, value, cas)
    }
}

/// The store's limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Idle timeout, ms.
    pub idle_ms: u64,
    /// Absolute lifetime, ms; 0 = none.
    pub lifetime_ms: u64,
    /// Most slots in use at once.
    pub max_sessions: u32,
    /// Whether sessions are bound to an identity header.
    pub bind_identity: bool,
    /// Most live sessions per caller identity (`max_sessions_per_identity`).
    pub per_identity: Option<u32>,
}

impl Limits {
    /// How stale `last_seen` may get before a request rewrites it: at most 1 s, so a session
    /// can expire at most 1 s early and is never kept past its idle timeout.
    pub fn touch_interval_ms(&self) -> u64 {
        (self.idle_ms / 64).min(1000)
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A live session the caller may use, with the cas it was read at.
    Live(Record, u32),
    /// Nothing the caller may use: unknown, ended, pending, or another identity's.
    NotFound,
    /// The session had expired; this lookup reclaimed it (count it once).
    Expired,
}

/// What ending a session found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The session was live and is now ended; its last record.
    Ended(Record),
    /// Nothing to end.
    NotFound,
    /// It had expired; reclaimed now (count it as expired, not terminated).
    Expired,
    /// An earlier attempt of this end ended it, and its answer was lost (etcd: a retried
    /// delete finds nothing); the record is not known any more.
    EndedEarlier,
}

/// The result of a slot reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The new session's ID.
    pub id: SessionId,
    /// The pending record written for it.
    pub record: Record,
    /// Live sessions found expired and reclaimed on the way (0 or 1: the slot taken).
    pub expired: u32,
    /// Where the slot came from.
    pub from: Source,
}

/// Where a reserved slot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The free hint.
    Hint,
    /// A random probe before growing (a free slot, or an expired session not swept yet).
    Probe,
    /// The top of the table, which grew by one.
    Grown,
    /// A random probe at the limit.
    AtLimit,
}

impl Source {
    /// The probe budget for the next reserve after one whose slot came from here: all of
    /// `max` again when a probe paid off; halved (but at least 1) when the probes all failed
    /// and the table grew, so a table of live sessions that only grows costs one probe per
    /// initialize, while one full of expired sessions keeps being probed.
    pub fn next_probe_budget(self, budget: u32, max: u32) -> u32 {
        match self {
            Source::Probe => max,
            Source::Grown => (budget / 2).max(1),
            Source::Hint | Source::AtLimit => budget,
        }
    }
}

/// What a record means for a caller presenting a session ID and an identity at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing this caller may use: not live, another secret, or another identity's.
    NotFound,
    /// The session has expired (whoever ends it counts it once).
    Expired,
    /// It serves, and its `last_seen` is younger than the freshness asked for.
    Fresh,
    /// It serves, but its `last_seen` is older than the freshness asked for: a store
    /// restarts its idle clock, a cache asks the store.
    Stale,
}

impl Verdict {
    /// Whether the session serves the caller.
    pub fn serves(self) -> bool {
        matches!(self, Verdict::Fresh | Verdict::Stale)
    }
}

impl Limits {
    /// What `record` means for a caller presenting `secret` and `identity` at `now_ms`, its
    /// `last_seen` judged against `fresh_ms`. The secret is checked first, so nothing about a
    /// session (not even that it expired) depends on anything but knowing its ID.
    pub fn judge(
        &self,
        record: &Record,
        secret: &[u8; SECRET_LEN],
        identity: Option<&[u8]>,
        now_ms: u64,
        fresh_ms: u64,
    ) -> Verdict {
        if record.state != State::Live || !record.secret_matches(secret) {
            Verdict::NotFound
        } else if record.expired(now_ms, self.idle_ms, self.lifetime_ms) {
            Verdict::Expired
        } else if !record.identity_matches(self.bind_identity, identity) {
            Verdict::NotFound
        } else if now_ms.saturating_sub(record.last_seen_ms) < fresh_ms {
            Verdict::Fresh
        } else {
            Verdict::Stale
        }
    }
}

/// A session-store operation. Each carries the time it was asked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Find the live session `id` for a caller presenting `identity`, and restart its idle
    /// clock if it is due: answered with [`StoreResult::Lookup`].
    Lookup {
        /// The session.
        id: SessionId,
        /// The caller's identity value.
        identity: Option<Vec<u8>>,
        /// Now.
        now_ms: u64,
    },
    /// End the session: [`StoreResult::Ended`].
    End {
        /// The session.
        id: SessionId,
        /// The caller's identity value (the session's, which its lookup checked): the etcd
        /// store ends the session's place in the caller's index with it.
        identity: Option<Vec<u8>>,
        /// Now.
        now_ms: u64,
    },
    /// Reserve a session for an `initialize` in flight: [`StoreResult::Reserved`].
    Reserve {
        /// The new session's secret, from the CSPRNG.
        secret: [u8; SECRET_LEN],
        /// The caller's identity value.
        identity: Option<Vec<u8>>,
        /// Now.
        now_ms: u64,
    },
    /// Make the reservation a live session: [`StoreResult::Done`].
    Activate {
        /// The session.
        id: SessionId,
        /// The pending record its reservation wrote.
        reserved: Record,
        /// The upstream's own session ID, if it minted one.
        upstream_id: Option<String>,
        /// Now.
        now_ms: u64,
    },
    /// Free the reservation of a failed `initialize`: [`StoreResult::Done`].
    Release {
        /// The session.
        id: SessionId,
        /// The caller's identity value (as for [`StoreOp::End`]).
        identity: Option<Vec<u8>>,
    },
    /// Record that the upstream accepted `notifications/initialized`: [`StoreResult::Done`].
    MarkInitialized {
        /// The session.
        id: SessionId,
        /// Now.
        now_ms: u64,
    },
}

impl StoreOp {
    /// The time the operation was asked at (0 for a release, which needs none).
    pub fn now_ms(&self) -> u64 {
        match self {
            StoreOp::Lookup { now_ms, .. }
            | StoreOp::End { now_ms, .. }
            | StoreOp::Reserve { now_ms, .. }
            | StoreOp::Activate { now_ms, .. }
            | StoreOp::MarkInitialized { now_ms, .. } => *now_ms,
            StoreOp::Release { .. } => 0,
        }
    }
}

/// The store's answer to a [`StoreOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreResult {
    /// To [`StoreOp::Lookup`]: the record, its idle clock as the store now has it.
    Lookup(Lookup),
    /// To [`StoreOp::End`].
    Ended(Ended),
    /// To [`StoreOp::Reserve`]; `None` when the store is full.
    Reserved(Option<Reservation>),
    /// To [`StoreOp::Reserve`]: the caller holds `max_sessions_per_identity` sessions already.
    IdentityLimit,
    /// To the others: whether the change was made.
    Done(bool),
    /// The store could not answer (etcd unreachable, too slow, without a leader).
    Unavailable,
}

/// What happens next to an operation a backend was given.
#[derive(Debug)]
pub enum Next {
    /// It is answered.
    Done(StoreResult),
    /// Make the flight's call, then hand its answer to [`etcd::Remote::advance`].
    Call(Box<etcd::Flight>),
    /// etcd could not answer it (after its retries): the caller applies the `unavailable`
    /// policy.
    Unavailable(StoreOp),
}

/// The session store a worker uses: the same operations on either backend.
#[derive(Debug)]
pub enum Backend {
    /// Envoy shared data: every answer at once.
    Local(local::Local),
    /// etcd: answers after calls the host makes.
    Etcd(Box<etcd::Remote>),
}

impl Backend {
    /// Starts `op` on the store over `shared` (the local store's table; etcd's fallback) with
    /// `limits`.
    pub fn begin<S: SharedData>(&self, shared: S, limits: Limits, op: StoreOp) -> Next {
        match self {
            Backend::Local(worker) => {
                Next::Done(worker.run(&local::Store::new(shared, limits), op))
            }
            Backend::Etcd(remote) => remote.begin(op, &limits),
        }
    }

    /// The etcd store, when that is the backend.
    pub fn remote(&self) -> Option<&etcd::Remote> {
        match self {
            Backend::Local(_) => None,
            Backend::Etcd(remote) => Some(remote),
        }
    }
}
