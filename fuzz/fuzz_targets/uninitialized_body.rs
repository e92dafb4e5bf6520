#![no_main]
//! `policy::on_uninitialized_body`: never panics; a rejection is the lifecycle 400 with a JSON
//! reply (checked as JSON text: an id the client wrote as `1e888` is echoed as written, and no
//! f64 holds it).
use libfuzzer_sys::fuzz_target;
use mcp_session_core::policy::{on_uninitialized_body, UninitializedBody};
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    if let UninitializedBody::Reject(r) = on_uninitialized_body(data) {
        assert_eq!(r.status, 400);
        serde_json::from_slice::<Box<RawValue>>(&r.body()).expect("the reply is JSON");
    }
});
