//! The hostcall probe: on each request's headers, make the hostcalls the plugin configuration
//! lists, `kind=count` pairs separated by commas, then continue. Kinds:
//!
//! - `header`: read the `mcp-session-id` request header (present: 40 bytes copied in);
//! - `missing_header`: read a request header that is absent;
//! - `header_map`: read every request header at once, through the SDK (`get_map_bytes`: a
//!   `String` and a `Vec` per header);
//! - `header_scan`: the same hostcall, raw, and a scan of its buffer for the three headers the
//!   filter's hot path reads (`:method`, `mcp-session-id`, `mcp-protocol-version`) that
//!   allocates nothing;
//! - `shared_get`: read a 36-byte shared-data value (the size of a session record);
//! - `shared_set`: read it and write it back with its cas (a get and a set);
//! - `clock`: read the current time;
//! - `metric`: increment a counter;
//! - `set_header`: set a request header (`x-probe: 1`).
//!
//! Nothing is done with the results but keep them alive (`black_box`), so no call is
//! optimised away. An unknown kind or a bad count refuses the configuration.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};
use std::hint::black_box;

const RECORD_KEY: &str = "probe/record";

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(ProbeRoot::default()));
}}

#[derive(Default, Clone, Copy)]
struct Plan {
    header: u32,
    missing_header: u32,
    header_map: u32,
    header_scan: u32,
    shared_get: u32,
    shared_set: u32,
    clock: u32,
    metric: u32,
    set_header: u32,
}

impl Plan {
    fn parse(text: &str) -> Option<Plan> {
        let mut plan = Plan::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (kind, count) = item.split_once('=')?;
            let count: u32 = count.trim().parse().ok()?;
            let slot = match kind.trim() {
                "header" => &mut plan.header,
                "missing_header" => &mut plan.missing_header,
                "header_map" => &mut plan.header_map,
                "header_scan" => &mut plan.header_scan,
                "shared_get" => &mut plan.shared_get,
                "shared_set" => &mut plan.shared_set,
                "clock" => &mut plan.clock,
                "metric" => &mut plan.metric,
                "set_header" => &mut plan.set_header,
                _ => return None,
            };
            *slot = count;
        }
        Some(plan)
    }
}

#[derive(Default)]
struct ProbeRoot {
    plan: Plan,
    metric: u32,
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let Some(plan) = std::str::from_utf8(&bytes).ok().and_then(Plan::parse) else {
            return false;
        };
        self.plan = plan;
        self.metric = hostcalls::define_metric(MetricType::Counter, "probe.calls").unwrap_or(0);
        let _ = hostcalls::set_shared_data(RECORD_KEY, Some(&[7u8; 36]), None);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeStream {
            plan: self.plan,
            metric: self.metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ProbeStream {
    plan: Plan,
    metric: u32,
}

impl Context for ProbeStream {}

impl HttpContext for ProbeStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let p = self.plan;
        for _ in 0..p.header {
            black_box(hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "mcp-session-id").ok());
        }
        for _ in 0..p.missing_header {
            black_box(hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-probe-missing").ok());
        }
        for _ in 0..p.header_map {
            black_box(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).ok());
        }
        for _ in 0..p.header_scan {
            black_box(scan_request_headers(&[
                ":method",
                "mcp-session-id",
                "mcp-protocol-version",
            ]));
        }
        for _ in 0..p.shared_get {
            black_box(hostcalls::get_shared_data(RECORD_KEY).ok());
        }
        for _ in 0..p.shared_set {
            if let Ok((Some(value), cas)) = hostcalls::get_shared_data(RECORD_KEY) {
                black_box(hostcalls::set_shared_data(RECORD_KEY, Some(&value), cas).ok());
            }
        }
        for _ in 0..p.clock {
            black_box(hostcalls::get_current_time().ok());
        }
        for _ in 0..p.metric {
            black_box(hostcalls::increment_metric(self.metric, 1).ok());
        }
        for _ in 0..p.set_header {
            black_box(hostcalls::set_map_value(MapType::HttpRequestHeaders, "x-probe", Some("1")).ok());
        }
        Action::Continue
    }
}

extern "C" {
    // The ABI call behind `hostcalls::get_map_bytes`, declared here to get its buffer as is.
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

const REQUEST_HEADERS: u32 = 0;

/// Reads every request header in one hostcall and finds `wanted` in the serialized pairs
/// (u32 count, count x (u32 key length, u32 value length), then each key and value followed by
/// a NUL), without allocating; returns how many were found and their total value length.
fn scan_request_headers(wanted: &[&str]) -> (usize, usize) {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer to `size` bytes it allocated with our allocator (or
    // nothing); the Vec takes ownership and frees them.
    let bytes = unsafe {
        if proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) != 0 || data.is_null() {
            return (0, 0);
        }
        Vec::from_raw_parts(data, size, size)
    };
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = u32_at(0) else { return (0, 0) };
    let mut text = 4 + count * 8;
    let (mut found, mut total) = (0, 0);
    for i in 0..count {
        let (Some(key_len), Some(value_len)) = (u32_at(4 + i * 8), u32_at(8 + i * 8)) else {
            break;
        };
        let key = bytes.get(text..text + key_len).unwrap_or_default();
        let value_at = text + key_len + 1;
        if wanted.iter().any(|w| w.as_bytes() == key) {
            found += 1;
            total += black_box(bytes.get(value_at..value_at + value_len).unwrap_or_default()).len();
        }
        text = value_at + value_len + 1;
    }
    (found, total)
}
