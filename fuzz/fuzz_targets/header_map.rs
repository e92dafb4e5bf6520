#![no_main]
//! `headers::scan` over any bytes (the host's serialized header map): never panics, and on a
//! well-formed map it finds exactly the pairs that were serialized.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::headers::{scan, serialize};

const NAMES: [&str; 4] = [":method", "mcp-session-id", "x-user", ""];

fuzz_target!(|data: &[u8]| {
    let _ = scan(data, NAMES);
    // The same bytes cut into pairs at NUL bytes, serialized as the host would.
    let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    let pairs: Vec<(&[u8], &[u8])> = parts.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let map = serialize(&pairs);
    let found = scan(&map, NAMES).expect("a serialized map always scans");
    for (name, header) in NAMES.iter().zip(found) {
        let matching: Vec<&[u8]> = pairs
            .iter()
            .filter(|(n, _)| !name.is_empty() && n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(header.count as usize, matching.len());
        assert_eq!(header.value, matching.first().copied());
    }
});
