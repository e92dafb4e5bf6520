//! The Envoy adapter: proxy-wasm root and HTTP contexts that feed the proxy's callbacks to
//! `mcp-session-core`'s [`Plugin`] as events, and turn its steps into hostcalls. It translates
//! and decides nothing.
//!
//! Hostcalls go through `proxy_wasm::hostcalls` (or the raw ABI) directly, never through the
//! SDK's trait helpers, which panic on unexpected host answers and on non-UTF-8 header values.

#![cfg(target_arch = "wasm32")]
// The only public items are the ABI entry points `proxy_wasm::main!` generates.
#![allow(missing_docs)]

use log::{error, info, warn};
use mcp_session_core::etcd::{self, Call, Chore, WatchAction};
use mcp_session_core::exchange::{Edit, Event, Exchange, Flow, Reply, Step};
use mcp_session_core::headers::{self, Header};
use mcp_session_core::host::{Attributes, Headers, Host};
use mcp_session_core::metrics::{Metric, StoreStat};
use mcp_session_core::plugin::Plugin;
use mcp_session_core::store::{SharedData, WriteError};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// How often each worker's root context considers a sweep step.
const TICK: Duration = Duration::from_millis(1000);
/// gRPC status of a call that could not even be made (no such cluster, no memory).
const NOT_SENT: u32 = 14;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// The core's [`Host`] in Envoy: the clock, WASI's `random_get` (BoringSSL's CSPRNG in
/// Envoy), shared data, and the stats this VM defined.
struct Envoy {
    metrics: HashMap<Metric, u32>,
}

impl Envoy {
    fn new() -> Envoy {
        let mut metrics = HashMap::new();
        for metric in Metric::all() {
            let kind = if metric.is_gauge() {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            match hostcalls::define_metric(kind, &metric.name()) {
                Ok(id) => {
                    metrics.insert(metric, id);
                }
                Err(status) => warn!("cannot define stat {}: {status:?}", metric.name()),
            }
        }
        Envoy { metrics }
    }
}

impl SharedData for Envoy {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(WriteError::CasMismatch),
            Err(_) => Err(WriteError::Host),
        }
    }
}

impl Host for Envoy {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    fn fill_random(&self, buf: &mut [u8]) -> bool {
        getrandom::fill(buf).is_ok()
    }

    fn increment(&self, metric: Metric, delta: i64) {
        if let Some(id) = self.metrics.get(&metric) {
            let _ = hostcalls::increment_metric(*id, delta);
        }
    }

    fn record(&self, metric: Metric, value: u64) {
        if let Some(id) = self.metrics.get(&metric) {
            let _ = hostcalls::record_metric(*id, value);
        }
    }

    fn epoch(&self) -> Option<u64> {
        let id = *self.metrics.get(&Metric::Epoch)?;
        let mut value: u64 = 0;
        // SAFETY: the host writes one u64 through the pointer, which outlives the call.
        let status = unsafe { proxy_get_metric(id, &mut value) };
        (status == 0 && value > 0).then_some(value)
    }
}

#[derive(Default)]
struct Root {
    plugin: Option<Rc<Plugin<Envoy>>>,
    /// The etcd store's cluster as Envoy's `GrpcService` message.
    service: Rc<String>,
    /// Timer chores in flight, by callout token.
    chores: HashMap<u32, Chore>,
    /// The watch stream, when open.
    watch: Option<u32>,
}

