//! The native adapter: an Envoy dynamic module (Envoy 1.40, ABI v0.2.0) that hands Envoy's
//! hooks to `mcp-session-core`'s [`Worker`] (the driver) and carries out what the driver asks
//! ([`StreamIo`], [`TimerIo`], [`Host`]). Every decision is the core's; this file translates.
//!
//! - Threads: Envoy calls a stream's hooks on the worker thread that owns it, and a
//!   configuration's hooks on the main thread. Each thread gets a `Worker` of its own (the
//!   driver is single-threaded, as a Wasm VM is); they share one session [`Table`] in process
//!   memory, named by the configuration's `"table"`, which outlives configuration updates.
//! - The timer: a thread of this configuration wakes the main thread through Envoy's
//!   scheduler every `Worker::tick_ms`, and the main thread runs every `Worker`'s timer: the
//!   sweep, and with etcd each worker's leases, count, backlog and watch, through the
//!   configuration's calls and streams (answered on the main thread). A stream's own etcd
//!   calls are the stream's callouts, answered on its worker thread. gRPC goes as plain HTTP/2
//!   ([`grpc`]).
//! - Panics: `abi.rs` catches every unwind at the boundary; [`Filter::failed`] answers a
//!   JSON-RPC 500 and counts `mcp_session.panics`. `unsafe` lives only in `abi.rs`.
//! - Not natively (refused when configured, with a log line naming the key): `identity_jwt`
//!   (see README, "Native module").

#[cfg(panic = "abort")]
compile_error!("build the native module with `--profile native`: its boundary catches panics");

mod abi;

use abi::{Envoy, EnvoyConfig, MainThread, Ticker};
use log::{error, info};
use mcp_session_core::config::ConfigError;
use mcp_session_core::driver::{
    Action, Capabilities, Configured, Hook, Side, Stream, StreamIo, TimerIo, Upstream, Worker,
};
use mcp_session_core::exchange::Reply;
use mcp_session_core::grpc;
use mcp_session_core::host::Host;
use mcp_session_core::metrics::{Defined, Metric};
use mcp_session_core::store::etcd::Call;
use mcp_session_core::store::{memory::Table, SharedData, WriteError};
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The core's [`Host`] natively: the clock, the operating system's CSPRNG, the session table
/// in process memory (with its epoch), and the stats this configuration defined.
#[derive(Clone)]
struct Native {
    table: Arc<Table>,
    envoy: EnvoyConfig,
    /// Envoy's id of each stat this configuration defined.
    stats: Arc<Defined<usize>>,
}

impl SharedData for Native {
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        self.table.get(key)
    }

    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        self.table.set(key, value, cas)
    }
}

impl Host for Native {
    fn now_ms(&self) -> u64 {
        // Seconds and milliseconds apart: `as_millis` works in 128 bits.
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            d.as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(d.subsec_millis()))
        })
    }

    fn fill_random(&self, buf: &mut [u8]) -> bool {
        getrandom::fill(buf).is_ok()
    }

    fn increment(&self, metric: Metric, delta: i64) {
        if metric == Metric::Epoch {
            self.table.advance_epoch(delta.unsigned_abs());
        }
        if let Some(id) = self.stats.get(metric) {
            self.envoy.add(metric.is_gauge(), id, delta);
        }
    }

    fn record(&self, metric: Metric, value: u64) {
        if let Some(id) = self.stats.get(metric) {
            self.envoy.set_gauge(id, value);
        }
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.table.epoch()).filter(|epoch| *epoch > 0)
    }
}

/// A filter configuration: a `Worker` per Envoy worker thread, and one for the main thread.
/// Each is locked by whichever thread runs it (its worker's streams, or the main thread's
/// timer and answers); the lock is reentrant, as Envoy may answer a call at once.
pub struct Filters {
    workers: Vec<ReentrantMutex<Worker<Native>>>,
    main: ReentrantMutex<Worker<Native>>,
    host: Native,
    /// Wakes the main thread; stopped before the workers go.
    ticker: Option<Ticker>,
}

