#![no_main]
//! `policy::on_uninitialized_body`: never panics; a rejection is the lifecycle 400 with a JSON
//! reply.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::policy::{on_uninitialized_body, UninitializedBody};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let UninitializedBody::Reject(r) = on_uninitialized_body(data) {
        assert_eq!(r.status, 400);
        serde_json::from_slice::<Value>(&r.body()).expect("the reply is JSON");
    }
});
