//! What a key and value under the prefix say about a session, and how the tool prints it
//! (a table for people, JSON for scripts). Pure functions.

use crate::input::{hex, HANDLE_LEN, KEY_DIGEST_LEN};
use mcp_session_core::record::{Record, State};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One session as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The etcd key.
    pub key: Vec<u8>,
    /// The first 16 hex characters of the key's digest, as access logs show them.
    pub handle: String,
    /// The caller's identity digest (32 hex), when the session is bound to one.
    pub identity: Option<String>,
    /// `notifications/initialized` was accepted.
    pub initialized: bool,
    /// The upstream's own session ID is kept with it (a stateful upstream).
    pub mapped: bool,
    /// The upstream host that answered its `initialize` (with `affinity_header`).
    pub upstream_host: Option<String>,
    /// Pending (an `initialize` not answered yet) rather than live.
    pub pending: bool,
    /// Opened, ms since the epoch (the clock of the Envoy that opened it).
    pub created_ms: u64,
    /// Last used, at touch granularity, ms since the epoch.
    pub last_seen_ms: u64,
}

/// Why a key under the prefix is not a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotASession {
    /// The key is not `<prefix><32 hex>`.
    Key,
    /// The value is not a session record.
    Value,
}

impl Session {
    /// The session stored under `key` (which begins with `prefix`) with `value`.
    pub fn decode(prefix: &[u8], key: &[u8], value: &[u8]) -> Result<Session, NotASession> {
        let digest = key.strip_prefix(prefix).ok_or(NotASession::Key)?;
        if digest.len() != KEY_DIGEST_LEN
            || !digest
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return Err(NotASession::Key);
        }
        let handle = digest
            .get(..HANDLE_LEN)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or(NotASession::Key)?
            .to_owned();
        let record = Record::decode(value).ok_or(NotASession::Value)?;
        Ok(Session {
            key: key.to_vec(),
            handle,
            identity: record.identity.map(|d| hex(&d)),
            initialized: record.initialized,
            // Sealed under the session's ID, which this tool does not have: known, not read.
            mapped: record.upstream_id.is_some() || Record::upstream_sealed(value),
            upstream_host: record.upstream_host,
            pending: record.state == State::Pending,
            created_ms: record.created_ms,
            last_seen_ms: record.last_seen_ms,
        })
    }
}

/// A span of time for people: `45s`, `3m05s`, `2h07m`, `4d03h`.
pub fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Sessions oldest first (then by handle), so a listing reads the same twice.
pub fn sort(sessions: &mut [Session]) {
    sessions.sort_by(|a, b| (a.created_ms, &a.handle).cmp(&(b.created_ms, &b.handle)));
}

