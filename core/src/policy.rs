//! The allow / reject decisions, as pure functions of what the request shows.
//!
//! A request is a small state machine driven by the glue: [`on_request_headers`] says what to
//! do with the headers; when it asks for the body, [`on_sessionless_body`] or
//! [`on_uninitialized_body`] decides once the body is complete. Nothing here touches the host.

use crate::config::Config;
use crate::headers;
use crate::message::{parse_body, Body, BodyError, Message, Method, RequestId};
use crate::protocol::{self, Era};
use crate::record::Record;
use crate::rejection::Rejection;
use crate::session_id::SessionId;

/// What the filter needs to know of a request's headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a [u8],
    /// `:path`, query included (bytes: read only when `paths` is configured).
    pub path: &'a [u8],
    /// `mcp-session-id`, as it came.
    pub session_id: Option<&'a [u8]>,
    /// `mcp-protocol-version`, as it came.
    pub protocol_version: Option<&'a [u8]>,
    /// `content-type` (bytes, as `content-length`: read only for a request without a session).
    pub content_type: Option<&'a [u8]>,
    /// `content-length`.
    pub content_length: Option<&'a [u8]>,
    /// `mcp-session-id` appears more than once.
    pub session_id_repeated: bool,
    /// `mcp-protocol-version` appears more than once.
    pub protocol_version_repeated: bool,
    /// The configured identity header appears more than once.
    pub identity_repeated: bool,
}

/// The decision on a request's headers.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadVerdict {
    /// Not session traffic (other path, OPTIONS, other methods, stateless mode): untouched.
    Ignore,
    /// A sessionless-era request: untouched, and counted.
    Sessionless,
    /// Refuse now.
    Reject(Rejection),
    /// A POST without a session: read the body, then call [`on_sessionless_body`].
    ReadSessionlessBody,
    /// A request on a session: look it up in the store, then call [`on_session`].
    Session {
        /// The parsed ID.
        id: SessionId,
    },
}

/// Decides on a request's headers.
pub fn on_request_headers(cfg: &Config, head: &RequestHead<'_>) -> HeadVerdict {
    if cfg.stateless || !cfg.guards(head.path) {
        return HeadVerdict::Ignore;
    }
    let method = HttpMethod::of(head.method);
    if method == HttpMethod::Other {
        return HeadVerdict::Ignore;
    }
    // Refused before the era is read from the first one: an upstream that reads another (the
    // last, or all joined) could take a request this filter let pass as sessionless for one
    // of the handshake era, on which no session was asked.
    if head.protocol_version_repeated {
        return HeadVerdict::Reject(Rejection::repeated_header("MCP-Protocol-Version"));
    }
    match protocol::classify(head.protocol_version) {
        Era::Sessionless => return HeadVerdict::Sessionless,
        Era::Unsupported => return HeadVerdict::Reject(Rejection::unsupported_version()),
        Era::Unstated | Era::Handshake => {}
    }
    if method == HttpMethod::Delete && !cfg.allow_delete {
        return HeadVerdict::Reject(Rejection::delete_not_allowed());
    }
    if head.session_id_repeated {
        return HeadVerdict::Reject(Rejection::repeated_header("Mcp-Session-Id"));
    }
    if let (true, Some(name)) = (head.identity_repeated, cfg.identity_header()) {
        return HeadVerdict::Reject(Rejection::repeated_header(name));
    }
    // An empty header is no session ID: the same 400 as a missing one, so a client that sends
    // one learns to initialize instead of looping on 404s.
    match head
        .session_id
        .filter(|value| !value.iter().all(u8::is_ascii_whitespace))
    {
        None => match method {
            // Refused on its declared length before anything goes upstream: the headers of a
            // body the filter reads are forwarded at once, and the upstream could answer them.
            HttpMethod::Post if declares_more_than(head.content_length, cfg.max_body_bytes) => {
                HeadVerdict::Reject(Rejection::body_too_large(cfg.max_body_bytes))
            }
            HttpMethod::Post if is_json(head.content_type) => HeadVerdict::ReadSessionlessBody,
            HttpMethod::Post => HeadVerdict::Reject(Rejection::unsupported_media_type()),
            _ => HeadVerdict::Reject(Rejection::missing_session()),
        },
        Some(value) => match SessionId::parse_bytes(value) {
            Some(id) => HeadVerdict::Session { id },
            None => HeadVerdict::Reject(Rejection::session_not_found()),
        },
    }
}

