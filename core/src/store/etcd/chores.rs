//! What a VM's timer does for the etcd store: a lease per window, granted ahead of time; the
//! count of the sessions; the backlog of writes kept while etcd was away.

use super::*;

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

/// A write kept while etcd was away (`unavailable: local`), sent when it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Backlog {
    Put(Vec<u8>, Record),
    Delete(Vec<u8>),
}

impl Remote {
    pub(super) fn lease(&self, now_ms: u64) -> Option<i64> {
        let window = now_ms / self.timing.window_ms;
        self.leases.borrow().get(&window).copied()
    }

    pub(super) fn remember_lease(&self, now_ms: u64, lease: i64) {
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

    pub(super) fn defer(&self, write: Backlog) {
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
            // The session keys only: not the callers' index.
            let (key, range_end) = sessions_range(&self.config.prefix);
            calls.push((
                Chore::Count,
                Call {
                    service: KV,
                    method: "Range",
                    message: encode(&proto::RangeRequest {
                        key,
                        range_end,
                        count_only: true,
                    }),
                },
            ));
        }
        let lease = self.lease(now_ms);
        let backlog = self.backlog.borrow();
        if let (Some(lease), false) = (lease, backlog.is_empty()) {
            if !busy(&|c| matches!(c, Chore::Flush(_))) {
                let taken = backlog.len().min(BACKLOG_BATCH);
                // A put is two writes with its index key: at most 2 × 64, etcd's 128.
                let sent: Vec<Backlog> = backlog.iter().take(taken).cloned().collect();
                let batch: Vec<proto::RequestOp> = sent
                    .iter()
                    .flat_map(|op| match op {
                        Backlog::Put(key, record) => self.puts(key, record, lease),
                        Backlog::Delete(key) => vec![delete(key.clone(), false)],
                    })
                    .collect();
                *self.flushing.borrow_mut() = sent;
                calls.push((
                    Chore::Flush(taken),
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
            // The writes sent leave the backlog, those still in it as sent: one replaced while
            // the flush was in flight (a later write for its key) stays for the next flush.
            // Taken by position, a replaced one shifted the backlog, and the flush removed a
            // write it never sent (a DELETE lost: the session lived on in etcd).
            Chore::Flush(_) => match proto::TxnResponse::decode(bytes) {
                Ok(r) if r.succeeded => {
                    let sent = self.flushing.take();
                    let mut backlog = self.backlog.borrow_mut();
                    let mut written = Vec::with_capacity(sent.len());
                    for op in sent {
                        if let Some(at) = backlog.iter().position(|queued| *queued == op) {
                            let (Backlog::Put(key, _) | Backlog::Delete(key)) = backlog.remove(at);
                            written.push(key);
                        }
                    }
                    Some(written)
                }
                _ => None,
            },
        }
    }

    /// Sessions in etcd at the last count.
    pub fn counted(&self) -> u64 {
        self.count.get().0
    }

    /// Whether a new session would pass `max_sessions`: the last count plus the sessions this
    /// VM created since.
    pub(super) fn full(&self, max_sessions: u32) -> bool {
        let (counted, _, created) = self.count.get();
        counted.saturating_add(created) >= u64::from(max_sessions)
    }

    /// Counts a session this VM created (in etcd, or in its memory while etcd was away).
    pub(super) fn note_created(&self) {
        let (n, at, created) = self.count.get();
        self.count.set((n, at, created.saturating_add(1)));
    }
}
