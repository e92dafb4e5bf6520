#![no_main]
//! Whole exchanges through the request machine on the fake host, with any requests, any
//! upstream answers, any chunking and any passing of time, on two workers: never panics, every
//! local answer is one of the filter's statuses with a JSON-RPC body, and the live gauge stays
//! within 0 and `max_sessions`.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::driver::Worker;
use mcp_session_core::testkit::{Chunks, Envoy, FakeHost, Process, Request, Response, T0};
use serde_json::value::RawValue;

const CONFIGS: [&str; 4] = [
    r#"{"max_sessions":3,"idle_timeout_seconds":2,"max_body_bytes":512}"#,
    r#"{"identity_header":"x-user","allow_delete":false}"#,
    r#"{"identity_jwt":{"metadata_key":"p"},"enforce_initialized":false}"#,
    r#"{"max_lifetime_seconds":3,"paths":["/mcp"]}"#,
];

#[derive(Arbitrary, Debug)]
struct Exchange {
    worker: bool,
    method: u8,
    session: Session,
    version: Option<String>,
    identity: Option<String>,
    body: Vec<u8>,
    chunk: u8,
    status: u16,
    upstream_id: Option<String>,
    sse: bool,
    answer: Vec<u8>,
    advance_ms: u16,
}

#[derive(Arbitrary, Debug)]
enum Session {
    None,
    Minted(u8),
    Other(String),
}

fuzz_target!(|input: (u8, Vec<Exchange>)| {
    let (config, exchanges) = input;
    let config = CONFIGS[usize::from(config) % CONFIGS.len()];
    let process = Process::new(T0);
    let workers = [1, 2].map(|seed| {
        Worker::new(FakeHost::new(&process, seed), config.as_bytes()).expect("a valid config")
    });
    let mut minted: Vec<String> = Vec::new();
    for x in exchanges.into_iter().take(32) {
        let method = ["POST", "GET", "DELETE", "OPTIONS"][usize::from(x.method % 4)];
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let session = match &x.session {
            Session::None => None,
            Session::Minted(i) if !minted.is_empty() => {
                Some(minted[usize::from(*i) % minted.len()].clone())
            }
            Session::Minted(_) => None,
            Session::Other(s) => Some(s.clone()),
        };
        if let Some(s) = &session {
            headers.push(("mcp-session-id", s));
        }
        if let Some(v) = &x.version {
            headers.push(("mcp-protocol-version", v));
        }
        if let Some(u) = &x.identity {
            headers.push(("x-user", u));
        }
        let mut request = Request::post(&String::from_utf8_lossy(&x.body), &headers);
        request.headers.set(":method", Some(method));
        if let Some(u) = &x.identity {
            request.attributes.set(
                &["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", "p", "sub"],
                u.as_bytes(),
            );
            request.attributes.set(
                &["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", "p", "iss"],
                b"idp",
            );
        }
        let mut envoy = Envoy::new(&workers[usize::from(x.worker)]);
        envoy.chunks = Chunks::Of(usize::from(x.chunk.max(1)));
        let content_type = if x.sse { "text/event-stream" } else { "application/json" };
        let response = envoy.send(request, &mut |_| {
            let mut r = Response::upstream(
                u32::from(x.status % 600),
                &[("content-type", content_type)],
                &String::from_utf8_lossy(&x.answer),
            );
            if let Some(id) = &x.upstream_id {
                r.headers.set("mcp-session-id", Some(id));
            }
            r
        });
        if response.local {
            assert!(
                [204, 400, 401, 404, 405, 413, 415, 503].contains(&response.status),
                "{response:?}"
            );
            if response.status != 204 {
                serde_json::from_slice::<Box<RawValue>>(&response.body).expect("a JSON body");
            }
        } else if let Some(id) = response.header("mcp-session-id") {
            minted.push(id.to_owned());
        }
        let live = process.stat("mcp_session.live");
        assert!((0..=10_000).contains(&live), "live {live}");
        process.advance(u64::from(x.advance_ms));
        if x.advance_ms % 7 == 0 {
            workers[usize::from(!x.worker)].sweep();
        }
    }
});
