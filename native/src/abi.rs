//! Envoy 1.40's dynamic-module ABI (v0.2.0), the part this module uses, and the only `unsafe`
//! of the crate.
//!
//! - Declarations are written here by hand from Envoy's `abi.h` (`source/extensions/
//!   dynamic_modules/abi/abi.h`, ABI "v0.2.0"): no SDK crate is published for it. Each callback
//!   declared below is one the 1.40 binary exports (`tests/e2e/test_native.py` checks every
//!   symbol the built module imports against `nm -D` of the Envoy the tests run), and each hook is one 1.40 resolves.
//! - Every hook Envoy calls goes through [`guard`]: a panic is caught here and never unwinds
//!   into Envoy (which would abort the process). A stream hook that panicked fails its request
//!   closed ([`Filter::failed`]).
//! - Above this file, Envoy is reached through safe handles: [`Envoy`] (one stream, valid
//!   during one hook), [`EnvoyConfig`] (a filter configuration), [`Scheduler`].

#![allow(unsafe_code)]

use crate::{Filter, Filters, Outcome};
use mcp_session_core::driver::{Action, Hook, Side};
use mcp_session_core::exchange::Reply;
use mcp_session_core::grpc;
use mcp_session_core::headers::{self, Header, Names};
use mcp_session_core::host::{Attributes, Headers};
use std::borrow::Cow;
use std::cell::{Cell, UnsafeCell};
use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// `{ptr, length}` of bytes Envoy owns, valid during the hook.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// The bytes. Safety: Envoy keeps them valid while the hook that read them runs, and no
    /// slice outlives that hook (one that leaves a function borrows the hook's `Envoy`).
    fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy's contract for every buffer it hands out: `length` bytes at `ptr`,
        // valid until the hook returns (a header's value: until that header changes); no
        // caller keeps one past the hook, and [`HeaderView`] says why none outlives a change.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// `{ptr, length}` of bytes this module owns, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const u8,
    length: usize,
}

impl ModuleBuffer {
    const NONE: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };

    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// A header as Envoy hands it out.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key: EnvoyBuffer,
    value: EnvoyBuffer,
}

/// A header this module hands to Envoy.
#[repr(C)]
struct ModuleHeader {
    key: ModuleBuffer,
    value: ModuleBuffer,
}

type ConfigEnvoyPtr = *mut c_void;
type ConfigModulePtr = *const c_void;
type FilterEnvoyPtr = *mut c_void;
type FilterModulePtr = *const c_void;
type SchedulerPtr = *mut c_void;

// envoy_dynamic_module_type_http_header_type
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
// envoy_dynamic_module_type_http_body_type
const RECEIVED_REQUEST_BODY: u32 = 0;
const BUFFERED_REQUEST_BODY: u32 = 1;
const RECEIVED_RESPONSE_BODY: u32 = 2;
const BUFFERED_RESPONSE_BODY: u32 = 3;
// Every on_http_filter_*_status: Continue = 0; headers StopIteration = 1 (the headers held,
// the body still shown to this filter: Action::HoldHeaders), body StopIterationAndBuffer = 1.
const CONTINUE: u32 = 0;
const STOP: u32 = 1;
// Headers held for a call: StopAllIterationAndWatermark, as a proxy-wasm host makes of a
// paused headers callback. With it Envoy hands the body that arrives meanwhile to this filter
// once it resumes; with StopIteration (1) it would buffer the body in this filter without
// showing it, and pass it on unread when the stream resumes.
const STOP_ALL: u32 = 4;
// envoy_dynamic_module_type_http_callout_init_result and _http_callout_result: Success = 0.
const CALLOUT_SUCCESS: u32 = 0;
// envoy_dynamic_module_type_metrics_result
const METRICS_SUCCESS: u32 = 0;
// envoy_dynamic_module_type_log_level: Trace 0 .. Critical 5, Off 6.
const LOG_OFF: u32 = 6;

