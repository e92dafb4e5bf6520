#![no_main]
//! `protocol::classify` on any `MCP-Protocol-Version` value: a handshake-era answer only for the
//! listed revisions, a sessionless one only for a date from 2026-07-28 on.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::protocol::{classify, Era, FIRST_SESSIONLESS_REVISION, HANDSHAKE_REVISIONS};

fuzz_target!(|data: &[u8]| {
    let value = data.trim_ascii();
    match classify(Some(data)) {
        Era::Handshake => assert!(HANDSHAKE_REVISIONS.iter().any(|r| r.as_bytes() == value)),
        Era::Sessionless => {
            assert!(value.len() == 10 && value >= FIRST_SESSIONLESS_REVISION.as_bytes())
        }
        Era::Unsupported => {}
        Era::Unstated => panic!("a present header is never unstated"),
    }
});
