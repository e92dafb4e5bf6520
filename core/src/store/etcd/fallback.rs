//! `unavailable: local`: what this Envoy answers while etcd cannot. Sessions a worker
//! validated serve however old its cache entry; sessions created meanwhile live in this
//! Envoy's shared data (so every worker serves them) and go to etcd through the backlog when
//! it is back; a session this Envoy cannot know about is unavailable (503), never not found.

use super::{key, record_of, session_id, value, Remote};
use crate::record::Record;
use crate::session_id::SessionId;
use crate::store::cache::SessionCache;
use crate::store::{Ended, Limits, Lookup, Reservation, SharedData, Source, StoreOp, StoreResult};

/// The fallback's answer to an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The answer.
    pub result: StoreResult,
    /// A session was served from a cache entry older than the cache may serve with etcd up.
    pub stale: bool,
    /// A session made here while etcd is away, for the caller's cache: the workers serve it
    /// from there (and the watch must know the cache holds it).
    pub made: Option<(SessionId, Record)>,
}

impl From<StoreResult> for Answer {
    fn from(result: StoreResult) -> Answer {
        Answer {
            result,
            stale: false,
            made: None,
        }
    }
}

/// Where this Envoy keeps a session created while etcd was away, for every worker, until the
/// backlog has written it to etcd: shared data under its etcd key.
pub fn shared_key(etcd_key: &[u8]) -> Vec<u8> {
    [&b"mcps/fallback/"[..], etcd_key].concat()
}

/// Keeps a session made while etcd is away: every worker of this Envoy finds it in shared data
/// until the backlog has written it to etcd.
fn keep(remote: &Remote, shared: &impl SharedData, id: &SessionId, live: &Record) {
    let key = key(&remote.config().prefix, id);
    let _ = shared.set(&shared_key(&key), &value(live), None);
    remote.defer_put(key, live.clone());
}

/// Answers `op` from this Envoy's memory (`epoch`: the cache's, as the caller read it).
pub fn answer(
    remote: &Remote,
    cache: &mut SessionCache,
    shared: &impl SharedData,
    epoch: u64,
    limits: &Limits,
    op: StoreOp,
) -> Answer {
    let key = |id: &SessionId| key(&remote.config().prefix, id);
    match op {
        StoreOp::Lookup {
            id,
            identity,
            now_ms,
        } => {
            if let Some(record) =
                cache.get_within(epoch, &id, identity.as_deref(), now_ms, limits, u64::MAX)
            {
                return Answer {
                    stale: true,
                    ..StoreResult::Lookup(Lookup::Live(record.clone(), 0)).into()
                };
            }
            // A session another worker of this Envoy created while etcd was away.
            let Some(bytes) = shared.get(&shared_key(&key(&id))).0 else {
                // Never seen here: it may well be live in etcd; not a 404.
                return StoreResult::Unavailable.into();
            };
            let lookup = match record_of(&bytes, &id) {
                Some(record)
                    if limits
                        .judge(&record, &id.secret, identity.as_deref(), now_ms, 0)
                        .serves() =>
                {
                    Lookup::Live(record, 0)
                }
                _ => Lookup::NotFound,
            };
            StoreResult::Lookup(lookup).into()
        }
        StoreOp::End { id, .. } => {
            // Only a session this Envoy knows: the end is written to etcd when it is back.
            let Some(held) = cache.take(&id) else {
                return StoreResult::Unavailable.into();
            };
            let key = key(&id);
            let _ = shared.set(&shared_key(&key), &[], None);
            if let Some(index) = remote.index_of(&key, held.identity.as_ref()) {
                remote.defer_delete(index);
            }
            remote.defer_delete(key);
            StoreResult::Ended(Ended::Ended(held)).into()
        }
        StoreOp::Activate {
            id,
            reserved,
            upstream_id,
            now_ms,
        } => {
            let mut live = reserved.activated(now_ms, upstream_id.as_deref());
            live.initialized = true;
            keep(remote, shared, &id, &live);
            Answer {
                made: Some((id, live)),
                ..StoreResult::Done(true).into()
            }
        }
        StoreOp::MarkInitialized { .. } | StoreOp::Release { .. } => StoreResult::Done(true).into(),
        StoreOp::Reserve {
            secret,
            identity,
            now_ms,
        } => {
            // Sessions made while etcd is away count toward `max_sessions` too. Not toward
            // `max_sessions_per_identity`: this Envoy cannot see the others' sessions; their
            // index keys are written with them by the backlog, and count from then on.
            if remote.full(limits.max_sessions) {
                return StoreResult::Reserved(None).into();
            }
            remote.note_created();
            let id = session_id(secret);
            let pending =
                Record::pending(now_ms, secret, identity.as_deref(), limits.bind_identity);
            let mut live = pending.activated(now_ms, None);
            // Its `notifications/initialized` cannot be recorded while etcd is away.
            live.initialized = true;
            keep(remote, shared, &id, &live);
            Answer {
                made: Some((id, live.clone())),
                ..StoreResult::Reserved(Some(Reservation {
                    id,
                    record: live,
                    expired: 0,
                    from: Source::Hint,
                }))
                .into()
            }
        }
    }
}
