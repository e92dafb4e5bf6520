#![no_main]
//! Whole exchanges through the request machine on the fake host, with any requests, any
//! upstream answers, any chunking and any passing of time, on two workers, with the local
//! store or with etcd (two VMs sharing a `FakeEtcd`, whose answers the input may replace with
//! any status or bytes, or lose after the write is made): never panics, and every local
//! answer is one of the filter's statuses with a JSON-RPC body. With the local store, the live
//! gauge stays within 0 and the configuration's `max_sessions`. With etcd: each VM creates at
//! most `max_sessions` sessions that etcd acknowledged (no count is made here, so its own
//! creations are all a VM counts; the `live` gauge is set from the timer's count only, which
//! this target does not run); and an exchange whose every etcd answer said nothing (a failed
//! call, bytes that do not decode, a lease grant of nothing) is never answered 404 by the
//! filter (`unavailable: reject`), nor for a session this Envoy never handed out
//! (`unavailable: local`).
#[path = "common/says_nothing.rs"]
mod common;

use arbitrary::Arbitrary;
use common::says_nothing;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::driver::Worker;
use mcp_session_core::store::etcd::{proto, Call, Reply};
use mcp_session_core::testkit::{
    Chunks, Envoy, FakeEtcd, FakeHost, Process, Request, Response, T0,
};
use prost::Message;
use serde_json::value::RawValue;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

const CONFIGS: [&str; 6] = [
    r#"{"max_sessions":3,"idle_timeout_seconds":2,"max_body_bytes":512}"#,
    r#"{"identity_header":"x-user","allow_delete":false}"#,
    r#"{"identity_jwt":{"metadata_key":"p"},"enforce_initialized":false}"#,
    r#"{"max_lifetime_seconds":3,"paths":["/mcp"]}"#,
    r#"{"max_sessions":3,"idle_timeout_seconds":2,"max_body_bytes":512,"store":{"etcd":{"cluster":"etcd","timeout_ms":1000}}}"#,
    r#"{"max_sessions":3,"identity_header":"x-user","store":{"etcd":{"cluster":"etcd","timeout_ms":1000,"unavailable":"local"}}}"#,
];

/// How etcd answers one call (after an exchange's list: as the fake etcd does).
#[derive(Arbitrary, Debug, Clone)]
enum EtcdReply {
    /// The fake etcd answers.
    Real,
    /// The call fails with this status (0: OK with an empty message), nothing written.
    Failed(u32),
    /// The fake etcd makes the write, and the answer is lost (a timeout after the commit).
    Lost(u32),
    /// OK, with these bytes.
    Bytes(Vec<u8>),
}

/// Whether `call` creates a session (`Txn(create_revision == 0 ? Put : Range)`) and `reply`
/// says it was created: what the VM counts as its own creation.
fn acknowledged_create(call: &Call, reply: Reply<'_>) -> bool {
    let Reply::Ok(bytes) = reply else {
        return false;
    };
    let creates = call.method == "Txn"
        && proto::TxnRequest::decode(call.message.as_slice()).is_ok_and(|txn| {
            txn.compare.first().is_some_and(|c| {
                c.target_union == Some(proto::compare::TargetUnion::CreateRevision(0))
            })
        });
    creates && proto::TxnResponse::decode(bytes).is_ok_and(|r| r.succeeded)
}

/// What etcd said during one exchange.
#[derive(Debug, Default, Clone, Copy)]
struct Heard {
    calls: u32,
    said_something: bool,
}

#[derive(Arbitrary, Debug)]
struct Exchange {
    worker: bool,
    method: u8,
    session: Session,
    version: Option<String>,
    identity: Option<String>,
    body: Body,
    chunk: u8,
    status: Status,
    upstream_id: Option<String>,
    sse: bool,
    answer: Answer,
    advance_ms: u16,
    etcd: Vec<EtcdReply>,
}

// The first variant of each enum is what an input that runs out of bytes decodes to (and the
// fields in order make an `initialize` answered with a result): the fuzzer starts from whole
// sessions.

/// A request body: one an MCP client sends, or any bytes.
#[derive(Arbitrary, Debug)]
enum Body {
    Initialize,
    Initialized,
    Request,
    Raw(Vec<u8>),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Initialize => br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"f","version":"1"}}}"#.to_vec(),
            Body::Initialized => br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_vec(),
            Body::Request => br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#.to_vec(),
            Body::Raw(bytes) => bytes.clone(),
        }
    }
}

/// A response body: one an MCP server sends (as JSON or as an SSE event), or any bytes.
#[derive(Arbitrary, Debug)]
enum Answer {
    Result,
    Error,
    Raw(Vec<u8>),
}

impl Answer {
    fn bytes(&self, sse: bool) -> Vec<u8> {
        let json = match self {
            Answer::Result => {
                r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"up","version":"1"}}}"#
            }
            Answer::Error => r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}"#,
            Answer::Raw(bytes) => return bytes.clone(),
        };
        if sse {
            format!("data: {json}\n\n").into_bytes()
        } else {
            json.as_bytes().to_vec()
        }
    }
}

/// The upstream's status.
#[derive(Arbitrary, Debug)]
enum Status {
    Ok,
    Accepted,
    NotFound,
    Other(u16),
}