impl Filters {
    /// A configuration from its JSON; `None` (Envoy refuses it) when it is invalid.
    pub(crate) fn new(envoy: EnvoyConfig, bytes: &[u8]) -> Option<Arc<Filters>> {
        abi::refresh_log_level();
        let stats = Arc::new(Defined::by(|m| envoy.define(m.is_gauge(), &m.name())));
        // No nested metadata through this ABI: no identity_jwt (README, "Native module").
        // Headers held with StopIteration still show this filter the body.
        let capabilities = Capabilities {
            calls: true,
            nested_metadata: false,
            hold_headers: true,
        };
        // Read once, for every worker of this configuration.
        let configured = Configured::parse(bytes, capabilities).map_or_else(refuse, Some)?;
        let host = Native {
            table: Table::named(&configured.config().table),
            envoy,
            stats,
        };
        let start = || match configured.worker(host.clone()) {
            Ok(worker) => Some(ReentrantMutex::new(worker)),
            Err(e) => refuse(e),
        };
        let main = start()?;
        let workers = (0..abi::concurrency())
            .map(|_| start())
            .collect::<Option<_>>()?;
        let mut filters = Filters {
            workers,
            main,
            host,
            ticker: None,
        };
        let period = Duration::from_millis(filters.worker(usize::MAX).tick_ms().max(1));
        filters.ticker = Ticker::start(envoy, period);
        Some(Arc::new(filters))
    }

    /// The `Worker` of Envoy worker thread `index` (the main thread's when out of range:
    /// shared then, which the lock makes safe). A panic caught while a worker was locked
    /// leaves its state as the last completed step left it.
    fn worker(&self, index: usize) -> ReentrantMutexGuard<'_, Worker<Native>> {
        self.workers.get(index).unwrap_or(&self.main).lock()
    }

    /// Runs `f` on every `Worker` in turn (main thread): each ignores the tokens of calls and
    /// streams it did not make.
    fn each(&self, f: impl Fn(&Worker<Native>)) {
        for worker in self.workers.iter().chain([&self.main]) {
            f(&worker.lock());
        }
    }

    /// The timer fired (main thread).
    pub(crate) fn on_scheduled(&self, main: &MainThread<'_>) {
        abi::refresh_log_level();
        self.each(|worker| worker.on_timer(&mut Calls(main)));
    }

    /// The answer to a call the timer made (main thread).
    pub(crate) fn call_answered(&self, token: u32, status: u32, message: &[u8]) {
        self.each(|worker| worker.call_answered(token, status, message));
    }

    /// Headers or trailers on a stream the timer opened (main thread).
    pub(crate) fn stream_headers(&self, token: u32, headers: &[(&[u8], &[u8])]) {
        self.each(|worker| worker.stream_headers(token, headers.iter().copied()));
    }

    /// Bytes on a stream the timer opened (main thread).
    pub(crate) fn stream_bytes(&self, main: &MainThread<'_>, token: u32, bytes: &[u8]) {
        self.each(|worker| worker.stream_bytes(token, bytes, &mut Calls(main)));
    }

    /// A stream the timer opened ended (main thread).
    pub(crate) fn stream_closed(&self, token: u32, status: u32) {
        self.each(|worker| worker.stream_closed(token, status));
    }

    /// A stream's filter, on the worker thread `envoy` runs on.
    pub(crate) fn new_filter(self: &Arc<Filters>, envoy: &Envoy<'_>) -> Filter {
        Filter {
            filters: Arc::clone(self),
            worker: envoy.worker_index() as usize,
            stream: Stream::default(),
            #[cfg(feature = "fault-injection")]
            panic_when_done: false,
        }
    }

    /// A panic was caught outside any stream (configuration or timer).
    pub(crate) fn count_panic(&self) {
        self.host.increment(Metric::Panics, 1);
    }
}

