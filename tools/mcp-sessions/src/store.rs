//! The sessions in etcd, through its v3 API (the `etcd-client` crate): read them all as one
//! snapshot, count them, and delete them by handle or by identity.

use crate::view::{NotASession, Session};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use mcp_session_core::store::etcd::range_end;
use std::future::Future;
use std::net::ToSocketAddrs;
use std::time::Duration;

/// Keys read per call: each page is a few hundred kilobytes at most, far below the client's
/// 4 MiB message limit; the pages are read at one revision, so they form one snapshot.
const PAGE: i64 = 1000;

/// Most deletes in one transaction: etcd's default `--max-txn-ops` (128).
pub const MAX_TXN_OPS: usize = 128;

/// etcd could not do what was asked; nothing was changed unless the caller says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdError(pub String);

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The connection: the endpoints, each call's deadline, the key prefix.
pub struct Etcd {
    kv: KvClient,
    endpoints: Vec<String>,
    timeout: Duration,
    prefix: Vec<u8>,
}

/// Every session under the prefix at one revision, and the keys that were not sessions.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The sessions.
    pub sessions: Vec<Session>,
    /// Keys under the prefix that hold no session (another writer's, or a newer format).
    pub skipped: Vec<(Vec<u8>, NotASession)>,
    /// The revision read.
    pub revision: i64,
}

/// What a revocation by handle found.
#[derive(Debug)]
pub enum HandleRevoke {
    /// Deleted.
    Revoked(Session),
    /// No session has that handle.
    NotFound,
    /// It was there, and gone before the delete (it ended, or someone else ended it).
    EndedMeanwhile(Session),
    /// More than one session begins with that handle: nothing was deleted.
    Ambiguous(Vec<Session>),
}

/// What a revocation by identity did, session by session (handles).
#[derive(Debug, Default)]
pub struct IdentityRevoke {
    /// Deleted by this call.
    pub revoked: Vec<String>,
    /// Found, then gone before its transaction (ended on its own, or by someone else).
    pub ended_meanwhile: Vec<String>,
    /// A transaction failed and a read afterwards found the session gone: most likely that
    /// transaction's doing, but etcd did not say.
    pub gone: Vec<String>,
    /// Still in etcd: not revoked.
    pub not_revoked: Vec<String>,
    /// A transaction failed and no read could tell: each may or may not be deleted.
    pub unknown: Vec<String>,
    /// Transactions sent.
    pub transactions: usize,
    /// Why it stopped short, when it did.
    pub error: Option<EtcdError>,
}

impl IdentityRevoke {
    /// Whether every session found is gone for sure, by this call or on its own.
    pub fn complete(&self) -> bool {
        self.error.is_none()
            && self.gone.is_empty()
            && self.not_revoked.is_empty()
            && self.unknown.is_empty()
    }
}

