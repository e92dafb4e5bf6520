//! The request machine on its own, as a table: one row per situation, the events fed and the
//! step expected beside them. No driver, no store, no host: the store's answers are written
//! into the rows as [`Event::Stored`].

use super::*;
use crate::rejection::Reason;
use crate::session_id::SessionId;
use crate::store::Reservation;
use crate::store::Source;
use crate::testkit::{live_record, AttributeMap, HeaderList, T0};

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
const HANDSHAKE: (&str, &str) = ("mcp-protocol-version", "2025-11-25");

fn id() -> SessionId {
    SessionId {
        slot: 3,
        secret: [5; SECRET_LEN],
    }
}

fn post(extra: &[(&str, &str)]) -> HeaderList {
    let mut pairs = vec![
        (":method", "POST"),
        (":path", "/mcp"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    pairs.extend_from_slice(extra);
    HeaderList::of(&pairs)
}

/// The input of a machine at [`T0`].
fn at_t0<'a>(config: &'a Config, random: &'a dyn Fn(&mut [u8]) -> bool) -> Input<'a> {
    Input::new(config, &|| T0, random)
}

/// What a step does, in short: the flow, then what it counted.
#[derive(Debug, PartialEq, Eq)]
enum Does {
    Continue,
    Pause,
    HoldHeaders,
    Respond(u32, Vec<(Count, u32)>),
    Lookup,
    Reserve,
    Activate,
    Release,
    End,
    Replace,
}

fn does(exchange: &mut Exchange, step: &Step) -> Does {
    match &step.flow {
        Flow::Continue => Does::Continue,
        Flow::Pause => Does::Pause,
        Flow::HoldHeaders => Does::HoldHeaders,
        Flow::Respond(reply) => Does::Respond(reply.status, counted(exchange)),
        Flow::Replace(_) => Does::Replace,
        Flow::Store => match exchange.take_store_op() {
            None => panic!("a store flow with no operation"),
            Some(StoreOp::Lookup { .. }) => Does::Lookup,
            Some(StoreOp::Reserve { .. }) => Does::Reserve,
            Some(StoreOp::Activate { .. }) => Does::Activate,
            Some(StoreOp::Release { .. }) => Does::Release,
            Some(StoreOp::End { .. }) => Does::End,
            Some(StoreOp::MarkInitialized { .. }) => Does::Continue,
        },
    }
}

/// What the machine's last step counted.
fn counted(exchange: &mut Exchange) -> Vec<(Count, u32)> {
    exchange
        .take_counts()
        .map_or_else(Vec::new, |counts| counts.iter().collect())
}

/// Feeds the request headers (and the body, when there is one) to a new machine.
fn request(config: &str, headers: &HeaderList, body: &str) -> (Exchange, Step) {
    let config = Config::parse(config.as_bytes()).unwrap();
    let random = |buf: &mut [u8]| {
        buf.fill(9);
        true
    };
    let input = at_t0(&config, &random);
    let mut exchange = Exchange::new();
    let step = exchange.step(
        &input,
        Event::RequestHeaders {
            headers,
            attributes: &AttributeMap::default(),
            end_of_stream: body.is_empty(),
        },
    );
    if body.is_empty() || !exchange.reads_request_body() {
        return (exchange, step);
    }
    let bytes = body.as_bytes().to_vec();
    let read = move || Cow::Owned(bytes.clone());
    let step = exchange.step(
        &input,
        Event::RequestBody {
            size: &|| body.len(),
            end_of_stream: true,
            body: &read,
        },
    );
    (exchange, step)
}

/// A new machine that has seen the headers of a sessionless POST whose body is to follow.
fn awaiting_body(input: &Input<'_>) -> Exchange {
    let mut exchange = Exchange::new();
    let _ = exchange.step(
        input,
        Event::RequestHeaders {
            headers: &post(&[]),
            attributes: &AttributeMap::default(),
            end_of_stream: false,
        },
    );
    exchange
}

fn rejected(status: u32, reason: Reason) -> Does {
    Does::Respond(status, vec![(Count::Rejected(reason), 1)])
}

#[test]
fn requests_by_table() {
    let sid = id().encode();
    let sid = sid.as_str();
    let rows: Vec<(&str, &str, HeaderList, &str, Does)> = vec![
        (
            "an initialize reserves a session",
            "{}",
            post(&[]),
            INITIALIZE,
            Does::Reserve,
        ),
        (
            "a call without a session is refused",
            "{}",
            post(&[HANDSHAKE]),
            CALL,
            rejected(400, Reason::Missing),
        ),
        (
            "a call on a session looks it up",
            "{}",
            post(&[HANDSHAKE, ("mcp-session-id", sid)]),
            CALL,
            Does::Lookup,
        ),
        (
            "a malformed session ID is unknown",
            "{}",
            post(&[HANDSHAKE, ("mcp-session-id", "nope")]),
            CALL,
            rejected(404, Reason::Unknown),
        ),
        (
            "two session headers",
            "{}",
            post(&[HANDSHAKE, ("mcp-session-id", sid), ("mcp-session-id", sid)]),
            CALL,
            rejected(400, Reason::Header),
        ),
        (
            "an unknown protocol version",
            "{}",
            post(&[
                ("mcp-protocol-version", "1999-01-01"),
                ("mcp-session-id", sid),
            ]),
            CALL,
            rejected(400, Reason::Version),
        ),
        (
            "the sessionless era passes",
            "{}",
            post(&[("mcp-protocol-version", "2026-07-28")]),
            CALL,
            Does::Continue,
        ),
        (
            "stateless mode passes",
            r#"{"stateless": true}"#,
            post(&[HANDSHAKE]),
            CALL,
            Does::Continue,
        ),
        (
            "an unguarded path passes",
            r#"{"paths": ["/other"]}"#,
            post(&[HANDSHAKE]),
            CALL,
            Does::Continue,
        ),
        (
            "a DELETE looks the session up",
            "{}",
            HeaderList::of(&[
                (":method", "DELETE"),
                (":path", "/mcp"),
                ("mcp-session-id", sid),
            ]),
            "",
            Does::Lookup,
        ),
        (
            "a DELETE when it is not allowed",
            r#"{"allow_delete": false}"#,
            HeaderList::of(&[
                (":method", "DELETE"),
                (":path", "/mcp"),
                ("mcp-session-id", sid),
            ]),
            "",
            rejected(405, Reason::Method),
        ),
        (
            "a body that is not JSON",
            "{}",
            post(&[]),
            "{not json",
            rejected(400, Reason::Body),
        ),
        (
            "an initialize without the configured identity",
            r#"{"identity_header": "x-user"}"#,
            post(&[]),
            INITIALIZE,
            rejected(401, Reason::Identity),
        ),
        (
            "a session without the configured identity",
            r#"{"identity_header": "x-user"}"#,
            post(&[HANDSHAKE, ("mcp-session-id", sid)]),
            CALL,
            rejected(404, Reason::Identity),
        ),
        (
            "a body over the limit",
            r#"{"max_body_bytes": 16}"#,
            post(&[]),
            INITIALIZE,
            rejected(413, Reason::Body),
        ),
    ];
    for (name, config, headers, body, expected) in rows {
        let (mut exchange, step) = request(config, &headers, body);
        assert_eq!(does(&mut exchange, &step), expected, "{name}");
    }
}

/// After the request, what the store's answer makes of it.
#[test]
fn store_answers_by_table() {
    let config = Config::parse(b"{}").unwrap();
    let random = |_: &mut [u8]| true;
    let input = at_t0(&config, &random);
    let sid = id().encode();
    let call = post(&[HANDSHAKE, ("mcp-session-id", &sid)]);
    let delete = HeaderList::of(&[
        (":method", "DELETE"),
        (":path", "/mcp"),
        ("mcp-session-id", &sid),
    ]);
    let live = live_record([5; SECRET_LEN], T0);
    let mut mapped = live.clone();
    mapped.upstream_id = Some("up-1".into());
    let rows: Vec<(&str, &HeaderList, StoreResult, Does)> = vec![
        (
            "a live session goes on",
            &call,
            StoreResult::Lookup(Lookup::Live(live.clone(), 1)),
            Does::Continue,
        ),
        (
            "an unknown session is a 404",
            &call,
            StoreResult::Lookup(Lookup::NotFound),
            rejected(404, Reason::Unknown),
        ),
        (
            "an expired session is counted and a 404",
            &call,
            StoreResult::Lookup(Lookup::Expired),
            Does::Respond(
                404,
                vec![(Count::Expired, 1), (Count::Rejected(Reason::Unknown), 1)],
            ),
        ),
        (
            "an unavailable store is a 503",
            &call,
            StoreResult::Unavailable,
            rejected(503, Reason::Unavailable),
        ),
        (
            "a DELETE of a live session ends it",
            &delete,
            StoreResult::Lookup(Lookup::Live(live.clone(), 1)),
            Does::End,
        ),
        (
            "a DELETE on a mapped session goes to the upstream first",
            &delete,
            StoreResult::Lookup(Lookup::Live(mapped.clone(), 1)),
            Does::Continue,
        ),
        (
            "a DELETE of an unknown session is a 404",
            &delete,
            StoreResult::Lookup(Lookup::NotFound),
            rejected(404, Reason::Unknown),
        ),
    ];
    for (name, headers, result, expected) in rows {
        // A cache's answer (Event::Live) is the store's live answer, lent.
        if let StoreResult::Lookup(Lookup::Live(record, _)) = &result {
            let (mut exchange, _) = request("{}", headers, "");
            let step = exchange.step(&input, Event::Live(record));
            assert_eq!(does(&mut exchange, &step), expected, "{name}, from a cache");
        }
        let (mut exchange, _) = request("{}", headers, "");
        let step = exchange.step(&input, Event::Stored(result));
        assert_eq!(does(&mut exchange, &step), expected, "{name}");
    }
    // A live session when no lookup is waited for (a host's mistake) changes nothing.
    let sessionless = post(&[("mcp-protocol-version", "2026-07-28")]);
    let (mut exchange, _) = request("{}", &sessionless, CALL);
    let step = exchange.step(&input, Event::Live(&live));
    assert_eq!(does(&mut exchange, &step), Does::Continue);
    // A DELETE whose lookup found `record`.
    let deleting = |record: &Record| {
        let (mut exchange, _) = request("{}", &delete, "");
        let lookup = Lookup::Live(record.clone(), 1);
        let _ = exchange.step(&input, Event::Stored(StoreResult::Lookup(lookup)));
        exchange
    };
    // A DELETE: the end, answered.
    let mut exchange = deleting(&live);
    let step = exchange.step(
        &input,
        Event::Stored(StoreResult::Ended(Ended::Ended(live))),
    );
    assert_eq!(counted(&mut exchange), vec![(Count::Terminated, 1)]);
    assert!(matches!(&step.flow, Flow::Respond(reply) if reply.status == 204));
    // A DELETE on a mapped session: the upstream's answer decides whether ours ends (review:
    // ours ended before the upstream answered, so a 405, "this server lets no client end a
    // session", left the client holding a session we had ended).
    type Answer<'a> = (&'a str, Does, Vec<(Count, u32)>);
    let rows: [Answer; 5] = [
        ("200", Does::End, vec![(Count::Terminated, 1)]),
        ("204", Does::End, vec![(Count::Terminated, 1)]),
        ("404", Does::End, vec![(Count::Terminated, 1)]),
        ("405", Does::Continue, vec![]),
        ("503", Does::Continue, vec![]),
    ];
    for (status, expected, counts) in rows {
        let mut exchange = deleting(&mapped);
        let step = exchange.step(
            &input,
            Event::ResponseHeaders {
                headers: &HeaderList::of(&[(":status", status), ("mcp-session-id", "up-1")]),
                attributes: &AttributeMap::default(),
                end_of_stream: true,
            },
        );
        assert_eq!(does(&mut exchange, &step), expected, "{status}");
        if expected == Does::End {
            let step = exchange.step(
                &input,
                Event::Stored(StoreResult::Ended(Ended::Ended(mapped.clone()))),
            );
            assert_eq!(
                step.flow,
                Flow::Continue,
                "{status}: the upstream's answer goes on"
            );
        }
        assert_eq!(counted(&mut exchange), counts, "{status}");
    }
}

/// A request on a session asks for a lookup ([`Flow::Store`], the machine holding the operation);
/// the operation it stands for names the session, the caller's identity and the time, and
/// there is none once the lookup was answered.
#[test]
fn a_lookup_names_the_session_the_caller_and_the_time() {
    let sid = id().encode();
    type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<Vec<u8>>);
    let rows: Vec<Row> = vec![
        ("{}", vec![], None),
        (
            r#"{"identity_header": "x-user"}"#,
            vec![("x-user", "alice")],
            Some(b"alice".to_vec()),
        ),
    ];
    for (config, extra, identity) in rows {
        let mut pairs = vec![HANDSHAKE, ("mcp-session-id", sid.as_str())];
        pairs.extend(extra);
        let (mut exchange, step) = request(config, &post(&pairs), CALL);
        assert_eq!(step.flow, Flow::Store, "{config}");
        assert_eq!(
            exchange.take_store_op(),
            Some(StoreOp::Lookup {
                id: id(),
                identity,
                now_ms: T0,
            }),
            "{config}"
        );
        let config = Config::parse(config.as_bytes()).unwrap();
        let random = |_: &mut [u8]| true;
        exchange.step(
            &at_t0(&config, &random),
            Event::Stored(StoreResult::Lookup(Lookup::NotFound)),
        );
        assert_eq!(exchange.take_store_op(), None, "answered");
    }
}

