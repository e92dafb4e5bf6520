//! Plugin configuration, in two stages: serde reads the JSON into [`RawConfig`] (defaults,
//! unknown keys refused), then [`Config::try_from`] checks ranges and builds what the filter
//! uses. Envoy refuses a configuration that fails either stage, with a log line that names the
//! key, so a typo never runs silently with defaults.

use crate::headers::{SESSION_HEADER, VERSION_HEADER};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// The configuration as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Request paths (query ignored, compared in normal form: see [`Config::guards`]) the
    /// filter guards; absent: every path.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// A session unused this long is ended.
    #[serde(default = "defaults::idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// Absolute limit from creation; 0 = none.
    #[serde(default = "defaults::max_lifetime_seconds")]
    pub max_lifetime_seconds: u64,
    /// Live sessions per Envoy; an initialize beyond it gets 503.
    #[serde(default = "defaults::max_sessions")]
    pub max_sessions: u32,
    /// Largest sessionless body inspected; larger gets 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Request header whose value binds the session to a caller.
    #[serde(default)]
    pub identity_header: Option<String>,
    /// Claims of the JWT that Envoy's `jwt_authn` verified, which bind the session.
    #[serde(default)]
    pub identity_jwt: Option<RawIdentityJwt>,
    /// The field of the downstream TLS peer certificate that binds the session:
    /// `uri_san`, `subject` or `sha256`.
    #[serde(default)]
    pub identity_peer: Option<String>,
    /// false: DELETE answers 405.
    #[serde(default = "defaults::yes")]
    pub allow_delete: bool,
    /// Before `notifications/initialized`, only `ping` passes on a session.
    #[serde(default = "defaults::yes")]
    pub enforce_initialized: bool,
    /// Mint nothing, validate nothing, pass everything through.
    #[serde(default)]
    pub stateless: bool,
    /// Where sessions are kept; absent: this Envoy's shared data.
    #[serde(default)]
    pub store: Option<RawStore>,
    /// Request header that carries the upstream host which answered the session's
    /// `initialize`, for `envoy.load_balancing_policies.override_host`.
    #[serde(default)]
    pub affinity_header: Option<String>,
    /// Expose each request's session handle, caller identity digest and outcome to access logs
    /// and traces (filter state `wasm.mcp_session_{handle,identity,outcome}`).
    #[serde(default)]
    pub session_facts: bool,
    /// Most live sessions one caller identity may hold; needs an identity key.
    #[serde(default)]
    pub max_sessions_per_identity: Option<u32>,
    /// The native module's session table: configurations naming the same table share its
    /// sessions. The Wasm build keeps sessions per `vm_id` and ignores it.
    #[serde(default)]
    pub table: Option<String>,
}

/// `store` as written: one backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// etcd v3, reached over gRPC through an Envoy cluster.
    pub etcd: RawEtcd,
}

/// `store.etcd` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    /// The Envoy cluster (HTTP/2) that reaches the etcd members.
    pub cluster: String,
    /// Key prefix of the session records.
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
    /// Deadline of one call to etcd.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// What to do when etcd cannot answer: `reject` (503) or `local`.
    #[serde(default = "defaults::unavailable")]
    pub unavailable: String,
}

/// Where sessions are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// This Envoy's shared data (one Envoy).
    Local,
    /// etcd (every Envoy of a fleet).
    Etcd(EtcdConfig),
}

/// The etcd store's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Envoy cluster name.
    pub cluster: String,
    /// Key prefix.
    pub prefix: String,
    /// Deadline of one call, ms.
    pub timeout_ms: u64,
    /// When etcd cannot answer: serve from this Envoy's memory (`true`) or refuse with 503.
    pub fall_back_to_local: bool,
}

/// `identity_jwt` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentityJwt {
    /// `jwt_authn`'s `payload_in_metadata` name (Istio writes `payload`).
    pub metadata_key: String,
    /// The claims that together are the caller.
    #[serde(default = "defaults::claims")]
    pub claims: Vec<String>,
}

