#![no_main]
//! `record::Record::encode` then `decode` is the identity for every record the filter stores
//! (an upstream session ID of 1 to 255 bytes, or none).
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::record::{Record, State, MAX_UPSTREAM_ID};

#[derive(Arbitrary, Debug)]
struct Fields {
    live: bool,
    initialized: bool,
    secret: [u8; 16],
    created_ms: u64,
    last_seen_ms: u64,
    identity: Option<[u8; 16]>,
    upstream_id: Option<String>,
}

fuzz_target!(|f: Fields| {
    let state = if f.live { State::Live } else { State::Pending };
    let upstream_id = f
        .upstream_id
        .filter(|u| !u.is_empty() && u.len() <= MAX_UPSTREAM_ID);
    let record = Record {
        state,
        initialized: f.initialized,
        secret: f.secret,
        created_ms: f.created_ms,
        last_seen_ms: f.last_seen_ms,
        identity: f.identity,
        upstream_id,
        upstream_host: None,
    };
    let bytes = record.encode();
    let extra =
        record.identity.map_or(0, |d| d.len()) + record.upstream_id.as_ref().map_or(0, String::len);
    assert_eq!(bytes.len(), 36 + extra);
    assert_eq!(Record::decode(&bytes), Some(record));
});
