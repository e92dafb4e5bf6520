//! What the operator typed, checked: etcd endpoints, the key prefix, durations, a session's
//! handle, and a caller identity hashed exactly as the filter hashes it. Pure functions.

use mcp_session_core::config::{Config, StoreConfig};
use mcp_session_core::record::{identity_digest, identity_of_parts, DIGEST_LEN};
use std::time::Duration;

/// Where etcd is when neither `--endpoints` nor `ETCDCTL_ENDPOINTS` says (etcdctl's default).
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// Hex characters of a session's handle (`SessionId::handle`).
pub const HANDLE_LEN: usize = 16;

/// Hex characters of a session's digest, the end of its etcd key (`SessionId::digest`).
pub const KEY_DIGEST_LEN: usize = 32;

/// Bad input: the message says what was wrong and what would be right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad<T>(message: impl Into<String>) -> Result<T, BadInput> {
    Err(BadInput(message.into()))
}

/// The filter's own default `store.etcd.prefix`: the prefix a configuration that names none
/// gets, read from core's configuration parser so the two never differ.
pub fn default_prefix() -> Result<String, BadInput> {
    match Config::parse(br#"{"store":{"etcd":{"cluster":"etcd"}}}"#) {
        Ok(Config {
            store: StoreConfig::Etcd(etcd),
            ..
        }) => Ok(etcd.prefix),
        Ok(_) => bad("core's configuration has no etcd store"),
        Err(e) => bad(format!("core's default configuration is refused: {e}")),
    }
}

/// The key prefix: as the filter's `store.etcd.prefix` (not empty).
pub fn prefix(value: &str) -> Result<String, BadInput> {
    if value.is_empty() {
        return bad("--prefix: must not be empty (the filter refuses an empty store.etcd.prefix)");
    }
    Ok(value.to_owned())
}

/// etcd endpoints in etcdctl's format (`--endpoints`, `ETCDCTL_ENDPOINTS`): comma-separated
/// `host:port` or `http://host:port` (an IPv6 host in brackets), as URLs for the client.
pub fn endpoints(value: &str) -> Result<Vec<String>, BadInput> {
    let mut out = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        out.push(endpoint(entry)?);
    }
    if out.is_empty() {
        return bad(format!(
            "--endpoints: no endpoint in {value:?} (expected host:port[,host:port...], e.g. 127.0.0.1:2379)"
        ));
    }
    Ok(out)
}

fn endpoint(entry: &str) -> Result<String, BadInput> {
    let refuse = |why: &str| {
        bad(format!(
            "--endpoints: {entry:?} {why} (expected host:port or http://host:port)"
        ))
    };
    if entry.starts_with("https://")
        || entry.starts_with("unix://")
        || entry.starts_with("unixs://")
    {
        return refuse(
            "is not supported: this build speaks plain HTTP/2 (no TLS, no unix sockets)",
        );
    }
    let authority = entry.strip_prefix("http://").unwrap_or(entry);
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains("://") {
        return refuse("has an unknown scheme");
    }
    if authority.contains('/') || authority.contains('@') || authority.contains('?') {
        return refuse("must be a host and a port only");
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return refuse("has no port");
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    if !host_ok {
        return refuse("has no valid host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(format!("http://{host}:{p}")),
        _ => refuse("has no valid port (1 to 65535)"),
    }
}

/// A duration of one unit (`5s`, `500ms`, `2m`, `1h`, `1.5s`), or a number of seconds: 1 ms
/// to 1 h.
pub fn duration(value: &str) -> Result<Duration, BadInput> {
    let value = value.trim();
    let (number, unit_ms) = if let Some(n) = value.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = value.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (value, 1000.0)
    };
    match number.trim().parse::<f64>() {
        // Review: 1h was refused by a message that offered it, and 0.0001ms taken as 0 s.
        Ok(n) if n.is_finite() && n * unit_ms >= 1.0 && n * unit_ms <= 3_600_000.0 => {
            Ok(Duration::from_secs_f64(n * unit_ms / 1000.0))
        }
        _ => bad(format!(
            "--timeout: {value:?} is not a duration from 1ms to 1h (e.g. 5s, 500ms, 2m)"
        )),
    }
}

/// A duration as `duration` reads it back (`5s`, `500ms`).
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A session's handle as access logs show it: 16 hex characters (or the 32 of the whole key
/// digest, which begins with it); upper case is taken as lower case.
pub fn handle(value: &str) -> Result<String, BadInput> {
    let lower = value.trim().to_ascii_lowercase();
    if (lower.len() == HANDLE_LEN || lower.len() == KEY_DIGEST_LEN)
        && lower.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Ok(lower);
    }
    bad(format!(
        "--handle: the value given ({} characters, not repeated here: it may be a session ID) is not a session handle (16 hex characters, as the access logs and `mcp-sessions list` show, or the 32 of the whole digest)",
        value.chars().count()
    ))
}