/// Where the caller identity a session is bound to comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A request header (trusted only where the proxy sets it and strips the client's).
    Header(String),
    /// Claims of the JWT `jwt_authn` verified, from its dynamic metadata.
    Jwt {
        /// `payload_in_metadata` name.
        metadata_key: String,
        /// Claims, all required.
        claims: Vec<String>,
    },
    /// The downstream TLS peer certificate.
    Peer(PeerField),
}

/// Which part of the TLS peer certificate identifies the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerField {
    /// The first URI SAN (a SPIFFE ID in a mesh).
    UriSan,
    /// The subject.
    Subject,
    /// The SHA-256 digest of the whole certificate.
    Sha256,
}

/// The metadata namespace of Envoy's `jwt_authn` filter.
pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";

impl IdentitySource {
    /// The host attributes whose values, together, are the caller (none for a header).
    pub fn attributes(&self) -> Vec<Vec<&str>> {
        match self {
            IdentitySource::Header(_) => Vec::new(),
            IdentitySource::Jwt {
                metadata_key,
                claims,
            } => claims
                .iter()
                .map(|claim| {
                    vec![
                        "metadata",
                        "filter_metadata",
                        JWT_AUTHN,
                        metadata_key.as_str(),
                        claim.as_str(),
                    ]
                })
                .collect(),
            IdentitySource::Peer(field) => vec![vec![
                "connection",
                match field {
                    PeerField::UriSan => "uri_san_peer_certificate",
                    PeerField::Subject => "subject_peer_certificate",
                    PeerField::Sha256 => "sha256_peer_certificate_digest",
                },
            ]],
        }
    }
}

mod defaults {
    pub fn claims() -> Vec<String> {
        vec!["iss".into(), "sub".into()]
    }
    pub fn idle_timeout_seconds() -> u64 {
        1800
    }
    pub fn max_lifetime_seconds() -> u64 {
        86_400
    }
    pub fn max_sessions() -> u32 {
        10_000
    }
    pub fn max_body_bytes() -> u64 {
        4 * 1024 * 1024
    }
    pub fn yes() -> bool {
        true
    }
    pub fn prefix() -> String {
        "mcp-sessions/".into()
    }
    pub fn timeout_ms() -> u64 {
        1000
    }
    pub fn unavailable() -> String {
        "reject".into()
    }
}

/// Upper bounds that keep arithmetic and memory sane; generous for any real deployment.
const MAX_TIMEOUT_SECONDS: u64 = 365 * 24 * 3600;
const MAX_SESSIONS_LIMIT: u32 = 10_000_000;
const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// The validated configuration the filter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Guarded paths; `None` guards every path.
    pub paths: Option<Vec<String>>,
    /// The normal form of each of `paths` ([`normal_path`]), what a request's is compared with.
    normal_paths: Vec<Vec<u8>>,
    /// Idle timeout in milliseconds.
    pub idle_timeout_ms: u64,
    /// Absolute lifetime in milliseconds; 0 = none.
    pub max_lifetime_ms: u64,
    /// Capacity of the session store.
    pub max_sessions: u32,
    /// Largest sessionless body read, in bytes.
    pub max_body_bytes: usize,
    /// Where the caller identity sessions are bound to comes from; `None`: not bound.
    pub identity: Option<IdentitySource>,
    /// Whether clients may end sessions with DELETE.
    pub allow_delete: bool,
    /// Whether to hold requests until `notifications/initialized`.
    pub enforce_initialized: bool,
    /// Pass-through mode.
    pub stateless: bool,
    /// Where sessions are kept.
    pub store: StoreConfig,
    /// Request header set to the upstream host that answered `initialize` (lowercase).
    pub affinity_header: Option<String>,
    /// Expose session facts (handle, identity digest, outcome) to access logs.
    pub session_facts: bool,
    /// Most live sessions per caller identity (only with an identity key).
    pub max_sessions_per_identity: Option<u32>,
    /// The native module's session table (`"default"` unless named).
    pub table: String,
}

