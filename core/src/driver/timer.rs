//! The worker's timer and what hangs on it: the local store's sweep, and the etcd store's
//! watch stream and chores (leases ahead of time, the session count, the backlog).

use super::{Upstream, Worker, TICK_MS};
use crate::grpc;
use crate::host::Host;
use crate::metrics::{Metric, StoreStat};
use crate::store::etcd::{self, fallback, Call, Remote, WatchAction};
use log::{info, warn};

/// What the driver asks of the host for the worker's own calls and the watch stream.
pub trait TimerIo {
    /// Makes a gRPC call whose answer comes to the worker: the host's token, or the gRPC
    /// status to report when it cannot be made.
    fn call(&mut self, upstream: &Upstream, call: &Call, timeout_ms: u64) -> Result<u32, u32>;
    /// Opens a gRPC stream with `metadata` and sends `first` on it: the host's token.
    fn open_stream(
        &mut self,
        upstream: &Upstream,
        call: &Call,
        metadata: &[(&str, &[u8])],
    ) -> Option<u32>;
    /// Sends a message on an open stream; false when it cannot.
    fn send(&mut self, stream: u32, message: &[u8]) -> bool;
    /// Closes a stream.
    fn close(&mut self, stream: u32);
}

/// The timer's [`TimerIo`] on a host that makes no calls (one whose [`super::Capabilities`]
/// say so: its configurations have no etcd store).
#[derive(Debug, Default)]
pub struct NoCalls;

/// gRPC UNAVAILABLE: what a call that cannot be made reports.
const NOT_SENT: u32 = 14;

impl TimerIo for NoCalls {
    fn call(&mut self, _: &Upstream, _: &Call, _: u64) -> Result<u32, u32> {
        Err(NOT_SENT)
    }

    fn open_stream(&mut self, _: &Upstream, _: &Call, _: &[(&str, &[u8])]) -> Option<u32> {
        None
    }

    fn send(&mut self, _: u32, _: &[u8]) -> bool {
        false
    }

    fn close(&mut self, _: u32) {}
}

impl<H: Host> Worker<H> {
    /// How often the host fires [`Worker::on_timer`], ms.
    pub fn tick_ms(&self) -> u64 {
        match self.backend.remote() {
            Some(_) => etcd::TICK_MS,
            None => TICK_MS,
        }
    }

    /// The timer fired.
    pub fn on_timer(&self, io: &mut impl TimerIo) {
        self.sweep();
        let Some(remote) = self.backend.remote() else {
            return;
        };
        let now = self.host.now_ms();
        match remote.watch_tick(now) {
            WatchAction::Idle => {}
            WatchAction::Open(create) => {
                self.count_store(StoreStat::WatchRestarts);
                let call = Call {
                    service: etcd::WATCH,
                    method: "Watch",
                    message: create,
                };
                self.forget_frames();
                match io.open_stream(&self.upstream, &call, &[etcd::WATCH_METADATA]) {
                    Some(token) => self.watch.set(Some(token)),
                    None => {
                        warn!("cannot open the etcd watch");
                        remote.watch_closed();
                    }
                }
            }
            WatchAction::Send(message) => {
                if let Some(token) = self.watch.get() {
                    if !io.send(token, &message) {
                        self.close_watch(remote, io);
                    }
                }
            }
            WatchAction::Close => self.close_watch(remote, io),
        }
        self.note_watch(now);
        let timeout = remote.config().timeout_ms;
        for (chore, call) in remote.chores(now) {
            self.count_store(StoreStat::Calls);
            match io.call(&self.upstream, &call, timeout) {
                Ok(token) => {
                    if let Ok(mut chores) = self.chores.try_borrow_mut() {
                        chores.insert(token, chore);
                    }
                }
                Err(status) => self.on_chore(remote, chore, etcd::Reply::Failed(status)),
            }
        }
    }

    /// The answer to one of the worker's calls: its gRPC status, and its message when that is 0.
    pub fn call_answered(&self, token: u32, status: u32, message: &[u8]) {
        let chore = self
            .chores
            .try_borrow_mut()
            .ok()
            .and_then(|mut chores| chores.remove(&token));
        if let (Some(remote), Some(chore)) = (self.backend.remote(), chore) {
            self.on_chore(remote, chore, etcd::Reply::of(status, message));
        }
    }