impl Drop for Filters {
    fn drop(&mut self) {
        self.ticker = None;
        self.each(|worker| worker.shutdown());
    }
}

fn refuse<T>(e: ConfigError) -> Option<T> {
    error!("mcp-session-native: configuration refused: {e}");
    None
}

/// What a stream hook returns to the boundary: the action, and what to do once the hook has
/// let go of the filter (Envoy runs a local reply, or a resumed stream, through this filter's
/// hooks at once): the local reply to send, the side to resume.
pub(crate) struct Outcome {
    pub action: Action,
    pub reply: Option<Reply>,
    pub resume: Option<Side>,
}

impl Outcome {
    /// Let the stream go on, untouched.
    const PASS: Outcome = Outcome {
        action: Action::Continue,
        reply: None,
        resume: None,
    };
}

/// One stream's filter.
pub struct Filter {
    filters: Arc<Filters>,
    worker: usize,
    stream: Stream,
    /// Test builds only: the stream's last hook panics (`x-mcp-session-filter-panic: done`).
    #[cfg(feature = "fault-injection")]
    panic_when_done: bool,
}

impl Filter {
    /// Whether `hook` has nothing to do on this stream (the core says so; after a panic, none
    /// has). The boundary then answers Continue without taking the filter or the worker.
    pub(crate) fn passes(&self, hook: Hook) -> bool {
        #[cfg(feature = "fault-injection")]
        if self.panic_when_done && hook == Hook::Done {
            return false;
        }
        self.stream.passes(hook)
    }

    fn run(
        &mut self,
        envoy: &Envoy<'_>,
        step: impl FnOnce(&Worker<Native>, &mut Stream, &mut Io<'_, '_>) -> Action,
    ) -> Outcome {
        let mut io = Io {
            envoy,
            after: Outcome::PASS,
        };
        io.after.action = step(&self.filters.worker(self.worker), &mut self.stream, &mut io);
        io.after
    }

    pub(crate) fn request_headers(&mut self, envoy: &Envoy<'_>, end_of_stream: bool) -> Outcome {
        // Test builds only (`--features fault-injection`): a header that panics inside the
        // module, with this worker locked (or, `done`, in the stream's last hook), to prove
        // the boundary holds.
        #[cfg(feature = "fault-injection")]
        let inject = {
            let headers = envoy.headers(Side::Request);
            let header =
                mcp_session_core::host::Headers::get(&headers, "x-mcp-session-filter-panic");
            self.panic_when_done = header.value == Some(&b"done"[..]);
            header.count > 0 && !self.panic_when_done
        };
        self.run(envoy, |worker, stream, io| {
            #[cfg(feature = "fault-injection")]
            #[allow(clippy::panic)]
            if inject {
                panic!("injected by x-mcp-session-filter-panic");
            }
            let headers = io.envoy.headers(Side::Request);
            worker.request_headers(stream, &headers, io.envoy, end_of_stream, io)
        })
    }

    /// Body data of one side (`end_of_stream` as Envoy says), or its trailers (`None`).
    pub(crate) fn body(&mut self, envoy: &Envoy<'_>, side: Side, end: Option<bool>) -> Outcome {
        self.run(envoy, |worker, stream, io| {
            let size = || io.envoy.body_size(side);
            let body = || io.envoy.body(side);
            match end {
                Some(end) => worker.body(stream, side, &size, end, &body, io),
                None => worker.trailers(stream, side, &size, &body, io),
            }
        })
    }

    pub(crate) fn response_headers(&mut self, envoy: &Envoy<'_>, end_of_stream: bool) -> Outcome {
        self.run(envoy, |worker, stream, io| {
            let headers = io.envoy.headers(Side::Response);
            worker.response_headers(stream, &headers, io.envoy, end_of_stream, io)
        })
    }

