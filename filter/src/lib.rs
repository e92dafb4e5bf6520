//! The proxy-wasm adapter: it hands the proxy's callbacks to `mcp-session-core`'s
//! [`Worker`] (the driver) and carries out what the driver asks through hostcalls
//! ([`StreamIo`], [`TimerIo`], [`Host`]). Every decision, the timer's period and the retries
//! included, is the core's; this file translates.
//!
//! Hostcalls go through `proxy_wasm::hostcalls` (or the raw ABI) directly, never through the
//! SDK's trait helpers, which panic on unexpected host answers and on non-UTF-8 header values.

#![cfg(target_arch = "wasm32")]
// The only public items are the ABI entry points `proxy_wasm::main!` generates.
#![allow(missing_docs)]

mod abi;

use log::{error, warn};
use mcp_session_core::driver::{Action, Side, Stream, StreamIo, TimerIo, Upstream, Worker};
use mcp_session_core::exchange::Reply;
use mcp_session_core::host::{Attributes, Host, Serialized};
use mcp_session_core::metrics::{Defined, Metric};
use mcp_session_core::store::etcd::Call;
use mcp_session_core::store::{SharedData, WriteError};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{self, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::borrow::Cow;
use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;

/// gRPC status of a call that could not even be made (no such cluster, no memory).
const NOT_SENT: u32 = 14;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// The core's [`Host`] in Envoy: the clock, WASI's `random_get` (BoringSSL's CSPRNG in
/// Envoy), shared data, and the stats this VM defined.
struct Envoy {
    /// The id of each stat this VM defined.
    metrics: Defined<u32>,
}

impl Envoy {
    fn new() -> Envoy {
        let metrics = Defined::by(|metric| {
            let kind = metric.is_gauge().then_some(MetricType::Gauge);
            let kind = kind.unwrap_or(MetricType::Counter);
            let id = hostcalls::define_metric(kind, &metric.name());
            let id = id.inspect_err(|s| warn!("cannot define stat {}: {s:?}", metric.name()));
            id.ok()
        });
        Envoy { metrics }
    }
}

impl SharedData for Envoy {
    // The SDK takes a key as `str`; the core's keys are ASCII, and one that were not would
    // read as missing and fail to write.
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        let Ok(key) = std::str::from_utf8(key) else {
            return (None, None);
        };
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        let key = std::str::from_utf8(key).map_err(|_| WriteError::Host)?;
        hostcalls::set_shared_data(key, Some(value), cas).map_err(|status| match status {
            Status::CasMismatch => WriteError::CasMismatch,
            _ => WriteError::Host,
        })
    }
}

impl Host for Envoy {
    fn now_ms(&self) -> u64 {
        abi::now_ms()
    }

    fn fill_random(&self, buf: &mut [u8]) -> bool {
        getrandom::fill(buf).is_ok()
    }

    fn increment(&self, metric: Metric, delta: i64) {
        if let Some(id) = self.metrics.get(metric) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    fn record(&self, metric: Metric, value: u64) {
        if let Some(id) = self.metrics.get(metric) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    fn epoch(&self) -> Option<u64> {
        abi::get_metric(self.metrics.get(Metric::Epoch)?).filter(|value| *value > 0)
    }
}

/// The hostcalls the driver's requests map to; one value serves every context (the host
/// knows which context is calling).
struct Calls;

impl StreamIo for Calls {
    fn set_header(&mut self, side: Side, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(map_of(side), name, value);
    }

    fn add_header(&mut self, side: Side, name: &str, value: &[u8]) {
        let _ = hostcalls::add_map_value_bytes(map_of(side), name, value);
    }

    fn respond(&mut self, reply: &Reply) {
        let headers = reply
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
        if let Err(status) = hostcalls::send_http_response(reply.status, headers, body) {
            error!("cannot send local reply: {status:?}");
        }
    }

    fn replace_body(&mut self, body: &[u8]) {
        // Envoy replaces the whole buffered body when the length covers it.
        let all = u32::MAX as usize;
        if let Err(status) = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, all, body) {
            error!("cannot replace the response body: {status:?}");
        }
    }

    fn call(&mut self, upstream: &Upstream, call: &Call, timeout_ms: u64) -> Result<u32, u32> {
        TimerIo::call(self, upstream, call, timeout_ms)
    }

    fn set_fact(&mut self, name: &str, value: &str) {
        let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
    }

    fn resume(&mut self, side: Side) {
        let resumed = match side {
            Side::Request => hostcalls::resume_http_request(),
            Side::Response => hostcalls::resume_http_response(),
        };
        if let Err(status) = resumed {
            warn!("cannot resume the stream: {status:?}");
        }
    }
}

impl TimerIo for Calls {
    fn call(&mut self, upstream: &Upstream, call: &Call, timeout_ms: u64) -> Result<u32, u32> {
        let (service, method, timeout) =
            (call.service, call.method, Duration::from_millis(timeout_ms));
        let message = Some(call.message.as_slice());
        hostcalls::dispatch_grpc_call(
            &upstream.grpc_service,
            service,
            method,
            vec![],
            message,
            timeout,
        )
        .map_err(|status| {
            warn!("cannot call etcd {service}/{method}: {status:?}");
            NOT_SENT
        })
    }

