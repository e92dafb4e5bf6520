#![no_main]
//! `message::json_outcome` on any initialize answer; the same bytes sent as one SSE `data:`
//! line must give the same outcome.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::message::{json_outcome, SseScanner};

fuzz_target!(|data: &[u8]| {
    let outcome = json_outcome(data);
    if !data.iter().any(|b| *b == b'\r' || *b == b'\n') {
        let event = [b"data: ", data, b"\n\n"].concat();
        assert_eq!(SseScanner::default().feed(&event), outcome);
    }
});