    /// A message on a stream the worker opened.
    pub fn stream_message(&self, token: u32, message: &[u8], io: &mut impl TimerIo) {
        let Some(remote) = self.backend.remote() else {
            return;
        };
        if self.watch.get() != Some(token) {
            return;
        }
        let now = self.host.now_ms();
        let news = remote.watch_message(message, now);
        self.on_watch_news(&news);
        if news.close {
            info!("the etcd watch was cancelled; reopening it");
            self.close_watch(remote, io);
        }
        self.note_watch(now);
    }

    /// Bytes on a stream the worker opened, from a host that hands over a stream's HTTP/2 data
    /// rather than its gRPC messages: each whole message goes to [`Worker::stream_message`];
    /// bytes that break the framing close the stream.
    pub fn stream_bytes(&self, token: u32, bytes: &[u8], io: &mut impl TimerIo) {
        let (Some(remote), true) = (self.backend.remote(), self.watch.get() == Some(token)) else {
            return;
        };
        let messages: Vec<_> = match self.frames.try_borrow_mut() {
            Ok(mut frames) => {
                frames.push(bytes);
                std::iter::from_fn(|| frames.next()).collect()
            }
            Err(_) => return,
        };
        for message in messages {
            match message {
                Ok(message) => self.stream_message(token, &message, io),
                Err(grpc::Malformed) => {
                    warn!("the etcd watch sent bytes that are not gRPC messages; reopening it");
                    self.close_watch(remote, io);
                    return;
                }
            }
        }
    }

    /// The headers or trailers of a stream the worker opened, from a host that hands them over
    /// as HTTP: a gRPC status in them (or an HTTP status that maps to one) ends the stream.
    pub fn stream_headers<'h>(
        &self,
        token: u32,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    ) {
        if let Some(status) = grpc::status_in(headers) {
            self.stream_closed(token, status);
        }
    }

    /// A stream the worker opened closed (the host closed it, or the other side did).
    pub fn stream_closed(&self, token: u32, status: u32) {
        let Some(remote) = self.backend.remote() else {
            return;
        };
        if self.watch.get() != Some(token) {
            return;
        }
        self.watch.set(None);
        self.forget_frames();
        warn!("the etcd watch closed (gRPC status {status}); reopening it");
        remote.watch_closed();
        self.note_watch(self.host.now_ms());
    }

    fn close_watch(&self, remote: &Remote, io: &mut impl TimerIo) {
        self.forget_frames();
        if let Some(token) = self.watch.take() {
            io.close(token);
        }
        remote.watch_closed();
    }

    fn forget_frames(&self) {
        if let Ok(mut frames) = self.frames.try_borrow_mut() {
            frames.clear();
        }
    }

    /// The answer to a timer chore: the session count sets the `live` gauge; sessions a
    /// backlog flush wrote to etcd leave this Envoy's fallback memory.
    fn on_chore(&self, remote: &Remote, chore: etcd::Chore, reply: etcd::Reply<'_>) {
        match remote.chore_done(chore, reply, self.host.now_ms()) {
            None => self.count_store(StoreStat::Errors),
            Some(written) => {
                if chore == etcd::Chore::Count {
                    self.host.record(Metric::Live, remote.counted());
                }
                for key in written {
                    let _ = self.host.set(&fallback::shared_key(&key), &[], None);
                }
            }
        }
    }

    /// What the watch said: forget the sessions whose keys were deleted, or everything when
    /// ends may have been missed.
    fn on_watch_news(&self, news: &etcd::WatchNews) {
        let (Ok(mut cache), Ok(mut keys)) = (
            self.cache.try_borrow_mut(),
            self.cached_keys.try_borrow_mut(),
        ) else {
            return;
        };
        if news.flush || !news.deleted.is_empty() {
            self.ends_seen.set(self.ends_seen.get().wrapping_add(1));
        }
        if news.flush {
            cache.clear();
            keys.clear();
            self.count_store(StoreStat::CacheFlushes);
            return;
        }
        let mut held = false;
        for key in &news.deleted {
            held |= keys.remove(key);
        }
        if held {
            // The epoch empties this worker's cache, and those of the other workers of this
            // Envoy, which may hold it too while their watches speak a moment later: once one
            // worker answers 404 every worker does.
            self.host.increment(Metric::Epoch, 1);
        }
    }

    /// Keeps the `watch_up` gauge in step with this VM's watch.
    fn note_watch(&self, now_ms: u64) {
        let fresh = self.backend.remote().is_some_and(|r| r.watch_fresh(now_ms));
        if fresh != self.watch_counted.get() {
            self.watch_counted.set(fresh);
            self.host
                .increment(Metric::WatchUp, if fresh { 1 } else { -1 });
        }
    }
}