/// The session table a configuration uses unless it names one.
pub const DEFAULT_TABLE: &str = "default";

/// Why a configuration was refused; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Config {
    /// Parses the plugin configuration bytes; empty or absent means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| ConfigError("configuration is not UTF-8".into()))?;
        if text.trim().is_empty() {
            return Config::try_from(empty_raw());
        }
        // An object, and no `null` anywhere in it: serde would read an array by position and
        // take `null` for an absent key (`"store": null` silently the local store).
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => {
                if let Some(key) = null_member(&map) {
                    return Err(ConfigError(format!(
                        "`{key}` is null: leave a key out to take its default"
                    )));
                }
            }
            Ok(_) => {
                return Err(ConfigError(
                    "the configuration must be a JSON object".into(),
                ))
            }
            Err(e) => return Err(ConfigError(format!("invalid configuration: {e}"))),
        }
        let mut json = serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut json).map_err(blame)?;
        Config::try_from(raw)
    }

    /// The identity header's name, when sessions are bound to one.
    pub fn identity_header(&self) -> Option<&str> {
        match &self.identity {
            Some(IdentitySource::Header(name)) => Some(name),
            _ => None,
        }
    }

    /// Whether requests to `path` (which may carry a query string) are guarded. Paths are
    /// compared in their normal form ([`normal_path`]): a path an upstream may read as a
    /// guarded one is guarded (`/%6dcp`, `//mcp`, `/x/../mcp` and `/mcp/` are `/mcp`), so
    /// that spelling a path another way does not get a request past the filter. Fails closed
    /// where Envoy's own `normalize_path` and `merge_slashes` are off.
    pub fn guards(&self, path: &[u8]) -> bool {
        if self.paths.is_none() {
            return true;
        }
        let bare = path.split(|b| *b == b'?' || *b == b'#').next();
        let normal = normal_path(bare.unwrap_or_default());
        // Without regard to ASCII case: servers that route so (Express, ASP.NET Core) read
        // `/MCP` as `/mcp`, and guarding it where a server does not costs nothing.
        self.normal_paths
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&normal))
    }
}

/// `path` as a server may read it: `%XX` escapes decoded until none is left (a server or a
/// proxy before it may decode twice: `/%256dcp`), each segment's `;` parameters dropped (as
/// servlet containers and Spring do: `/mcp;x=1`), and then `.` and `..` segments resolved and
/// empty ones dropped (repeated slashes, a trailing slash), so that two spellings of one path
/// compare equal. Borrowed when `path` is in normal form already (as a rule: no `%`, no `;`,
/// no empty, `.` or `..` segment).
pub fn normal_path(path: &[u8]) -> Cow<'_, [u8]> {
    let segments = || path.split(|b| *b == b'/').skip(1);
    let plain = |s: &[u8]| {
        !s.is_empty() && s != b"." && s != b".." && !s.iter().any(|b| matches!(b, b'%' | b';'))
    };
    if path == b"/" || (path.first() == Some(&b'/') && segments().all(plain)) {
        return Cow::Borrowed(path);
    }
    let mut decoded = decode_escapes(path);
    // Each pass that decodes something is shorter than the one before: this ends.
    while decoded.contains(&b'%') {
        let again = decode_escapes(&decoded);
        if again.len() == decoded.len() {
            break;
        }
        decoded = again;
    }
    let mut kept: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|b| *b == b'/') {
        let segment = segment.split(|b| *b == b';').next().unwrap_or_default();
        match segment {
            b"" | b"." => {}
            b".." => {
                kept.pop();
            }
            segment => kept.push(segment),
        }
    }
    let mut normal = Vec::with_capacity(decoded.len() + 1);
    for segment in kept {
        normal.push(b'/');
        normal.extend_from_slice(segment);
    }
    if normal.is_empty() {
        normal.push(b'/');
    }
    Cow::Owned(normal)
}