/// Whether a `content-length` value declares more than `limit` bytes. A value that is not a
/// number is Envoy's to refuse (it does, before any filter runs); here it declares nothing.
fn declares_more_than(content_length: Option<&[u8]>, limit: usize) -> bool {
    content_length
        .and_then(headers::decimal)
        .is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX))
}

/// The decision on a request for a live session the caller may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionVerdict {
    /// Forward it untouched (but for the session header); do not read the body.
    Forward,
    /// Read the body, then call [`on_uninitialized_body`].
    ReadUninitializedBody,
    /// End the session (DELETE).
    End,
}

/// Decides on a request whose session was found live.
pub fn on_session(cfg: &Config, method: HttpMethod, record: &Record) -> SessionVerdict {
    match method {
        HttpMethod::Delete => SessionVerdict::End,
        HttpMethod::Post if cfg.enforce_initialized && !record.initialized => {
            SessionVerdict::ReadUninitializedBody
        }
        _ => SessionVerdict::Forward,
    }
}

/// The decision on the body of a POST without a session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionlessBody {
    /// An `initialize`: reserve a session and forward it.
    Initialize {
        /// The request id, for a rejection after all (capacity).
        id: RequestId,
    },
    /// Refuse.
    Reject(Rejection),
}

/// Decides on the complete body of a POST without a session.
pub fn on_sessionless_body(body: &[u8]) -> SessionlessBody {
    let parsed = match parse_body(body) {
        Ok(parsed) => parsed,
        Err(BodyError::NotJson) => return SessionlessBody::Reject(Rejection::parse_error()),
        Err(BodyError::NotJsonRpc) => return SessionlessBody::Reject(Rejection::not_json_rpc()),
    };
    if parsed.is_batch() && parsed.has_initialize() {
        return SessionlessBody::Reject(Rejection::initialize_in_batch());
    }
    match parsed {
        // The id moves into the decision: an initialize copies nothing of its body.
        Body::One(Message::Request {
            method: Method::Initialize,
            id,
        }) => SessionlessBody::Initialize { id },
        _ => SessionlessBody::Reject(Rejection::missing_session().with_id(parsed.reply_id())),
    }
}

/// The decision on a POST on a session that has not seen `notifications/initialized`.
#[derive(Debug, Clone, PartialEq)]
pub enum UninitializedBody {
    /// Forward; `initialized` is true when it carries `notifications/initialized`.
    Forward {
        /// Mark the session initialized once the upstream accepts this.
        initialized: bool,
    },
    /// Refuse: a request other than `ping`.
    Reject(Rejection),
}

/// Decides on the complete body of a POST on an uninitialized session. Requests other than
/// `ping` are refused; notifications and responses pass. A body that is not JSON-RPC is left
/// for the upstream to refuse: it is not a request.
pub fn on_uninitialized_body(body: &[u8]) -> UninitializedBody {
    let Ok(parsed) = parse_body(body) else {
        return UninitializedBody::Forward { initialized: false };
    };
    let mut initialized = false;
    for m in parsed.messages() {
        match m {
            Message::Request { method, id } if *method != Method::Ping => {
                let id = if parsed.is_batch() {
                    RequestId::null()
                } else {
                    id.clone()
                };
                return UninitializedBody::Reject(Rejection::not_initialized().with_id(id));
            }
            Message::Notification {
                method: Method::Initialized,
            } => {
                initialized = true;
            }
            _ => {}
        }
    }
    UninitializedBody::Forward { initialized }
}

/// Whether a content type is JSON (`application/json`, any parameters, any case). A missing
/// content type is given the benefit of the doubt: the body check decides.
fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(value) = content_type else {
        return true;
    };
    // What clients send, compared at once (two words); any other spelling goes the long way.
    if value == b"application/json" {
        return true;
    }
    let media = value.split(|b| *b == b';').next().unwrap_or_default();
    media.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