/// The connection and upstream attributes the core asks for
/// (`envoy_dynamic_module_type_attribute_id`).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
enum Attribute {
    /// `connection.subject_peer_certificate`
    SubjectPeerCertificate = 33,
    /// `connection.uri_san_peer_certificate`
    UriSanPeerCertificate = 37,
    /// `connection.sha256_peer_certificate_digest`
    Sha256PeerCertificate = 38,
    /// `upstream.address`
    UpstreamAddress = 41,
}

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_get_log_level() -> u32;
    fn envoy_dynamic_module_callback_get_concurrency() -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        labels: *const ModuleBuffer,
        labels_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        labels: *const ModuleBuffer,
        labels_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        labels: *const ModuleBuffer,
        labels_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        labels: *const ModuleBuffer,
        labels_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        labels: *const ModuleBuffer,
        labels_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: ConfigEnvoyPtr,
        id: usize,
        labels: *const ModuleBuffer,
        labels_length: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);

    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        headers: *mut EnvoyHeader,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status: u32,
        headers: *const ModuleHeader,
        headers_length: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_get_body_size(
        filter: FilterEnvoyPtr,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoyPtr,
        body_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: FilterEnvoyPtr,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_received_buffered_response_body(
        filter: FilterEnvoyPtr,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: u32,
        chunks: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_append_body(
        filter: FilterEnvoyPtr,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_drain_body(
        filter: FilterEnvoyPtr,
        body_type: u32,
        bytes: usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: FilterEnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_worker_index(filter: FilterEnvoyPtr) -> u32;

    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_length: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_length: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_start_http_stream(
        config: ConfigEnvoyPtr,
        stream_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_length: usize,
        body: ModuleBuffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_stream_send_data(
        config: ConfigEnvoyPtr,
        stream_id: u64,
        data: ModuleBuffer,
        end_stream: bool,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_config_reset_http_stream(
        config: ConfigEnvoyPtr,
        stream_id: u64,
    );
}

// ---------------------------------------------------------------------------------------------
// Safe handles
// ---------------------------------------------------------------------------------------------

/// Log lines go to Envoy's log (component `dynamic_modules`).
struct EnvoyLog;

static LOGGER: EnvoyLog = EnvoyLog;

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => 4,
            log::Level::Warn => 3,
            log::Level::Info => 2,
            log::Level::Debug => 1,
            log::Level::Trace => 0,
        };
        let message = record.args().to_string();
        // SAFETY: the buffer points at `message`, alive for the call.
        unsafe { envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
    }

    fn flush(&self) {}
}

/// Sends the `log` facade to Envoy's log.
pub fn install_logger() {
    let _ = log::set_logger(&LOGGER);
    refresh_log_level();
}

/// Follows Envoy's log level (it can change at runtime, through the admin interface).
pub fn refresh_log_level() {
    // SAFETY: no arguments; callable from any thread.
    let level = unsafe { envoy_dynamic_module_callback_get_log_level() };
    log::set_max_level(match level {
        0 => log::LevelFilter::Trace,
        1 => log::LevelFilter::Debug,
        2 => log::LevelFilter::Info,
        3 => log::LevelFilter::Warn,
        l if l < LOG_OFF => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    });
}

/// Envoy's worker threads (`--concurrency`). Main thread only.
pub fn concurrency() -> u32 {
    // SAFETY: no arguments; called from `on_http_filter_config_new`, on the main thread.
    unsafe { envoy_dynamic_module_callback_get_concurrency() }
}

/// A filter configuration's Envoy side: stats and the scheduler. Envoy keeps it alive as long
/// as the configuration object, which holds every user of this handle.
#[derive(Clone, Copy)]
pub struct EnvoyConfig {
    ptr: ConfigEnvoyPtr,
}

// SAFETY: Envoy's stats are thread-safe (atomic counters and gauges); the config-level stat
// callbacks take no lock on the main thread's state.
unsafe impl Send for EnvoyConfig {}
// SAFETY: as above.
unsafe impl Sync for EnvoyConfig {}

impl EnvoyConfig {
    /// Defines a counter or a gauge (only during `on_http_filter_config_new`): its id.
    pub fn define(&self, gauge: bool, name: &str) -> Option<usize> {
        let mut id = 0usize;
        let buffer = ModuleBuffer::of(name.as_bytes());
        // SAFETY: `buffer` lives for the call; no labels; `id` is a valid out pointer.
        let result = unsafe {
            if gauge {
                envoy_dynamic_module_callback_http_filter_config_define_gauge(
                    self.ptr,
                    buffer,
                    std::ptr::null(),
                    0,
                    &mut id,
                )
            } else {
                envoy_dynamic_module_callback_http_filter_config_define_counter(
                    self.ptr,
                    buffer,
                    std::ptr::null(),
                    0,
                    &mut id,
                )
            }
        };
        if result != METRICS_SUCCESS {
            log::warn!("cannot define stat {name}");
        }
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// Adds `delta` to a counter (negative deltas are ignored) or a gauge.
    pub fn add(&self, gauge: bool, id: usize, delta: i64) {
        let value = delta.unsigned_abs();
        // SAFETY: `id` came from `define` on this configuration; no labels.
        unsafe {
            match (gauge, delta >= 0) {
                (false, true) => {
                    envoy_dynamic_module_callback_http_filter_config_increment_counter(
                        self.ptr,
                        id,
                        std::ptr::null(),
                        0,
                        value,
                    )
                }
                (false, false) => METRICS_SUCCESS,
                (true, true) => envoy_dynamic_module_callback_http_filter_config_increment_gauge(
                    self.ptr,
                    id,
                    std::ptr::null(),
                    0,
                    value,
                ),
                (true, false) => envoy_dynamic_module_callback_http_filter_config_decrement_gauge(
                    self.ptr,
                    id,
                    std::ptr::null(),
                    0,
                    value,
                ),
            };
        }
    }

    /// Sets a gauge.
    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: `id` came from `define` on this configuration; no labels.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.ptr,
                id,
                std::ptr::null(),
                0,
                value,
            );
        }
    }
}

/// A configuration's scheduler: [`Scheduler::commit`] from any thread runs the configuration's
/// `on_scheduled` on the main thread.
struct Scheduler {
    ptr: SchedulerPtr,
}

// SAFETY: committing to a scheduler from other threads is what Envoy's scheduler is for (it
// posts to the main thread's dispatcher).
unsafe impl Send for Scheduler {}
// SAFETY: as above.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// A scheduler for `config` (main thread).
    fn new(config: EnvoyConfig) -> Option<Scheduler> {
        // SAFETY: `config` is the live configuration being created.
        let ptr =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config.ptr) };
        (!ptr.is_null()).then_some(Scheduler { ptr })
    }

    /// Asks for one `on_scheduled` on the main thread.
    fn commit(&self) {
        // SAFETY: `ptr` is live until `drop`, which runs after every commit (its thread is
        // joined first).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.ptr, 0) }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: deleted once, after its last use.
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.ptr) }
    }
}

