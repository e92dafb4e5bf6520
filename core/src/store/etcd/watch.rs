//! The Watch on the prefix: opened, confirmed, kept alive by progress requests, reopened
//! after the last revision it saw; what its messages mean for the cache.

use super::*;

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
pub(super) enum WatchState {
    /// No stream; open one at the next tick.
    Closed,
    /// Stream opened, create request sent, not confirmed.
    Opening { since_ms: u64 },
    /// Confirmed; `heard_ms` is the last message.
    Open { heard_ms: u64 },
}

impl Remote {
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

    /// The timer's step for the watch stream.
    pub fn watch_tick(&self, now_ms: u64) -> WatchAction {
        if !self.active.get() {
            return WatchAction::Idle;
        }
        match self.watch.get() {
            WatchState::Closed => {
                self.watch.set(WatchState::Opening { since_ms: now_ms });
                let start = self.revision.get();
                // The session keys only: the callers' index keys change with them, and would
                // double what every VM is sent.
                let (key, range_end) = sessions_range(&self.config.prefix);
                WatchAction::Open(encode(&proto::WatchRequest {
                    request_union: Some(proto::watch_request::RequestUnion::Create(
                        proto::WatchCreateRequest {
                            key,
                            range_end,
                            start_revision: if start > 0 {
                                start.saturating_add(1)
                            } else {
                                0
                            },
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
            // The revision to resume after moves with events only, not with progress
            // notifications: etcd 3.4 before 3.4.24 may send one ahead of events still queued
            // for the stream (etcd #15220), and a watch reopened after its revision would
            // never see those deletes.
            if response.created && self.revision.get() == 0 {
                self.revision.set(header.revision);
            } else if response.created && header.revision < self.revision.get() {
                // Confirmed below where it resumed: etcd's history went back (restored from
                // a snapshot, or a new cluster). Events up to the old revision will never come
                // at this start: resume from etcd's revision, and trust nothing cached.
                self.revision.set(header.revision);
                news.flush = true;
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