/// The HTTP methods MCP's Streamable HTTP transport uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// POST: a JSON-RPC message.
    Post,
    /// GET: a server-to-client stream.
    Get,
    /// DELETE: end the session.
    Delete,
    /// Anything else: not session traffic.
    Other,
}

impl HttpMethod {
    /// The method named `method` (case-sensitive, as HTTP methods are).
    pub fn of(method: &[u8]) -> HttpMethod {
        match method {
            b"POST" => HttpMethod::Post,
            b"GET" => HttpMethod::Get,
            b"DELETE" => HttpMethod::Delete,
            _ => HttpMethod::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rejection::Reason;
    use crate::testkit::{live_record, T0};

    const ID: &str = "0000000100112233445566778899aabbccddeeff";

    fn cfg(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    fn head<'a>(
        method: &'a str,
        session: Option<&'a str>,
        version: Option<&'a str>,
    ) -> RequestHead<'a> {
        RequestHead {
            method: method.as_bytes(),
            path: b"/mcp",
            session_id: session.map(str::as_bytes),
            protocol_version: version.map(str::as_bytes),
            content_type: Some(b"application/json"),
            content_length: None,
            session_id_repeated: false,
            protocol_version_repeated: false,
            identity_repeated: false,
        }
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_on_the_headers() {
        let c = cfg(r#"{"max_body_bytes": 100}"#);
        for (length, want) in [
            (Some("101"), Err((413, Reason::Body))),
            (Some("100"), Ok(HeadVerdict::ReadSessionlessBody)),
            (
                Some("99999999999999999999999"),
                Ok(HeadVerdict::ReadSessionlessBody),
            ),
            (Some("x"), Ok(HeadVerdict::ReadSessionlessBody)),
            (None, Ok(HeadVerdict::ReadSessionlessBody)),
        ] {
            let mut h = head("POST", None, None);
            h.content_length = length.map(str::as_bytes);
            let got = on_request_headers(&c, &h);
            match want {
                Ok(v) => assert_eq!(got, v, "{length:?}"),
                Err(r) => assert_eq!(reason(&got), Some(r), "{length:?}"),
            }
        }
        let mut on_session = head("POST", Some(ID), None);
        on_session.content_length = Some(b"101");
        assert!(
            matches!(
                on_request_headers(&c, &on_session),
                HeadVerdict::Session { .. }
            ),
            "bodies on a session are not read, so not limited"
        );
    }

    #[test]
    fn a_repeated_session_or_identity_header_is_refused_before_any_lookup() {
        let plain = cfg("{}");
        let bound = cfg(r#"{"identity_header":"X-User"}"#);
        let mut h = head("POST", Some(ID), None);
        h.session_id_repeated = true;
        let got = on_request_headers(&plain, &h);
        assert_eq!(reason(&got), Some((400, Reason::Header)));
        let HeadVerdict::Reject(r) = got else {
            unreachable!()
        };
        assert_eq!(
            r.message,
            "Bad Request: Mcp-Session-Id header must be a single value"
        );

        let mut h = head("POST", None, None);
        h.identity_repeated = true;
        assert_eq!(
            on_request_headers(&plain, &h),
            HeadVerdict::ReadSessionlessBody,
            "no identity header configured: its repeats are not the filter's business"
        );
        let got = on_request_headers(&bound, &h);
        assert_eq!(reason(&got), Some((400, Reason::Header)));
        let HeadVerdict::Reject(r) = got else {
            unreachable!()
        };
        assert_eq!(
            r.message,
            "Bad Request: x-user header must be a single value"
        );

        let mut h = head("POST", Some(ID), Some("2026-07-28"));
        h.session_id_repeated = true;
        assert_eq!(
            on_request_headers(&plain, &h),
            HeadVerdict::Sessionless,
            "the sessionless era passes untouched"
        );
    }

    /// Found in review: the era was read from the first `MCP-Protocol-Version` of several, so
    /// `2026-07-28` then `2025-06-18` passed untouched as sessionless, to an upstream that
    /// may read the handshake era's version and serve the call without any session.
    #[test]
    fn a_repeated_protocol_version_is_refused_in_either_era() {
        let plain = cfg("{}");
        for (session, version) in [
            (None, "2026-07-28"),
            (Some(ID), "2025-06-18"),
            (None, "2025-11-25"),
        ] {
            let mut h = head("POST", session, Some(version));
            h.protocol_version_repeated = true;
            let got = on_request_headers(&plain, &h);
            assert_eq!(reason(&got), Some((400, Reason::Header)), "{version}");
            let HeadVerdict::Reject(r) = got else {
                unreachable!()
            };
            assert_eq!(
                r.message,
                "Bad Request: MCP-Protocol-Version header must be a single value"
            );
        }
    }

    fn reason(v: &HeadVerdict) -> Option<(u32, Reason)> {
        match v {
            HeadVerdict::Reject(r) => Some((r.status, r.reason)),
            _ => None,
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn header_decisions() {
        let c = cfg("{}");
        let cases: Vec<(&str, RequestHead<'_>, Result<HeadVerdict, (u32, Reason)>)> = vec![
            (
                "initialize-shaped POST",
                head("POST", None, None),
                Ok(HeadVerdict::ReadSessionlessBody),
            ),
            (
                "POST with a known version",
                head("POST", None, Some("2025-06-18")),
                Ok(HeadVerdict::ReadSessionlessBody),
            ),
            (
                "GET without session",
                head("GET", None, None),
                Err((400, Reason::Missing)),
            ),
            (
                "DELETE without session",
                head("DELETE", None, None),
                Err((400, Reason::Missing)),
            ),
            (
                "session request",
                head("POST", Some(ID), None),
                Ok(HeadVerdict::Session {
                    id: SessionId::parse(ID).unwrap(),
                }),
            ),
            (
                "malformed session",
                head("POST", Some("nope"), None),
                Err((404, Reason::Unknown)),
            ),
            (
                "empty session header: no session ID",
                head("GET", Some(""), None),
                Err((400, Reason::Missing)),
            ),
            (
                "sessionless era",
                head("POST", None, Some("2026-07-28")),
                Ok(HeadVerdict::Sessionless),
            ),
            (
                "sessionless era ignores session",
                head("DELETE", Some("junk"), Some("2026-07-28")),
                Ok(HeadVerdict::Sessionless),
            ),
            (
                "unknown version",
                head("POST", Some(ID), Some("2024-11-05")),
                Err((400, Reason::Version)),
            ),
            (
                "unknown version, no session",
                head("POST", None, Some("1.0")),
                Err((400, Reason::Version)),
            ),
            (
                "OPTIONS",
                head("OPTIONS", None, None),
                Ok(HeadVerdict::Ignore),
            ),
            ("PUT", head("PUT", None, None), Ok(HeadVerdict::Ignore)),
            (
                "lowercase method is not POST",
                head("post", None, None),
                Ok(HeadVerdict::Ignore),
            ),
        ];
        for (name, h, want) in cases {
            let got = on_request_headers(&c, &h);
            match want {
                Ok(v) => assert_eq!(got, v, "{name}"),
                Err(r) => assert_eq!(reason(&got), Some(r), "{name}: {got:?}"),
            }
        }
    }

    #[test]
    fn content_types() {
        let c = cfg("{}");
        for (ct, ok) in [
            (Some("application/json"), true),
            (Some("Application/JSON; charset=utf-8"), true),
            (None, true),
            (Some("text/plain"), false),
            (Some("application/json-seq"), false),
            (Some("multipart/form-data"), false),
        ] {
            let mut h = head("POST", None, None);
            h.content_type = ct.map(str::as_bytes);
            let got = on_request_headers(&c, &h);
            if ok {
                assert_eq!(got, HeadVerdict::ReadSessionlessBody, "{ct:?}");
            } else {
                assert_eq!(reason(&got), Some((415, Reason::Body)), "{ct:?}");
            }
        }
    }

    #[test]
    fn paths_stateless_and_delete_switches() {
        let only = cfg(r#"{"paths":["/mcp"]}"#);
        let mut h = head("GET", None, None);
        h.path = b"/health";
        assert_eq!(on_request_headers(&only, &h), HeadVerdict::Ignore);
        h.path = b"/mcp?x=1";
        assert_eq!(
            reason(&on_request_headers(&only, &h)),
            Some((400, Reason::Missing))
        );

        let stateless = cfg(r#"{"stateless":true}"#);
        assert_eq!(
            on_request_headers(&stateless, &head("GET", None, None)),
            HeadVerdict::Ignore
        );

        let no_delete = cfg(r#"{"allow_delete":false}"#);
        let got = on_request_headers(&no_delete, &head("DELETE", Some(ID), None));
        let HeadVerdict::Reject(r) = got else {
            panic!()
        };
        assert_eq!((r.status, r.reason), (405, Reason::Method));
        assert_eq!(r.headers, vec![("allow", "GET, POST")]);
    }

    #[test]
    fn sessionless_bodies() {
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        assert_eq!(
            on_sessionless_body(init),
            SessionlessBody::Initialize {
                id: serde_json::json!(1).into()
            }
        );
        let cases: Vec<(&[u8], u32, i64)> = vec![
            (
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                400,
                -32000,
            ),
            (
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                400,
                -32000,
            ),
            (br#"{"jsonrpc":"2.0","method":"initialize"}"#, 400, -32000),
            (
                br#"[{"jsonrpc":"2.0","id":1,"method":"initialize"}]"#,
                400,
                -32600,
            ),
            (
                br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
                400,
                -32000,
            ),
            (b"{oops", 400, -32700),
            (b"", 400, -32700),
            (b"17", 400, -32600),
        ];
        for (body, status, code) in cases {
            let SessionlessBody::Reject(r) = on_sessionless_body(body) else {
                panic!("{:?} accepted", String::from_utf8_lossy(body));
            };
            assert_eq!(
                (r.status, r.code),
                (status, code),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let SessionlessBody::Reject(r) =
            on_sessionless_body(br#"{"id":"q","method":"tools/list"}"#)
        else {
            panic!()
        };
        assert_eq!(
            r.id,
            serde_json::json!("q").into(),
            "the request id is echoed"
        );
    }

    #[test]
    fn uninitialized_sessions_accept_only_ping_and_notifications() {
        let record = Record {
            initialized: false,
            ..live_record([0; 16], T0)
        };
        let c = cfg("{}");
        assert_eq!(
            on_session(&c, HttpMethod::Post, &record),
            SessionVerdict::ReadUninitializedBody
        );
        assert_eq!(
            on_session(&c, HttpMethod::Get, &record),
            SessionVerdict::Forward
        );
        assert_eq!(
            on_session(&c, HttpMethod::Delete, &record),
            SessionVerdict::End
        );
        let lax = cfg(r#"{"enforce_initialized":false}"#);
        assert_eq!(
            on_session(&lax, HttpMethod::Post, &record),
            SessionVerdict::Forward
        );
        let mut done = record.clone();
        done.initialized = true;
        assert_eq!(
            on_session(&c, HttpMethod::Post, &done),
            SessionVerdict::Forward
        );

        let cases: Vec<(&[u8], UninitializedBody)> = vec![
            (
                br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                UninitializedBody::Forward { initialized: true },
            ),
            (
                br#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
                UninitializedBody::Forward { initialized: false },
            ),
            (
                br#"{"jsonrpc":"2.0","method":"notifications/cancelled"}"#,
                UninitializedBody::Forward { initialized: false },
            ),
            (
                br#"{"jsonrpc":"2.0","id":5,"result":{}}"#,
                UninitializedBody::Forward { initialized: false },
            ),
            (
                b"garbage",
                UninitializedBody::Forward { initialized: false },
            ),
            (
                br#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#,
                UninitializedBody::Reject(
                    Rejection::not_initialized().with_id(serde_json::json!(5).into()),
                ),
            ),
            (
                br#"[{"method":"notifications/initialized"},{"id":1,"method":"tools/list"}]"#,
                UninitializedBody::Reject(Rejection::not_initialized()),
            ),
            (
                br#"[{"method":"notifications/initialized"},{"id":1,"method":"ping"}]"#,
                UninitializedBody::Forward { initialized: true },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                on_uninitialized_body(body),
                want,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
