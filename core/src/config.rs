//! Plugin configuration, in two stages: serde reads the JSON into [`RawConfig`] (defaults,
//! unknown keys refused), then [`Config::try_from`] checks ranges and builds what the filter
//! uses. Envoy refuses a configuration that fails either stage, with a log line that names the
//! key, so a typo never runs silently with defaults.

use serde::Deserialize;
use std::fmt;

/// The configuration as written by the operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Exact request paths (query ignored) the filter guards; absent: every path.
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
    /// false: DELETE answers 405.
    #[serde(default = "defaults::yes")]
    pub allow_delete: bool,
    /// Before `notifications/initialized`, only `ping` passes on a session.
    #[serde(default = "defaults::yes")]
    pub enforce_initialized: bool,
    /// Mint nothing, validate nothing, pass everything through.
    #[serde(default)]
    pub stateless: bool,
}

mod defaults {
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
    /// Idle timeout in milliseconds.
    pub idle_timeout_ms: u64,
    /// Absolute lifetime in milliseconds; 0 = none.
    pub max_lifetime_ms: u64,
    /// Capacity of the session store.
    pub max_sessions: u32,
    /// Largest sessionless body read, in bytes.
    pub max_body_bytes: usize,
    /// Lowercased identity header name.
    pub identity_header: Option<String>,
    /// Whether clients may end sessions with DELETE.
    pub allow_delete: bool,
    /// Whether to hold requests until `notifications/initialized`.
    pub enforce_initialized: bool,
    /// Pass-through mode.
    pub stateless: bool,
}

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
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| blame(text, &e))?;
        Config::try_from(raw)
    }

    /// Whether requests to `path` (which may carry a query string) are guarded.
    pub fn guards(&self, path: &str) -> bool {
        let bare = path.split_once('?').map_or(path, |(p, _)| p);
        match &self.paths {
            None => true,
            Some(paths) => paths.iter().any(|p| p == bare),
        }
    }
}

/// Turns a serde error into one that names the offending key: serde's own message for a
/// wrong type gives only a line and column. Each key is re-read on its own (all others take
/// their defaults), and the first that fails is the one named.
fn blame(text: &str, error: &serde_json::Error) -> ConfigError {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) {
        for (key, value) in map {
            let mut alone = serde_json::Map::new();
            alone.insert(key.clone(), value);
            if let Err(e) = serde_json::from_value::<RawConfig>(serde_json::Value::Object(alone)) {
                return ConfigError(format!("`{key}`: {e}"));
            }
        }
    }
    ConfigError(format!("invalid configuration: {error}"))
}

fn empty_raw() -> RawConfig {
    RawConfig {
        paths: None,
        idle_timeout_seconds: defaults::idle_timeout_seconds(),
        max_lifetime_seconds: defaults::max_lifetime_seconds(),
        max_sessions: defaults::max_sessions(),
        max_body_bytes: defaults::max_body_bytes(),
        identity_header: None,
        allow_delete: true,
        enforce_initialized: true,
        stateless: false,
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
                .find(|p| !p.starts_with('/') || p.contains('?'))
            {
                return bad(
                    "paths",
                    &format!("entry {p:?} must start with / and have no query"),
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
        let identity_header = match raw.identity_header {
            None => None,
            Some(name) if is_header_name(&name) => Some(name.to_ascii_lowercase()),
            Some(_) => return bad("identity_header", "must be a non-empty HTTP header name"),
        };
        Ok(Config {
            paths: raw.paths,
            idle_timeout_ms: raw.idle_timeout_seconds * 1000,
            max_lifetime_ms: raw.max_lifetime_seconds * 1000,
            max_sessions: raw.max_sessions,
            max_body_bytes: usize::try_from(raw.max_body_bytes).unwrap_or(usize::MAX),
            identity_header,
            allow_delete: raw.allow_delete,
            enforce_initialized: raw.enforce_initialized,
            stateless: raw.stateless,
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
            assert_eq!(cfg.identity_header, None);
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
        assert_eq!(cfg.identity_header.as_deref(), Some("x-user-id"));
        assert!(!cfg.allow_delete && !cfg.enforce_initialized && cfg.stateless);
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
            (r#"{"paths":["mcp"]}"#, "`paths`"),
            (r#"{"paths":["/mcp?x=1"]}"#, "`paths`"),
            (r#"{"paths":"/mcp"}"#, "`paths`"),
            (r#"{"identity_header":""}"#, "`identity_header`"),
            (r#"{"identity_header":"x user"}"#, "`identity_header`"),
            (r#"{"identity_header":":authority"}"#, "`identity_header`"),
            (r#"{"identity_header":5}"#, "`identity_header`"),
            (r#"{"allow_delete":"no"}"#, "`allow_delete`"),
            (r#"{"max_sessions":5,"stateless":"yes"}"#, "`stateless`"),
            ("[1,2]", "invalid configuration"),
            ("{", "invalid configuration"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.0.contains(needle), "{text}: {err}");
        }
        assert!(Config::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn unknown_key_error_names_it() {
        let err = parse(r#"{"max_sesions":5}"#).unwrap_err();
        assert!(err.0.contains("max_sesions"), "{err}");
    }

    #[test]
    fn guards_exact_paths_ignoring_query() {
        let all = parse("{}").unwrap();
        assert!(all.guards("/anything?x"));
        let some = parse(r#"{"paths":["/mcp"]}"#).unwrap();
        assert!(some.guards("/mcp"));
        assert!(some.guards("/mcp?session=1"));
        assert!(!some.guards("/mcp/"));
        assert!(!some.guards("/mcpx"));
        assert!(!some.guards("/"));
    }
}