/// The host's timer, which Envoy gives a dynamic module only as a scheduler: a thread that
/// commits to it every period, so that the configuration's `on_scheduled` runs on the main
/// thread that often. Dropping it stops and joins the thread.
pub struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Starts the thread (main thread, while `envoy` is being created).
    pub fn start(envoy: EnvoyConfig, period: Duration) -> Option<Ticker> {
        let scheduler = Scheduler::new(envoy)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mcp-session-tick".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    scheduler.commit();
                }
            });
        match thread {
            Ok(thread) => Some(Ticker {
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                log::error!("mcp-session-native: cannot start the timer thread: {e}");
                None
            }
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The connection and upstream attributes of the stream being served, by the names the core
/// asks for.
impl Attributes for Envoy<'_> {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        let attribute = match path {
            ["connection", "uri_san_peer_certificate"] => Attribute::UriSanPeerCertificate,
            ["connection", "subject_peer_certificate"] => Attribute::SubjectPeerCertificate,
            ["connection", "sha256_peer_certificate_digest"] => Attribute::Sha256PeerCertificate,
            ["upstream", "address"] => Attribute::UpstreamAddress,
            _ => return None,
        };
        self.attribute(attribute)
    }
}

/// A configuration's calls and streams, on the main thread during one of its hooks (Envoy
/// answers them there, through the configuration's hooks).
pub struct MainThread<'hook> {
    ptr: ConfigEnvoyPtr,
    _hook: PhantomData<&'hook ()>,
}

impl MainThread<'_> {
    fn new(ptr: ConfigEnvoyPtr) -> MainThread<'static> {
        MainThread {
            ptr,
            _hook: PhantomData,
        }
    }

    /// Makes a unary gRPC call on `cluster`: its token.
    pub fn callout(&self, cluster: &str, request: &grpc::Request, timeout_ms: u64) -> Option<u32> {
        let f = envoy_dynamic_module_callback_http_filter_config_http_callout;
        // SAFETY: `ptr` is the configuration of the running main-thread hook, what `f` takes.
        unsafe { callout(f, self.ptr, cluster, request, timeout_ms) }
    }

    /// Opens a gRPC stream on `cluster` and sends the request's first message, leaving the
    /// stream open: its token.
    pub fn start_stream(&self, cluster: &str, request: &grpc::Request) -> Option<u32> {
        let headers = module_headers(&request.headers);
        let mut id = 0u64;
        // SAFETY: as in `callout`. A timeout of 0 is none.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_start_http_stream(
                self.ptr,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(&request.body),
                false,
                0,
            )
        };
        token(result, id)
    }

    /// Sends framed bytes on an open stream; false when Envoy knows no such stream.
    pub fn send(&self, stream: u32, data: &[u8]) -> bool {
        // SAFETY: as in `callout`; an unknown id is refused by Envoy, not undefined.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_stream_send_data(
                self.ptr,
                u64::from(stream),
                ModuleBuffer::of(data),
                false,
            )
        }
    }

    /// Resets a stream (Envoy may report the reset at once, through this configuration's hook).
    pub fn reset(&self, stream: u32) {
        // SAFETY: as in `send`.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_reset_http_stream(
                self.ptr,
                u64::from(stream),
            )
        }
    }
}

/// A stream's or a configuration's `http_callout` (the same signature on either handle).
type Callout = unsafe extern "C" fn(
    *mut c_void,
    *mut u64,
    ModuleBuffer,
    *const ModuleHeader,
    usize,
    ModuleBuffer,
    u64,
) -> u32;

/// Starts `request` on `cluster` through `f`: its token.
///
/// Safety: `ptr` is the live handle `f` takes (a stream's or a configuration's), in a hook on
/// its thread.
unsafe fn callout(
    f: Callout,
    ptr: *mut c_void,
    cluster: &str,
    request: &grpc::Request,
    timeout_ms: u64,
) -> Option<u32> {
    let headers = module_headers(&request.headers);
    let mut id = 0u64;
    // SAFETY: per the function's contract; every buffer lives for the call.
    let result = unsafe {
        f(
            ptr,
            &mut id,
            ModuleBuffer::of(cluster.as_bytes()),
            headers.as_ptr(),
            headers.len(),
            ModuleBuffer::of(&request.body),
            timeout_ms,
        )
    };
    token(result, id)
}

fn module_headers(headers: &[(String, Vec<u8>)]) -> Vec<ModuleHeader> {
    headers
        .iter()
        .map(|(name, value)| ModuleHeader {
            key: ModuleBuffer::of(name.as_bytes()),
            value: ModuleBuffer::of(value),
        })
        .collect()
}