/// Whose sessions: one of the filter's identity sources, with the caller's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An identity digest as `list` and `count --by-identity` show it (32 hex).
    Digest(String),
    /// `identity_header`: the header's value.
    Header(String),
    /// `identity_jwt`: the claims' values, in the configured order.
    Claims(Vec<String>),
    /// `identity_peer`: the certificate attribute's value.
    Peer(String),
}

impl Identity {
    /// The identity digest the filter stores for this caller, in hex (32 characters): SHA-256
    /// of the header's raw value, or of the claims' or the attribute's values each
    /// length-prefixed (`record::identity_of_parts`), as `exchange::read_identity` builds it.
    pub fn digest_hex(&self) -> Result<String, BadInput> {
        let value = match self {
            Identity::Digest(hex) => {
                let lower = hex.trim().to_ascii_lowercase();
                if lower.len() != 2 * DIGEST_LEN || !lower.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return bad(format!(
                        "--identity: the value given ({} characters, not repeated here: it may be a credential) is not an identity digest (32 hex characters, as `mcp-sessions list` shows); \
                         give the caller's value with --header, --claim or --peer instead",
                        hex.chars().count()
                    ));
                }
                return Ok(lower);
            }
            Identity::Header(value) => {
                if value.is_empty() {
                    return bad("--header: an empty value is no identity (the filter binds no session to it)");
                }
                value.as_bytes().to_vec()
            }
            Identity::Claims(values) => {
                if values.is_empty() {
                    return bad("--claim: give the value of every configured claim, in the configured order");
                }
                match identity_of_parts(values.iter().map(Some)) {
                    Some(value) => value,
                    None => return bad("--claim: an empty claim is no identity (the filter binds no session to it)"),
                }
            }
            Identity::Peer(value) => {
                match identity_of_parts([Some(value)]) {
                    Some(value) => value,
                    None => return bad(
                        "--peer: an empty value is no identity (the filter binds no session to it)",
                    ),
                }
            }
        };
        Ok(hex(&identity_digest(Some(&value))))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_session_core::config::JWT_AUTHN;
    use mcp_session_core::driver::Worker;
    use mcp_session_core::record::Record;
    use mcp_session_core::store::etcd::proto;
    use mcp_session_core::testkit::{Envoy, FakeHost, Process, Request, Response, T0};
    use prost::Message;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn durations_from_one_millisecond_to_one_hour() {
        for (text, ms) in [
            ("500ms", 500),
            ("5s", 5_000),
            ("1.5s", 1_500),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("7", 7_000),
            ("1ms", 1),
        ] {
            assert_eq!(duration(text).map(|d| d.as_millis()), Ok(ms), "{text}");
        }
        for text in ["0.0001ms", "0s", "-1s", "61m", "2h", "1m30s", "soon", ""] {
            assert!(duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn the_default_prefix_is_the_filters() {
        assert_eq!(default_prefix().unwrap(), "mcp-sessions/");
    }

    #[test]
    fn endpoints_read_as_etcdctl_writes_them() {
        assert_eq!(
            endpoints("127.0.0.11:2379,127.0.0.12:2379, http://127.0.0.13:2379/").unwrap(),
            vec![
                "http://127.0.0.11:2379",
                "http://127.0.0.12:2379",
                "http://127.0.0.13:2379"
            ]
        );
        assert_eq!(
            endpoints("etcd-0.etcd:2379").unwrap(),
            vec!["http://etcd-0.etcd:2379"]
        );
        assert_eq!(endpoints("[::1]:2379").unwrap(), vec!["http://[::1]:2379"]);
        assert_eq!(
            endpoints("localhost:2379,").unwrap(),
            vec!["http://localhost:2379"]
        );
        for (input, says) in [
            ("", "no endpoint"),
            (" , ", "no endpoint"),
            ("127.0.0.1", "has no port"),
            ("127.0.0.1:", "no valid port"),
            ("127.0.0.1:0", "no valid port"),
            ("127.0.0.1:99999", "no valid port"),
            ("127.0.0.1:http", "no valid port"),
            (":2379", "no valid host"),
            ("[::1:2379", "no valid host"),
            ("https://127.0.0.1:2379", "no TLS"),
            ("unix://etcd.sock", "no unix sockets"),
            ("grpc://127.0.0.1:2379", "unknown scheme"),
            ("127.0.0.1:2379/v3", "host and a port only"),
            ("user@127.0.0.1:2379", "host and a port only"),
            ("bad host:2379", "no valid host"),
        ] {
            let error = endpoints(input).unwrap_err().0;
            assert!(error.contains(says), "{input:?}: {error}");
            assert!(error.starts_with("--endpoints: "), "{error}");
        }
    }

    #[test]
    fn durations_read_as_etcdctl_writes_them() {
        assert_eq!(duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(duration("3").unwrap(), Duration::from_secs(3));
        for input in ["", "0", "-1s", "abc", "5h", "2h", "61m", "NaNs", "infs"] {
            assert!(duration(input).is_err(), "{input:?}");
        }
        for text in ["5s", "500ms", "1500ms", "120s"] {
            assert_eq!(show_duration(duration(text).unwrap()), text);
        }
    }

    #[test]
    fn handles_are_16_or_32_hex_characters() {
        assert_eq!(handle("0123456789abcdef").unwrap(), "0123456789abcdef");
        assert_eq!(handle("0123456789ABCDEF").unwrap(), "0123456789abcdef");
        assert_eq!(handle(&"a".repeat(32)).unwrap(), "a".repeat(32));
        for input in [
            "",
            "0123",
            "0123456789abcdeg",
            &"a".repeat(17),
            &"a".repeat(40),
        ] {
            let error = handle(input).unwrap_err().0;
            assert!(error.contains("not a session handle"), "{error}");
        }
    }

    const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"u","version":"1"}}}"#;
    const JWT: [&str; 4] = ["metadata", "filter_metadata", JWT_AUTHN, "jwt_payload"];

    /// The identity digest (hex) in the value the filter itself writes to etcd for an
    /// `initialize` that carries `headers` and `attributes`: the request goes through core's
    /// driver and request machine (the test kit's Envoy), whose etcd calls are answered here.
    fn written_by_the_filter(
        identity: &str,
        headers: &[(&str, &str)],
        attributes: &[(Vec<&str>, &str)],
    ) -> Option<String> {
        let config = format!(r#"{{{identity}, "store": {{"etcd": {{"cluster": "etcd"}}}}}}"#);
        let process = Process::new(T0);
        let worker = Worker::new(FakeHost::new(&process, 1), config.as_bytes()).unwrap();
        let values: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
        let seen = Rc::clone(&values);
        let mut envoy = Envoy::new(&worker);
        envoy.etcd = Some(Box::new(move |call| match call.method {
            "LeaseGrant" => (
                0,
                Some(
                    proto::LeaseGrantResponse {
                        id: 7,
                        ttl: 600,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
            ),
            "Txn" => {
                let txn = proto::TxnRequest::decode(call.message.as_slice()).unwrap();
                for op in txn.success {
                    if let Some(proto::request_op::Request::Put(put)) = op.request {
                        seen.borrow_mut().push(put.value);
                    }
                }
                let answer = proto::TxnResponse {
                    header: Some(proto::ResponseHeader { revision: 2 }),
                    succeeded: true,
                    responses: Vec::new(),
                };
                (0, Some(answer.encode_to_vec()))
            }
            _ => (14, None),
        }));
        let mut request = Request::post(INITIALIZE, headers);
        for (path, value) in attributes {
            request.attributes.set(path, value.as_bytes());
        }
        let response = envoy.send(request, &mut |_| {
            Response::upstream(200, &[("content-type", "application/json")], RESULT)
        });
        assert_eq!(response.status, 200, "{response:?}");
        let values = values.borrow();
        let value = values.first().expect("the session was written to etcd");
        let record = Record::decode(value).unwrap();
        record.identity.map(|d| hex(&d))
    }

    fn claim(name: &str) -> Vec<&str> {
        let mut path = JWT.to_vec();
        path.push(name);
        path
    }

    #[test]
    fn identities_hash_as_the_filter_hashes_them() {
        let header = Identity::Header("alice".into()).digest_hex().unwrap();
        assert_eq!(
            written_by_the_filter(
                r#""identity_header": "x-user""#,
                &[("x-user", "alice")],
                &[]
            ),
            Some(header.clone())
        );
        let claims = Identity::Claims(vec!["https://idp".into(), "alice".into()])
            .digest_hex()
            .unwrap();
        assert_eq!(
            written_by_the_filter(
                r#""identity_jwt": {"metadata_key": "jwt_payload"}"#,
                &[],
                &[(claim("sub"), "alice"), (claim("iss"), "https://idp")],
            ),
            Some(claims.clone())
        );
        let san = "spiffe://example.org/ns/a/sa/alice";
        let peer = Identity::Peer(san.into()).digest_hex().unwrap();
        assert_eq!(
            written_by_the_filter(
                r#""identity_peer": "uri_san""#,
                &[],
                &[(vec!["connection", "uri_san_peer_certificate"], san)],
            ),
            Some(peer.clone())
        );
        // Three sources, three callers; the claims' order matters; a digest is taken as is.
        assert_ne!(header, peer);
        assert_ne!(
            Identity::Claims(vec!["alice".into()]).digest_hex().unwrap(),
            header
        );
        assert_ne!(
            Identity::Claims(vec!["alice".into(), "https://idp".into()])
                .digest_hex()
                .unwrap(),
            claims
        );
        assert_eq!(
            Identity::Digest(header.to_uppercase())
                .digest_hex()
                .unwrap(),
            header
        );
        assert_eq!(header.len(), 32);
    }

    #[test]
    fn empty_or_malformed_identities_are_refused() {
        for (identity, says) in [
            (Identity::Header(String::new()), "--header: an empty value"),
            (Identity::Peer(String::new()), "--peer: an empty value"),
            (Identity::Claims(vec![]), "--claim: give the value"),
            (
                Identity::Claims(vec!["a".into(), String::new()]),
                "--claim: an empty claim",
            ),
            (
                Identity::Digest("abc".into()),
                "--identity: the value given (3 characters",
            ),
            (
                Identity::Digest("g".repeat(32)),
                "is not an identity digest",
            ),
        ] {
            let error = identity.digest_hex().unwrap_err().0;
            assert!(error.contains(says), "{identity:?}: {error}");
        }
        // Review: a mistyped argument was echoed, and it may be a credential or a session ID.
        let secret = "Bearer eyJhbGciOiJIUzI1NiJ9.secret";
        let error = Identity::Digest(secret.into()).digest_hex().unwrap_err().0;
        assert!(!error.contains("secret"), "{error}");
        let id = "0000002a6b1f9c0e4d3a2b1c0f9e8d7c6b5a4f3e";
        let error = handle(id).unwrap_err().0;
        assert!(
            !error.contains(id) && error.contains("40 characters"),
            "{error}"
        );
    }
}