/// The `list` table: one line per session, ages against `now_ms`.
pub fn list_table(sessions: &[Session], now_ms: u64) -> String {
    let mut out = format!(
        "{:<16}  {:<32}  {:<11}  {:<6}  {:>7}  {:>8}\n",
        "HANDLE", "IDENTITY", "INITIALIZED", "MAPPED", "AGE", "LAST USE"
    );
    for s in sessions {
        let mut line = format!(
            "{:<16}  {:<32}  {:<11}  {:<6}  {:>7}  {:>8}",
            s.handle,
            s.identity.as_deref().unwrap_or("-"),
            if s.pending {
                "pending"
            } else {
                yes_no(s.initialized)
            },
            yes_no(s.mapped),
            span(now_ms.saturating_sub(s.created_ms)),
            format!("{} ago", span(now_ms.saturating_sub(s.last_seen_ms))),
        );
        if let Some(host) = &s.upstream_host {
            line.push_str("  upstream ");
            line.push_str(host);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `list` output as JSON: an array, one object per session.
pub fn list_json(sessions: &[Session], now_ms: u64) -> Value {
    Value::Array(
        sessions
            .iter()
            .map(|s| {
                json!({
                    "handle": s.handle,
                    "key": String::from_utf8_lossy(&s.key),
                    "identity": s.identity,
                    "state": if s.pending { "pending" } else { "live" },
                    "initialized": s.initialized,
                    "mapped": s.mapped,
                    "upstream_host": s.upstream_host,
                    "created_ms": s.created_ms,
                    "last_seen_ms": s.last_seen_ms,
                    "age_seconds": now_ms.saturating_sub(s.created_ms) / 1000,
                    "idle_seconds": now_ms.saturating_sub(s.last_seen_ms) / 1000,
                })
            })
            .collect(),
    )
}

/// Sessions per identity digest (`None`: sessions bound to no identity), most first, then by
/// digest.
pub fn by_identity(sessions: &[Session]) -> Vec<(Option<String>, u64)> {
    let mut counts: BTreeMap<Option<&str>, u64> = BTreeMap::new();
    for s in sessions {
        *counts.entry(s.identity.as_deref()).or_default() += 1;
    }
    let mut out: Vec<(Option<String>, u64)> = counts
        .into_iter()
        .map(|(identity, n)| (identity.map(str::to_owned), n))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The `count --by-identity` table.
pub fn by_identity_table(counts: &[(Option<String>, u64)]) -> String {
    let mut out = format!("{:>8}  {}\n", "SESSIONS", "IDENTITY");
    for (identity, n) in counts {
        out.push_str(&format!(
            "{n:>8}  {}\n",
            identity.as_deref().unwrap_or("- (bound to no identity)")
        ));
    }
    out
}

/// The `count --by-identity` output as JSON.
pub fn by_identity_json(counts: &[(Option<String>, u64)]) -> Value {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    json!({
        "sessions": total,
        "by_identity": counts
            .iter()
            .map(|(identity, n)| json!({"identity": identity, "sessions": n}))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_session_core::record::identity_digest;
    use mcp_session_core::session_id::SessionId;
    use mcp_session_core::store::etcd::{key, value};
    use mcp_session_core::testkit::{live_record, T0};

    const PREFIX: &str = "mcp-sessions/";

    fn stored(slot: u32, identity: Option<&[u8]>) -> (SessionId, Vec<u8>, Vec<u8>) {
        let id = SessionId {
            slot,
            secret: [u8::try_from(slot).unwrap(); 16],
        };
        let mut record = live_record(id.secret, T0);
        record.identity = identity.map(|v| identity_digest(Some(v)));
        (id, key(PREFIX, &id), value(&record))
    }

    #[test]
    fn a_stored_session_reads_back_with_its_handle_and_identity() {
        let (id, k, v) = stored(1, Some(b"alice"));
        let s = Session::decode(PREFIX.as_bytes(), &k, &v).unwrap();
        assert_eq!(s.handle, id.handle());
        assert_eq!(
            s.identity.as_deref(),
            Some(hex(&identity_digest(Some(b"alice"))).as_str())
        );
        assert!(s.initialized && !s.mapped && !s.pending);
        assert_eq!((s.created_ms, s.last_seen_ms), (T0, T0));
        assert_eq!(s.key, k);

        let (_, k, v) = stored(2, None);
        assert_eq!(
            Session::decode(PREFIX.as_bytes(), &k, &v).unwrap().identity,
            None
        );
    }

    /// A stateful upstream's session ID is sealed in the value under the session's own ID,
    /// which the tool does not have: the session still shows as mapped.
    #[test]
    fn a_session_mapped_to_a_sealed_upstream_id_shows_as_mapped() {
        let (id, k, _) = stored(3, None);
        let record = live_record(id.secret, T0).activated(T0 + 1, Some("their-session"));
        let s = Session::decode(PREFIX.as_bytes(), &k, &value(&record)).unwrap();
        assert!(s.mapped && !s.pending);
    }

    #[test]
    fn foreign_keys_and_values_are_no_sessions() {
        let (_, k, v) = stored(1, None);
        let p = PREFIX.as_bytes();
        assert_eq!(Session::decode(p, b"other/abc", &v), Err(NotASession::Key));
        assert_eq!(
            Session::decode(p, &k[..k.len() - 1], &v),
            Err(NotASession::Key)
        );
        let mut upper = k.clone();
        upper
            .iter_mut()
            .skip(PREFIX.len())
            .for_each(u8::make_ascii_uppercase);
        if upper != k {
            assert_eq!(Session::decode(p, &upper, &v), Err(NotASession::Key));
        }
        assert_eq!(Session::decode(p, &k, b"hello"), Err(NotASession::Value));
        assert_eq!(Session::decode(p, &k, b""), Err(NotASession::Value));
    }

    #[test]
    fn spans_read_at_a_glance() {
        for (ms, text) in [
            (0, "0s"),
            (999, "0s"),
            (45_000, "45s"),
            (185_000, "3m05s"),
            (3_600_000, "1h00m"),
            (7_620_000, "2h07m"),
            (86_400_000 * 4 + 3 * 3_600_000, "4d03h"),
        ] {
            assert_eq!(span(ms), text, "{ms}");
        }
    }

    fn session(handle: &str, identity: Option<&str>, created_ms: u64) -> Session {
        Session {
            key: format!("{PREFIX}{handle}{handle}").into_bytes(),
            handle: handle.to_owned(),
            identity: identity.map(str::to_owned),
            initialized: true,
            mapped: false,
            upstream_host: None,
            pending: false,
            created_ms,
            last_seen_ms: created_ms + 60_000,
        }
    }

    #[test]
    fn the_list_table_has_one_aligned_line_per_session() {
        let alice = "9c1185a5c5e9fc54612808977ee8f548";
        let mut a = session("0123456789abcdef", Some(alice), T0);
        a.mapped = true;
        a.upstream_host = Some("10.0.0.7:8080".into());
        let mut b = session("fedcba9876543210", None, T0 + 1000);
        b.initialized = false;
        let now = T0 + 185_000;
        let table = list_table(&[a.clone(), b.clone()], now);
        let expected = "\
HANDLE            IDENTITY                          INITIALIZED  MAPPED      AGE  LAST USE
0123456789abcdef  9c1185a5c5e9fc54612808977ee8f548  yes          yes       3m05s  2m05s ago  upstream 10.0.0.7:8080
fedcba9876543210  -                                 no           no        3m04s  2m04s ago
";
        assert_eq!(table, expected);
        let json = list_json(&[a, b], now);
        assert_eq!(json[0]["handle"], "0123456789abcdef");
        assert_eq!(json[0]["identity"], alice);
        assert_eq!(json[0]["mapped"], true);
        assert_eq!(json[0]["age_seconds"], 185);
        assert_eq!(json[0]["idle_seconds"], 125);
        assert_eq!(json[1]["identity"], Value::Null);
        assert_eq!(json[1]["initialized"], false);
        assert_eq!(json[1]["state"], "live");
    }

    #[test]
    fn counts_by_identity_most_first() {
        let sessions = [
            session("1111111111111111", Some("bb"), T0),
            session("2222222222222222", Some("aa"), T0),
            session("3333333333333333", None, T0),
            session("4444444444444444", Some("bb"), T0),
        ];
        let counts = by_identity(&sessions);
        assert_eq!(
            counts,
            vec![(Some("bb".into()), 2), (None, 1), (Some("aa".into()), 1)]
        );
        assert_eq!(
            by_identity_table(&counts),
            "SESSIONS  IDENTITY\n       2  bb\n       1  - (bound to no identity)\n       1  aa\n"
        );
        let json = by_identity_json(&counts);
        assert_eq!(json["sessions"], 4);
        assert_eq!(json["by_identity"][1]["identity"], Value::Null);
    }

    #[test]
    fn sorted_oldest_first() {
        let mut sessions = vec![
            session("bbbbbbbbbbbbbbbb", None, T0 + 5),
            session("cccccccccccccccc", None, T0),
            session("aaaaaaaaaaaaaaaa", None, T0 + 5),
        ];
        sort(&mut sessions);
        let handles: Vec<&str> = sessions.iter().map(|s| s.handle.as_str()).collect();
        assert_eq!(
            handles,
            ["cccccccccccccccc", "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
        );
    }
}
