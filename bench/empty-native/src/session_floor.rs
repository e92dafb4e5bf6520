//! The session floor (feature `session-floor`): what any module that checks a session on every
//! request must do at the least, and nothing more. It bounds what issue 17's hot-path target
//! leaves a session module: measured by `bench/profile.py` on a listener of its own
//! (BENCHMARKS.md, "The session floor"), its instructions over no filter are the least a
//! session module can cost.
//!
//! Per request: read the request's header map (the one way a module learns a header; asking
//! names one by one costs Envoy more), find `:method`, `:path`, `mcp-session-id` and
//! `mcp-protocol-version` among the pairs by length and bytes, look the 40-character ID up as
//! it is in one process-wide table under a lock, read the clock, and let the request go on.
//! What it leaves out, every real module needs: per-stream state (this one hands Envoy a static
//! pointer), the protocol version's meaning, the path guard, the record's checks (secret,
//! expiry, initialized), an epoch, stats, identity, configuration.

use std::collections::HashMap;
use std::ffi::c_void;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::MaybeUninit;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{EnvoyBuffer, EnvoyHeader};

/// `envoy_dynamic_module_type_http_header_type` RequestHeader.
const REQUEST_HEADER: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: *mut c_void,
        header_type: u32,
    ) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter: *mut c_void,
        header_type: u32,
        headers: *mut EnvoyHeader,
    ) -> bool;
}

/// Sessions by ID: when each was last seen (milliseconds). An ID never seen is added, so that
/// after the first request every lookup finds its session, as the hot path does.
type Table = HashMap<[u8; 40], u64, BuildHasherDefault<FirstWord>>;

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(Table::default()))
}

/// The cheapest hash of a random ID: every write XORed in, which for a `[u8; 40]` is its length
/// (a constant) and its bytes, of which the first eight count.
#[derive(Default)]
struct FirstWord(u64);

impl Hasher for FirstWord {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        for (to, from) in word.iter_mut().zip(bytes) {
            *to = *from;
        }
        self.0 ^= u64::from_le_bytes(word);
    }
}

impl EnvoyBuffer {
    fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: Envoy hands out `length` bytes at `ptr`, valid during the hook.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// The request headers hook of the session floor.
pub fn request_headers(envoy: *mut c_void) {
    // SAFETY: `envoy` is the stream of the running hook.
    let size =
        unsafe { envoy_dynamic_module_callback_http_get_headers_size(envoy, REQUEST_HEADER) };
    let mut room = [const { MaybeUninit::<EnvoyHeader>::uninit() }; 32];
    let Some(room) = room.get_mut(..size) else {
        return;
    };
    // SAFETY: `room` has space for the `size` headers Envoy reported in this hook.
    let read = unsafe {
        envoy_dynamic_module_callback_http_get_headers(
            envoy,
            REQUEST_HEADER,
            room.as_mut_ptr().cast(),
        )
    };
    if !read {
        return;
    }
    // SAFETY: Envoy wrote all `size` entries; `EnvoyHeader` is plain data.
    let pairs: &[EnvoyHeader] =
        unsafe { std::slice::from_raw_parts(room.as_ptr().cast(), room.len()) };
    let (mut method, mut path, mut id, mut version): (&[u8], &[u8], &[u8], &[u8]) =
        (&[], &[], &[], &[]);
    for pair in pairs {
        let name = pair.key.bytes();
        match name.len() {
            5 if name == b":path" => path = pair.value.bytes(),
            7 if name == b":method" => method = pair.value.bytes(),
            14 if name == b"mcp-session-id" => id = pair.value.bytes(),
            20 if name == b"mcp-protocol-version" => version = pair.value.bytes(),
            _ => {}
        }
    }
    // The ID as sent is the table's key: no decoding (a real module decodes it, to find its
    // slot and check its secret; the floor leaves even that out).
    let Ok(key) = <[u8; 40]>::try_from(id) else {
        return;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let Ok(mut sessions) = table().lock() else {
        return;
    };
    let seen = sessions.entry(key).or_insert(now);
    // Something to decide, as a module would: a session idle for an hour is over.
    let live = now.saturating_sub(*seen) < 3_600_000
        && method == b"POST"
        && !path.is_empty()
        && !version.is_empty();
    std::hint::black_box(live);
}
