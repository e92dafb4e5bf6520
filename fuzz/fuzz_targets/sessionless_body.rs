#![no_main]
//! `policy::on_sessionless_body`: whatever the body, the decision is an initialize with a
//! string or number id, or a rejection whose reply is JSON carrying its code and the id.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::policy::{on_sessionless_body, SessionlessBody};
use serde_json::Value;

fuzz_target!(|data: &[u8]| match on_sessionless_body(data) {
    SessionlessBody::Initialize { id } => assert!(id.is_string() || id.is_number()),
    SessionlessBody::Reject(r) => {
        let reply: Value = serde_json::from_slice(&r.body()).expect("the reply is JSON");
        assert_eq!(
            (&reply["error"]["code"], &reply["id"]),
            (&Value::from(r.code), &r.id)
        );
    }
});