/// A started call's token, as the core counts them (Envoy's ids grow from 1; one past
/// `u32::MAX` is treated as not made, and its answer is ignored).
fn token(result: u32, id: u64) -> Option<u32> {
    (result == CALLOUT_SUCCESS)
        .then_some(u32::try_from(id).ok())
        .flatten()
}

/// Safety: `ptr` is null or points to `length` values that Envoy keeps valid during the hook.
unsafe fn envoy_slice<'a, T>(ptr: *const T, length: usize) -> &'a [T] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

fn header_pairs(headers: &[EnvoyHeader]) -> Vec<(&[u8], &[u8])> {
    headers
        .iter()
        .map(|h| (h.key.bytes(), h.value.bytes()))
        .collect()
}

fn concat(chunks: &[EnvoyBuffer]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.bytes()).copied().collect()
}

/// One stream's Envoy side, during one hook.
pub struct Envoy<'hook> {
    ptr: FilterEnvoyPtr,
    _hook: PhantomData<&'hook ()>,
}

/// One side's headers as Envoy holds them: each [`Headers::find`] takes the pairs' addresses
/// from Envoy and scans them where they are, with nothing copied.
///
/// The values found point into Envoy's header map. They stay valid while the hook runs, until
/// that header is changed; the core reads them only while it decides a step, and changes
/// headers only after (its request machine holds no borrowed data), so none is read late.
pub struct HeaderView<'e> {
    envoy: &'e Envoy<'e>,
    side: Side,
}

impl Headers for HeaderView<'_> {
    fn find<'s>(&'s self, names: &Names<'_>, found: &mut [Header<'s>]) {
        let (ptr, kind) = (self.envoy.ptr, header_type(self.side));
        // SAFETY: `ptr` is the stream of the running hook.
        let size = unsafe { envoy_dynamic_module_callback_http_get_headers_size(ptr, kind) };
        // Requests carry a dozen headers or so: room for them on the stack, a Vec beyond. The
        // room is not initialized: Envoy writes every entry it reported (zeroing a kilobyte
        // per request was a tenth of the hot path's own code).
        let mut inline = [const { MaybeUninit::<EnvoyHeader>::uninit() }; 32];
        let mut spilled = Vec::new();
        let room: &mut [MaybeUninit<EnvoyHeader>] = match inline.get_mut(..size) {
            Some(room) => room,
            None => {
                spilled.resize_with(size, MaybeUninit::uninit);
                &mut spilled
            }
        };
        // SAFETY: `room` has space for the `size` headers Envoy reported in this hook.
        let read = unsafe {
            envoy_dynamic_module_callback_http_get_headers(ptr, kind, room.as_mut_ptr().cast())
        };
        found.fill(Header::default());
        if read {
            // SAFETY: Envoy wrote all `size` entries when it returns true; `EnvoyHeader` is
            // plain data (pointers and lengths), valid for any bits Envoy writes.
            let pairs: &[EnvoyHeader] =
                unsafe { std::slice::from_raw_parts(room.as_ptr().cast(), room.len()) };
            headers::scan_pairs(
                pairs.iter(),
                |h| (h.key.bytes(), || h.value.bytes()),
                names,
                found,
            );
        }
    }
}

