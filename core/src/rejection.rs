//! Every way the filter refuses a request: the HTTP status, the JSON-RPC error it answers
//! with, and the stat that counts it. One table, so status, body and counter cannot drift.

use crate::message::RequestId;
use crate::protocol;

/// Why a request was refused; each reason has its own counter
/// (`mcp_session.rejected.<reason>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No `Mcp-Session-Id` where one is required.
    Missing,
    /// The session ID is unknown, expired, ended, malformed or another caller's.
    Unknown,
    /// `max_sessions` live sessions already.
    Capacity,
    /// An `MCP-Protocol-Version` the filter does not know.
    Version,
    /// A request before `notifications/initialized`.
    Lifecycle,
    /// A sessionless body that is too large, not JSON, not JSON-RPC, a batch with
    /// `initialize`, or of another content type.
    Body,
    /// DELETE while `allow_delete` is false.
    Method,
    /// A header that must appear once (`Mcp-Session-Id`, the identity header) appears twice.
    Header,
    /// The configured caller identity (a verified JWT's claims, the TLS peer certificate, the
    /// identity header) is missing.
    Identity,
    /// The session store (etcd) cannot answer.
    Unavailable,
    /// The caller holds `max_sessions_per_identity` live sessions already.
    IdentityLimit,
}

impl Reason {
    /// Every reason, for defining the counters.
    pub const ALL: [Reason; 11] = [
        Reason::Missing,
        Reason::Unknown,
        Reason::Capacity,
        Reason::Version,
        Reason::Lifecycle,
        Reason::Body,
        Reason::Method,
        Reason::Header,
        Reason::Identity,
        Reason::Unavailable,
        Reason::IdentityLimit,
    ];

    /// The last part of the counter's name.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Unknown => "unknown",
            Reason::Capacity => "capacity",
            Reason::Version => "version",
            Reason::Lifecycle => "lifecycle",
            Reason::Body => "body",
            Reason::Method => "method",
            Reason::Header => "header",
            Reason::Identity => "identity",
            Reason::Unavailable => "unavailable",
            Reason::IdentityLimit => "identity_limit",
        }
    }
}

/// JSON-RPC error codes used in rejections (the TypeScript SDK's choices).
pub mod code {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Valid JSON that is not an acceptable request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Generic transport-level bad request.
    pub const BAD_REQUEST: i64 = -32000;
    /// Session not found.
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// JSON-RPC 2.0: internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
}

/// The status and JSON-RPC error body of a request the filter itself failed on (a panic caught
/// at a native module's boundary). Not a [`Reason`]: it is counted in `mcp_session.panics`.
pub fn internal_error() -> (u32, Vec<u8>) {
    let rejection = Rejection::new(
        500,
        code::INTERNAL_ERROR,
        "Internal error: the session filter failed on this request",
        Reason::Unavailable,
    );
    (rejection.status, rejection.body())
}

