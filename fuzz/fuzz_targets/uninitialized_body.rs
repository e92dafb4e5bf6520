#![no_main]
//! `policy::on_uninitialized_body`: never panics; a rejection is the lifecycle 400 with a JSON
//! reply (checked as JSON text: an id the client wrote as `1e888` is echoed as written, and no
//! f64 holds it); and a `ping` request, the one request allowed before the handshake ends, is
//! forwarded: any body that serde_json reads as a ping request (or a batch of them), and a
//! ping built around the input as its id.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::policy::{on_uninitialized_body, UninitializedBody};
use serde_json::value::RawValue;
use serde_json::Value;

const PASSES: UninitializedBody = UninitializedBody::Forward { initialized: false };

/// A JSON-RPC `ping` request, judged by serde_json's own reading, not the filter's.
fn is_ping_request(message: &Value) -> bool {
    message.get("method").and_then(Value::as_str) == Some("ping")
        && matches!(message.get("id"), Some(Value::String(_) | Value::Number(_)))
}

fuzz_target!(|data: &[u8]| {
    let decision = on_uninitialized_body(data);
    if let UninitializedBody::Reject(r) = &decision {
        assert_eq!(r.status, 400);
        serde_json::from_slice::<Box<RawValue>>(&r.body()).expect("the reply is JSON");
    }
    let pings = match serde_json::from_slice::<Value>(data) {
        Ok(Value::Array(batch)) => !batch.is_empty() && batch.iter().all(is_ping_request),
        Ok(message) => message.is_object() && is_ping_request(&message),
        Err(_) => false,
    };
    if pings {
        assert_eq!(decision, PASSES, "a ping was not forwarded");
    }
    // Whatever the input, as a string id and as a number id.
    let text = String::from_utf8_lossy(data);
    let number = data
        .iter()
        .fold(0u64, |n, &b| n.wrapping_mul(31).wrapping_add(u64::from(b)));
    for id in [Value::from(text.as_ref()), Value::from(number)] {
        let ping = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string();
        assert_eq!(on_uninitialized_body(ping.as_bytes()), PASSES, "{ping}");
    }
});
