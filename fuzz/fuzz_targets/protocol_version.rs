#![no_main]
//! `protocol::classify` on any `MCP-Protocol-Version` value: a handshake-era answer only for the
//! listed revisions, a sessionless one only for a date from 2026-07-28 on.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::protocol::{classify, Era, FIRST_SESSIONLESS_REVISION, HANDSHAKE_REVISIONS};

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    match classify(Some(&value)) {
        Era::Handshake => assert!(HANDSHAKE_REVISIONS.contains(&value.trim())),
        Era::Sessionless => {
            assert!(value.trim().len() == 10 && value.trim() >= FIRST_SESSIONLESS_REVISION)
        }
        Era::Unsupported => {}
        Era::Unstated => panic!("a present header is never unstated"),
    }
});
