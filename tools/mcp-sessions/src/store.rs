//! The sessions in etcd, through its v3 API (the `etcd-client` crate): read them all as one
//! snapshot, count them, and delete them by handle or by identity.

use crate::view::{NotASession, Session};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};
use mcp_session_core::store::etcd::{sessions_range, INDEX};
use std::cell::Cell;
use std::future::Future;
use std::net::ToSocketAddrs;
use std::time::Duration;

/// Keys read per call: each page is a few hundred kilobytes at most, far below the client's
/// 4 MiB message limit; the pages are read at one revision, so they form one snapshot.
const PAGE: i64 = 1000;

/// Most deletes in one transaction: etcd's default `--max-txn-ops` (128).
pub const MAX_TXN_OPS: usize = 128;

/// Sessions revoked per transaction: each is two deletes, its key and its index key.
pub const SESSIONS_PER_TXN: usize = MAX_TXN_OPS / 2;

/// etcd could not do what was asked; nothing was changed unless the caller says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdError(pub String);

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One endpoint's client.
struct Member {
    /// `host:port`.
    name: String,
    kv: KvClient,
}

/// The connection: a client per endpoint (a call goes to the one that answered last, and on
/// to the next when it cannot be reached), each call's deadline, the key prefix.
pub struct Etcd {
    members: Vec<Member>,
    current: Cell<usize>,
    timeout: Duration,
    prefix: Vec<u8>,
}

/// How one call to one endpoint failed.
enum Attempt {
    /// Not reached, or it has no leader: the call was not carried out; the next may answer.
    Unreachable(String),
    /// No answer in time: a read can go to the next; a write may have been applied.
    Timeout(String),
    /// etcd answered with an error: no other member would answer otherwise.
    Refused(String),
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
    /// No session has that handle; `unreadable` keys with it hold a value this tool cannot
    /// read as a record (a newer filter's format?), left in place.
    NotFound { unreadable: usize },
    /// It was there, and gone before the delete (it ended, or someone else ended it).
    EndedMeanwhile(Session),
    /// More than one session begins with that handle: nothing was deleted.
    Ambiguous(Vec<Session>),
    /// The delete got no answer, and a read afterwards found the session gone.
    GoneAfterError(Session, EtcdError),
    /// The delete got no answer, and no read could tell whether the session is gone.
    Unknown(Session, EtcdError),
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
    /// Whether every session found is gone for sure: deleted by this call, ended on its own,
    /// or found gone by the read after a transaction whose answer was lost.
    pub fn complete(&self) -> bool {
        self.not_revoked.is_empty() && self.unknown.is_empty()
    }
}

impl Etcd {
    /// Clients for `endpoints` (URLs), each call bounded by `timeout`, reading `prefix`. Nothing
    /// is sent yet.
    pub async fn connect(
        endpoints: &[String],
        timeout: Duration,
        prefix: &str,
    ) -> Result<Etcd, EtcdError> {
        let options = ConnectOptions::new()
            // Each call's deadline is `attempt`'s, which tells a timeout from a refusal.
            .with_connect_timeout(timeout)
            // A member cut off from the leader refuses instead of serving what it last knew.
            .with_require_leader(true);
        let mut members = Vec::with_capacity(endpoints.len());
        for url in endpoints {
            let name = url.strip_prefix("http://").unwrap_or(url).to_owned();
            // Connecting only builds the channel: its connection is made by the first call.
            let client = tokio::time::timeout(
                timeout,
                Client::connect([url.as_str()], Some(options.clone())),
            )
            .await
            .map_err(|_| EtcdError(format!("{name}: the client did not start")))?
            .map_err(|e| EtcdError(format!("{name}: {}", chain(&e))))?;
            members.push(Member {
                name,
                kv: client.kv_client(),
            });
        }
        Ok(Etcd {
            members,
            current: Cell::new(0),
            timeout,
            prefix: prefix.as_bytes().to_vec(),
        })
    }