impl Etcd {
    /// A client for `endpoints` (URLs), each call bounded by `timeout`, reading `prefix`.
    pub async fn connect(
        endpoints: Vec<String>,
        timeout: Duration,
        prefix: &str,
    ) -> Result<Etcd, EtcdError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            // A member cut off from the leader refuses instead of serving what it last knew.
            .with_require_leader(true);
        let client = bounded(
            &endpoints,
            timeout,
            "connect",
            Client::connect(endpoints.clone(), Some(options)),
        )
        .await?;
        Ok(Etcd {
            kv: client.kv_client(),
            endpoints,
            timeout,
            prefix: prefix.as_bytes().to_vec(),
        })
    }

    async fn call<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, EtcdError> {
        bounded(&self.endpoints, self.timeout, what, future).await
    }

    /// The number of keys under the prefix (one count-only read, as the filter's
    /// `mcp_session.live` is taken).
    pub async fn count(&self) -> Result<u64, EtcdError> {
        let mut kv = self.kv.clone();
        let options = GetOptions::new()
            .with_range(range_end(&String::from_utf8_lossy(&self.prefix)))
            .with_count_only();
        let response = self
            .call("count", kv.get(self.prefix.clone(), Some(options)))
            .await?;
        Ok(u64::try_from(response.count()).unwrap_or(0))
    }

    /// Every session under the prefix (whose keys begin with `start`, a longer prefix), read
    /// in pages at one revision (linearizable).
    pub async fn snapshot(&self, start: &[u8]) -> Result<Snapshot, EtcdError> {
        let mut kv = self.kv.clone();
        let end = range_end_bytes(start);
        let mut from = start.to_vec();
        let mut out = Snapshot::default();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if out.revision > 0 {
                options = options.with_revision(out.revision);
            }
            let response = self
                .call("read", kv.get(from.clone(), Some(options)))
                .await?;
            if out.revision == 0 {
                out.revision = response.header().map_or(0, |h| h.revision());
            }
            for pair in response.kvs() {
                match Session::decode(&self.prefix, pair.key(), pair.value()) {
                    Ok(session) => out.sessions.push(session),
                    Err(why) => out.skipped.push((pair.key().to_vec(), why)),
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Deletes the session whose handle (or whole digest) is `handle`, when exactly one has it.
    pub async fn revoke_handle(&self, handle: &str) -> Result<HandleRevoke, EtcdError> {
        let mut start = self.prefix.clone();
        start.extend_from_slice(handle.as_bytes());
        let found = self.snapshot(&start).await?.sessions;
        let session = match found.as_slice() {
            [] => return Ok(HandleRevoke::NotFound),
            [one] => one.clone(),
            _ => return Ok(HandleRevoke::Ambiguous(found)),
        };
        let mut kv = self.kv.clone();
        let deleted = self
            .call("delete", kv.delete(session.key.clone(), None))
            .await?;
        Ok(if deleted.deleted() > 0 {
            HandleRevoke::Revoked(session)
        } else {
            HandleRevoke::EndedMeanwhile(session)
        })
    }

    /// Deletes every session of `sessions` (found by a snapshot): one transaction per
    /// [`MAX_TXN_OPS`] sessions, each all or nothing. Stops at the first transaction that
    /// fails, and then reads again to tell what that one did.
    pub async fn revoke_all(&self, sessions: &[Session]) -> IdentityRevoke {
        let mut out = IdentityRevoke::default();
        let mut kv = self.kv.clone();
        let mut batches = sessions.chunks(MAX_TXN_OPS);
        for batch in batches.by_ref() {
            let txn = Txn::new().and_then(
                batch
                    .iter()
                    .map(|s| TxnOp::delete(s.key.clone(), None))
                    .collect::<Vec<_>>(),
            );
            out.transactions += 1;
            match self.call("transaction", kv.txn(txn)).await {
                Ok(response) => {
                    let answers = response.op_responses();
                    for (session, answer) in batch.iter().zip(answers.iter()) {
                        match answer {
                            TxnOpResponse::Delete(d) if d.deleted() > 0 => {
                                out.revoked.push(session.handle.clone());
                            }
                            TxnOpResponse::Delete(_) => {
                                out.ended_meanwhile.push(session.handle.clone());
                            }
                            _ => out.unknown.push(session.handle.clone()),
                        }
                    }
                    for session in batch.iter().skip(answers.len()) {
                        out.unknown.push(session.handle.clone());
                    }
                }
                Err(error) => {
                    self.after_failure(batch, &mut out).await;
                    out.error = Some(error);
                    break;
                }
            }
        }
        for batch in batches {
            out.not_revoked
                .extend(batch.iter().map(|s| s.handle.clone()));
        }
        out
    }

    /// A transaction over `batch` failed (it may still have been applied): which of its
    /// sessions are still there.
    async fn after_failure(&self, batch: &[Session], out: &mut IdentityRevoke) {
        match self.snapshot(&self.prefix).await {
            Ok(now) => {
                for session in batch {
                    if now.sessions.iter().any(|s| s.key == session.key) {
                        out.not_revoked.push(session.handle.clone());
                    } else {
                        out.gone.push(session.handle.clone());
                    }
                }
            }
            Err(_) => out.unknown.extend(batch.iter().map(|s| s.handle.clone())),
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

/// etcd's "prefix + 1" for a byte string.
fn range_end_bytes(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Runs `future` within `timeout`; an error says what failed, and for a connection problem
/// what each endpoint answers to a plain TCP connect.
async fn bounded<T>(
    endpoints: &[String],
    timeout: Duration,
    what: &str,
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(etcd_client::Error::GRpcStatus(status)))
            if status.code() == tonic::Code::Unavailable =>
        {
            Err(EtcdError(format!(
                "cannot reach etcd ({what}): {}; {}",
                status_text(&status),
                probe(endpoints, timeout)
            )))
        }
        Ok(Err(etcd_client::Error::GRpcStatus(status)))
            if status.code() == tonic::Code::DeadlineExceeded =>
        {
            Err(EtcdError(format!(
                "etcd did not answer the {what} within {}: {}; {}",
                crate::input::show_duration(timeout),
                status.message(),
                probe(endpoints, timeout)
            )))
        }
        Ok(Err(etcd_client::Error::GRpcStatus(status))) => Err(EtcdError(format!(
            "etcd refused the {what}: {:?}: {}",
            status.code(),
            status.message()
        ))),
        Ok(Err(error)) => Err(EtcdError(format!(
            "cannot reach etcd ({what}): {}; {}",
            chain(&error),
            probe(endpoints, timeout)
        ))),
        Err(_) => Err(EtcdError(format!(
            "etcd did not answer the {what} within {}; {}",
            crate::input::show_duration(timeout),
            probe(endpoints, timeout)
        ))),
    }
}

/// A gRPC status's message and the error at the root of it (`tcp connect error: Connection
/// refused (os error 111)`), without the debug dump of its Display.
fn status_text(status: &tonic::Status) -> String {
    let mut root: Option<&dyn std::error::Error> = None;
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        root = Some(e);
        source = e.source();
    }
    match root {
        Some(e) => format!("{}: {e}", status.message()),
        None => status.message().to_owned(),
    }
}

/// An error and its sources, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

/// What a plain TCP connect to each endpoint says, for an error message.
fn probe(endpoints: &[String], timeout: Duration) -> String {
    let wait = timeout.min(Duration::from_secs(1));
    let lines: Vec<String> = endpoints
        .iter()
        .map(|url| {
            let authority = url.strip_prefix("http://").unwrap_or(url);
            let outcome = match authority.to_socket_addrs() {
                Err(e) => format!("cannot resolve: {e}"),
                Ok(mut addrs) => match addrs.next() {
                    None => "resolves to no address".to_owned(),
                    Some(addr) => match std::net::TcpStream::connect_timeout(&addr, wait) {
                        Ok(_) => "accepts TCP connections".to_owned(),
                        Err(e) => e.to_string(),
                    },
                },
            };
            format!("{authority}: {outcome}")
        })
        .collect();
    format!("endpoints: {}", lines.join("; "))
}

/// The whole digests of sessions that share a handle, for an ambiguous match.
pub fn digests(sessions: &[Session]) -> String {
    sessions
        .iter()
        .map(|s| {
            s.key
                .get(s.key.len().saturating_sub(32)..)
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_where_core_ends_it() {
        for prefix in ["mcp-sessions/", "a", "mcp-e2e/x-1/"] {
            assert_eq!(
                range_end_bytes(prefix.as_bytes()),
                range_end(prefix),
                "{prefix}"
            );
        }
        assert_eq!(range_end_bytes(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(range_end_bytes(&[0xff]), vec![0]);
    }

    #[test]
    fn a_refused_connection_is_named_per_endpoint() {
        // Port 1 on loopback: nothing listens there.
        let text = probe(
            &["http://127.0.0.1:1".to_owned()],
            Duration::from_millis(200),
        );
        assert!(text.starts_with("endpoints: 127.0.0.1:1: "), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