/// `bytes` with each `%XX` escape decoded, once.
fn decode_escapes(bytes: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if let (b'%', [high, low, after @ ..]) = (b, rest) {
            if let (Some(high), Some(low)) = (hex_digit(*high), hex_digit(*low)) {
                decoded.push(high << 4 | low);
                rest = after;
                continue;
            }
        }
        decoded.push(b);
    }
    decoded
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A serde error as one that names the offending key by its dotted path
/// (`store.etcd.cluster`, `paths[1]`): serde's own message for a wrong type gives only a line
/// and column, which in an Envoy configuration (JSON inside YAML) point nowhere useful.
fn blame(error: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if path.is_empty() || path == "." {
        ConfigError(format!("invalid configuration: {inner}"))
    } else {
        ConfigError(format!("`{path}`: {inner}"))
    }
}

/// The first member of `map`, or of an object nested in it, whose value is `null`, by its
/// dotted name (`store.etcd.prefix`).
fn null_member(map: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    map.iter().find_map(|(key, value)| match value {
        serde_json::Value::Null => Some(key.clone()),
        serde_json::Value::Object(inner) => null_member(inner).map(|path| format!("{key}.{path}")),
        _ => None,
    })
}

fn empty_raw() -> RawConfig {
    RawConfig {
        paths: None,
        idle_timeout_seconds: defaults::idle_timeout_seconds(),
        max_lifetime_seconds: defaults::max_lifetime_seconds(),
        max_sessions: defaults::max_sessions(),
        max_body_bytes: defaults::max_body_bytes(),
        identity_header: None,
        identity_jwt: None,
        identity_peer: None,
        allow_delete: true,
        enforce_initialized: true,
        stateless: false,
        store: None,
        affinity_header: None,
        session_facts: false,
        max_sessions_per_identity: None,
        table: None,
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("`{key}` {why}")));
        if let Some(paths) = &raw.paths {
            if paths.is_empty() {
                return bad(
                    "paths",
                    "must list at least one path (omit it to guard every path)",
                );
            }
            if let Some(p) = paths
                .iter()
                .find(|p| !p.starts_with('/') || p.contains(['?', '#']))
            {
                // A request's path is compared without its query or fragment: a configured
                // one with either could never be guarded.
                return bad(
                    "paths",
                    &format!("entry {p:?} must start with / and have no query or fragment"),
                );
            }
        }
        if raw.idle_timeout_seconds == 0 || raw.idle_timeout_seconds > MAX_TIMEOUT_SECONDS {
            return bad("idle_timeout_seconds", "must be from 1 to 31536000");
        }
        if raw.max_lifetime_seconds > MAX_TIMEOUT_SECONDS {
            return bad("max_lifetime_seconds", "must be from 0 (none) to 31536000");
        }
        if raw.max_sessions == 0 || raw.max_sessions > MAX_SESSIONS_LIMIT {
            return bad("max_sessions", "must be from 1 to 10000000");
        }
        if raw.max_body_bytes == 0 || raw.max_body_bytes > MAX_BODY_LIMIT {
            return bad("max_body_bytes", "must be from 1 to 67108864");
        }
        let sources = [
            raw.identity_header.is_some(),
            raw.identity_jwt.is_some(),
            raw.identity_peer.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() > 1 {
            return bad(
                "identity_header",
                "`identity_jwt` and `identity_peer`: set at most one",
            );
        }
        let identity = if let Some(name) = raw.identity_header {
            if !is_header_name(&name) {
                return bad("identity_header", "must be a non-empty HTTP header name");
            }
            if [SESSION_HEADER, VERSION_HEADER]
                .iter()
                .any(|ours| name.eq_ignore_ascii_case(ours))
            {
                return bad("identity_header", "must not be a header MCP itself uses");
            }
            Some(IdentitySource::Header(name.to_ascii_lowercase()))
        } else if let Some(jwt) = raw.identity_jwt {
            if jwt.metadata_key.is_empty() {
                return bad("identity_jwt", "needs a non-empty `metadata_key`");
            }
            if jwt.claims.is_empty() || jwt.claims.iter().any(String::is_empty) {
                return bad("identity_jwt", "needs `claims`: non-empty claim names");
            }
            Some(IdentitySource::Jwt {
                metadata_key: jwt.metadata_key,
                claims: jwt.claims,
            })
        } else if let Some(field) = raw.identity_peer {
            Some(IdentitySource::Peer(match field.as_str() {
                "uri_san" => PeerField::UriSan,
                "subject" => PeerField::Subject,
                "sha256" => PeerField::Sha256,
                _ => {
                    return bad(
                        "identity_peer",
                        "must be \"uri_san\", \"subject\" or \"sha256\"",
                    )
                }
            }))
        } else {
            None
        };
        let store = match raw.store {
            None => StoreConfig::Local,
            Some(RawStore { etcd }) => {
                if etcd.cluster.is_empty() {
                    return bad("store.etcd.cluster", "must name an Envoy cluster");
                }
                if etcd.prefix.is_empty() {
                    return bad("store.etcd.prefix", "must not be empty");
                }
                if !(10..=60_000).contains(&etcd.timeout_ms) {
                    return bad("store.etcd.timeout_ms", "must be from 10 to 60000");
                }
                let fall_back_to_local = match etcd.unavailable.as_str() {
                    "reject" => false,
                    "local" => true,
                    _ => return bad("store.etcd.unavailable", "must be \"reject\" or \"local\""),
                };
                StoreConfig::Etcd(EtcdConfig {
                    cluster: etcd.cluster,
                    prefix: etcd.prefix,
                    timeout_ms: etcd.timeout_ms,
                    fall_back_to_local,
                })
            }
        };
        // The client's copy of the affinity header is removed from every request: a header the
        // request needs for anything else would go with it.
        const NEEDED: [&str; 6] = [
            SESSION_HEADER,
            VERSION_HEADER,
            "host",
            "content-length",
            "content-type",
            "transfer-encoding",
        ];
        let affinity_header = match raw.affinity_header {
            Some(name) if !is_header_name(&name) || name.starts_with(':') => {
                return bad("affinity_header", "must be a non-empty HTTP header name");
            }
            Some(name)
                if NEEDED.iter().any(|n| name.eq_ignore_ascii_case(n))
                    || identity.as_ref().is_some_and(
                        |i| matches!(i, IdentitySource::Header(h) if name.eq_ignore_ascii_case(h)),
                    ) =>
            {
                return bad(
                    "affinity_header",
                    "must be a header of its own (not the identity header, nor one a request needs)",
                );
            }
            Some(name) => Some(name.to_ascii_lowercase()),
            None => None,
        };
        let max_sessions_per_identity = match raw.max_sessions_per_identity {
            Some(_) if identity.is_none() => {
                return bad(
                    "max_sessions_per_identity",
                    "needs one of identity_header, identity_jwt or identity_peer",
                );
            }
            Some(n) if n == 0 || n > raw.max_sessions => {
                return bad(
                    "max_sessions_per_identity",
                    "must be from 1 to max_sessions",
                );
            }
            other => other,
        };
        let table = raw.table.unwrap_or_else(|| DEFAULT_TABLE.to_string());
        let printable = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        if table.is_empty() || table.len() > 64 || !table.bytes().all(printable) {
            return bad("table", "must be 1 to 64 of A-Z a-z 0-9 - _ .");
        }
        let normal_paths = raw.paths.iter().flatten();
        let normal_paths = normal_paths.map(|p| normal_path(p.as_bytes()).into_owned());
        Ok(Config {
            normal_paths: normal_paths.collect(),
            paths: raw.paths,
            idle_timeout_ms: raw.idle_timeout_seconds * 1000,
            max_lifetime_ms: raw.max_lifetime_seconds * 1000,
            max_sessions: raw.max_sessions,
            max_body_bytes: usize::try_from(raw.max_body_bytes).unwrap_or(usize::MAX),
            identity,
            allow_delete: raw.allow_delete,
            enforce_initialized: raw.enforce_initialized,
            stateless: raw.stateless,
            store,
            affinity_header,
            session_facts: raw.session_facts,
            max_sessions_per_identity,
            table,
        })
    }
}

