//! The empty native module: every hook Envoy 1.40 requires of an HTTP filter module (the list
//! in tests/e2e/test_native.py and ../shared/NATIVE.md), each returning Continue (0) at once,
//! with no callback into Envoy. What remains is the price of any dynamic module in Envoy: the
//! filter Envoy wraps around it per stream and one C call per hook.
//!
//! The signatures are those of native/src/abi.rs (Envoy's `abi.h`, ABI v0.2.0). No hook reads
//! a pointer it is given, so none needs `unsafe`: the only unsafe-adjacent code is the
//! `#[no_mangle] extern "C"` exports themselves.

use std::ffi::{c_char, c_void};

#[cfg(feature = "session-floor")]
mod session_floor;

/// `{ptr, length}` of bytes Envoy owns (passed by value; never read here).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    ptr: *const u8,
    length: usize,
}

/// A header as Envoy hands it out (never read here).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    key: EnvoyBuffer,
    value: EnvoyBuffer,
}

type EnvoyPtr = *mut c_void;
type ModulePtr = *const c_void;

/// Every status enum's Continue.
const CONTINUE: u32 = 0;

/// What `config_new` and `filter_new` hand Envoy: any non-null pointer (a null config fails
/// the configuration; nothing ever reads through this one).
static OBJECT: u8 = 0;

fn object() -> ModulePtr {
    std::ptr::addr_of!(OBJECT).cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.2.0".as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: EnvoyPtr,
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> ModulePtr {
    object()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(_config: ModulePtr) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    _config: ModulePtr,
    _filter_envoy: EnvoyPtr,
) -> ModulePtr {
    object()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(_filter: ModulePtr) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    #[cfg(feature = "session-floor")]
    session_floor::request_headers(_envoy);
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
) {
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _callout_id: u64,
    _result: u32,
    _headers: *mut EnvoyHeader,
    _headers_size: usize,
    _chunks: *mut EnvoyBuffer,
    _chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _headers: *mut EnvoyHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _trailers: *mut EnvoyHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: EnvoyPtr,
    _filter: ModulePtr,
) {
}
