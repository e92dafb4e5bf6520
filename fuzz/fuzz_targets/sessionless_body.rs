#![no_main]
//! `policy::on_sessionless_body`: whatever the body, the decision is an initialize with a
//! string or number id, or a rejection whose reply is JSON carrying its code and the id as
//! the client wrote it.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::policy::{on_sessionless_body, SessionlessBody};
use serde_json::Value;

fuzz_target!(|data: &[u8]| match on_sessionless_body(data) {
    SessionlessBody::Initialize { id } => {
        assert!(matches!(
            id.as_json().as_bytes().first(),
            Some(b'"' | b'-' | b'0'..=b'9')
        ));
    }
    SessionlessBody::Reject(r) => {
        let body = String::from_utf8(r.body()).expect("the reply is UTF-8");
        let id = r.id.as_json();
        let head = body
            .strip_suffix(&format!(r#","id":{id}}}"#))
            .expect("the reply ends with the id as sent");
        let reply: Value = serde_json::from_str(&format!("{head}}}")).expect("the reply is JSON");
        assert_eq!(reply["error"]["code"], Value::from(r.code));
    }
});
