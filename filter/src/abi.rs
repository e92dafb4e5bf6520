//! The three calls of the proxy-wasm ABI used without the SDK's wrappers, which copy every
//! header into owned strings (`get_map_bytes`), panic on a status they do not expect
//! (`get_metric`) or convert the clock through `SystemTime`. The only `unsafe` of the adapter.

use proxy_wasm::types::MapType;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
}

/// A whole header map as the host serializes it (see `headers::scan`), in one hostcall;
/// empty when the host has none.
pub fn header_map(map: MapType) -> Vec<u8> {
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

/// Wall-clock time in milliseconds since the Unix epoch (0 when the host cannot tell): the
/// host's nanoseconds divided, where the SDK's `SystemTime` costs a 128-bit conversion on
/// every request.
pub fn now_ms() -> u64 {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64 through the pointer, which outlives the call.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == 0 {
        nanos / 1_000_000
    } else {
        0
    }
}

/// A stat's value; `None` when the host cannot read it.
pub fn get_metric(id: u32) -> Option<u64> {
    let mut value: u64 = 0;
    // SAFETY: the host writes one u64 through the pointer, which outlives the call.
    let status = unsafe { proxy_get_metric(id, &mut value) };
    (status == 0).then_some(value)
}
