//! Operations in flight: each store operation as a sequence of calls (a read, a write, a
//! lease grant first), advanced by their answers, retried while the deadline allows.

use super::*;
use crate::record::identity_digest;

/// Where an operation in flight is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stage {
    /// Lookup, MarkInitialized: read the key (linearizable).
    Read,
    /// Lookup: restart the idle clock (CAS on the mod revision read).
    Touch { record: Record },
    /// Lookup: the record had expired; delete it (CAS) and its index key, whoever wins
    /// counts it.
    Expire { index: Option<Vec<u8>> },
    /// MarkInitialized, Activate: write the record (CAS).
    Mark { record: Record },
    /// End: delete, reading what was there; with its index key (one Txn) when `indexed`.
    Delete { indexed: bool },
    /// Reserve: create-if-absent. With a limit per caller, the session's index key is created
    /// with it, if no other key of the caller's index was created after revision `seen` (0: if
    /// the caller has none); the failure branch counts the caller's keys at its revision.
    Create { record: Record, seen: i64 },
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

impl Remote {
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
                if self.full(limits.max_sessions) {
                    return Next::Done(StoreResult::Reserved(None));
                }
                let id = session_id(secret);
                // Recorded before the initialize goes upstream, live and not initialized: its
                // ID is revealed only on a successful answer, so nobody can use it before.
                let pending =
                    Record::pending(now_ms, secret, identity.as_deref(), limits.bind_identity);
                let record = pending.activated(now_ms, None);
                let flight = self.flight(op, id, now_ms);
                // With a limit per caller, the first create bets the caller holds no session:
                // one call then; else its failure counts them, and the next create is made
                // against that count's revision.
                let stage = Stage::Create { record, seen: 0 };
                Next::Call(Box::new(self.write(flight, stage, 0)))
            }
            StoreOp::Release { id, ref identity } => {
                // An initialize that failed (or whose stream ended first): its record goes with
                // the timer's next backlog flush; the stream does not wait for it.
                let key = key(&self.config.prefix, &id);
                if let Ok(mut unmarked) = self.unmarked.try_borrow_mut() {
                    unmarked.remove(&key);
                }
                let digest = identity.as_deref().map(|v| identity_digest(Some(v)));
                if let Some(index) = self.index_of(&key, digest.as_ref()) {
                    self.defer_delete(index);
                }
                self.defer_delete(key);
                Next::Done(StoreResult::Done(true))
            }
            StoreOp::Lookup { id, now_ms, .. }
            | StoreOp::End { id, now_ms, .. }
            | StoreOp::MarkInitialized { id, now_ms } => {
                let key = key(&self.config.prefix, &id);
                let (stage, call) = match &op {
                    StoreOp::End { identity, .. } => {
                        let digest = identity.as_deref().map(|v| identity_digest(Some(v)));
                        match self.index_of(&key, digest.as_ref()) {
                            // The session's place in its caller's index goes with it.
                            Some(index) => (
                                Stage::Delete { indexed: true },
                                txn_of(
                                    Vec::new(),
                                    vec![delete(key.clone(), true), delete(index, false)],
                                    Vec::new(),
                                ),
                            ),
                            None => (
                                Stage::Delete { indexed: false },
                                Call {
                                    service: KV,
                                    method: "DeleteRange",
                                    message: encode(&proto::DeleteRangeRequest {
                                        key: key.clone(),
                                        prev_kv: true,
                                    }),
                                },
                            ),
                        }
                    }
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
    pub(super) fn flight(&self, op: StoreOp, id: SessionId, now_ms: u64) -> Flight {
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
    pub(super) fn write(&self, mut flight: Flight, stage: Stage, revision: i64) -> Flight {
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
            Stage::Create { record, seen } => {
                let created = compare(&flight.key, proto::compare::TargetUnion::CreateRevision(0));
                let puts = self.puts(&flight.key, record, lease);
                match record.identity.as_ref().filter(|_| self.indexed) {
                    None => txn_of(vec![created], puts, vec![read_op(&flight.key)]),
                    Some(identity) => {
                        let start = identity_prefix(&self.config.prefix, identity);
                        let end = range_end_of(&start);
                        txn_of(
                            vec![created, none_created_since(&start, end.clone(), *seen)],
                            puts,
                            vec![read_op(&flight.key), count(start, end)],
                        )
                    }
                }
            }
            Stage::Touch { record } | Stage::Mark { record } => txn(
                &flight.key,
                proto::compare::TargetUnion::ModRevision(revision),
                self.puts(&flight.key, record, lease),
            ),
            Stage::Expire { index } => {
                let mut deletes = vec![delete(flight.key.clone(), false)];
                deletes.extend(index.iter().map(|index| delete(index.clone(), false)));
                txn(
                    &flight.key,
                    proto::compare::TargetUnion::ModRevision(revision),
                    deletes,
                )
            }
            Stage::Read | Stage::Delete { .. } | Stage::Grant { .. } => flight.call.clone(),
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
            Stage::Delete { indexed } => deleted(bytes, indexed).map(|r| {
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
            Stage::Create { record, .. } => proto::TxnResponse::decode(bytes).ok().map(|r| {
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
                    if failure_read(&r).is_none() && record.identity.is_some() && self.indexed {
                        // The key is free: the caller's index changed since `seen`.
                        return self.recount(*flight, record, &r, limits);
                    }
                    // Another session holds this key: only a repeated secret could.
                    return Next::Done(StoreResult::Reserved(None));
                };
                if r.succeeded {
                    self.note_created();
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
            Stage::Expire { .. } => proto::TxnResponse::decode(bytes).ok().map(|r| {
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

    /// A create with a limit per caller failed on the caller's index: its failure branch
    /// counted the caller's sessions at its revision. At the limit: refused. Below it: create
    /// again, against that revision, at most [`MAX_CREATES`] times in all (the caller's other
    /// `initialize`s keep winning: refused, the safe side).
    fn recount(
        &self,
        mut flight: Flight,
        record: Record,
        response: &proto::TxnResponse,
        limits: &Limits,
    ) -> Next {
        let (Some(held), Some(seen)) = (
            counted_at(response, 1),
            response.header.as_ref().map(|h| h.revision),
        ) else {
            log::warn!("etcd answered a create without the count of the caller's sessions");
            return Next::Unavailable(flight.op);
        };
        let limit = limits.per_identity.map_or(u64::MAX, u64::from);
        flight.races += 1;
        if held >= limit || flight.races >= MAX_CREATES {
            return Next::Done(StoreResult::IdentityLimit);
        }
        Next::Call(Box::new(self.write(
            flight,
            Stage::Create { record, seen },
            0,
        )))
    }

    /// A CAS lost (another Envoy touched or ended the session): decide again on what the
    /// failure branch read, at most twice.
    pub(super) fn raced(
        &self,
        mut flight: Flight,
        kv: Option<&proto::KeyValue>,
        limits: &Limits,
    ) -> Next {
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
    pub(super) fn on_read(
        &self,
        flight: Flight,
        kv: Option<&proto::KeyValue>,
        limits: &Limits,
    ) -> Next {
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
                    let index = self.index_of(&flight.key, record.identity.as_ref());
                    return Next::Call(Box::new(self.write(
                        flight,
                        Stage::Expire { index },
                        revision,
                    )));
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
    pub(super) fn note_unmarked(&self, key: &[u8], record: &Record, revision: i64) {
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
    pub(super) fn failed(&self, mut flight: Box<Flight>, now_ms: u64) -> Next {
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
}

/// What an end's delete removed: from a `DeleteRange`, or from the first operation of a Txn
/// (the session key's delete, with its index key's after it).
fn deleted(bytes: &[u8], indexed: bool) -> Option<proto::DeleteRangeResponse> {
    if !indexed {
        return proto::DeleteRangeResponse::decode(bytes).ok();
    }
    let response = proto::TxnResponse::decode(bytes).ok()?;
    match response.responses.into_iter().next()?.response? {
        Response::DeleteRange(deleted) => Some(deleted),
        _ => None,
    }
}

/// `found` with what an activation learnt from the answer (the upstream's own session ID,
/// the host that answered).
pub(super) fn with_upstream(mut found: Record, op: &StoreOp) -> Record {
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