/// A refusal, ready to be sent as a local reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// HTTP status.
    pub status: u32,
    /// JSON-RPC error code.
    pub code: i64,
    /// JSON-RPC error message.
    pub message: String,
    /// The request id to echo, or null.
    pub id: RequestId,
    /// The counter it increments.
    pub reason: Reason,
    /// Extra response headers (e.g. `allow` on a 405).
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Rejection {
    fn new(status: u32, code: i64, message: impl Into<String>, reason: Reason) -> Rejection {
        Rejection {
            status,
            code,
            message: message.into(),
            id: RequestId::null(),
            reason,
            headers: Vec::new(),
        }
    }

    /// Echo this request id in the error body.
    pub fn with_id(mut self, id: RequestId) -> Rejection {
        self.id = id;
        self
    }

    /// 503: the session store cannot answer now; never a 404, which would send the client
    /// into a new `initialize` for a session that may well be alive.
    pub fn unavailable() -> Rejection {
        let mut rejection = Rejection::new(
            503,
            code::BAD_REQUEST,
            "Service Unavailable: the session store cannot be reached; retry shortly",
            Reason::Unavailable,
        );
        rejection.headers.push(("retry-after", "1"));
        rejection
    }

    /// 400: the session header is required here.
    pub fn missing_session() -> Rejection {
        Rejection::new(
            400,
            code::BAD_REQUEST,
            "Bad Request: Mcp-Session-Id header is required",
            Reason::Missing,
        )
    }

    /// 400: a header the filter decides on appears more than once, so the filter and the
    /// upstream could read different values. `name` is how the header is spelled in the message.
    pub fn repeated_header(name: &str) -> Rejection {
        Rejection::new(
            400,
            code::BAD_REQUEST,
            format!("Bad Request: {name} header must be a single value"),
            Reason::Header,
        )
    }

    /// 404: the same answer for every session the caller cannot use.
    pub fn session_not_found() -> Rejection {
        Rejection::new(
            404,
            code::SESSION_NOT_FOUND,
            "Session not found",
            Reason::Unknown,
        )
    }

    /// 503: the store is full.
    pub fn capacity() -> Rejection {
        Rejection::new(
            503,
            code::BAD_REQUEST,
            "Service Unavailable: too many open sessions",
            Reason::Capacity,
        )
    }

    /// 429: the caller holds `max_sessions_per_identity` live sessions already; one of them
    /// must end (DELETE, or idle expiry) first.
    pub fn identity_limit() -> Rejection {
        let mut rejection = Rejection::new(
            429,
            code::BAD_REQUEST,
            "Too Many Requests: this caller holds too many open sessions",
            Reason::IdentityLimit,
        );
        rejection.headers.push(("retry-after", "60"));
        rejection
    }

    /// 400: unsupported `MCP-Protocol-Version`. The header's value is not echoed.
    pub fn unsupported_version() -> Rejection {
        Rejection::new(
            400,
            code::BAD_REQUEST,
            format!(
                "Bad Request: Unsupported protocol version (supported versions: {})",
                protocol::HANDSHAKE_REVISIONS.join(", ")
            ),
            Reason::Version,
        )
    }

    /// 400: a request other than ping before the handshake finished.
    pub fn not_initialized() -> Rejection {
        Rejection::new(
            400,
            code::BAD_REQUEST,
            "Bad Request: Session not initialized: send notifications/initialized first",
            Reason::Lifecycle,
        )
    }

    /// 413: sessionless body over `max_body_bytes`.
    pub fn body_too_large(limit: usize) -> Rejection {
        Rejection::new(
            413,
            code::BAD_REQUEST,
            format!("Payload Too Large: request body exceeds {limit} bytes"),
            Reason::Body,
        )
    }

    /// 400 -32700: not JSON.
    pub fn parse_error() -> Rejection {
        Rejection::new(
            400,
            code::PARSE_ERROR,
            "Parse error: request body is not valid JSON",
            Reason::Body,
        )
    }

    /// 400 -32600: JSON, but not JSON-RPC.
    pub fn not_json_rpc() -> Rejection {
        Rejection::new(
            400,
            code::INVALID_REQUEST,
            "Invalid Request: body is not a JSON-RPC message",
            Reason::Body,
        )
    }

    /// 400 -32600: `initialize` inside a batch.
    pub fn initialize_in_batch() -> Rejection {
        Rejection::new(
            400,
            code::INVALID_REQUEST,
            "Invalid Request: initialize must not be part of a JSON-RPC batch",
            Reason::Body,
        )
    }

    /// 415: a sessionless POST that is not JSON.
    pub fn unsupported_media_type() -> Rejection {
        Rejection::new(
            415,
            code::BAD_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
            Reason::Body,
        )
    }

    /// 405: clients may not end sessions.
    pub fn delete_not_allowed() -> Rejection {
        let mut r = Rejection::new(
            405,
            code::BAD_REQUEST,
            "Method Not Allowed: sessions cannot be ended by the client",
            Reason::Method,
        );
        r.headers.push(("allow", "GET, POST"));
        r
    }

    /// 401: no verified caller identity on an `initialize`, while sessions are bound to one.
    pub fn no_identity() -> Rejection {
        Rejection::new(
            401,
            code::BAD_REQUEST,
            "Unauthorized: no verified caller identity",
            Reason::Identity,
        )
    }

    /// 404, the same answer as [`Rejection::session_not_found`], for a request on a session
    /// that comes without the caller identity sessions are bound to: the caller learns nothing
    /// more than from an unknown session, the operator counts it apart.
    pub fn identity_not_found() -> Rejection {
        Rejection {
            reason: Reason::Identity,
            ..Rejection::session_not_found()
        }
    }

    /// The JSON-RPC 2.0 error body, members in the order the spec lists them; the id as the
    /// client wrote it.
    pub fn body(&self) -> Vec<u8> {
        // Serialising a string cannot fail; an empty message would still be better than a
        // panic.
        let message = serde_json::to_string(&self.message).unwrap_or_default();
        format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":{},"message":{}}},"id":{}}}"#,
            self.code,
            message,
            self.id.as_json()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn an_internal_error_is_a_json_rpc_500() {
        let (status, body) = internal_error();
        assert_eq!(status, 500);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], -32603);
        assert_eq!(body["id"], Value::Null);
    }

    #[test]
    fn every_rejection_has_a_json_rpc_body() {
        let all = [
            Rejection::missing_session(),
            Rejection::session_not_found(),
            Rejection::capacity(),
            Rejection::unsupported_version(),
            Rejection::not_initialized(),
            Rejection::body_too_large(10),
            Rejection::parse_error(),
            Rejection::not_json_rpc(),
            Rejection::initialize_in_batch(),
            Rejection::unsupported_media_type(),
            Rejection::delete_not_allowed(),
            Rejection::no_identity(),
            Rejection::identity_not_found(),
        ];
        for r in all {
            let body: Value = serde_json::from_slice(&r.body()).unwrap();
            assert_eq!(body["jsonrpc"], "2.0");
            assert_eq!(body["error"]["code"], r.code);
            assert_eq!(body["error"]["message"], r.message.as_str());
            assert!(body["id"].is_null());
            assert!((400..600).contains(&r.status));
        }
    }

    #[test]
    fn body_reads_like_the_spec() {
        let text = String::from_utf8(Rejection::session_not_found().body()).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","error":{"code":-32001,"message":"Session not found"},"id":null}"#
        );
    }

    #[test]
    fn echoes_the_request_id() {
        let r = Rejection::not_initialized().with_id(serde_json::json!("abc").into());
        let body: Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(body["id"], "abc");
    }

    #[test]
    fn echoes_an_id_no_float_can_hold_byte_for_byte() {
        for raw in [
            "1e400",
            "123456789012345678901234567890",
            "0.1000000000000000055511151231257827",
            "-0",
            r#""a\u0000b""#,
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{raw},"method":"tools/list"}}"#);
            let parsed = crate::message::parse_body(body.as_bytes()).unwrap();
            let text = String::from_utf8(
                Rejection::missing_session()
                    .with_id(parsed.reply_id())
                    .body(),
            )
            .unwrap();
            assert!(text.ends_with(&format!(r#","id":{raw}}}"#)), "{text}");
        }
    }

    #[test]
    fn a_missing_identity_on_a_session_reads_like_an_unknown_session() {
        let (a, b) = (
            Rejection::identity_not_found(),
            Rejection::session_not_found(),
        );
        assert_eq!(
            (a.status, a.body(), a.headers),
            (b.status, b.body(), b.headers)
        );
        assert_ne!(a.reason, b.reason);
    }

    #[test]
    fn reason_names_are_distinct() {
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }
}