/// The etcd store's timer work: its watch stream and its chores (leases ahead of time, the
/// session count, the backlog).
impl Root {
    fn etcd_tick(&mut self, plugin: &Plugin<Envoy>) {
        let Some(remote) = plugin.remote() else {
            return;
        };
        let now = plugin.host().now_ms();
        match remote.watch_tick(now) {
            WatchAction::Idle => {}
            WatchAction::Open(create) => {
                plugin.count_store(StoreStat::WatchRestarts);
                let opened = hostcalls::open_grpc_stream(
                    &self.service,
                    etcd::WATCH,
                    "Watch",
                    vec![etcd::WATCH_METADATA],
                )
                .and_then(|token| {
                    hostcalls::send_grpc_stream_message(token, Some(&create), false).map(|()| token)
                });
                match opened {
                    Ok(token) => self.watch = Some(token),
                    Err(status) => {
                        warn!("cannot open the etcd watch: {status:?}");
                        remote.watch_closed();
                    }
                }
            }
            WatchAction::Send(message) => {
                if let Some(token) = self.watch {
                    if hostcalls::send_grpc_stream_message(token, Some(&message), false).is_err() {
                        self.close_watch(remote);
                    }
                }
            }
            WatchAction::Close => self.close_watch(remote),
        }
        plugin.note_watch(now);
        let timeout = Duration::from_millis(remote.config().timeout_ms);
        for (chore, call) in remote.chores(now) {
            plugin.count_store(StoreStat::Calls);
            match dispatch(&self.service, &call, timeout) {
                Ok(token) => {
                    self.chores.insert(token, chore);
                }
                Err(status) => plugin.on_chore(chore, etcd::Reply::Failed(status)),
            }
        }
    }