impl Envoy<'_> {
    fn new(ptr: FilterEnvoyPtr) -> Envoy<'static> {
        Envoy {
            ptr,
            _hook: PhantomData,
        }
    }

    /// Makes a gRPC call on `cluster` whose answer comes to this stream's
    /// `on_http_filter_http_callout_done`: its token.
    pub fn callout(&self, cluster: &str, request: &grpc::Request, timeout_ms: u64) -> Option<u32> {
        let f = envoy_dynamic_module_callback_http_filter_http_callout;
        // SAFETY: `ptr` is the stream of the running hook, what `f` takes.
        unsafe { callout(f, self.ptr, cluster, request, timeout_ms) }
    }

    /// One side's headers, read in place when the core asks.
    pub fn headers(&self, side: Side) -> HeaderView<'_> {
        HeaderView { envoy: self, side }
    }

    /// Sets (replacing every copy) or removes a header (the values a [`HeaderView`] found for
    /// that name are no longer valid: the core has finished with them by then).
    pub fn set_header(&self, side: Side, name: &str, value: Option<&str>) {
        let value = value.map_or(ModuleBuffer::NONE, |v| ModuleBuffer::of(v.as_bytes()));
        // SAFETY: both buffers live for the call; a null value removes the header.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.ptr,
                header_type(side),
                ModuleBuffer::of(name.as_bytes()),
                value,
            );
        }
    }

    /// Adds a header (a copy more, where one is there already).
    pub fn add_header(&self, side: Side, name: &str, value: &[u8]) {
        // SAFETY: both buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.ptr,
                header_type(side),
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            );
        }
    }

    /// Bytes held so far on a side: what earlier hooks buffered and the chunk of this hook.
    pub fn body_size(&self, side: Side) -> usize {
        self.with_body_chunks(side, |chunks| chunks.iter().map(|c| c.length).sum())
    }

    /// The body held so far on a side, buffered first: where Envoy holds it in one chunk (an
    /// `initialize` and its answer, as a rule), borrowed for the hook, with nothing copied.
    pub fn body(&self, side: Side) -> Cow<'_, [u8]> {
        self.with_body_chunks(side, |chunks| match chunks {
            [] => Cow::Borrowed(&[][..]),
            // The chunk's bytes stay valid while this hook runs; the borrow of `self` (this
            // hook's Envoy) keeps the slice from outliving it.
            [one] => Cow::Borrowed(one.bytes()),
            many => {
                let mut body = Vec::with_capacity(many.iter().map(|c| c.length).sum());
                many.iter().for_each(|c| body.extend_from_slice(c.bytes()));
                Cow::Owned(body)
            }
        })
    }

    /// Runs `f` on the chunks held so far on a side, buffered first, each once. They are read
    /// onto the stack: an initialize reads both its bodies, and a heap list of chunks each time
    /// cost more than Envoy's answers (make bench).
    fn with_body_chunks<R>(&self, side: Side, f: impl FnOnce(&[EnvoyBuffer]) -> R) -> R {
        let (buffered, received) = body_types(side);
        // SAFETY: `ptr` is the stream of the running hook.
        let (n_buffered, n_received) = unsafe {
            let n_buffered =
                envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, buffered);
            // Where Envoy says the chunk received is the body it buffered (it hands this
            // filter its own buffer again), the received kind is not read at all.
            let again = match side {
                Side::Request => {
                    envoy_dynamic_module_callback_http_received_buffered_request_body(self.ptr)
                }
                Side::Response => {
                    envoy_dynamic_module_callback_http_received_buffered_response_body(self.ptr)
                }
            };
            let n_received = match again && n_buffered > 0 {
                true => 0,
                false => {
                    envoy_dynamic_module_callback_http_get_body_chunks_size(self.ptr, received)
                }
            };
            (n_buffered, n_received)
        };
        let total = n_buffered.saturating_add(n_received);
        let mut inline = [EnvoyBuffer::EMPTY; 16];
        let mut spilled = Vec::new();
        let room: &mut [EnvoyBuffer] = match inline.get_mut(..total) {
            Some(room) => room,
            None => {
                spilled.resize(total, EnvoyBuffer::EMPTY);
                &mut spilled
            }
        };
        let Some((first, second)) = room.split_at_mut_checked(n_buffered) else {
            return f(&[]);
        };
        let got_first = self.chunks_into(buffered, first);
        let got_second = self.chunks_into(received, second);
        let (first, second) = (&*first, &*second);
        let chunks = match (got_first, got_second) {
            // Behind a filter that buffered the whole body and then let it go on (Envoy's
            // `buffer`), Envoy hands the next filter that buffer as the received data too: the
            // same chunks under both kinds. Read them once, or the body comes out twice.
            (true, true) if same_chunks(first, second) => first,
            (true, true) => &*room,
            (true, false) => first,
            (false, true) => second,
            (false, false) => &[],
        };
        f(chunks)
    }

    /// Reads the chunks of one kind of body into `room` (sized by Envoy's count); false when
    /// Envoy has none. A count of none is not asked for again (an initialize's bodies come in
    /// one chunk each, none of it buffered before: half the chunk reads it made).
    fn chunks_into(&self, kind: u32, room: &mut [EnvoyBuffer]) -> bool {
        if room.is_empty() {
            return false;
        }
        // SAFETY: `ptr` is the stream of the running hook; `room` has space for the count
        // Envoy reported for this kind in the same hook.
        unsafe {
            envoy_dynamic_module_callback_http_get_body_chunks(self.ptr, kind, room.as_mut_ptr())
        }
    }

    /// Replaces everything held on a side with `body`.
    pub fn replace_body(&self, side: Side, body: &[u8]) {
        let (buffered, received) = body_types(side);
        // SAFETY: `ptr` is the stream of the running hook; `body` lives for the call.
        unsafe {
            for kind in [buffered, received] {
                let size = envoy_dynamic_module_callback_http_get_body_size(self.ptr, kind);
                envoy_dynamic_module_callback_http_drain_body(self.ptr, kind, size);
            }
            let data = ModuleBuffer::of(body);
            if !envoy_dynamic_module_callback_http_append_body(self.ptr, received, data) {
                envoy_dynamic_module_callback_http_append_body(self.ptr, buffered, data);
            }
        }
    }

    /// Lets a held side go on.
    pub fn resume(&self, side: Side) {
        // SAFETY: `ptr` is the stream of the running hook.
        unsafe {
            match side {
                Side::Request => {
                    envoy_dynamic_module_callback_http_filter_continue_decoding(self.ptr)
                }
                Side::Response => {
                    envoy_dynamic_module_callback_http_filter_continue_encoding(self.ptr)
                }
            }
        }
    }

    /// A string attribute of the stream (`None` when Envoy has none).
    fn attribute(&self, attribute: Attribute) -> Option<Vec<u8>> {
        let mut found = EnvoyBuffer::EMPTY;
        // SAFETY: `found` is a valid out pointer; its bytes are copied before the hook returns.
        let read = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.ptr,
                attribute as u32,
                &mut found,
            )
        };
        read.then(|| found.bytes().to_vec())
    }

    /// Sets filter state `key` (a string, for access logs: `%FILTER_STATE(key:PLAIN)%`).
    pub fn set_filter_state(&self, key: &str, value: &str) {
        // SAFETY: both buffers live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_filter_state_bytes(
                self.ptr,
                ModuleBuffer::of(key.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            );
        }
    }

    /// The index of the worker thread this stream runs on.
    pub fn worker_index(&self) -> u32 {
        // SAFETY: `ptr` is the stream of the running hook.
        unsafe { envoy_dynamic_module_callback_http_filter_get_worker_index(self.ptr) }
    }

    /// Answers the stream locally. Envoy runs the answer through this filter's response hooks
    /// before returning, so no `&mut Filter` may be alive across this call.
    fn send_response(&self, reply: &Reply) {
        let headers: Vec<ModuleHeader> = reply
            .headers
            .iter()
            .map(|(name, value)| ModuleHeader {
                key: ModuleBuffer::of(name.as_bytes()),
                value: ModuleBuffer::of(value.as_bytes()),
            })
            .collect();
        // SAFETY: the headers and body live for the call.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.ptr,
                reply.status,
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(&reply.body),
                ModuleBuffer::NONE,
            )
        }
    }
}

