use super::*;
use crate::testkit::{live_record, T0};

const IDLE: u64 = 600_000;

fn remote() -> Remote {
    Remote::new(
        EtcdConfig {
            cluster: "etcd".into(),
            prefix: "mcp-sessions/".into(),
            timeout_ms: 1000,
            fall_back_to_local: false,
        },
        IDLE,
    )
}

fn limits() -> Limits {
    Limits {
        idle_ms: IDLE,
        lifetime_ms: 86_400_000,
        max_sessions: 100,
        bind_identity: false,
        per_identity: None,
    }
}

fn id() -> SessionId {
    SessionId {
        slot: 7,
        secret: [0xab; 16],
    }
}

fn kv(record: &Record, mod_revision: i64) -> proto::KeyValue {
    proto::KeyValue {
        key: key("mcp-sessions/", &id()),
        create_revision: 5,
        mod_revision,
        value: value(record),
        lease: 1,
    }
}

fn bytes(message: &impl Message) -> Vec<u8> {
    message.encode_to_vec()
}

fn call(next: Next) -> Box<Flight> {
    match next {
        Next::Call(flight) => flight,
        other => panic!("expected a call, got {other:?}"),
    }
}

fn done(next: Next) -> StoreResult {
    match next {
        Next::Done(result) => result,
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn granted(r: &Remote, flight: Box<Flight>, now: u64) -> Box<Flight> {
    assert_eq!(flight.call().method, "LeaseGrant");
    let grant = bytes(&proto::LeaseGrantResponse {
        id: 99,
        ttl: r.timing().lease_ttl_s,
        ..Default::default()
    });
    call(r.advance(flight, Reply::Ok(&grant), &limits(), now))
}

#[test]
fn the_cluster_is_named_by_a_grpc_service_message() {
    // field 1 (envoy_grpc), length 6; inside it field 1 (cluster_name), length 4.
    assert_eq!(grpc_service("etcd"), "\u{a}\u{6}\u{a}\u{4}etcd");
    let decoded = proto::GrpcService::decode(grpc_service("h1").as_bytes()).unwrap();
    assert_eq!(decoded.envoy_grpc.unwrap().cluster_name, "h1");
    // A name whose message would not be ASCII goes bare.
    let long = "c".repeat(200);
    assert_eq!(grpc_service(&long), long);
}

#[test]
fn timing_follows_the_idle_timeout() {
    let t = Timing::new(1_800_000);
    assert_eq!(t.touch_ms, 60_000);
    assert_eq!(t.window_ms, 60_000);
    assert_eq!(t.lease_ttl_s, 1800 + 180);
    let t = Timing::new(600_000);
    assert_eq!(t.touch_ms, 30_000);
    let t = Timing::new(4_000);
    assert_eq!((t.touch_ms, t.window_ms, t.lease_ttl_s), (1_000, 5_000, 19));
}

#[test]
fn keys_and_values_hold_no_session_id() {
    let id = id();
    let key = key("p/", &id);
    assert_eq!(key.len(), 2 + 32);
    assert_eq!(key, super::key("p/", &id), "deterministic");
    let encoded = id.encode();
    assert!(!String::from_utf8_lossy(&key).contains(&encoded[8..]));
    let stored = value(&live_record(id.secret, T0));
    assert!(!stored.windows(16).any(|w| w == id.secret));
    let back = record_of(&stored, &id).unwrap();
    assert_eq!(back, live_record(id.secret, T0));
    assert_eq!(range_end("mcp-sessions/"), b"mcp-sessions0".to_vec());
    assert_eq!(range_end("a\u{7f}"), b"a\x80".to_vec());
}

#[test]
fn a_lookup_of_a_recently_touched_session_is_one_read() {
    let r = remote();
    let now = T0 + 1_000;
    let op = StoreOp::Lookup {
        id: id(),
        identity: None,
        now_ms: now,
    };
    let flight = call(r.begin(op, &limits()));
    assert_eq!((flight.call().service, flight.call().method), (KV, "Range"));
    let answer = bytes(&proto::RangeResponse {
        kvs: vec![kv(&live_record(id().secret, T0), 12)],
        ..Default::default()
    });
    let result = done(r.advance(flight, Reply::Ok(&answer), &limits(), now));
    assert!(
        matches!(result, StoreResult::Lookup(Lookup::Live(record, 12)) if record.last_seen_ms == T0)
    );
}

#[test]
fn a_lookup_due_a_touch_writes_once_under_a_cas_with_a_shared_lease() {
    let r = remote();
    let now = T0 + r.timing().touch_ms;
    let op = StoreOp::Lookup {
        id: id(),
        identity: None,
        now_ms: now,
    };
    let flight = call(r.begin(op.clone(), &limits()));
    let answer = bytes(&proto::RangeResponse {
        kvs: vec![kv(&live_record(id().secret, T0), 12)],
        ..Default::default()
    });
    let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
    let flight = granted(&r, flight, now);
    let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
    assert_eq!(txn.compare.len(), 1);
    assert_eq!(
        txn.compare[0].target_union,
        Some(proto::compare::TargetUnion::ModRevision(12))
    );
    let Some(Request::Put(put)) = &txn.success[0].request else {
        panic!("a put")
    };
    assert_eq!(put.lease, 99);
    let ok = bytes(&proto::TxnResponse {
        header: Some(proto::ResponseHeader { revision: 13 }),
        succeeded: true,
        responses: Vec::new(),
    });
    let result = done(r.advance(flight, Reply::Ok(&ok), &limits(), now));
    assert!(
        matches!(result, StoreResult::Lookup(Lookup::Live(record, 13)) if record.last_seen_ms == now)
    );

    // The next touch in the same window reuses the lease: no grant.
    let flight = call(r.begin(op, &limits()));
    let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
    assert_eq!(flight.call().method, "Txn");
}

#[test]
fn a_touch_that_loses_to_a_delete_finds_nothing() {
    let r = remote();
    let now = T0 + r.timing().touch_ms;
    r.remember_lease(now, 5);
    let op = StoreOp::Lookup {
        id: id(),
        identity: None,
        now_ms: now,
    };
    let flight = call(r.begin(op, &limits()));
    let answer = bytes(&proto::RangeResponse {
        kvs: vec![kv(&live_record(id().secret, T0), 12)],
        ..Default::default()
    });
    let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
    let lost = bytes(&proto::TxnResponse {
        succeeded: false,
        responses: vec![proto::ResponseOp {
            response: Some(Response::Range(proto::RangeResponse::default())),
        }],
        ..Default::default()
    });
    let result = done(r.advance(flight, Reply::Ok(&lost), &limits(), now));
    assert_eq!(result, StoreResult::Lookup(Lookup::NotFound));
}

#[test]
fn an_expired_record_is_deleted_under_a_cas_and_counted_once() {
    let r = remote();
    let now = T0 + IDLE + 1;
    r.remember_lease(now, 5);
    let op = StoreOp::Lookup {
        id: id(),
        identity: None,
        now_ms: now,
    };
    let flight = call(r.begin(op, &limits()));
    let answer = bytes(&proto::RangeResponse {
        kvs: vec![kv(&live_record(id().secret, T0), 12)],
        ..Default::default()
    });
    let flight = call(r.advance(flight, Reply::Ok(&answer), &limits(), now));
    let won = bytes(&proto::TxnResponse {
        succeeded: true,
        ..Default::default()
    });
    let result = done(r.advance(flight, Reply::Ok(&won), &limits(), now));
    assert_eq!(result, StoreResult::Lookup(Lookup::Expired));
}

#[test]
fn a_reservation_is_one_create_if_absent_and_a_retried_create_recognises_itself() {
    let r = remote();
    r.remember_lease(T0, 5);
    let secret = id().secret;
    let op = StoreOp::Reserve {
        secret,
        identity: None,
        now_ms: T0,
    };
    let flight = call(r.begin(op.clone(), &limits()));
    let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
    assert_eq!(
        txn.compare[0].target_union,
        Some(proto::compare::TargetUnion::CreateRevision(0))
    );
    let ok = bytes(&proto::TxnResponse {
        succeeded: true,
        header: Some(proto::ResponseHeader { revision: 7 }),
        ..Default::default()
    });
    let StoreResult::Reserved(Some(reservation)) =
        done(r.advance(flight, Reply::Ok(&ok), &limits(), T0))
    else {
        panic!("a reservation")
    };
    // Written live, not initialized, before the upstream sees the initialize.
    assert_eq!(reservation.id, session_id(secret));
    assert_eq!(reservation.record.state, State::Live);
    assert!(!reservation.record.initialized);
    // The first attempt landed but its answer was lost: the retry finds its own record.
    let flight = call(r.begin(op.clone(), &limits()));
    let mut mine = live_record(secret, T0);
    mine.initialized = false;
    let found = |record: &Record| {
        bytes(&proto::TxnResponse {
            succeeded: false,
            responses: vec![proto::ResponseOp {
                response: Some(Response::Range(proto::RangeResponse {
                    kvs: vec![kv(record, 3)],
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
    };
    assert!(matches!(
        done(r.advance(flight, Reply::Ok(&found(&mine)), &limits(), T0)),
        StoreResult::Reserved(Some(_))
    ));
    // Someone else's record under the same key: not ours.
    let flight = call(r.begin(op, &limits()));
    let theirs = live_record(secret, T0 - 5);
    assert_eq!(
        done(r.advance(flight, Reply::Ok(&found(&theirs)), &limits(), T0)),
        StoreResult::Reserved(None)
    );
}

/// Issue 16: an activation writes nothing unless the answer taught something to record;
/// then one CAS on the revision the reservation's create was answered at. A release makes
/// no call: its delete waits in the backlog for the timer.
#[test]
fn an_activation_writes_only_what_the_answer_taught_and_a_release_is_deferred() {
    let r = remote();
    r.remember_lease(T0, 5);
    let secret = id().secret;
    let reserve = StoreOp::Reserve {
        secret,
        identity: None,
        now_ms: T0,
    };
    let flight = call(r.begin(reserve, &limits()));
    let ok = bytes(&proto::TxnResponse {
        succeeded: true,
        header: Some(proto::ResponseHeader { revision: 7 }),
        ..Default::default()
    });
    let StoreResult::Reserved(Some(reservation)) =
        done(r.advance(flight, Reply::Ok(&ok), &limits(), T0))
    else {
        panic!("a reservation")
    };
    let plain = StoreOp::Activate {
        id: reservation.id,
        reserved: reservation.record.clone(),
        upstream_id: None,
        now_ms: T0 + 5,
    };
    assert_eq!(done(r.begin(plain, &limits())), StoreResult::Done(true));
    let mapped = StoreOp::Activate {
        id: reservation.id,
        reserved: reservation.record.clone(),
        upstream_id: Some("up-1".into()),
        now_ms: T0 + 5,
    };
    let flight = call(r.begin(mapped.clone(), &limits()));
    let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
    assert_eq!(
        txn.compare[0].target_union,
        Some(proto::compare::TargetUnion::ModRevision(7))
    );
    let Some(proto::request_op::Request::Put(put)) = &txn.success[0].request else {
        panic!("a put")
    };
    let written = record_of(&put.value, &reservation.id).unwrap();
    assert_eq!(written.upstream_id.as_deref(), Some("up-1"));
    assert_eq!(
        done(r.advance(flight, Reply::Ok(&ok), &limits(), T0 + 5)),
        StoreResult::Done(true)
    );
    // Without the create's revision at hand: a read first.
    let flight = call(r.begin(mapped, &limits()));
    assert_eq!(flight.call().method, "Range");
    // A release: no call; the timer's next flush deletes the key.
    assert_eq!(
        done(r.begin(
            StoreOp::Release {
                id: reservation.id,
                identity: None,
            },
            &limits()
        )),
        StoreResult::Done(true)
    );
    let chores = r.chores(T0 + 10);
    let flush = chores
        .iter()
        .find(|(chore, _)| matches!(chore, Chore::Flush(1)))
        .expect("a flush of the release");
    let txn = proto::TxnRequest::decode(flush.1.message.as_slice()).unwrap();
    assert!(matches!(
        &txn.success[0].request,
        Some(proto::request_op::Request::DeleteRange(d)) if d.key == key("mcp-sessions/", &reservation.id)
    ));
}

/// A put then a delete of the same key while etcd is away (a session made and ended in an
/// outage): one write per key in the backlog, the last, since etcd refuses a transaction
/// that names a key twice. Failed before: the flush carried both and was refused forever.
#[test]
fn the_backlog_keeps_one_write_per_key_the_last() {
    let r = remote();
    r.remember_lease(T0, 5);
    let (a, b) = (b"mcps/a".to_vec(), b"mcps/b".to_vec());
    r.defer_put(a.clone(), live_record([1; 16], T0));
    r.defer_put(b.clone(), live_record([2; 16], T0));
    r.defer_delete(a.clone());
    let _ = r.begin(
        StoreOp::Release {
            id: id(),
            identity: None,
        },
        &limits(),
    ); // makes the VM active
    let chores = r.chores(T0);
    let (_, flush) = chores
        .iter()
        .find(|(chore, _)| matches!(chore, Chore::Flush(_)))
        .expect("a flush");
    let txn = proto::TxnRequest::decode(flush.message.as_slice()).unwrap();
    let keys: Vec<(bool, Vec<u8>)> = txn
        .success
        .iter()
        .map(|op| match &op.request {
            Some(proto::request_op::Request::Put(p)) => (true, p.key.clone()),
            Some(proto::request_op::Request::DeleteRange(d)) => (false, d.key.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    let released = key("mcp-sessions/", &id());
    assert_eq!(keys, vec![(true, b), (false, a), (false, released)]);
}

#[test]
fn an_end_is_one_delete_that_reports_what_it_removed() {
    let r = remote();
    let op = StoreOp::End {
        id: id(),
        identity: None,
        now_ms: T0 + 5,
    };
    let flight = call(r.begin(op.clone(), &limits()));
    assert_eq!(flight.call().method, "DeleteRange");
    let deleted = bytes(&proto::DeleteRangeResponse {
        deleted: 1,
        prev_kvs: vec![kv(&live_record(id().secret, T0), 4)],
        ..Default::default()
    });
    assert!(matches!(
        done(r.advance(flight, Reply::Ok(&deleted), &limits(), T0 + 5)),
        StoreResult::Ended(Ended::Ended(_))
    ));
    let flight = call(r.begin(op.clone(), &limits()));
    let nothing = bytes(&proto::DeleteRangeResponse::default());
    assert_eq!(
        done(r.advance(flight, Reply::Ok(&nothing), &limits(), T0 + 5)),
        StoreResult::Ended(Ended::NotFound)
    );
    // The first attempt timed out (it may have landed); the retry finds nothing: that is
    // this end's own doing, not a 404. Seen in test_cluster's leader kill under load.
    let flight = call(r.begin(op, &limits()));
    let retry = call(r.advance(flight, Reply::Failed(4), &limits(), T0 + 600));
    assert_eq!(retry.call().method, "DeleteRange");
    assert_eq!(
        done(r.advance(retry, Reply::Ok(&nothing), &limits(), T0 + 600)),
        StoreResult::Ended(Ended::EndedEarlier)
    );
}

#[test]
fn a_failed_call_is_made_once_more_then_etcd_is_unavailable() {
    let r = remote();
    let op = StoreOp::Lookup {
        id: id(),
        identity: None,
        now_ms: T0,
    };
    let mut flight = call(r.begin(op.clone(), &limits()));
    for at in [10, 20, 30] {
        flight = call(r.advance(flight, Reply::Failed(14), &limits(), T0 + at));
        assert_eq!(flight.call().method, "Range");
        assert_eq!(r.time_left(&flight, T0 + at), 1000 - at);
    }
    assert!(matches!(
        r.advance(flight, Reply::Failed(14), &limits(), T0 + 40),
        Next::Unavailable(o) if o == op
    ));
    // A failure with less than a quarter of the deadline left is not retried.
    let flight = call(r.begin(op, &limits()));
    assert!(matches!(
        r.advance(flight, Reply::Failed(4), &limits(), T0 + 760),
        Next::Unavailable(_)
    ));
    // Garbage is a failure too, never a 404.
    let flight = call(r.begin(
        StoreOp::Lookup {
            id: id(),
            identity: None,
            now_ms: T0,
        },
        &limits(),
    ));
    assert!(matches!(
        r.advance(flight, Reply::Ok(&[0xff, 0xff, 0xff]), &limits(), T0),
        Next::Unavailable(_)
    ));
}

#[test]
fn marking_initialized_after_the_requests_own_lookup_is_one_cas() {
    let r = remote();
    r.remember_lease(T0, 5);
    let mut fresh = live_record(id().secret, T0);
    fresh.initialized = false;
    let lookup = StoreOp::Lookup {
        id: id(),
        identity: None,
        now_ms: T0 + 1,
    };
    let flight = call(r.begin(lookup, &limits()));
    let answer = bytes(&proto::RangeResponse {
        kvs: vec![kv(&fresh, 8)],
        ..Default::default()
    });
    let _ = done(r.advance(flight, Reply::Ok(&answer), &limits(), T0 + 1));
    let mark = StoreOp::MarkInitialized {
        id: id(),
        now_ms: T0 + 2,
    };
    let flight = call(r.begin(mark.clone(), &limits()));
    let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
    assert_eq!(
        txn.compare[0].target_union,
        Some(proto::compare::TargetUnion::ModRevision(8))
    );
    // Without a lookup just before: a read first.
    let flight = call(r.begin(mark, &limits()));
    assert_eq!(flight.call().method, "Range");
}

#[test]
fn reserve_respects_the_counted_sessions() {
    let r = remote();
    let op = StoreOp::Reserve {
        secret: [1; 16],
        identity: None,
        now_ms: T0,
    };
    assert!(matches!(r.begin(op.clone(), &limits()), Next::Call(_)));
    let counted = bytes(&proto::RangeResponse {
        count: 100,
        ..Default::default()
    });
    assert!(r
        .chore_done(Chore::Count, Reply::Ok(&counted), T0)
        .is_some());
    assert_eq!(done(r.begin(op, &limits())), StoreResult::Reserved(None));
}

#[test]
fn the_watch_opens_confirms_flushes_on_deletes_and_reopens_after_compaction() {
    let r = remote();
    assert_eq!(
        r.watch_tick(T0),
        WatchAction::Idle,
        "idle until the VM serves"
    );
    let _ = r.begin(
        StoreOp::Release {
            id: id(),
            identity: None,
        },
        &limits(),
    );
    let WatchAction::Open(create) = r.watch_tick(T0) else {
        panic!("open")
    };
    let create = proto::WatchRequest::decode(create.as_slice()).unwrap();
    assert!(matches!(
        create.request_union,
        Some(proto::watch_request::RequestUnion::Create(ref c)) if c.start_revision == 0 && c.key == b"mcp-sessions/0" && c.range_end == b"mcp-sessions/g"
    ));
    assert!(!r.watch_fresh(T0));
    assert_eq!(r.trust_ms(T0), STALE_TRUST_MS);
    let created = bytes(&proto::WatchResponse {
        header: Some(proto::ResponseHeader { revision: 40 }),
        created: true,
        ..Default::default()
    });
    let news = r.watch_message(&created, T0 + 5);
    assert!(!news.close);
    assert!(
        news.flush,
        "entries cached before a watch from now may have missed an end"
    );
    assert!(r.watch_fresh(T0 + 5));
    assert_eq!(r.trust_ms(T0 + 5), r.timing().touch_ms);
    assert!(matches!(r.watch_tick(T0 + 500), WatchAction::Send(_)));
    let deleted = bytes(&proto::WatchResponse {
        events: vec![proto::Event {
            r#type: proto::EVENT_DELETE,
            kv: Some(proto::KeyValue {
                mod_revision: 41,
                ..Default::default()
            }),
        }],
        ..Default::default()
    });
    let news = r.watch_message(&deleted, T0 + 600);
    assert!(!news.flush);
    assert_eq!(news.deleted, vec![Vec::<u8>::new()]);
    // Silent too long: closed, and cached sessions are trusted for a second only.
    assert!(!r.watch_fresh(T0 + 600 + WATCH_FRESH_MS + 1));
    assert_eq!(
        r.watch_tick(T0 + 600 + 2 * WATCH_FRESH_MS + 1),
        WatchAction::Close
    );
    r.watch_closed();
    // Reopened after the last revision seen.
    let WatchAction::Open(create) = r.watch_tick(T0 + 5000) else {
        panic!("reopen")
    };
    let create = proto::WatchRequest::decode(create.as_slice()).unwrap();
    assert!(matches!(
        create.request_union,
        Some(proto::watch_request::RequestUnion::Create(ref c)) if c.start_revision == 42
    ));
    // Compacted past it: cancelled, flushed, and the next watch starts from now.
    let compacted = bytes(&proto::WatchResponse {
        canceled: true,
        compact_revision: 60,
        ..Default::default()
    });
    let news = r.watch_message(&compacted, T0 + 5010);
    assert!(news.flush && news.close);
    let WatchAction::Open(create) = r.watch_tick(T0 + 5500) else {
        panic!("reopen")
    };
    let create = proto::WatchRequest::decode(create.as_slice()).unwrap();
    assert!(matches!(
        create.request_union,
        Some(proto::watch_request::RequestUnion::Create(ref c)) if c.start_revision == 0
    ));
}

/// The shortened ID of the logs shows the slot in full and two bytes of the secret: with the
/// slot drawn from the secret's first bytes (as it once was here), a log line held 32 bits of
/// the secret. Found by the oracles branch's review.
#[test]
fn a_new_sessions_slot_reveals_nothing_of_its_secret() {
    let secret = [
        0x5a, 0x17, 0xc3, 0x88, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    let id = session_id(secret);
    assert_eq!(id.secret, secret);
    let short = id.short();
    assert!(!short.contains("5a17c388"), "{short}");
    assert!(!short.contains("88c3175a"), "{short}");
    assert_ne!(session_id([0; 16]).slot, session_id([1; 16]).slot);
}

// `max_sessions_per_identity` with etcd: each session bound to a caller has an index key,
// `<prefix>idn/<identity digest>/<session digest>`, written, leased and deleted with it.

fn indexed() -> Remote {
    remote().indexed(true)
}

fn per_caller(limit: u32) -> Limits {
    Limits {
        bind_identity: true,
        per_identity: Some(limit),
        ..limits()
    }
}

fn reserve(secret: u8, caller: &str) -> StoreOp {
    StoreOp::Reserve {
        secret: [secret; 16],
        identity: Some(caller.as_bytes().to_vec()),
        now_ms: T0,
    }
}

/// Runs `next` against `etcd` to its answer; the number of calls it made.
fn run(
    r: &Remote,
    etcd: &crate::testkit::FakeEtcd,
    next: Next,
    limits: &Limits,
) -> (StoreResult, usize) {
    run_at(r, etcd, next, limits, T0)
}

/// [`run`], its answers fed back at `now_ms`.
fn run_at(
    r: &Remote,
    etcd: &crate::testkit::FakeEtcd,
    mut next: Next,
    limits: &Limits,
    now_ms: u64,
) -> (StoreResult, usize) {
    let mut calls = 0;
    loop {
        match next {
            Next::Done(result) => return (result, calls),
            Next::Unavailable(op) => panic!("unavailable: {op:?}"),
            Next::Call(flight) => {
                calls += 1;
                let (status, answer) = etcd.answer(flight.call());
                let answer = answer.unwrap_or_default();
                next = r.advance(flight, Reply::of(status, &answer), limits, now_ms);
            }
        }
    }
}

fn index_keys(etcd: &crate::testkit::FakeEtcd) -> Vec<Vec<u8>> {
    etcd.keys()
        .into_iter()
        .filter(|k| k.starts_with(b"mcp-sessions/idn/"))
        .collect()
}

#[test]
fn the_index_lies_outside_the_range_of_the_sessions() {
    let (start, end) = sessions_range("mcp-sessions/");
    let session = key("mcp-sessions/", &id());
    let digest = crate::record::identity_digest(Some(b"alice"));
    let index = index_key("mcp-sessions/", &digest, &session);
    assert!(session >= start && session < end);
    assert!(!(index >= start && index < end), "{index:?}");
    assert!(index.starts_with(&identity_prefix("mcp-sessions/", &digest)));
    assert!(index.ends_with(&session["mcp-sessions/".len()..]));
    assert_eq!(index.len(), "mcp-sessions/idn/".len() + 32 + 1 + 32);
}

/// The costs, in calls: a caller's first session 1 (the create bets on none), a later one 2
/// (the create's failure counts them; the next create is made against that count), a refusal
/// at the limit 1, which writes nothing. Without the index, 1 (unchanged).
#[test]
fn a_limit_per_caller_costs_one_create_and_a_second_once_the_caller_holds_sessions() {
    let etcd = crate::testkit::FakeEtcd::new();
    let r = indexed();
    r.remember_lease(T0, 5);
    let per = per_caller(2);
    let limits = per;
    let (first, calls) = run(&r, &etcd, r.begin(reserve(1, "alice"), &limits), &limits);
    assert!(matches!(first, StoreResult::Reserved(Some(_))));
    assert_eq!(calls, 1);
    assert_eq!(etcd.keys().len(), 2, "the session and its index key");
    let (second, calls) = run(&r, &etcd, r.begin(reserve(2, "alice"), &limits), &limits);
    assert!(matches!(second, StoreResult::Reserved(Some(_))));
    assert_eq!(calls, 2);
    let revision = etcd.revision();
    let (third, calls) = run(&r, &etcd, r.begin(reserve(3, "alice"), &limits), &limits);
    assert_eq!((third, calls), (StoreResult::IdentityLimit, 1));
    assert_eq!(etcd.revision(), revision, "a refusal writes nothing");
    assert_eq!(index_keys(&etcd).len(), 2);
    // Another caller is not counted with alice.
    let (bob, calls) = run(&r, &etcd, r.begin(reserve(4, "bob"), &limits), &limits);
    assert!(matches!(bob, StoreResult::Reserved(Some(_))));
    assert_eq!(calls, 1);
    // Both index keys are on the sessions' lease.
    for key in etcd.keys() {
        assert_eq!(etcd.lease(&key), Some(5), "{key:?}");
    }
    // Without the limit: one create, no index key.
    let plain = FakeEtcdAndRemote::new();
    let unlimited = self::limits();
    let (made, calls) = run(
        &plain.1,
        &plain.0,
        plain.1.begin(reserve(1, "alice"), &unlimited),
        &unlimited,
    );
    assert!(matches!(made, StoreResult::Reserved(Some(_))));
    assert_eq!((calls, plain.0.keys().len()), (1, 1));
}

struct FakeEtcdAndRemote(crate::testkit::FakeEtcd, Remote);

impl FakeEtcdAndRemote {
    fn new() -> FakeEtcdAndRemote {
        let r = remote();
        r.remember_lease(T0, 5);
        FakeEtcdAndRemote(crate::testkit::FakeEtcd::new(), r)
    }
}

/// Two Envoys' creates racing for a caller's last place: both counted one session at the same
/// revision, both create against it; etcd takes the first, and the second's compare fails
/// (a key of the caller was created since), its failure counts 2: refused. Never over.
#[test]
fn creates_racing_for_a_callers_last_place_let_one_through() {
    let etcd = crate::testkit::FakeEtcd::new();
    let (a, b) = (indexed(), indexed());
    a.remember_lease(T0, 5);
    b.remember_lease(T0, 6);
    let limits = per_caller(2);
    let (held, _) = run(&a, &etcd, a.begin(reserve(1, "alice"), &limits), &limits);
    assert!(matches!(held, StoreResult::Reserved(Some(_))));
    // Each first bets alice holds none, and learns she holds one.
    let learn = |r: &Remote, secret: u8| {
        let flight = call(r.begin(reserve(secret, "alice"), &limits));
        let (status, answer) = etcd.answer(flight.call());
        call(r.advance(
            flight,
            Reply::of(status, &answer.unwrap_or_default()),
            &limits,
            T0,
        ))
    };
    let (from_a, from_b) = (learn(&a, 2), learn(&b, 3));
    let (won, calls) = run(&a, &etcd, Next::Call(from_a), &limits);
    assert!(matches!(won, StoreResult::Reserved(Some(_))));
    assert_eq!(calls, 1);
    let (lost, calls) = run(&b, &etcd, Next::Call(from_b), &limits);
    assert_eq!((lost, calls), (StoreResult::IdentityLimit, 1));
    assert_eq!(index_keys(&etcd).len(), 2);
}

/// A caller whose other sessions keep appearing between count and create is refused after
/// three creates (the safe side), never let over.
#[test]
fn a_create_that_keeps_losing_to_the_callers_other_creates_is_refused() {
    let r = indexed();
    r.remember_lease(T0, 5);
    let limits = per_caller(10);
    let mut flight = call(r.begin(reserve(1, "alice"), &limits));
    let lost = bytes(&proto::TxnResponse {
        succeeded: false,
        header: Some(proto::ResponseHeader { revision: 40 }),
        responses: vec![
            proto::ResponseOp {
                response: Some(Response::Range(proto::RangeResponse::default())),
            },
            proto::ResponseOp {
                response: Some(Response::Range(proto::RangeResponse {
                    count: 3,
                    ..Default::default()
                })),
            },
        ],
    });
    for _ in 0..2 {
        flight = call(r.advance(flight, Reply::Ok(&lost), &limits, T0));
        let txn = proto::TxnRequest::decode(flight.call().message.as_slice()).unwrap();
        assert_eq!(txn.compare[1].result, proto::LESS);
        assert_eq!(
            txn.compare[1].target_union,
            Some(proto::compare::TargetUnion::CreateRevision(41)),
            "no key of the caller created after the count's revision"
        );
    }
    assert_eq!(
        done(r.advance(flight, Reply::Ok(&lost), &limits, T0)),
        StoreResult::IdentityLimit
    );
}

/// The index key leaves with its session however it ends: a DELETE (one Txn), an expiry found
/// by a lookup (the same CAS), a failed initialize (the backlog); and it moves to the lease of
/// every write of its session (a touch), so etcd's own expiry takes both together.
#[test]
fn the_index_key_follows_its_session_through_touches_and_ends() {
    let etcd = crate::testkit::FakeEtcd::new();
    let r = indexed();
    r.remember_lease(T0, 5);
    let limits = per_caller(3);
    let alice = Some(b"alice".to_vec());
    let made = |secret: u8| match run(
        &r,
        &etcd,
        r.begin(reserve(secret, "alice"), &limits),
        &limits,
    )
    .0
    {
        StoreResult::Reserved(Some(reservation)) => reservation.id,
        other => panic!("{other:?}"),
    };
    let (one, two, three) = (made(1), made(2), made(3));
    assert_eq!(index_keys(&etcd).len(), 3);

    // A touch, in a later window: both keys move to its lease.
    let later = T0 + r.timing().touch_ms + r.timing().window_ms;
    r.remember_lease(later, 8);
    let touch = StoreOp::Lookup {
        id: one,
        identity: alice.clone(),
        now_ms: later,
    };
    let (touched, _) = run_at(&r, &etcd, r.begin(touch, &limits), &limits, later);
    assert!(matches!(touched, StoreResult::Lookup(Lookup::Live(..))));
    let one_key = key("mcp-sessions/", &one);
    let digest = crate::record::identity_digest(alice.as_deref());
    assert_eq!(etcd.lease(&one_key), Some(8));
    assert_eq!(
        etcd.lease(&index_key("mcp-sessions/", &digest, &one_key)),
        Some(8)
    );

    // A DELETE: one Txn removes both.
    let end = StoreOp::End {
        id: one,
        identity: alice.clone(),
        now_ms: later,
    };
    let (ended, calls) = run(&r, &etcd, r.begin(end, &limits), &limits);
    assert!(
        matches!(ended, StoreResult::Ended(Ended::Ended(_))),
        "{ended:?}"
    );
    assert_eq!((calls, index_keys(&etcd).len()), (1, 2));

    // An expiry found by a lookup: the CAS deletes both.
    let gone = T0 + IDLE + 1;
    let lookup = StoreOp::Lookup {
        id: two,
        identity: alice.clone(),
        now_ms: gone,
    };
    let (expired, _) = run_at(&r, &etcd, r.begin(lookup, &limits), &limits, gone);
    assert!(matches!(expired, StoreResult::Lookup(Lookup::Expired)));
    assert_eq!(index_keys(&etcd).len(), 1);

    // A failed initialize: both deletes wait in the backlog, flushed in one Txn.
    let release = StoreOp::Release {
        id: three,
        identity: alice,
    };
    assert_eq!(done(r.begin(release, &limits)), StoreResult::Done(true));
    let flush = r
        .chores(gone)
        .into_iter()
        .find(|(chore, _)| matches!(chore, Chore::Flush(2)))
        .expect("a flush of two deletes");
    let (status, answer) = etcd.answer(&flush.1);
    assert!(r
        .chore_done(
            flush.0,
            Reply::of(status, &answer.unwrap_or_default()),
            gone
        )
        .is_some());
    assert!(etcd.keys().is_empty(), "{:?}", etcd.keys());
}

/// What a VM counts for `max_sessions` and what its watch reports are the sessions' keys:
/// the index keys are not sessions.
#[test]
fn the_session_count_and_the_watch_leave_the_index_out() {
    let etcd = crate::testkit::FakeEtcd::new();
    let r = indexed();
    r.remember_lease(T0, 5);
    r.remember_lease(T0 + COUNT_EVERY_MS, 5);
    let limits = per_caller(3);
    for secret in 1..=2 {
        let (made, _) = run(
            &r,
            &etcd,
            r.begin(reserve(secret, "alice"), &limits),
            &limits,
        );
        assert!(matches!(made, StoreResult::Reserved(Some(_))));
    }
    assert_eq!(etcd.keys().len(), 4);
    let count = r
        .chores(T0 + COUNT_EVERY_MS)
        .into_iter()
        .find(|(chore, _)| *chore == Chore::Count)
        .expect("a count");
    let (status, answer) = etcd.answer(&count.1);
    let answer = answer.unwrap_or_default();
    assert!(r
        .chore_done(
            Chore::Count,
            Reply::of(status, &answer),
            T0 + COUNT_EVERY_MS
        )
        .is_some());
    assert_eq!(r.counted(), 2);
}

/// With `unavailable: local`, a session made while etcd is away gets its index key when the
/// backlog writes it, and one ended meanwhile takes its index key with it: the caller's count
/// is right again once etcd is back. (The limit itself is not checked meanwhile.)
#[test]
fn the_backlog_writes_and_deletes_index_keys_with_their_sessions() {
    use crate::store::cache::SessionCache;
    use crate::testkit::{FakeEtcd, FakeShared};
    let etcd = FakeEtcd::new();
    let r = indexed();
    r.remember_lease(T0, 5);
    let limits = per_caller(1);
    let (shared, mut cache) = (FakeShared::default(), SessionCache::new(16));
    let release = StoreOp::Release {
        id: id(),
        identity: None,
    };
    let _ = r.begin(release, &limits); // a VM that served: its timer makes calls
    let flush = |r: &Remote| {
        let (chore, call) = r
            .chores(T0)
            .into_iter()
            .find(|(chore, _)| matches!(chore, Chore::Flush(_)))
            .expect("a flush");
        let (status, answer) = etcd.answer(&call);
        assert!(r
            .chore_done(chore, Reply::of(status, &answer.unwrap_or_default()), T0)
            .is_some());
    };
    let mut made = Vec::new();
    for secret in [1, 2] {
        let answer = fallback::answer(
            &r,
            &mut cache,
            &shared,
            1,
            &limits,
            reserve(secret, "alice"),
        );
        let StoreResult::Reserved(Some(reservation)) = answer.result else {
            panic!("{answer:?}")
        };
        // Cached, as the driver caches what the fallback made (so this worker can end it).
        cache.put(1, reservation.id.slot, reservation.record);
        made.push(reservation.id);
    }
    flush(&r);
    assert_eq!(index_keys(&etcd).len(), 2, "both counted once written");
    let end = StoreOp::End {
        id: made[0],
        identity: Some(b"alice".to_vec()),
        now_ms: T0,
    };
    let answer = fallback::answer(&r, &mut cache, &shared, 1, &limits, end);
    assert!(matches!(answer.result, StoreResult::Ended(Ended::Ended(_))));
    flush(&r);
    assert_eq!((index_keys(&etcd).len(), etcd.keys().len()), (1, 2));
}