    fn close_watch(&mut self, remote: &etcd::Remote) {
        if let Some(token) = self.watch.take() {
            let _ = hostcalls::cancel_grpc_stream(token);
        }
        remote.watch_closed();
    }
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let (Some(plugin), Some(chore)) = (&self.plugin, self.chores.remove(&token_id)) else {
            return;
        };
        let message = grpc_message(status_code, response_size);
        let reply = grpc_reply(status_code, message.as_deref());
        plugin.on_chore(chore, reply);
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        let Some(plugin) = self.plugin.clone() else {
            return;
        };
        let (Some(remote), Some(token)) = (plugin.remote(), self.watch) else {
            return;
        };
        if token != token_id {
            return;
        }
        let message = buffer(BufferType::GrpcReceiveBuffer, message_size);
        let now = plugin.host().now_ms();
        let news = remote.watch_message(&message, now);
        plugin.on_watch_news(&news);
        if news.close {
            info!("the etcd watch was cancelled; reopening it");
            self.close_watch(remote);
        }
        plugin.note_watch(now);
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if self.watch != Some(token_id) {
            return;
        }
        self.watch = None;
        if let Some(plugin) = &self.plugin {
            if let Some(remote) = plugin.remote() {
                warn!("the etcd watch closed (gRPC status {status_code}); reopening it");
                remote.watch_closed();
                plugin.note_watch(plugin.host().now_ms());
            }
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(plugin) = &self.plugin {
            plugin.return_slots();
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let plugin = match Plugin::new(Envoy::new(), &bytes) {
            Ok(plugin) => plugin,
            Err(e) => {
                error!("mcp-session-filter: configuration refused: {e}");
                return false;
            }
        };
        let tick = match plugin.remote() {
            Some(remote) => {
                self.service = Rc::new(grpc_service(&remote.config().cluster));
                Duration::from_millis(etcd::TICK_MS)
            }
            None => TICK,
        };
        self.plugin = Some(Rc::new(plugin));
        if let Err(status) = hostcalls::set_tick_period(tick) {
            warn!("cannot set the sweep tick: {status:?}");
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(plugin) = self.plugin.clone() {
            plugin.on_tick();
            self.etcd_tick(&plugin);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(Stream {
            plugin,
            exchange: Exchange::new(),
            service: self.service.clone(),
            waiting: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    plugin: Rc<Plugin<Envoy>>,
    exchange: Exchange,
    service: Rc<String>,
    /// The direction held for an etcd call in flight, and its token.
    waiting: Option<(Side, u32)>,
}

/// Which half of the stream a step was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some((side, token)) = self.waiting.take() else {
            return;
        };
        if token != token_id {
            self.waiting = Some((side, token));
            return;
        }
        let message = grpc_message(status_code, response_size);
        let reply = grpc_reply(status_code, message.as_deref());
        let step = self.plugin.on_reply(&mut self.exchange, reply);
        if self.apply(side, step) == Action::Continue {
            let resumed = match side {
                Side::Request => hostcalls::resume_http_request(),
                Side::Response => hostcalls::resume_http_response(),
            };
            if let Err(status) = resumed {
                warn!("cannot resume the stream: {status:?}");
            }
        }
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let headers = HeaderMap::new(MapType::HttpRequestHeaders);
        // Test builds only (`--features fault-injection`): a way to make the VM fail at
        // runtime, to prove the failure policy recovers. Never in the released module.
        #[cfg(feature = "fault-injection")]
        if headers.get("x-mcp-session-filter-trap").value.is_some() {
            core::arch::wasm32::unreachable();
        }
        self.feed(
            Side::Request,
            Event::RequestHeaders {
                headers: &headers,
                attributes: &Properties,
                end_of_stream,
            },
        )
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.waiting.is_some() {
            return Action::Pause; // held until etcd answers
        }
        if !self.exchange.reads_request_body() {
            return Action::Continue;
        }
        let body = || buffer(BufferType::HttpRequestBody, body_size);
        self.feed(
            Side::Request,
            Event::RequestBody {
                size: body_size,
                end_of_stream,
                body: &body,
            },
        )
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !self.exchange.reads_response_headers() {
            return Action::Continue;
        }
        let headers = HeaderMap::new(MapType::HttpResponseHeaders);
        self.feed(
            Side::Response,
            Event::ResponseHeaders {
                headers: &headers,
                attributes: &Properties,
                end_of_stream,
            },
        )
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.waiting.is_some() {
            return Action::Pause; // held until etcd answers
        }
        if !self.exchange.reads_response_body() {
            return Action::Continue;
        }
        let body = || buffer(BufferType::HttpResponseBody, body_size);
        self.feed(
            Side::Response,
            Event::ResponseBody {
                size: body_size,
                end_of_stream,
                body: &body,
            },
        )
    }

    fn on_log(&mut self) {
        if self.exchange.holds_reservation() && self.waiting.is_none() {
            let _ = self.feed(Side::Response, Event::Done);
        }
    }
}

impl Stream {
    fn feed(&mut self, side: Side, event: Event<'_>) -> Action {
        let step = self.plugin.on_event(&mut self.exchange, event);
        self.apply(side, step)
    }

    /// Carries out a step: header edits, then the flow. A call to etcd that cannot be made is
    /// answered as failed at once (the core retries or gives up).
    fn apply(&mut self, side: Side, mut step: Step) -> Action {
        loop {
            for edit in std::mem::take(&mut step.edits) {
                let (map, name, value) = match &edit {
                    Edit::Request(name, value) => (MapType::HttpRequestHeaders, *name, Some(value)),
                    Edit::Response(name, value) => {
                        (MapType::HttpResponseHeaders, *name, value.as_ref())
                    }
                    Edit::Affinity(value) => match &self.plugin.config().affinity_header {
                        Some(name) => (MapType::HttpRequestHeaders, name.as_str(), value.as_ref()),
                        None => continue,
                    },
                };
                let _ = hostcalls::set_map_value(map, name, value.map(String::as_str));
            }
            return match step.flow {
                Flow::Continue => Action::Continue,
                Flow::Pause => Action::Pause,
                Flow::Respond(reply) => respond(*reply),
                Flow::Replace(body) => {
                    // Envoy replaces the whole buffered body when the length covers it.
                    let all = u32::MAX as usize;
                    if let Err(status) =
                        hostcalls::set_buffer(BufferType::HttpResponseBody, 0, all, &body)
                    {
                        error!("cannot replace the response body: {status:?}");
                    }
                    Action::Continue
                }
                Flow::Call(call) => {
                    let timeout = self.plugin.call_timeout_ms(&self.exchange);
                    match dispatch(&self.service, &call, Duration::from_millis(timeout)) {
                        Ok(token) => {
                            self.waiting = Some((side, token));
                            Action::Pause
                        }
                        Err(status) => {
                            step = self
                                .plugin
                                .on_reply(&mut self.exchange, etcd::Reply::Failed(status));
                            continue;
                        }
                    }
                }
                Flow::Store(_) => {
                    error!("a store operation reached the adapter; letting traffic go on");
                    Action::Continue
                }
            };
        }
    }
}

/// Makes a gRPC call on the etcd store's cluster; the gRPC status to report when it cannot.
fn dispatch(service: &str, call: &Call, timeout: Duration) -> Result<u32, u32> {
    hostcalls::dispatch_grpc_call(
        service,
        call.service,
        call.method,
        Vec::new(),
        Some(&call.message),
        timeout,
    )
    .map_err(|status| {
        warn!(
            "cannot call etcd {}/{}: {status:?}",
            call.service, call.method
        );
        NOT_SENT
    })
}

/// A call's answer: the message when the status is OK.
fn grpc_message(status_code: u32, size: usize) -> Option<Vec<u8>> {
    (status_code == 0).then(|| buffer(BufferType::GrpcReceiveBuffer, size))
}

/// A call's answer as the core takes it: the message (read by [`grpc_message`]), or the
/// status of a call that failed.
fn grpc_reply(status_code: u32, message: Option<&[u8]>) -> etcd::Reply<'_> {
    match message {
        Some(message) => etcd::Reply::Ok(message),
        None => etcd::Reply::Failed(status_code),
    }
}

/// Envoy's `envoy.config.core.v3.GrpcService` naming the cluster: passing the bare name also
/// works, unless the name's bytes happen to parse as that message (Envoy tries that first).
/// The SDK takes it as a `&str`: the message is ASCII for any ASCII name under 120 bytes (its
/// tags and lengths are single bytes below 0x80); any other name goes bare.
fn grpc_service(cluster: &str) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct EnvoyGrpc {
        #[prost(string, tag = "1")]
        cluster_name: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct GrpcService {
        #[prost(message, optional, tag = "1")]
        envoy_grpc: Option<EnvoyGrpc>,
    }
    let message = prost::Message::encode_to_vec(&GrpcService {
        envoy_grpc: Some(EnvoyGrpc {
            cluster_name: cluster.to_owned(),
        }),
    });
    String::from_utf8(message).unwrap_or_else(|_| cluster.to_owned())
}

fn respond(reply: Reply) -> Action {
    let headers = reply
        .headers
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
    if let Err(status) = hostcalls::send_http_response(reply.status, headers, body) {
        error!("cannot send local reply: {status:?}");
    }
    Action::Pause
}

fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    hostcalls::get_buffer(kind, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Envoy's attributes of the stream being served (`get_property`).
struct Properties;

impl Attributes for Properties {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
}

/// A header map read whole, in one hostcall, the first time a header is asked for; each
/// header read alone would cost a VM crossing (BENCHMARKS.md).
struct HeaderMap {
    kind: MapType,
    map: OnceCell<Vec<u8>>,
}

impl HeaderMap {
    fn new(kind: MapType) -> HeaderMap {
        HeaderMap {
            kind,
            map: OnceCell::new(),
        }
    }
}

impl Headers for HeaderMap {
    fn find<'s>(&'s self, names: &[&str], found: &mut [Header<'s>]) {
        let map = self.map.get_or_init(|| read_header_map(self.kind));
        if headers::scan_into(map, names, found).is_none() {
            found.fill(Header::default()); // a malformed map: as if the headers were absent
        }
    }
}

/// A whole header map as the host serializes it (see `headers::scan`), in one hostcall.
fn read_header_map(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host hands over `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate` (the SDK's, which allocates a `Vec<u8>` of that capacity), so
    // the buffer is ours to own and free as that `Vec`; this is what the SDK's own
    // `get_map_bytes` does, without its conversion of every pair into owned strings.
    unsafe {
        if proxy_get_header_map_pairs(map as u32, &mut data, &mut size) != 0 || data.is_null() {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    }
}

// Two calls of the proxy-wasm ABI declared here rather than taken from the SDK: its wrappers
// copy every header into owned strings (`get_map_bytes`) or panic on a status they do not
// expect (`get_metric`).
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
}