    pub(crate) fn call_answered(
        &mut self,
        envoy: &Envoy<'_>,
        token: u32,
        status: u32,
        message: &[u8],
    ) -> Outcome {
        self.run(envoy, |worker, stream, io| {
            worker.stream_call_answered(stream, token, status, message, io);
            Action::Continue
        })
    }

    pub(crate) fn complete(&mut self, envoy: &Envoy<'_>) -> Outcome {
        #[cfg(feature = "fault-injection")]
        let inject = self.panic_when_done;
        self.run(envoy, |worker, stream, io| {
            worker.stream_done(stream, io);
            #[cfg(feature = "fault-injection")]
            #[allow(clippy::panic)]
            if inject {
                panic!("injected by x-mcp-session-filter-panic: done");
            }
            Action::Continue
        })
    }

    /// A panic was caught in one of this stream's hooks: count it, and do what the core says
    /// (fail the request closed with a JSON-RPC 500 while one can still be sent; Envoy resets
    /// the stream instead when its response has begun).
    pub(crate) fn failed(&mut self) -> Outcome {
        self.filters.count_panic();
        let reply = self.stream.fail();
        let action = reply.as_ref().map_or(Action::Continue, |_| Action::Pause);
        Outcome {
            action,
            reply,
            resume: None,
        }
    }
}

/// What the driver asks of one stream, carried out through its hook's [`Envoy`].
struct Io<'a, 'e> {
    envoy: &'a Envoy<'e>,
    /// What the boundary does once the hook let go of the filter.
    after: Outcome,
}

impl StreamIo for Io<'_, '_> {
    fn set_header(&mut self, side: Side, name: &str, value: Option<&str>) {
        self.envoy.set_header(side, name, value);
    }

    fn add_header(&mut self, side: Side, name: &str, value: &[u8]) {
        self.envoy.add_header(side, name, value);
    }

    fn respond(&mut self, reply: &Reply) {
        self.after.reply = Some(reply.clone());
    }

    fn replace_body(&mut self, body: &[u8]) {
        self.envoy.replace_body(Side::Response, body);
    }

    fn call(&mut self, upstream: &Upstream, call: &Call, timeout_ms: u64) -> Result<u32, u32> {
        let request = call.http(&upstream.cluster, &[], Some(timeout_ms));
        let token = self.envoy.callout(&upstream.cluster, &request, timeout_ms);
        token.ok_or(grpc::UNAVAILABLE)
    }

    fn resume(&mut self, side: Side) {
        self.after.resume = Some(side);
    }

    fn set_fact(&mut self, name: &str, value: &str) {
        self.envoy.set_filter_state(name, value);
    }
}

/// What the driver asks of the main thread: the timer's calls and the watch stream.
struct Calls<'a, 'h>(&'a MainThread<'h>);

impl TimerIo for Calls<'_, '_> {
    fn call(&mut self, upstream: &Upstream, call: &Call, timeout_ms: u64) -> Result<u32, u32> {
        let request = call.http(&upstream.cluster, &[], Some(timeout_ms));
        let token = self.0.callout(&upstream.cluster, &request, timeout_ms);
        token.ok_or(grpc::UNAVAILABLE)
    }

    fn open_stream(
        &mut self,
        upstream: &Upstream,
        call: &Call,
        metadata: &[(&str, &[u8])],
    ) -> Option<u32> {
        let request = call.http(&upstream.cluster, metadata, None);
        self.0.start_stream(&upstream.cluster, &request)
    }

    fn send(&mut self, stream: u32, message: &[u8]) -> bool {
        self.0.send(stream, &grpc::frame(message))
    }

    fn close(&mut self, stream: u32) {
        self.0.reset(stream);
    }
}

/// Runs once per process, when Envoy loads the module.
pub(crate) fn program_init() {
    abi::install_logger();
    info!("mcp-session-native: loaded");
}