fn header_type(side: Side) -> u32 {
    match side {
        Side::Request => REQUEST_HEADER,
        Side::Response => RESPONSE_HEADER,
    }
}

/// (buffered, received) body types of a side.
/// Whether two lists of chunks are the same memory (not only the same bytes).
fn same_chunks(a: &[EnvoyBuffer], b: &[EnvoyBuffer]) -> bool {
    !a.is_empty()
        && a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.ptr == y.ptr && x.length == y.length)
}

fn body_types(side: Side) -> (u32, u32) {
    match side {
        Side::Request => (BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY),
        Side::Response => (BUFFERED_RESPONSE_BODY, RECEIVED_RESPONSE_BODY),
    }
}

// ---------------------------------------------------------------------------------------------
// Hooks
// ---------------------------------------------------------------------------------------------

/// Runs `hook`, catching a panic: nothing unwinds into Envoy.
fn guard<R>(hook: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(hook)).ok()
}

/// The configuration behind a module pointer, without taking Envoy's reference.
///
/// Safety: `ptr` came from `on_http_filter_config_new` and was not yet destroyed.
unsafe fn filters<'a>(ptr: ConfigModulePtr) -> Option<&'a Filters> {
    // SAFETY: per the function's contract, `ptr` is a live `Arc<Filters>`'s pointer.
    unsafe { ptr.cast::<Filters>().as_ref() }
}

/// A stream's filter as Envoy holds it (`on_http_filter_new` gives Envoy a `Box<Slot>`'s
/// pointer, `on_http_filter_destroy` takes it back): the filter, and whether a hook holds it.
/// Envoy calls one stream's hooks on one thread, so the flag needs no atomics; it lives with
/// the filter rather than in a thread-local, which in a shared library costs a call to reach.
struct Slot {
    busy: Cell<bool>,
    filter: UnsafeCell<Filter>,
}

/// The slot behind a filter pointer Envoy gave back; `None` when it is null.
///
/// Safety: `filter` is null, or came from `on_http_filter_new` and was not yet destroyed.
unsafe fn slot<'a>(filter: FilterModulePtr) -> Option<&'a Slot> {
    // SAFETY: per the function's contract; a `Slot` is only ever borrowed shared.
    unsafe { filter.cast::<Slot>().as_ref() }
}

/// Whether the core says a stream's `hook` has nothing to do ([`Filter::passes`]): then the
/// hook answers Continue at once, without taking the filter or its worker (on the hot path,
/// every hook after the request headers).
///
/// Safety: as [`slot`].
unsafe fn passes(filter: FilterModulePtr, hook: Hook) -> bool {
    // SAFETY: per the function's contract.
    match unsafe { slot(filter) } {
        // SAFETY: no hook holds the filter (`busy` is unset), so this shared borrow is alone.
        Some(slot) if !slot.busy.get() => {
            guard(|| unsafe { &*slot.filter.get() }.passes(hook)).unwrap_or(false)
        }
        _ => false,
    }
}

/// Runs a stream hook on its filter, then does what must wait until the filter is no longer
/// borrowed: the local reply it asked for, and resuming the stream (Envoy runs either through
/// this filter's own hooks at once). A panic fails the request closed.
///
/// A hook Envoy calls while another holds the filter is dropped: the one case is a callout
/// Envoy answers inline, before it returns (a cluster with no healthy host), which it then
/// reports as not made, and the driver counts it failed.
///
/// Safety: as [`slot`].
unsafe fn stream_hook(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    stop: u32,
    hook: impl FnOnce(&mut Filter, &Envoy<'_>) -> Outcome,
) -> u32 {
    let envoy = Envoy::new(envoy);
    // SAFETY: per the function's contract.
    let Some(slot) = (unsafe { slot(filter) }) else {
        return CONTINUE;
    };
    if slot.busy.replace(true) {
        return CONTINUE;
    }
    // SAFETY: the filter lives until `on_http_filter_destroy`, and `busy` (set until the hook
    // is done) keeps a hook Envoy calls while this borrow lives from taking another.
    let outcome = guard(|| hook(unsafe { &mut *slot.filter.get() }, &envoy))
        // SAFETY: as above; the panicked borrow is gone.
        .or_else(|| guard(|| unsafe { &mut *slot.filter.get() }.failed()));
    slot.busy.set(false);
    let Some(outcome) = outcome else {
        return CONTINUE;
    };
    if let Some(reply) = &outcome.reply {
        let _ = guard(|| envoy.send_response(reply));
    }
    if let Some(side) = outcome.resume {
        let _ = guard(|| envoy.resume(side));
    }
    match outcome.action {
        Action::Continue => CONTINUE,
        Action::Pause => stop,
        Action::HoldHeaders => STOP,
    }
}

/// # Safety
/// Called by Envoy once, when it loads the module.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    let _ = guard(crate::program_init);
    c"v0.2.0".as_ptr()
}

