#![no_main]
//! `message::parse_body` on any bytes: never panics; reads every body as serde_json alone does
//! (its quick reading of the usual message agrees with `parse_body_with_serde`); and wherever
//! serde_json can read the body as a plain JSON tree, the filter reads the same messages from it
//! (duplicate keys included: the last one wins in both, as in the Python and TypeScript SDKs).
use libfuzzer_sys::fuzz_target;
use mcp_session_core::message::{
    parse_body, parse_body_with_serde, BodyError, Message, Method, RequestId,
};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let parsed = parse_body(data);
    assert_eq!(parsed, parse_body_with_serde(data));
    if let Ok(body) = &parsed {
        assert!(!body.messages().is_empty() && (body.is_batch() || body.messages().len() == 1));
    }
    if let Ok(tree) = serde_json::from_slice::<Value>(data) {
        let want = match &tree {
            Value::Array(items) if !items.is_empty() => items.iter().map(message).collect(),
            Value::Array(_) => None,
            single => message(single).map(|m| vec![m]),
        };
        match want {
            Some(messages) => assert_eq!(
                parsed.map(|b| b.messages().iter().cloned().map(normal).collect()),
                Ok(messages)
            ),
            None => assert_eq!(parsed.map(|_| ()), Err(BodyError::NotJsonRpc)),
        }
    }
});

/// The JSON-RPC reading of one value, written independently of the filter's visitor.
fn message(value: &Value) -> Option<Message> {
    let Value::Object(map) = value else {
        return None;
    };
    match (map.get("method"), map.get("id")) {
        (Some(Value::String(method)), Some(id @ (Value::String(_) | Value::Number(_)))) => {
            Some(Message::Request {
                method: Method::named(method),
                id: id.clone().into(),
            })
        }
        (Some(Value::String(method)), None | Some(Value::Null)) => Some(Message::Notification {
            method: Method::named(method),
        }),
        (None, _) if map.contains_key("error") || map.contains_key("result") => {
            Some(Message::Response {
                error: map.contains_key("error"),
            })
        }
        _ => None,
    }
}

/// The filter keeps an id as the client wrote it; the tree holds its value. Compare values.
fn normal(message: Message) -> Message {
    match message {
        Message::Request { method, id } => Message::Request {
            method,
            id: serde_json::from_str::<Value>(id.as_json()).map_or(id, RequestId::from),
        },
        other => other,
    }
}