    /// Makes the call `what` with `call` on the member that answered last, and on the next
    /// ones while a member cannot be reached (or, for a read, does not answer in time).
    /// `write`: a call that may have been applied when its answer did not come in time, so it
    /// is not made again elsewhere.
    async fn call<T, F, Fut>(&self, what: &str, write: bool, mut call: F) -> Result<T, EtcdError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.members.len();
        let first = self.current.get();
        let mut failures = Vec::new();
        for i in 0..n {
            let index = (first + i) % n;
            let Some(member) = self.members.get(index) else {
                continue;
            };
            match attempt(&member.name, self.timeout, call(member.kv.clone())).await {
                Ok(value) => {
                    self.current.set(index);
                    return Ok(value);
                }
                Err(Attempt::Refused(why)) => {
                    return Err(EtcdError(format!(
                        "etcd ({}) refused the {what}: {why}",
                        member.name
                    )))
                }
                Err(Attempt::Timeout(why)) if write => {
                    return Err(EtcdError(format!(
                        "etcd did not answer the {what} in time ({}: {why}): it may or may not have been carried out",
                        member.name
                    )))
                }
                Err(Attempt::Unreachable(why) | Attempt::Timeout(why)) => {
                    failures.push(format!("{}: {why}", member.name));
                }
            }
        }
        Err(EtcdError(format!(
            "cannot reach etcd ({what}): {}",
            failures.join("; ")
        )))
    }

    /// The number of session keys under the prefix (one count-only read, as the filter's
    /// `max_sessions` count is taken: the callers' index keys under `<prefix>idn/` are not
    /// sessions).
    pub async fn count(&self) -> Result<u64, EtcdError> {
        let (start, end) = sessions_range(&String::from_utf8_lossy(&self.prefix));
        let options = GetOptions::new().with_range(end).with_count_only();
        let response = self
            .call("count", false, |mut kv| {
                let options = options.clone();
                let key = start.clone();
                async move { kv.get(key, Some(options)).await }
            })
            .await?;
        Ok(u64::try_from(response.count()).unwrap_or(0))
    }

    /// Every session under the prefix (whose keys begin with `start`, a longer prefix), read
    /// in pages at one revision (linearizable). The whole prefix is read without the callers'
    /// index (`<prefix>idn/`, kept by the filter with `max_sessions_per_identity`).
    pub async fn snapshot(&self, start: &[u8]) -> Result<Snapshot, EtcdError> {
        let (mut from, end) = if start == self.prefix.as_slice() {
            sessions_range(&String::from_utf8_lossy(&self.prefix))
        } else {
            (start.to_vec(), range_end_bytes(start))
        };
        let mut out = Snapshot::default();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if out.revision > 0 {
                options = options.with_revision(out.revision);
            }
            let response = self
                .call("read", false, |mut kv| {
                    let options = options.clone();
                    let key = from.clone();
                    async move { kv.get(key, Some(options)).await }
                })
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
        let snapshot = self.snapshot(&start).await?;
        let found = snapshot.sessions;
        let session = match found.as_slice() {
            [] => {
                let unreadable = snapshot.skipped.len();
                return Ok(HandleRevoke::NotFound { unreadable });
            }
            [one] => one.clone(),
            _ => return Ok(HandleRevoke::Ambiguous(found)),
        };
        let deletes = self.deletes(&session);
        let sent = self
            .call("delete", true, |mut kv| {
                let txn = Txn::new().and_then(deletes.clone());
                async move { kv.txn(txn).await }
            })
            .await;
        let deleted = match sent {
            Ok(deleted) => deleted,
            // It may or may not have been carried out: look.
            Err(error) => {
                return match self.snapshot(&session.key).await {
                    Ok(now) if now.sessions.iter().any(|s| s.key == session.key) => Err(error),
                    Ok(_) => Ok(HandleRevoke::GoneAfterError(session, error)),
                    Err(_) => Ok(HandleRevoke::Unknown(session, error)),
                };
            }
        };
        let deleted = match deleted.op_responses().first() {
            Some(TxnOpResponse::Delete(d)) => d.deleted(),
            _ => 0,
        };
        Ok(if deleted > 0 {
            HandleRevoke::Revoked(session)
        } else {
            HandleRevoke::EndedMeanwhile(session)
        })
    }

    /// Deletes every session of `sessions` (found by a snapshot): one transaction per
    /// [`SESSIONS_PER_TXN`] sessions (with their index keys), each all or nothing. Stops at the first transaction that
    /// fails, and then reads again to tell what that one did.
    pub async fn revoke_all(&self, sessions: &[Session]) -> IdentityRevoke {
        let mut out = IdentityRevoke::default();
        let mut batches = sessions.chunks(SESSIONS_PER_TXN);
        for batch in batches.by_ref() {
            let deletes: Vec<TxnOp> = batch.iter().flat_map(|s| self.deletes(s)).collect();
            out.transactions += 1;
            let sent = self
                .call("transaction", true, |mut kv| {
                    let txn = Txn::new().and_then(deletes.clone());
                    async move { kv.txn(txn).await }
                })
                .await;
            match sent {
                Ok(response) => {
                    // Each session's key, then its index key: the first of each pair says.
                    let answers: Vec<TxnOpResponse> =
                        response.op_responses().into_iter().step_by(2).collect();
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

    /// The deletes that end `session`: its key, then its index key (the filter keeps one with
    /// `max_sessions_per_identity`; deleting a key that is not there is no error), so the
    /// caller's place is freed with it.
    fn deletes(&self, session: &Session) -> Vec<TxnOp> {
        let mut deletes = vec![TxnOp::delete(session.key.clone(), None)];
        deletes.extend(index_key(&self.prefix, session).map(|index| TxnOp::delete(index, None)));
        deletes
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

/// The key of `session` in its caller's index, `<prefix>idn/<identity digest>/<session
/// digest>` (core's `store::etcd::index_key`), when it is bound to a caller.
fn index_key(prefix: &[u8], session: &Session) -> Option<Vec<u8>> {
    let identity = session.identity.as_ref()?;
    let digest = session.key.get(prefix.len()..)?;
    let mut index = prefix.to_vec();
    index.extend_from_slice(INDEX.as_bytes());
    index.extend_from_slice(identity.as_bytes());
    index.push(b'/');
    index.extend_from_slice(digest);
    Some(index)
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

/// Runs one call to the member `name` within `timeout`.
async fn attempt<T>(
    name: &str,
    timeout: Duration,
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Attempt> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(etcd_client::Error::GRpcStatus(status))) => match status.code() {
            // etcd's own Unavailable ("etcdserver: request timed out", "leader changed") may
            // come after the change was applied: a write so answered is not sent again
            // elsewhere, as one that got no answer. Any other is the connection's.
            tonic::Code::Unavailable if status.message().starts_with("etcdserver:") => {
                Err(Attempt::Timeout(status_text(&status)))
            }
            tonic::Code::Unavailable => Err(Attempt::Unreachable(status_text(&status))),
            tonic::Code::DeadlineExceeded => Err(Attempt::Timeout(format!(
                "no answer within {} ({})",
                crate::input::show_duration(timeout),
                probe(name, timeout)
            ))),
            code => Err(Attempt::Refused(format!("{code:?}: {}", status.message()))),
        },
        Ok(Err(error)) => Err(Attempt::Unreachable(chain(&error))),
        Err(_) => Err(Attempt::Timeout(format!(
            "no answer within {} ({})",
            crate::input::show_duration(timeout),
            probe(name, timeout)
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

/// What a plain TCP connect to `authority` (`host:port`) says, for an error message.
fn probe(authority: &str, timeout: Duration) -> String {
    let wait = timeout.min(Duration::from_secs(1));
    match authority.to_socket_addrs() {
        Err(e) => format!("cannot resolve: {e}"),
        Ok(mut addrs) => match addrs.next() {
            None => "resolves to no address".to_owned(),
            Some(addr) => match std::net::TcpStream::connect_timeout(&addr, wait) {
                Ok(_) => "the port accepts TCP connections".to_owned(),
                Err(e) => format!("a TCP connect says: {e}"),
            },
        },
    }
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
    fn a_sessions_index_key_is_the_one_the_filter_writes() {
        use mcp_session_core::record::identity_digest;
        use mcp_session_core::session_id::SessionId;
        use mcp_session_core::store::etcd;
        let prefix = "mcp-sessions/";
        let id = SessionId {
            slot: 1,
            secret: [7; 16],
        };
        let key = etcd::key(prefix, &id);
        let digest = identity_digest(Some(b"alice"));
        let session = Session {
            key: key.clone(),
            handle: String::new(),
            identity: Some(crate::input::hex(&digest)),
            initialized: true,
            mapped: false,
            upstream_host: None,
            pending: false,
            created_ms: 0,
            last_seen_ms: 0,
        };
        assert_eq!(
            index_key(prefix.as_bytes(), &session),
            Some(etcd::index_key(prefix, &digest, &key))
        );
        let unbound = Session {
            identity: None,
            ..session
        };
        assert_eq!(index_key(prefix.as_bytes(), &unbound), None);
    }

    /// Review: a delete etcd answered "request timed out" (gRPC Unavailable, maybe applied)
    /// was sent again to the next member, and a revoke that had worked reported "nothing
    /// revoked". etcd's own Unavailable is an answer that may have been carried out; the
    /// connection's is not.
    #[tokio::test]
    async fn etcds_own_unavailable_may_have_been_applied_and_a_connections_was_not() {
        let answer = |message: &'static str| async move {
            Err::<(), _>(etcd_client::Error::GRpcStatus(tonic::Status::unavailable(
                message,
            )))
        };
        let timeout = Duration::from_secs(1);
        for message in [
            "etcdserver: request timed out",
            "etcdserver: leader changed",
        ] {
            let got = attempt("m1", timeout, answer(message)).await;
            assert!(matches!(got, Err(Attempt::Timeout(_))), "{message}");
        }
        let got = attempt("m1", timeout, answer("error trying to connect")).await;
        assert!(matches!(got, Err(Attempt::Unreachable(_))));
    }

    #[test]
    fn the_range_of_a_prefix_ends_where_core_ends_it() {
        use mcp_session_core::store::etcd::range_end;
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
    fn a_probe_says_what_a_tcp_connect_says() {
        // Port 1 on loopback: nothing listens there.
        let text = probe("127.0.0.1:1", Duration::from_millis(200));
        assert!(text.starts_with("a TCP connect says: "), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert_eq!(
            probe(&open, Duration::from_millis(200)),
            "the port accepts TCP connections"
        );
    }
}