/// # Safety
/// Called by Envoy on the main thread with buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ConfigModulePtr {
    let envoy = EnvoyConfig { ptr: config_envoy };
    match guard(|| Filters::new(envoy, config.bytes())).flatten() {
        Some(filters) => Arc::into_raw(filters).cast(),
        None => std::ptr::null(),
    }
}

/// # Safety
/// Called by Envoy once per configuration, after its last filter.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: ConfigModulePtr,
) {
    if config.is_null() {
        return;
    }
    // SAFETY: `config` is the pointer `Arc::into_raw` gave Envoy; this takes that reference back.
    let filters = unsafe { Arc::from_raw(config.cast::<Filters>()) };
    let _ = guard(move || drop(filters));
}

/// # Safety
/// Called by Envoy on the main thread after a `Scheduler::commit`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    _event_id: u64,
) {
    // SAFETY: Envoy calls this only for a live configuration.
    unsafe {
        config_hook(config_envoy, config, |filters, main| {
            filters.on_scheduled(main)
        })
    }
}

/// # Safety
/// Called by Envoy on a worker thread for each new stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ConfigModulePtr,
    filter_envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    if config.is_null() {
        return std::ptr::null();
    }
    // SAFETY: `config` is a live `Arc<Filters>` pointer; ManuallyDrop keeps Envoy's reference.
    let filters = ManuallyDrop::new(unsafe { Arc::from_raw(config.cast::<Filters>()) });
    let envoy = Envoy::new(filter_envoy);
    let slot = || Slot {
        busy: Cell::new(false),
        filter: UnsafeCell::new(filters.new_filter(&envoy)),
    };
    match guard(|| Box::new(slot())) {
        Some(slot) => Box::into_raw(slot).cast_const().cast(),
        None => std::ptr::null(),
    }
}

/// # Safety
/// Called by Envoy once per filter, after its last hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    if filter.is_null() {
        return;
    }
    // SAFETY: `filter` is the pointer `Box::into_raw` gave Envoy; taken back once.
    let filter = unsafe { Box::from_raw(filter.cast::<Slot>().cast_mut()) };
    let _ = guard(move || drop(filter));
}

/// # Safety
/// A stream hook (worker thread).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    stream_hook(envoy, filter, STOP_ALL, |f, e| {
        f.request_headers(e, end_of_stream)
    })
}

/// # Safety
/// A stream hook (worker thread).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    if passes(filter, Hook::RequestBody) {
        return CONTINUE;
    }
    stream_hook(envoy, filter, STOP, |f, e| {
        f.body(e, Side::Request, Some(end_of_stream))
    })
}

/// # Safety
/// A stream hook (worker thread).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    if passes(filter, Hook::ResponseHeaders) {
        return CONTINUE;
    }
    stream_hook(envoy, filter, STOP_ALL, |f, e| {
        f.response_headers(e, end_of_stream)
    })
}

/// # Safety
/// A stream hook (worker thread).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    if passes(filter, Hook::ResponseBody) {
        return CONTINUE;
    }
    stream_hook(envoy, filter, STOP, |f, e| {
        f.body(e, Side::Response, Some(end_of_stream))
    })
}

/// # Safety
/// A stream hook (worker thread): the stream is over.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) {
    if !passes(filter, Hook::Done) {
        let _ = stream_hook(envoy, filter, STOP, |f, e| f.complete(e));
    }
}

/// # Safety
/// A stream hook (worker thread): the request's trailers, which end its body. Trailers
/// StopIteration is 1, as `STOP`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) -> u32 {
    if passes(filter, Hook::RequestBody) {
        return CONTINUE;
    }
    stream_hook(envoy, filter, STOP, |f, e| f.body(e, Side::Request, None))
}

/// # Safety
/// A stream hook (worker thread): the response's trailers, which end its body.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
) -> u32 {
    if passes(filter, Hook::ResponseBody) {
        return CONTINUE;
    }
    stream_hook(envoy, filter, STOP, |f, e| f.body(e, Side::Response, None))
}