impl Status {
    fn code(&self) -> u32 {
        match self {
            Status::Ok => 200,
            Status::Accepted => 202,
            Status::NotFound => 404,
            Status::Other(code) => u32::from(code % 600),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Session {
    None,
    Minted(u8),
    /// An ID in the filter's format that it never handed out (or only by chance).
    Forged(u32, u128),
    Other(String),
}

fuzz_target!(|input: (u8, Vec<Exchange>)| {
    let (config, exchanges) = input;
    let config = CONFIGS[usize::from(config) % CONFIGS.len()];
    let process = Process::new(T0);
    let workers = [1, 2].map(|seed| {
        Worker::new(FakeHost::new(&process, seed), config.as_bytes()).expect("a valid config")
    });
    let max_sessions = workers[0].config().max_sessions;
    let remote = workers[0].remote().map(|r| r.config().fall_back_to_local);
    let etcd = Rc::new(FakeEtcd::new());
    // Creations etcd acknowledged, per VM.
    let created = [Rc::new(Cell::new(0u32)), Rc::new(Cell::new(0u32))];
    let mut minted: Vec<String> = Vec::new();
    let mut handed_out: Vec<String> = Vec::new();
    for x in exchanges.into_iter().take(32) {
        let method = ["POST", "GET", "DELETE", "OPTIONS"][usize::from(x.method % 4)];
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let session = match &x.session {
            Session::None => None,
            Session::Minted(i) if !minted.is_empty() => {
                Some(minted[usize::from(*i) % minted.len()].clone())
            }
            Session::Minted(_) => None,
            Session::Forged(slot, secret) => Some(format!("{slot:08x}{secret:032x}")),
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
        let mut request = Request::post(&String::from_utf8_lossy(&x.body.bytes()), &headers);
        request.headers.set(":method", Some(method));
        if let Some(u) = &x.identity {
            request.attributes.set(
                &[
                    "metadata",
                    "filter_metadata",
                    "envoy.filters.http.jwt_authn",
                    "p",
                    "sub",
                ],
                u.as_bytes(),
            );
            request.attributes.set(
                &[
                    "metadata",
                    "filter_metadata",
                    "envoy.filters.http.jwt_authn",
                    "p",
                    "iss",
                ],
                b"idp",
            );
        }
        let mut envoy = Envoy::new(&workers[usize::from(x.worker)]);
        envoy.chunks = Chunks::Of(usize::from(x.chunk.max(1)));
        let heard = Rc::new(Cell::new(Heard::default()));
        if remote.is_some() {
            let replies = RefCell::new(x.etcd.iter().cloned().collect::<VecDeque<_>>());
            let (etcd, heard, created) = (
                Rc::clone(&etcd),
                Rc::clone(&heard),
                Rc::clone(&created[usize::from(x.worker)]),
            );
            envoy.etcd = Some(Box::new(move |call: &Call| {
                let reply = replies.borrow_mut().pop_front().unwrap_or(EtcdReply::Real);
                let (status, message) = match reply {
                    EtcdReply::Real => etcd.answer(call),
                    EtcdReply::Failed(status) => (status, None),
                    EtcdReply::Lost(status) => {
                        let _ = etcd.answer(call);
                        (status.max(1), None)
                    }
                    EtcdReply::Bytes(bytes) => (0, Some(bytes)),
                };
                let bytes = message.clone().unwrap_or_default();
                let reply = Reply::of(status, &bytes);
                let mut h = heard.get();
                h.calls += 1;
                h.said_something |= !says_nothing(call, reply);
                heard.set(h);
                if acknowledged_create(call, reply) {
                    created.set(created.get() + 1);
                }
                (status, message)
            }));
        }
        let content_type = if x.sse {
            "text/event-stream"
        } else {
            "application/json"
        };
        let response = envoy.send(request, &mut |_| {
            let mut r = Response::upstream(
                x.status.code(),
                &[("content-type", content_type)],
                &String::from_utf8_lossy(&x.answer.bytes(x.sse)),
            );
            if let Some(id) = &x.upstream_id {
                r.headers.set("mcp-session-id", Some(id));
            }
            r
        });
        if let Some(id) = response.header("mcp-session-id") {
            handed_out.push(id.to_owned());
        }
        let heard = heard.get();
        if let (Some(local_fallback), true) = (remote, heard.calls > 0 && !heard.said_something) {
            let known = session.as_ref().is_some_and(|s| handed_out.contains(s));
            if !local_fallback || !known {
                assert!(
                    !(response.local && response.status == 404),
                    "etcd said nothing ({} calls) and the client got 404: {response:?}",
                    heard.calls
                );
            }
        }
        for (vm, created) in created.iter().enumerate() {
            assert!(
                created.get() <= max_sessions,
                "VM {vm} created {} sessions in etcd, max_sessions {max_sessions}",
                created.get()
            );
        }
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
        assert!(
            (0..=i64::from(max_sessions)).contains(&live),
            "live {live}, max {max_sessions}"
        );
        process.advance(u64::from(x.advance_ms));
        if x.advance_ms % 7 == 0 {
            workers[usize::from(!x.worker)].sweep();
        }
    }
});