/// An initialize from reservation to decision: the session header is set on a 2xx, the
/// answer's outcome activates or releases the reservation, and the client's capacity 503
/// names its request id.
#[test]
fn an_initialize_by_table() {
    let config = Config::parse(b"{}").unwrap();
    let random = |_: &mut [u8]| true;
    let input = at_t0(&config, &random);
    let reservation = Reservation {
        id: id(),
        record: live_record([5; SECRET_LEN], T0),
        expired: 0,
        from: Source::Hint,
    };
    let json = HeaderList::of(&[(":status", "200"), ("content-type", "application/json")]);
    let failed = HeaderList::of(&[(":status", "500"), ("content-type", "application/json")]);
    let result = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
    let error = r#"{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"no"}}"#;
    let rows: Vec<(&str, &HeaderList, &str, Does)> = vec![
        ("a result activates", &json, result, Does::Activate),
        ("a JSON-RPC error releases", &json, error, Does::Release),
        (
            "an HTTP error releases at once",
            &failed,
            error,
            Does::Release,
        ),
    ];
    for (name, headers, body, expected) in rows {
        let (mut exchange, step) = request("{}", &post(&[]), INITIALIZE);
        assert_eq!(does(&mut exchange, &step), Does::Reserve, "{name}");
        let step = exchange.step(
            &input,
            Event::Stored(StoreResult::Reserved(Some(reservation.clone()))),
        );
        assert_eq!(does(&mut exchange, &step), Does::Continue, "{name}");
        let step = exchange.step(
            &input,
            Event::ResponseHeaders {
                headers,
                attributes: &AttributeMap::default(),
                end_of_stream: false,
            },
        );
        let sets_id = step
            .edits
            .contains(&Edit::ResponseAdd(SESSION_HEADER, Value::Session(id())));
        assert_eq!(sets_id, headers.value(":status") == Some("200"), "{name}");
        let step = if matches!(step.flow, Flow::Store) {
            step
        } else {
            let bytes = body.as_bytes().to_vec();
            let read = move || Cow::Owned(bytes.clone());
            exchange.step(
                &input,
                Event::ResponseBody {
                    size: &|| body.len(),
                    end_of_stream: true,
                    body: &read,
                },
            )
        };
        assert_eq!(does(&mut exchange, &step), expected, "{name}");
        let _ = exchange.step(&input, Event::Stored(StoreResult::Done(true)));
        let created = expected == Does::Activate;
        assert_eq!(
            counted(&mut exchange).contains(&(Count::Created, 1)),
            created,
            "{name}"
        );
    }
    // The header edits of a 2xx answer: a header the answer lacks is added (a host's add does
    // not look for copies), one it carries is set (replaced), and for a request from a browser
    // (one with `origin`) the expose list keeps what the upstream exposed, ours added in a
    // line of its own.
    let ours = || id().encode();
    let expose_ours = || Edit::ResponseAdd(EXPOSE_HEADER, Value::Text(SESSION_HEADER.into()));
    type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<Edit>);
    let mut edit_rows: Vec<Row> = vec![
        (
            "neither header: both added",
            vec![],
            vec![
                Edit::ResponseAdd(SESSION_HEADER, Value::Session(id())),
                Edit::ResponseAdd(EXPOSE_HEADER, Value::Text(SESSION_HEADER.into())),
            ],
        ),
        (
            "the upstream's own session ID is replaced",
            vec![(SESSION_HEADER, "upstream-1")],
            vec![
                Edit::Response(SESSION_HEADER, Some(ours())),
                Edit::ResponseAdd(EXPOSE_HEADER, Value::Text(SESSION_HEADER.into())),
            ],
        ),
        (
            "an expose list gets ours in a line of its own",
            vec![(EXPOSE_HEADER, "x-a")],
            vec![
                Edit::ResponseAdd(SESSION_HEADER, Value::Session(id())),
                expose_ours(),
            ],
        ),
        (
            "a blank expose list too",
            vec![(EXPOSE_HEADER, " ")],
            vec![
                Edit::ResponseAdd(SESSION_HEADER, Value::Session(id())),
                expose_ours(),
            ],
        ),
        (
            "an expose list that names it already stays",
            vec![(EXPOSE_HEADER, "X-A, Mcp-Session-Id")],
            vec![Edit::ResponseAdd(SESSION_HEADER, Value::Session(id()))],
        ),
        // Review: a name that only contains ours counted as ours (and the browser could not
        // read the session ID), and a list on two lines lost its second line to the set.
        (
            "a longer name that contains ours is another name",
            vec![(EXPOSE_HEADER, "x-mcp-session-id-hint")],
            vec![
                Edit::ResponseAdd(SESSION_HEADER, Value::Session(id())),
                expose_ours(),
            ],
        ),
        (
            "a list on two lines keeps both",
            vec![
                (EXPOSE_HEADER, "x-a"),
                (EXPOSE_HEADER, "mcp-protocol-version"),
            ],
            vec![
                Edit::ResponseAdd(SESSION_HEADER, Value::Session(id())),
                expose_ours(),
            ],
        ),
    ];
    let cross_origin = edit_rows.len();
    // Without `origin` no browser reads the expose list: none is added (review: every answer
    // carried one, an add that costs Envoy a header-map edit).
    edit_rows.extend([
        (
            "no origin: the session header alone",
            vec![],
            vec![Edit::ResponseAdd(SESSION_HEADER, Value::Session(id()))],
        ),
        (
            "no origin: the upstream's list stays as it was",
            vec![(EXPOSE_HEADER, "x-a")],
            vec![Edit::ResponseAdd(SESSION_HEADER, Value::Session(id()))],
        ),
    ]);
    for (row, (name, extra, want)) in edit_rows.into_iter().enumerate() {
        let mut pairs = vec![(":status", "200"), ("content-type", "application/json")];
        pairs.extend(extra);
        let origin: &[(&str, &str)] = if row < cross_origin {
            &[("origin", "https://app.example")]
        } else {
            &[]
        };
        let (mut exchange, _) = request("{}", &post(origin), INITIALIZE);
        exchange.step(
            &input,
            Event::Stored(StoreResult::Reserved(Some(reservation.clone()))),
        );
        let step = exchange.step(
            &input,
            Event::ResponseHeaders {
                headers: &HeaderList::of(&pairs),
                attributes: &AttributeMap::default(),
                end_of_stream: false,
            },
        );
        assert_eq!(step.edits, want, "{name}");
    }
    // The store is full: 503 with the request's id.
    let (mut exchange, _) = request("{}", &post(&[]), INITIALIZE);
    let step = exchange.step(&input, Event::Stored(StoreResult::Reserved(None)));
    assert_eq!(does(&mut exchange, &step), rejected(503, Reason::Capacity));
    let Flow::Respond(reply) = step.flow else {
        unreachable!()
    };
    assert!(String::from_utf8_lossy(&reply.body).ends_with(r#""id":7}"#));
    // No random source: no session.
    let config = Config::parse(b"{}").unwrap();
    let none = |_: &mut [u8]| false;
    let input = at_t0(&config, &none);
    let mut exchange = awaiting_body(&input);
    let read = || Cow::Borrowed(INITIALIZE.as_bytes());
    let step = exchange.step(
        &input,
        Event::RequestBody {
            size: &|| INITIALIZE.len(),
            end_of_stream: true,
            body: &read,
        },
    );
    assert_eq!(does(&mut exchange, &step), rejected(503, Reason::Capacity));
}

#[test]
fn an_internal_error_reply_is_a_json_rpc_500() {
    let reply = Reply::internal_error();
    assert_eq!(reply.status, 500);
    assert_eq!(
        reply.headers,
        vec![("content-type", "application/json".to_string())]
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], -32603);
}