/// # Safety
/// A stream hook (worker thread): the answer to a call the stream made. Envoy keeps `headers`
/// and `chunks` valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    callout_id: u64,
    result: u32,
    headers: *mut EnvoyHeader,
    headers_size: usize,
    chunks: *mut EnvoyBuffer,
    chunks_size: usize,
) {
    let Ok(token) = u32::try_from(callout_id) else {
        return;
    };
    // SAFETY: per Envoy's contract, stated above.
    let (headers, chunks) = unsafe {
        (
            envoy_slice(headers.cast_const(), headers_size),
            envoy_slice(chunks.cast_const(), chunks_size),
        )
    };
    let Some((status, message)) = guard(|| {
        grpc::unary_answer(
            result == CALLOUT_SUCCESS,
            header_pairs(headers),
            &concat(chunks),
        )
    }) else {
        return;
    };
    let _ = stream_hook(envoy, filter, STOP, |f, e| {
        f.call_answered(e, token, status, &message)
    });
}

/// Runs a configuration's hook on the main thread; a panic is counted and goes no further.
///
/// Safety: `config` came from `on_http_filter_config_new` and was not yet destroyed.
unsafe fn config_hook(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    hook: impl FnOnce(&Filters, &MainThread<'_>),
) {
    // SAFETY: per the function's contract.
    if let Some(filters) = unsafe { filters(config) } {
        let main = MainThread::new(config_envoy);
        if guard(|| hook(filters, &main)).is_none() {
            let _ = guard(|| filters.count_panic());
        }
    }
}

/// [`config_hook`] for a hook about one of the configuration's calls or streams: `id` becomes
/// the core's token (one that does not fit was never handed out, and is ignored).
///
/// Safety: as [`config_hook`].
unsafe fn call_hook(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    id: u64,
    hook: impl FnOnce(&Filters, &MainThread<'_>, u32),
) {
    if let Ok(token) = u32::try_from(id) {
        // SAFETY: per the function's contract.
        unsafe {
            config_hook(config_envoy, config, |filters, main| {
                hook(filters, main, token)
            })
        }
    }
}

/// # Safety
/// A configuration hook (main thread): the answer to one of its calls. Envoy keeps `headers`
/// and `chunks` valid during the hook.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    callout_id: u64,
    result: u32,
    headers: *mut EnvoyHeader,
    headers_size: usize,
    chunks: *mut EnvoyBuffer,
    chunks_size: usize,
) {
    // SAFETY: per Envoy's contract, stated above; `config` is live while Envoy calls its hooks.
    unsafe {
        let headers = envoy_slice(headers.cast_const(), headers_size);
        let chunks = envoy_slice(chunks.cast_const(), chunks_size);
        call_hook(config_envoy, config, callout_id, |filters, _, token| {
            let ok = result == CALLOUT_SUCCESS;
            let (status, message) = grpc::unary_answer(ok, header_pairs(headers), &concat(chunks));
            filters.call_answered(token, status, &message);
        });
    }
}

/// # Safety
/// A configuration hook (main thread): a stream's response headers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    headers: *mut EnvoyHeader,
    headers_size: usize,
    _end_stream: bool,
) {
    // SAFETY: as in `on_http_filter_config_http_callout_done`.
    unsafe {
        let headers = envoy_slice(headers.cast_const(), headers_size);
        call_hook(config_envoy, config, stream_id, |filters, _, token| {
            filters.stream_headers(token, &header_pairs(headers));
        });
    }
}

/// # Safety
/// A configuration hook (main thread): bytes on a stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    data: *const EnvoyBuffer,
    data_count: usize,
    _end_stream: bool,
) {
    // SAFETY: as in `on_http_filter_config_http_callout_done`.
    unsafe {
        let data = envoy_slice(data, data_count);
        call_hook(config_envoy, config, stream_id, |filters, main, token| {
            filters.stream_bytes(main, token, &concat(data));
        });
    }
}

/// # Safety
/// A configuration hook (main thread): a stream's trailers.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    trailers: *mut EnvoyHeader,
    trailers_size: usize,
) {
    // SAFETY: as in `on_http_filter_config_http_callout_done`.
    unsafe {
        let trailers = envoy_slice(trailers.cast_const(), trailers_size);
        call_hook(config_envoy, config, stream_id, |filters, _, token| {
            filters.stream_headers(token, &header_pairs(trailers));
        });
    }
}

/// # Safety
/// A configuration hook (main thread): a stream ended.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
) {
    // SAFETY: `config` is live while Envoy calls its hooks.
    unsafe {
        call_hook(config_envoy, config, stream_id, |filters, _, token| {
            filters.stream_closed(token, grpc::OK);
        });
    }
}

/// # Safety
/// A configuration hook (main thread): a stream was reset (by either end) or failed.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    config_envoy: ConfigEnvoyPtr,
    config: ConfigModulePtr,
    stream_id: u64,
    _reason: u32,
) {
    // SAFETY: `config` is live while Envoy calls its hooks.
    unsafe {
        call_hook(config_envoy, config, stream_id, |filters, _, token| {
            filters.stream_closed(token, grpc::UNAVAILABLE);
        });
    }
}

// Hooks Envoy 1.40 requires that this module has no use for (it makes no per-stream streams
// or schedules, and ignores watermarks).

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHeader,
    _trailers_size: usize,
) {
}

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _event_id: u64,
) {
}

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

/// # Safety
/// Unused.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}
