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
        done(r.begin(StoreOp::Release { id: reservation.id }, &limits())),
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
    let _ = r.begin(StoreOp::Release { id: id() }, &limits()); // makes the VM active
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
    let _ = r.begin(StoreOp::Release { id: id() }, &limits());
    let WatchAction::Open(create) = r.watch_tick(T0) else {
        panic!("open")
    };
    let create = proto::WatchRequest::decode(create.as_slice()).unwrap();
    assert!(matches!(
        create.request_union,
        Some(proto::watch_request::RequestUnion::Create(ref c)) if c.start_revision == 0 && c.range_end == b"mcp-sessions0"
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