    fn open_stream(
        &mut self,
        upstream: &Upstream,
        call: &Call,
        metadata: &[(&str, &[u8])],
    ) -> Option<u32> {
        let token = hostcalls::open_grpc_stream(
            &upstream.grpc_service,
            call.service,
            call.method,
            metadata.to_vec(),
        );
        let token = token
            .inspect_err(|status| warn!("cannot open a gRPC stream: {status:?}"))
            .ok()?;
        self.send(token, &call.message).then_some(token)
    }

    fn send(&mut self, stream: u32, message: &[u8]) -> bool {
        hostcalls::send_grpc_stream_message(stream, Some(message), false).is_ok()
    }

    fn close(&mut self, stream: u32) {
        let _ = hostcalls::cancel_grpc_stream(stream);
    }
}

#[derive(Default)]
struct Root {
    worker: Option<Rc<Worker<Envoy>>>,
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if let Some(worker) = &self.worker {
            let message = buffer(BufferType::GrpcReceiveBuffer, response_size);
            worker.call_answered(token_id, status_code, &message);
        }
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if let Some(worker) = &self.worker {
            let message = buffer(BufferType::GrpcReceiveBuffer, message_size);
            worker.stream_message(token_id, &message, &mut Calls);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if let Some(worker) = &self.worker {
            worker.stream_closed(token_id, status_code);
        }
    }

    fn on_done(&mut self) -> bool {
        if let Some(worker) = &self.worker {
            worker.shutdown();
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = buffer(BufferType::PluginConfiguration, usize::MAX);
        let worker = match Worker::new(Envoy::new(), &bytes) {
            Ok(worker) => worker,
            Err(e) => {
                error!("mcp-session-filter: configuration refused: {e}");
                return false;
            }
        };
        if let Err(status) = hostcalls::set_tick_period(Duration::from_millis(worker.tick_ms())) {
            warn!("cannot set the timer: {status:?}");
        }
        self.worker = Some(Rc::new(worker));
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            worker.on_timer(&mut Calls);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(Http {
            worker,
            stream: Stream::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    worker: Rc<Worker<Envoy>>,
    stream: Stream,
}

impl Http {
    /// Body data of one side (its size, and whether it ends the stream), or its trailers
    /// (`None`), after which the whole body Envoy holds for this filter is read if the core
    /// asks.
    fn body(&mut self, side: Side, data: Option<(usize, bool)>) -> types::Action {
        let kind = match side {
            Side::Request => BufferType::HttpRequestBody,
            Side::Response => BufferType::HttpResponseBody,
        };
        let held = OnceCell::new();
        let bytes = || held.get_or_init(|| buffer(kind, data.map_or(usize::MAX, |d| d.0)));
        let read = || Cow::Borrowed(&**bytes());
        let size = || data.map_or_else(|| bytes().len(), |d| d.0);
        let (stream, io) = (&mut self.stream, &mut Calls);
        action(match data {
            Some((_, end)) => self.worker.body(stream, side, &size, end, &read, io),
            None => self.worker.trailers(stream, side, &size, &read, io),
        })
    }
}

impl Context for Http {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let message = buffer(BufferType::GrpcReceiveBuffer, response_size);
        let (stream, io) = (&mut self.stream, &mut Calls);
        (self.worker).stream_call_answered(stream, token_id, status_code, &message, io);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(
        &mut self,
        _num_headers: usize,
        end_of_stream: bool,
    ) -> types::Action {
        let headers = Serialized::new(|| abi::header_map(MapType::HttpRequestHeaders));
        // Test builds only (`--features fault-injection`): a way to make the VM fail at
        // runtime, to prove the failure policy recovers. Never in the released module.
        #[cfg(feature = "fault-injection")]
        if mcp_session_core::host::Headers::get(&headers, "x-mcp-session-filter-trap").count > 0 {
            core::arch::wasm32::unreachable();
        }
        let (stream, io) = (&mut self.stream, &mut Calls);
        action(
            self.worker
                .request_headers(stream, &headers, &Properties, end_of_stream, io),
        )
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> types::Action {
        self.body(Side::Request, Some((body_size, end_of_stream)))
    }

    fn on_http_response_headers(
        &mut self,
        _num_headers: usize,
        end_of_stream: bool,
    ) -> types::Action {
        let headers = Serialized::new(|| abi::header_map(MapType::HttpResponseHeaders));
        let (stream, io) = (&mut self.stream, &mut Calls);
        action(
            self.worker
                .response_headers(stream, &headers, &Properties, end_of_stream, io),
        )
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> types::Action {
        self.body(Side::Response, Some((body_size, end_of_stream)))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> types::Action {
        self.body(Side::Request, None)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> types::Action {
        self.body(Side::Response, None)
    }

    fn on_log(&mut self) {
        self.worker.stream_done(&mut self.stream, &mut Calls);
    }
}

fn action(action: Action) -> types::Action {
    match action {
        Action::Continue => types::Action::Continue,
        // HoldHeaders is asked only of a host that can (Capabilities::PROXY_WASM cannot).
        Action::Pause | Action::HoldHeaders => types::Action::Pause,
    }
}

fn map_of(side: Side) -> MapType {
    match side {
        Side::Request => MapType::HttpRequestHeaders,
        Side::Response => MapType::HttpResponseHeaders,
    }
}

fn buffer(kind: BufferType, size: usize) -> Cow<'static, [u8]> {
    let bytes = hostcalls::get_buffer(kind, 0, size).ok().flatten();
    Cow::Owned(bytes.unwrap_or_default())
}

/// Envoy's attributes of the stream being served (`get_property`).
struct Properties;

impl Attributes for Properties {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
}