/// An HTTP token (RFC 9110 tchar), and not a pseudo-header.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text.as_bytes())
    }

    #[test]
    fn empty_and_minimal_configs_take_the_defaults() {
        for text in ["", "  ", "{}"] {
            let cfg = parse(text).unwrap();
            assert_eq!(cfg.paths, None);
            assert_eq!(cfg.idle_timeout_ms, 1_800_000);
            assert_eq!(cfg.max_lifetime_ms, 86_400_000);
            assert_eq!(cfg.max_sessions, 10_000);
            assert_eq!(cfg.max_body_bytes, 4_194_304);
            assert_eq!(cfg.identity_header(), None);
            assert!(cfg.allow_delete && cfg.enforce_initialized && !cfg.stateless);
        }
    }

    #[test]
    fn full_config_is_read() {
        let cfg = parse(
            r#"{"paths":["/mcp","/other"],"idle_timeout_seconds":5,"max_lifetime_seconds":0,
                "max_sessions":2,"max_body_bytes":1024,"identity_header":"X-User-Id",
                "allow_delete":false,"enforce_initialized":false,"stateless":true}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.paths,
            Some(vec!["/mcp".to_string(), "/other".to_string()])
        );
        assert_eq!(cfg.idle_timeout_ms, 5000);
        assert_eq!(cfg.max_lifetime_ms, 0);
        assert_eq!(cfg.max_sessions, 2);
        assert_eq!(cfg.max_body_bytes, 1024);
        assert_eq!(cfg.identity_header(), Some("x-user-id"));
        assert!(!cfg.allow_delete && !cfg.enforce_initialized && cfg.stateless);
        let cfg = parse(
            r#"{"identity_header":"x-user","max_sessions_per_identity":3,"session_facts":true}"#,
        )
        .unwrap();
        assert_eq!(cfg.max_sessions_per_identity, Some(3));
        assert!(cfg.session_facts);
        // With etcd too: counted fleet-wide (each caller's index in etcd).
        let cfg = parse(
            r#"{"identity_header":"x-user","max_sessions_per_identity":3,"store":{"etcd":{"cluster":"etcd"}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.max_sessions_per_identity, Some(3));
        assert!(matches!(cfg.store, StoreConfig::Etcd(_)));
    }

    #[test]
    fn identity_sources_and_the_attributes_they_read() {
        let jwt = parse(r#"{"identity_jwt":{"metadata_key":"payload"}}"#).unwrap();
        let Some(source) = &jwt.identity else {
            panic!("no identity");
        };
        assert_eq!(
            source.attributes(),
            vec![
                vec!["metadata", "filter_metadata", JWT_AUTHN, "payload", "iss"],
                vec!["metadata", "filter_metadata", JWT_AUTHN, "payload", "sub"],
            ]
        );
        assert_eq!(jwt.identity_header(), None);
        for (field, attribute) in [
            ("uri_san", "uri_san_peer_certificate"),
            ("subject", "subject_peer_certificate"),
            ("sha256", "sha256_peer_certificate_digest"),
        ] {
            let cfg = parse(&format!(r#"{{"identity_peer":"{field}"}}"#)).unwrap();
            let attributes = cfg.identity.as_ref().map(IdentitySource::attributes);
            assert_eq!(
                attributes,
                Some(vec![vec!["connection", attribute]]),
                "{field}"
            );
        }
        let header = parse(r#"{"identity_header":"X-User"}"#).unwrap();
        assert_eq!(header.identity_header(), Some("x-user"));
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (r#"{"idle_timeout":5}"#, "`idle_timeout`"),
            (r#"{"idle_timeout_seconds":0}"#, "`idle_timeout_seconds`"),
            (r#"{"idle_timeout_seconds":-1}"#, "`idle_timeout_seconds`"),
            (r#"{"idle_timeout_seconds":"5"}"#, "`idle_timeout_seconds`"),
            (r#"{"idle_timeout_seconds":1.5}"#, "`idle_timeout_seconds`"),
            (
                r#"{"max_lifetime_seconds":99999999999}"#,
                "`max_lifetime_seconds`",
            ),
            (r#"{"max_sessions":0}"#, "`max_sessions`"),
            (r#"{"max_sessions":-1}"#, "`max_sessions`"),
            (r#"{"max_sessions":4294967296}"#, "`max_sessions`"),
            (r#"{"max_body_bytes":0}"#, "`max_body_bytes`"),
            (r#"{"paths":[]}"#, "`paths`"),
            (
                r#"{"max_sessions_per_identity":2}"#,
                "`max_sessions_per_identity`",
            ),
            (
                r#"{"identity_header":"x-user","max_sessions_per_identity":0}"#,
                "`max_sessions_per_identity`",
            ),
            (
                r#"{"identity_header":"x-user","max_sessions":5,"max_sessions_per_identity":6}"#,
                "`max_sessions_per_identity`",
            ),
            (r#"{"paths":["mcp"]}"#, "`paths`"),
            (r#"{"paths":["/mcp?x=1"]}"#, "`paths`"),
            (r#"{"paths":["/#p"]}"#, "`paths`"), // make fuzz found it: never guarded
            (r#"{"paths":"/mcp"}"#, "`paths`"),
            (r#"{"identity_header":""}"#, "`identity_header`"),
            (r#"{"identity_header":"x user"}"#, "`identity_header`"),
            (r#"{"identity_header":":authority"}"#, "`identity_header`"),
            (r#"{"identity_header":5}"#, "`identity_header`"),
            (r#"{"identity_jwt":{}}"#, "`identity_jwt`"),
            (r#"{"identity_jwt":{"metadata_key":""}}"#, "`identity_jwt`"),
            (
                r#"{"identity_jwt":{"metadata_key":"p","claims":[]}}"#,
                "`identity_jwt`",
            ),
            (
                r#"{"identity_jwt":{"metadata_key":"p","claim":["sub"]}}"#,
                "`identity_jwt.claim`: unknown field",
            ),
            (r#"{"identity_peer":"spiffe"}"#, "`identity_peer`"),
            (
                r#"{"identity_peer":"uri_san","identity_header":"x-user"}"#,
                "set at most one",
            ),
            (
                r#"{"identity_jwt":{"metadata_key":"p"},"identity_peer":"subject"}"#,
                "set at most one",
            ),
            (r#"{"allow_delete":"no"}"#, "`allow_delete`"),
            (r#"{"max_sessions":5,"stateless":"yes"}"#, "`stateless`"),
            (r#"{"table":""}"#, "`table`"),
            (r#"{"table":"a/b"}"#, "`table`"),
            (r#"{"table":5}"#, "`table`"),
            ("[1,2]", "must be a JSON object"),
            // Review: an array was read by position, and `null` taken for an absent key.
            ("[]", "must be a JSON object"),
            (r#"[["/mcp"], 5]"#, "must be a JSON object"),
            ("5", "must be a JSON object"),
            (r#"{"store": null}"#, "`store` is null"),
            (r#"{"paths": null}"#, "`paths` is null"),
            (
                r#"{"store": {"etcd": {"cluster": "e", "prefix": null}}}"#,
                "`store.etcd.prefix` is null",
            ),
            // Review: headers the filter or the request needs were accepted, and then removed
            // from every request (the affinity header) or read as the caller (the identity).
            (
                r#"{"affinity_header":"mcp-session-id"}"#,
                "`affinity_header`",
            ),
            (r#"{"affinity_header":"Host"}"#, "`affinity_header`"),
            (
                r#"{"affinity_header":"x-user","identity_header":"X-User"}"#,
                "`affinity_header`",
            ),
            (
                r#"{"identity_header":"Mcp-Session-Id"}"#,
                "`identity_header`",
            ),
            (
                r#"{"identity_header":"mcp-protocol-version"}"#,
                "`identity_header`",
            ),
            ("{", "invalid configuration"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.0.contains(needle), "{text}: {err}");
        }
        assert!(Config::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn an_error_names_the_key_by_its_whole_path() {
        for (text, needle) in [
            (
                r#"{"store":{"etcd":{"cluster":5}}}"#,
                "`store.etcd.cluster`: invalid type",
            ),
            (
                r#"{"store":{"etcd":{"clustr":"e"}}}"#,
                "`store.etcd.clustr`: unknown field",
            ),
            (r#"{"paths":["/mcp",7]}"#, "`paths[1]`: invalid type"),
            (r#"{"max_sessions":"many"}"#, "`max_sessions`: invalid type"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.0.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_key_error_names_it() {
        let err = parse(r#"{"max_sesions":5}"#).unwrap_err();
        assert!(err.0.contains("max_sesions"), "{err}");
    }

    #[test]
    fn guards_exact_paths_ignoring_query() {
        let all = parse("{}").unwrap();
        assert!(all.guards(b"/anything?x"));
        let some = parse(r#"{"paths":["/mcp"]}"#).unwrap();
        assert!(some.guards(b"/mcp"));
        assert!(some.guards(b"/mcp?session=1"));
        assert!(!some.guards(b"/mcpx"));
        assert!(!some.guards(b"/"));
        assert!(!some.guards(b"/mcp%2"));
        assert!(!some.guards(b"/mcp/x"));
    }

    /// The defect the review found: `paths` compared the raw path, and an upstream that
    /// decodes escapes (Starlette does) served `/%6dcp` as `/mcp`, with no session asked.
    #[test]
    fn guards_every_spelling_a_server_may_read_as_a_guarded_path() {
        let some = parse(r#"{"paths":["/mcp"]}"#).unwrap();
        for path in [
            "/%6dcp",
            "/%6Dcp",
            "/mc%70?x=1",
            "//mcp",
            "/mcp/",
            "/./mcp",
            "/x/../mcp",
            "/%2e/mcp",
            "/%2Fmcp",
            "/../mcp",
            "/mcp#frag",
            "/mcp//",
            // Review: servers that route without regard to case, drop `;` parameters, or
            // decode twice read these as `/mcp`; each went past the filter untouched.
            "/MCP",
            "/Mcp/",
            "/mcp;x=1",
            "/mcp%3bx",
            "/%256dcp",
            "/%25%36%64cp",
            "/x;a/..;b/mcp",
        ] {
            assert!(some.guards(path.as_bytes()), "{path}");
        }
        let trailing = parse(r#"{"paths":["/api/mcp/"]}"#).unwrap();
        assert!(trailing.guards(b"/api/mcp") && trailing.guards(b"/api//mcp/"));
        assert!(!trailing.guards(b"/api"));
    }

    #[test]
    fn a_normal_path_is_borrowed_and_others_are_rewritten() {
        let cases: [(&str, &str); 11] = [
            ("/", "/"),
            ("/mcp", "/mcp"),
            ("", "/"),
            ("/a/b/../c", "/a/c"),
            ("/a/./b//", "/a/b"),
            ("/%41%zz%4", "/A%zz%4"),
            ("/..%2f..", "/"),
            ("/%25", "/%"),
            ("/%2525", "/%"),
            ("/a;b/c;", "/a/c"),
            ("%2fmcp", "/mcp"),
        ];
        for (path, want) in cases {
            assert_eq!(normal_path(path.as_bytes()), want.as_bytes(), "{path}");
        }
        assert!(matches!(normal_path(b"/mcp/v1"), Cow::Borrowed(_)));
        assert!(matches!(normal_path(b"/mcp/"), Cow::Owned(_)));
    }
}