/// A request body's size is asked only while the body is incomplete (the limit is checked on
/// what is buffered so far); a complete body is read once and measured as read (a native host
/// pays Envoy callbacks for each).
#[test]
fn a_request_body_size_is_asked_only_before_the_body_is_complete() {
    type Row<'a> = (&'a str, bool, usize, Does, usize);
    let rows: [Row<'_>; 4] = [
        ("incomplete, under the limit", false, 10, Does::Pause, 1),
        (
            "incomplete, over the limit",
            false,
            17,
            rejected(413, Reason::Body),
            1,
        ),
        ("complete, under the limit", true, 0, Does::Reserve, 0),
        (
            "complete, over the limit",
            true,
            0,
            rejected(413, Reason::Body),
            0,
        ),
    ];
    for (name, end_of_stream, buffered, expected, asked) in rows {
        let limit = if expected == Does::Reserve { 1024 } else { 16 };
        let config = Config::parse(format!(r#"{{"max_body_bytes": {limit}}}"#).as_bytes()).unwrap();
        let random = |buf: &mut [u8]| {
            buf.fill(9);
            true
        };
        let input = at_t0(&config, &random);
        let mut exchange = awaiting_body(&input);
        let sizes = std::cell::Cell::new(0);
        let size = || {
            sizes.set(sizes.get() + 1);
            buffered
        };
        let read = || Cow::Borrowed(INITIALIZE.as_bytes());
        let step = exchange.step(
            &input,
            Event::RequestBody {
                size: &size,
                end_of_stream,
                body: &read,
            },
        );
        assert_eq!(does(&mut exchange, &step), expected, "{name}");
        assert_eq!(sizes.get(), asked, "{name}: times the size was asked");
    }
}

/// A step's counts keep their order, past the two held in the step too.
#[test]
fn counts_keep_their_order_inline_and_past_it() {
    let all = [
        (Count::Expired, 3),
        (Count::Rejected(Reason::Capacity), 1),
        (Count::Created, 1),
        (Count::Terminated, 2),
    ];
    for n in 0..=all.len() {
        let mut counts = Counts::default();
        for &count in &all[..n] {
            counts.push(count);
        }
        assert_eq!(counts.iter().collect::<Vec<_>>(), all[..n].to_vec(), "{n}");
    }
}

/// A step takes its list of edits from the spare one the driver kept, when it has the room,
/// and makes a list otherwise.
#[test]
fn edit_lists_are_taken_from_the_spare_one() {
    let config = Config::parse(b"{}").unwrap();
    let random = |_: &mut [u8]| true;
    let spare = std::cell::Cell::new(Vec::with_capacity(4));
    spare.set({
        let mut kept = spare.take();
        kept.push(Edit::Fact("left", "over".into()));
        kept
    });
    let input = at_t0(&config, &random).keeping_edits(&spare);
    let list = input.edit_list(2);
    assert!(list.is_empty(), "what the list held is gone");
    assert_eq!(list.capacity(), 4, "the spare list itself");
    assert_eq!(spare.take().capacity(), 0, "taken, not shared");
    assert!(input.edit_list(2).capacity() >= 2, "none spare: a new one");
    let small = std::cell::Cell::new(Vec::with_capacity(1));
    let input = at_t0(&config, &random).keeping_edits(&small);
    assert!(input.edit_list(2).capacity() >= 2, "too small: a new one");
}
