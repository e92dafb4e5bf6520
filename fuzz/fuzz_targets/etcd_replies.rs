#![no_main]
//! Whatever etcd (or something posing as it) answers, and however late, the etcd store never
//! panics and never loops: each operation ends within a few calls, in an answer or in
//! "unavailable". The watch survives any message too.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::config::EtcdConfig;
use mcp_session_core::session_id::SessionId;
use mcp_session_core::store::etcd::{Remote, Reply};
use mcp_session_core::store::{Limits, Next, StoreOp};
use mcp_session_core::testkit::{live_record, T0};

#[derive(Arbitrary, Debug)]
struct Case {
    op: u8,
    idle_s: u16,
    replies: Vec<(Option<Vec<u8>>, u16)>,
    watch: Vec<Vec<u8>>,
}

fuzz_target!(|case: Case| {
    let idle_ms = u64::from(case.idle_s.max(1)) * 1000;
    let remote = Remote::new(
        EtcdConfig {
            cluster: "etcd".into(),
            prefix: "p/".into(),
            timeout_ms: 1000,
            fall_back_to_local: false,
        },
        idle_ms,
    );
    let limits = Limits {
        idle_ms,
        lifetime_ms: 0,
        max_sessions: 10,
        bind_identity: false,
        per_identity: None,
    };
    let id = SessionId {
        slot: 1,
        secret: [9; 16],
    };
    let now = T0;
    let op = match case.op % 5 {
        0 => StoreOp::Lookup {
            id,
            identity: None,
            now_ms: now,
        },
        1 => StoreOp::End { id, now_ms: now },
        2 => StoreOp::MarkInitialized { id, now_ms: now },
        3 => StoreOp::Activate {
            id,
            reserved: live_record(id.secret, now),
            upstream_id: None,
            now_ms: now,
        },
        _ => StoreOp::Reserve {
            secret: id.secret,
            identity: None,
            now_ms: now,
        },
    };
    let mut next = remote.begin(op, &limits);
    let mut replies = case.replies.into_iter();
    let mut calls = 0;
    while let Next::Call(flight) = next {
        calls += 1;
        assert!(calls <= 8, "an operation that does not end");
        let Some((bytes, delay)) = replies.next() else {
            break;
        };
        let at = now + u64::from(delay);
        next = match &bytes {
            Some(bytes) => remote.advance(flight, Reply::Ok(bytes), &limits, at),
            None => remote.advance(flight, Reply::Failed(14), &limits, at),
        };
    }
    for message in &case.watch {
        let _ = remote.watch_message(message, now);
        let _ = remote.watch_tick(now + 500);
    }
});
