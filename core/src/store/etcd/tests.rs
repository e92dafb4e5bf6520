use super::*;
use crate::session_id::SECRET_LEN;
use crate::testkit::{etcd_remote, live_record, FakeEtcd, T0};

const IDLE: u64 = 600_000;

fn remote() -> Remote {
    etcd_remote("mcp-sessions/", IDLE, false)
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

/// [`Remote::advance`] under [`limits`], the call having answered `answer`.
fn advance_ok(r: &Remote, flight: Box<Flight>, answer: &[u8], now: u64) -> Next {
    r.advance(flight, Reply::Ok(answer), &limits(), now)
}

/// The transaction `call` sends.
fn txn_of(call: &Call) -> proto::TxnRequest {
    proto::TxnRequest::decode(call.message.as_slice()).unwrap()
}

/// A lookup of [`id`] at `now_ms`, for no caller.
fn lookup(now_ms: u64) -> StoreOp {
    StoreOp::Lookup {
        id: id(),
        identity: None,
        now_ms,
    }
}

/// A release of [`id`]: no call, but it makes the VM a serving one and queues a delete.
fn release() -> StoreOp {
    StoreOp::Release {
        id: id(),
        identity: None,
    }
}

/// A read's answer: `record` under [`id`]'s key, last written at `mod_revision`.
fn found(record: &Record, mod_revision: i64) -> Vec<u8> {
    bytes(&proto::RangeResponse {
        kvs: vec![kv(record, mod_revision)],
        ..Default::default()
    })
}

/// Begins a lookup of [`id`] at `now` and answers its read with the session live since `T0`,
/// at revision 12: the call that comes next.
fn read_live(r: &Remote, now: u64) -> Box<Flight> {
    let flight = call(r.begin(lookup(now), &limits()));
    let answer = found(&live_record(id().secret, T0), 12);
    call(advance_ok(r, flight, &answer, now))
}

/// What a lookup at `now` comes to when, the session read live since `T0` ([`read_live`]), its
/// write under a CAS (a touch, or the delete of an expired record) is answered `answer`.
fn lookup_whose_write_got(now: u64, answer: &proto::TxnResponse) -> StoreResult {
    let r = remote();
    r.remember_lease(now, 5);
    let flight = read_live(&r, now);
    done(advance_ok(&r, flight, &bytes(answer), now))
}

/// A reservation of [`id`]'s secret at `T0`, for no caller.
fn reserve_id() -> StoreOp {
    StoreOp::Reserve {
        secret: id().secret,
        identity: None,
        now_ms: T0,
    }
}

/// The answer to a create that etcd made at revision 7.
fn created() -> Vec<u8> {
    bytes(&proto::TxnResponse {
        succeeded: true,
        header: Some(proto::ResponseHeader { revision: 7 }),
        ..Default::default()
    })
}

/// The reservation `flight`, a create, hands out once etcd made it ([`created`]).
fn reservation(r: &Remote, flight: Box<Flight>) -> Reservation {
    let StoreResult::Reserved(Some(reservation)) = done(advance_ok(r, flight, &created(), T0))
    else {
        panic!("a reservation")
    };
    reservation
}

/// The flush among the timer's chores at `now`.
fn flush(r: &Remote, now: u64) -> (Chore, Call) {
    r.chores(now)
        .into_iter()
        .find(|(chore, _)| matches!(chore, Chore::Flush(_)))
        .expect("a flush")
}

fn granted(r: &Remote, flight: Box<Flight>, now: u64) -> Box<Flight> {
    assert_eq!(flight.call().method, "LeaseGrant");
    let grant = bytes(&proto::LeaseGrantResponse {
        id: 99,
        ttl: r.timing().lease_ttl_s,
        ..Default::default()
    });
    call(advance_ok(r, flight, &grant, now))
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

/// A stateful upstream's own session ID is stored sealed: not in the value, read back only
/// for the session's own ID, the same bytes on every write of the session (one text per key),
/// and different for another session holding the same upstream ID.
#[test]
fn a_stateful_upstreams_session_id_is_stored_sealed_under_the_sessions_own_id() {
    let id = id();
    let theirs = "6a01d87a-79e5-4e50-b5df-54b21daf5e24";
    let record = live_record(id.secret, T0).activated(T0 + 1, Some(theirs));
    let stored = value(&record);
    assert!(!stored
        .windows(8)
        .any(|w| theirs.as_bytes().windows(8).any(|t| t == w)));
    assert!(Record::upstream_sealed(&stored));
    assert_eq!(record_of(&stored, &id), Some(record.clone()));
    let touched = Record {
        last_seen_ms: T0 + 9_000,
        ..record.clone()
    };
    let again = value(&touched);
    let upstream = stored.len() - theirs.len()..stored.len();
    assert_eq!(again[upstream.clone()], stored[upstream.clone()]);

    let other = session_id([7; SECRET_LEN]);
    let read_by_other = record_of(&stored, &other).and_then(|r| r.upstream_id);
    assert_ne!(read_by_other.as_deref(), Some(theirs));
    let theirs_too = value(&live_record(other.secret, T0).activated(T0 + 1, Some(theirs)));
    assert_ne!(theirs_too[upstream.clone()], stored[upstream]);
}

#[test]
fn a_lookup_of_a_recently_touched_session_is_one_read() {
    let r = remote();
    let now = T0 + 1_000;
    let flight = call(r.begin(lookup(now), &limits()));
    assert_eq!((flight.call().service, flight.call().method), (KV, "Range"));
    let answer = found(&live_record(id().secret, T0), 12);
    let result = done(advance_ok(&r, flight, &answer, now));
    assert!(
        matches!(result, StoreResult::Lookup(Lookup::Live(record, 12)) if record.last_seen_ms == T0)
    );
}

#[test]
fn a_lookup_due_a_touch_writes_once_under_a_cas_with_a_shared_lease() {
    let r = remote();
    let now = T0 + r.timing().touch_ms;
    let flight = granted(&r, read_live(&r, now), now);
    let txn = txn_of(flight.call());
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
    let result = done(advance_ok(&r, flight, &ok, now));
    assert!(
        matches!(result, StoreResult::Lookup(Lookup::Live(record, 13)) if record.last_seen_ms == now)
    );

    // The next touch in the same window reuses the lease: no grant.
    assert_eq!(read_live(&r, now).call().method, "Txn");
}

#[test]
fn a_touch_that_loses_to_a_delete_finds_nothing() {
    let now = T0 + remote().timing().touch_ms;
    let lost = proto::TxnResponse {
        succeeded: false,
        responses: vec![proto::ResponseOp {
            response: Some(Response::Range(proto::RangeResponse::default())),
        }],
        ..Default::default()
    };
    assert_eq!(
        lookup_whose_write_got(now, &lost),
        StoreResult::Lookup(Lookup::NotFound)
    );
}

#[test]
fn an_expired_record_is_deleted_under_a_cas_and_counted_once() {
    let won = proto::TxnResponse {
        succeeded: true,
        ..Default::default()
    };
    assert_eq!(
        lookup_whose_write_got(T0 + IDLE + 1, &won),
        StoreResult::Lookup(Lookup::Expired)
    );
}

#[test]
fn a_reservation_is_one_create_if_absent_and_a_retried_create_recognises_itself() {
    let r = remote();
    r.remember_lease(T0, 5);
    let secret = id().secret;
    let flight = call(r.begin(reserve_id(), &limits()));
    assert_eq!(
        txn_of(flight.call()).compare[0].target_union,
        Some(proto::compare::TargetUnion::CreateRevision(0))
    );
    let reservation = reservation(&r, flight);
    // Written live, not initialized, before the upstream sees the initialize.
    assert_eq!(reservation.id, session_id(secret));
    assert_eq!(reservation.record.state, State::Live);
    assert!(!reservation.record.initialized);
    // The first attempt landed but its answer was lost: the retry finds its own record.
    let flight = call(r.begin(reserve_id(), &limits()));
    let mut mine = live_record(secret, T0);
    mine.initialized = false;
    let key_held_by = |record: &Record| {
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
        done(advance_ok(&r, flight, &key_held_by(&mine), T0)),
        StoreResult::Reserved(Some(_))
    ));
    // Someone else's record under the same key: not ours.
    let flight = call(r.begin(reserve_id(), &limits()));
    let theirs = live_record(secret, T0 - 5);
    assert_eq!(
        done(advance_ok(&r, flight, &key_held_by(&theirs), T0)),
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
    let reservation = reservation(&r, call(r.begin(reserve_id(), &limits())));
    let activate = |upstream_id: Option<&str>| StoreOp::Activate {
        id: reservation.id,
        reserved: reservation.record.clone(),
        upstream_id: upstream_id.map(str::to_owned),
        now_ms: T0 + 5,
    };
    assert_eq!(
        done(r.begin(activate(None), &limits())),
        StoreResult::Done(true)
    );
    let flight = call(r.begin(activate(Some("up-1")), &limits()));
    let txn = txn_of(flight.call());
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
        done(advance_ok(&r, flight, &created(), T0 + 5)),
        StoreResult::Done(true)
    );
    // Without the create's revision at hand: a read first.
    let flight = call(r.begin(activate(Some("up-1")), &limits()));
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
    let (chore, sent) = flush(&r, T0 + 10);
    assert_eq!(chore, Chore::Flush(1), "a flush of the release");
    assert!(matches!(
        &txn_of(&sent).success[0].request,
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
    let _ = r.begin(release(), &limits()); // makes the VM active
    let (_, sent) = flush(&r, T0);
    let keys: Vec<(bool, Vec<u8>)> = txn_of(&sent)
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
        done(advance_ok(&r, flight, &deleted, T0 + 5)),
        StoreResult::Ended(Ended::Ended(_))
    ));
    let flight = call(r.begin(op.clone(), &limits()));
    let nothing = bytes(&proto::DeleteRangeResponse::default());
    assert_eq!(
        done(advance_ok(&r, flight, &nothing, T0 + 5)),
        StoreResult::Ended(Ended::NotFound)
    );
    // The first attempt timed out (it may have landed); the retry finds nothing: that is
    // this end's own doing, not a 404. Seen in test_cluster's leader kill under load.
    let flight = call(r.begin(op, &limits()));
    let retry = call(r.advance(flight, Reply::Failed(4), &limits(), T0 + 600));
    assert_eq!(retry.call().method, "DeleteRange");
    assert_eq!(
        done(advance_ok(&r, retry, &nothing, T0 + 600)),
        StoreResult::Ended(Ended::EndedEarlier)
    );
}

#[test]
fn a_failed_call_is_made_once_more_then_etcd_is_unavailable() {
    let r = remote();
    let op = lookup(T0);
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
    let flight = call(r.begin(lookup(T0), &limits()));
    assert!(matches!(
        advance_ok(&r, flight, &[0xff, 0xff, 0xff], T0),
        Next::Unavailable(_)
    ));
}

#[test]
fn marking_initialized_after_the_requests_own_lookup_is_one_cas() {
    let r = remote();
    r.remember_lease(T0, 5);
    let mut fresh = live_record(id().secret, T0);
    fresh.initialized = false;
    let flight = call(r.begin(lookup(T0 + 1), &limits()));
    let _ = done(advance_ok(&r, flight, &found(&fresh, 8), T0 + 1));
    let mark = StoreOp::MarkInitialized {
        id: id(),
        now_ms: T0 + 2,
    };
    let flight = call(r.begin(mark.clone(), &limits()));
    assert_eq!(
        txn_of(flight.call()).compare[0].target_union,
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

/// The watch the timer opens at `now`: the create it sends.
fn watch_opened(r: &Remote, now: u64) -> proto::WatchCreateRequest {
    let WatchAction::Open(request) = r.watch_tick(now) else {
        panic!("a watch opened at {now}")
    };
    match proto::WatchRequest::decode(request.as_slice())
        .unwrap()
        .request_union
    {
        Some(proto::watch_request::RequestUnion::Create(create)) => create,
        other => panic!("a create: {other:?}"),
    }
}

#[test]
fn the_watch_opens_confirms_flushes_on_deletes_and_reopens_after_compaction() {
    let r = remote();
    assert_eq!(
        r.watch_tick(T0),
        WatchAction::Idle,
        "idle until the VM serves"
    );
    let _ = r.begin(release(), &limits());
    let c = watch_opened(&r, T0);
    assert!(
        c.start_revision == 0 && c.key == b"mcp-sessions/0" && c.range_end == b"mcp-sessions/g"
    );
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
    assert_eq!(watch_opened(&r, T0 + 5000).start_revision, 42);
    // Compacted past it: cancelled, flushed, and the next watch starts from now.
    let compacted = bytes(&proto::WatchResponse {
        canceled: true,
        compact_revision: 60,
        ..Default::default()
    });
    let news = r.watch_message(&compacted, T0 + 5010);
    assert!(news.flush && news.close);
    assert_eq!(watch_opened(&r, T0 + 5500).start_revision, 0);
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

/// A fake etcd, and `r` holding lease 5 for the window of `T0`.
fn on_etcd(r: Remote) -> (FakeEtcd, Remote) {
    r.remember_lease(T0, 5);
    (FakeEtcd::new(), r)
}

/// Has `etcd` answer `flight`'s call, the answer fed back at `now_ms`: what comes next.
fn answered_by(
    etcd: &FakeEtcd,
    r: &Remote,
    flight: Box<Flight>,
    limits: &Limits,
    now_ms: u64,
) -> Next {
    let (status, answer) = etcd.answer(flight.call());
    r.advance(
        flight,
        Reply::of(status, &answer.unwrap_or_default()),
        limits,
        now_ms,
    )
}

/// Has `etcd` answer a chore's `call`: what [`Remote::chore_done`] returns.
fn chore_answered_by(
    etcd: &FakeEtcd,
    r: &Remote,
    (chore, call): (Chore, Call),
    now_ms: u64,
) -> Option<Vec<Vec<u8>>> {
    let (status, answer) = etcd.answer(&call);
    r.chore_done(
        chore,
        Reply::of(status, &answer.unwrap_or_default()),
        now_ms,
    )
}

/// Runs `next` against `etcd` to its answer; the number of calls it made.
fn run(r: &Remote, etcd: &FakeEtcd, next: Next, limits: &Limits) -> (StoreResult, usize) {
    run_at(r, etcd, next, limits, T0)
}

/// [`run`], its answers fed back at `now_ms`.
fn run_at(
    r: &Remote,
    etcd: &FakeEtcd,
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
                next = answered_by(etcd, r, flight, limits, now_ms);
            }
        }
    }
}

/// Begins `op` and [`run`]s it.
fn ask(r: &Remote, etcd: &FakeEtcd, op: StoreOp, limits: &Limits) -> (StoreResult, usize) {
    run(r, etcd, r.begin(op, limits), limits)
}

fn index_keys(etcd: &FakeEtcd) -> Vec<Vec<u8>> {
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
    let (etcd, r) = on_etcd(indexed());
    let limits = per_caller(2);
    let (first, calls) = ask(&r, &etcd, reserve(1, "alice"), &limits);
    assert!(matches!(first, StoreResult::Reserved(Some(_))));
    assert_eq!(calls, 1);
    assert_eq!(etcd.keys().len(), 2, "the session and its index key");
    let (second, calls) = ask(&r, &etcd, reserve(2, "alice"), &limits);
    assert!(matches!(second, StoreResult::Reserved(Some(_))));
    assert_eq!(calls, 2);
    let revision = etcd.revision();
    let (third, calls) = ask(&r, &etcd, reserve(3, "alice"), &limits);
    assert_eq!((third, calls), (StoreResult::IdentityLimit, 1));
    assert_eq!(etcd.revision(), revision, "a refusal writes nothing");
    assert_eq!(index_keys(&etcd).len(), 2);
    // Another caller is not counted with alice.
    let (bob, calls) = ask(&r, &etcd, reserve(4, "bob"), &limits);
    assert!(matches!(bob, StoreResult::Reserved(Some(_))));
    assert_eq!(calls, 1);
    // Both index keys are on the sessions' lease.
    for key in etcd.keys() {
        assert_eq!(etcd.lease(&key), Some(5), "{key:?}");
    }
    // Without the limit: one create, no index key.
    let (plain_etcd, plain) = on_etcd(remote());
    let (made, calls) = ask(&plain, &plain_etcd, reserve(1, "alice"), &self::limits());
    assert!(matches!(made, StoreResult::Reserved(Some(_))));
    assert_eq!((calls, plain_etcd.keys().len()), (1, 1));
}

/// Two Envoys' creates racing for a caller's last place: both counted one session at the same
/// revision, both create against it; etcd takes the first, and the second's compare fails
/// (a key of the caller was created since), its failure counts 2: refused. Never over.
#[test]
fn creates_racing_for_a_callers_last_place_let_one_through() {
    let (etcd, a) = on_etcd(indexed());
    let b = indexed();
    b.remember_lease(T0, 6);
    let limits = per_caller(2);
    let (held, _) = ask(&a, &etcd, reserve(1, "alice"), &limits);
    assert!(matches!(held, StoreResult::Reserved(Some(_))));
    // Each first bets alice holds none, and learns she holds one.
    let learn = |r: &Remote, secret: u8| {
        let flight = call(r.begin(reserve(secret, "alice"), &limits));
        call(answered_by(&etcd, r, flight, &limits, T0))
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
        let txn = txn_of(flight.call());
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
    let (etcd, r) = on_etcd(indexed());
    let limits = per_caller(3);
    let alice = Some(b"alice".to_vec());
    let made = |secret: u8| match ask(&r, &etcd, reserve(secret, "alice"), &limits).0 {
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
    let (ended, calls) = ask(&r, &etcd, end, &limits);
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
    let deletes = flush(&r, gone);
    assert_eq!(deletes.0, Chore::Flush(2), "a flush of two deletes");
    assert!(chore_answered_by(&etcd, &r, deletes, gone).is_some());
    assert!(etcd.keys().is_empty(), "{:?}", etcd.keys());
}

/// What a VM counts for `max_sessions` and what its watch reports are the sessions' keys:
/// the index keys are not sessions.
#[test]
fn the_session_count_and_the_watch_leave_the_index_out() {
    let (etcd, r) = on_etcd(indexed());
    r.remember_lease(T0 + COUNT_EVERY_MS, 5);
    let limits = per_caller(3);
    for secret in 1..=2 {
        let (made, _) = ask(&r, &etcd, reserve(secret, "alice"), &limits);
        assert!(matches!(made, StoreResult::Reserved(Some(_))));
    }
    assert_eq!(etcd.keys().len(), 4);
    let count = r
        .chores(T0 + COUNT_EVERY_MS)
        .into_iter()
        .find(|(chore, _)| *chore == Chore::Count)
        .expect("a count");
    assert!(chore_answered_by(&etcd, &r, count, T0 + COUNT_EVERY_MS).is_some());
    assert_eq!(r.counted(), 2);
}

/// With `unavailable: local`, a session made while etcd is away gets its index key when the
/// backlog writes it, and one ended meanwhile takes its index key with it: the caller's count
/// is right again once etcd is back. (The limit itself is not checked meanwhile.)
#[test]
fn the_backlog_writes_and_deletes_index_keys_with_their_sessions() {
    use crate::store::cache::SessionCache;
    use crate::testkit::FakeShared;
    let (etcd, r) = on_etcd(indexed());
    let limits = per_caller(1);
    let (shared, mut cache) = (FakeShared::default(), SessionCache::new(16));
    let _ = r.begin(release(), &limits); // a VM that served: its timer makes calls
    let flush_taken = |r: &Remote| assert!(chore_answered_by(&etcd, r, flush(r, T0), T0).is_some());
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
    flush_taken(&r);
    assert_eq!(index_keys(&etcd).len(), 2, "both counted once written");
    let end = StoreOp::End {
        id: made[0],
        identity: Some(b"alice".to_vec()),
        now_ms: T0,
    };
    let answer = fallback::answer(&r, &mut cache, &shared, 1, &limits, end);
    assert!(matches!(answer.result, StoreResult::Ended(Ended::Ended(_))));
    flush_taken(&r);
    assert_eq!((index_keys(&etcd).len(), etcd.keys().len()), (1, 2));
}
