#![no_main]
//! `record::Record::encode` then `decode` is the identity for every record the filter stores
//! (an upstream session ID of 1 to MAX_UPSTREAM_ID bytes, or none, its length in one byte up
//! to 255 and in two past it; an upstream host, the optional affinity tail, of 1 to
//! MAX_UPSTREAM_HOST bytes, or none).
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::record::{Record, State, MAX_UPSTREAM_HOST, MAX_UPSTREAM_ID};

#[derive(Arbitrary, Debug)]
struct Fields {
    live: bool,
    initialized: bool,
    secret: [u8; 16],
    created_ms: u64,
    last_seen_ms: u64,
    identity: Option<[u8; 16]>,
    upstream_id: Option<String>,
    upstream_host: Option<String>,
}

/// What a record can hold: 1 to `max` bytes (an empty one is written as none).
fn storable(s: Option<String>, max: usize) -> Option<String> {
    s.filter(|s| !s.is_empty() && s.len() <= max)
}

fuzz_target!(|f: Fields| {
    let state = if f.live { State::Live } else { State::Pending };
    let record = Record {
        state,
        initialized: f.initialized,
        secret: f.secret,
        created_ms: f.created_ms,
        last_seen_ms: f.last_seen_ms,
        identity: f.identity,
        upstream_id: storable(f.upstream_id, MAX_UPSTREAM_ID),
        upstream_host: storable(f.upstream_host, MAX_UPSTREAM_HOST),
    };
    let bytes = record.encode();
    let extra = record.identity.map_or(0, |d| d.len())
        + record
            .upstream_id
            .as_ref()
            .map_or(0, |u| u.len() + usize::from(u.len() > 255))
        + record.upstream_host.as_ref().map_or(0, |h| 1 + h.len());
    assert_eq!(bytes.len(), 36 + extra);
    assert_eq!(Record::decode(&bytes), Some(record));
});
