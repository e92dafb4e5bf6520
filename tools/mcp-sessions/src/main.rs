//! `mcp-sessions`: lists, counts and ends the MCP sessions that mcp-session-filter keeps in
//! etcd (`store.etcd`). Every Envoy watches the prefix, so a session deleted here is answered
//! 404 by every Envoy of the fleet within the filter's 1 s contract (milliseconds in practice).
//!
//! ```text
//! mcp-sessions [--endpoints H:P,...] [--prefix P] [--timeout 5s] [--json] list
//! mcp-sessions ... count [--by-identity]
//! mcp-sessions ... revoke --handle HANDLE
//! mcp-sessions ... revoke --identity DIGEST | --header VALUE | --claim V1 --claim V2 ... | --peer VALUE
//! ```

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod input;
mod store;
mod view;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use input::{BadInput, Identity};
use serde_json::json;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};
use store::{Etcd, EtcdError, HandleRevoke, IdentityRevoke};

/// Exit statuses.
mod status {
    /// Done.
    pub const OK: u8 = 0;
    /// No session matched the handle or the identity: nothing was deleted.
    pub const NO_MATCH: u8 = 1;
    /// Bad flags or values (clap's usage errors exit 2 too).
    pub const BAD_INPUT: u8 = 2;
    /// etcd could not be reached or refused: nothing was deleted.
    pub const ETCD: u8 = 3;
    /// A revocation stopped part-way: some sessions were deleted, some not (listed), or it is
    /// unknown whether a delete was carried out.
    pub const PARTIAL: u8 = 4;
}

const AFTER_HELP: &str = "\
Exit status: 0 done; 1 no session matched (nothing deleted); 2 bad flags or values, or a handle that matches more \
than one session; \
3 etcd could not be reached or refused (nothing deleted); 4 a revocation stopped part-way \
(what was and was not deleted is printed), or whether a delete was carried out is unknown.

Every Envoy watches the prefix: a revoked session is answered 404 (as an unknown session) by \
every Envoy within a second, in practice milliseconds.";

/// Lists, counts and ends the MCP sessions that mcp-session-filter keeps in etcd.
#[derive(Debug, Parser)]
#[command(name = "mcp-sessions", version, after_help = AFTER_HELP)]
struct Cli {
    /// etcd's client endpoints, comma-separated host:port (etcdctl's format).
    #[arg(
        long,
        global = true,
        env = "ETCDCTL_ENDPOINTS",
        value_name = "HOST:PORT,...",
        default_value = input::DEFAULT_ENDPOINT
    )]
    endpoints: String,

    /// The filter's `store.etcd.prefix` (the default is the filter's).
    #[arg(long, global = true, value_name = "PREFIX")]
    prefix: Option<String>,

    /// Deadline of each call to etcd (5s, 500ms, 1m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s")]
    timeout: String,

    /// Print JSON instead of tables and sentences.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every session: handle, identity digest, initialized, mapped to an upstream session,
    /// age, last use (at the filter's touch granularity).
    List,
    /// The number of sessions in etcd.
    Count {
        /// Per identity digest, most sessions first.
        #[arg(long)]
        by_identity: bool,
    },
    /// Ends sessions: one by its handle, or all of one caller's.
    Revoke(Revoke),
}

#[derive(Debug, Args)]
struct Revoke {
    /// The session's handle (16 hex characters, as access logs and `list` show it).
    #[arg(long, value_name = "HANDLE", conflicts_with_all = ["identity", "header", "claim", "peer"])]
    handle: Option<String>,
    /// All sessions of one caller: its identity digest (32 hex, as `list` shows it), or, with
    /// no value, the caller given by --header, --claim or --peer.
    #[arg(long, value_name = "DIGEST", num_args = 0..=1, default_missing_value = "")]
    identity: Option<String>,
    /// The caller's identity header value (`identity_header`).
    #[arg(long, value_name = "VALUE", conflicts_with_all = ["claim", "peer"])]
    header: Option<String>,
    /// A claim's value (`identity_jwt`), once per configured claim, in the configured order
    /// (default: iss, then sub).
    #[arg(long, value_name = "VALUE", conflicts_with = "peer")]
    claim: Vec<String>,
    /// The peer certificate attribute's value (`identity_peer`: the URI SAN, the subject as
    /// Envoy renders it, or the certificate's SHA-256 in lower-case hex).
    #[arg(long, value_name = "VALUE")]
    peer: Option<String>,
}

/// Why the command failed, and with which exit status.
#[derive(Debug)]
enum Failure {
    Bad(BadInput),
    Etcd(EtcdError),
    NoMatch(String),
    /// The report (stdout) and why it stopped (stderr).
    Partial(String, String),
}

impl From<BadInput> for Failure {
    fn from(e: BadInput) -> Failure {
        Failure::Bad(e)
    }
}

impl From<EtcdError> for Failure {
    fn from(e: EtcdError) -> Failure {
        Failure::Etcd(e)
    }
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Handle(String),
    Identity(Identity),
}

impl Revoke {
    fn target(&self) -> Result<Target, BadInput> {
        if let Some(handle) = &self.handle {
            return Ok(Target::Handle(input::handle(handle)?));
        }
        let given = [
            self.header.is_some(),
            !self.claim.is_empty(),
            self.peer.is_some(),
        ];
        let value = match (&self.header, self.claim.as_slice(), &self.peer) {
            (Some(h), [], None) => Some(Identity::Header(h.clone())),
            (None, [_, ..], None) => Some(Identity::Claims(self.claim.clone())),
            (None, [], Some(p)) => Some(Identity::Peer(p.clone())),
            _ if given.iter().any(|g| *g) => {
                return Err(BadInput(
                    "revoke: give one of --header, --claim, --peer".into(),
                ))
            }
            _ => None,
        };
        match (self.identity.as_deref(), value) {
            (Some(""), Some(v)) | (None, Some(v)) => Ok(Target::Identity(v)),
            (Some(""), None) => Err(BadInput(
                "revoke --identity: give the identity digest (--identity DIGEST), or the caller's value with --header, --claim or --peer".into(),
            )),
            (Some(digest), None) => Ok(Target::Identity(Identity::Digest(digest.to_owned()))),
            (Some(_), Some(_)) => Err(BadInput(
                "revoke: --identity DIGEST names the caller already; leave out --header, --claim and --peer".into(),
            )),
            (None, None) => Err(BadInput(
                "revoke: say which sessions: --handle HANDLE, or one caller's with --identity DIGEST, --header VALUE, --claim VALUE... or --peer VALUE".into(),
            )),
        }
    }
}

/// The command line read from `args` (the program's name first), `--prefix` defaulting to
/// `default_prefix`.
fn parse_args<I, T>(default_prefix: &str, args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let command = Cli::command().mut_arg("prefix", |a| a.default_value(default_prefix.to_owned()));
    command
        .try_get_matches_from(args)
        .and_then(|m| Cli::from_arg_matches(&m))
}

fn main() -> ExitCode {
    let default_prefix = match input::default_prefix() {
        Ok(prefix) => prefix,
        Err(e) => return fail(&Failure::Bad(e)),
    };
    let cli = match parse_args(&default_prefix, std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                status::BAD_INPUT
            } else {
                status::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&Failure::Etcd(EtcdError(format!("cannot start: {e}")))),
    };
    match runtime.block_on(run(&cli)) {
        Ok(text) => {
            out(&text);
            ExitCode::from(status::OK)
        }
        Err(failure) => fail(&failure),
    }
}

/// Writes to standard output; a closed one (`| head`) loses the rest, and the exit status
/// still says what was done (a panic would say 101 after a revoke that worked).
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn fail(failure: &Failure) -> ExitCode {
    let (code, text) = match failure {
        Failure::Bad(e) => (status::BAD_INPUT, format!("mcp-sessions: error: {e}\n")),
        Failure::Etcd(e) => (status::ETCD, format!("mcp-sessions: error: {e}\n")),
        Failure::NoMatch(text) => (status::NO_MATCH, text.clone()),
        Failure::Partial(report, why) => {
            out(report);
            (status::PARTIAL, format!("mcp-sessions: error: {why}\n"))
        }
    };
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    ExitCode::from(code)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn pretty(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Runs the command; the text to print on success.
async fn run(cli: &Cli) -> Result<String, Failure> {
    // Everything the operator typed is checked before etcd is asked anything.
    let endpoints = input::endpoints(&cli.endpoints)?;
    let timeout = input::duration(&cli.timeout)?;
    let prefix = input::prefix(cli.prefix.as_deref().unwrap_or_default())?;
    let target = match &cli.command {
        Command::Revoke(revoke) => Some(revoke.target()?),
        _ => None,
    };
    let digest = match &target {
        Some(Target::Identity(identity)) => Some(identity.digest_hex()?),
        _ => None,
    };
    let etcd = Etcd::connect(&endpoints, timeout, &prefix).await?;
    match (&cli.command, target, digest) {
        (Command::List, _, _) => {
            let snapshot = etcd.snapshot(etcd.prefix()).await?;
            warn_skipped(&snapshot);
            let mut sessions = snapshot.sessions;
            view::sort(&mut sessions);
            Ok(if cli.json {
                pretty(&view::list_json(&sessions, now_ms()))
            } else {
                view::list_table(&sessions, now_ms())
            })
        }
        (Command::Count { by_identity: false }, _, _) => {
            let n = etcd.count().await?;
            Ok(if cli.json {
                pretty(&json!({ "sessions": n }))
            } else {
                format!("{n}\n")
            })
        }
        (Command::Count { by_identity: true }, _, _) => {
            let snapshot = etcd.snapshot(etcd.prefix()).await?;
            warn_skipped(&snapshot);
            let counts = view::by_identity(&snapshot.sessions);
            Ok(if cli.json {
                pretty(&view::by_identity_json(&counts))
            } else {
                view::by_identity_table(&counts)
            })
        }
        (Command::Revoke(_), Some(Target::Handle(handle)), _) => {
            revoke_handle(&etcd, &handle, cli.json).await
        }
        (Command::Revoke(_), _, Some(digest)) => revoke_identity(&etcd, &digest, cli.json).await,
        (Command::Revoke(_), _, _) => {
            Err(Failure::Bad(BadInput("revoke: nothing to revoke".into())))
        }
    }
}

fn warn_skipped(snapshot: &store::Snapshot) {
    if let Some((key, _)) = snapshot.skipped.first() {
        eprintln!(
            "mcp-sessions: warning: {} key(s) under the prefix hold no session record and were left out (first: {:?})",
            snapshot.skipped.len(),
            String::from_utf8_lossy(key)
        );
    }
}

async fn revoke_handle(etcd: &Etcd, handle: &str, json: bool) -> Result<String, Failure> {
    match etcd.revoke_handle(handle).await? {
        HandleRevoke::Revoked(session) => Ok(if json {
            pretty(&json!({"revoked": [session.handle], "identity": session.identity}))
        } else {
            format!(
                "revoked session {} ({}, opened {} ago)\n",
                session.handle,
                session
                    .identity
                    .as_deref()
                    .map_or("bound to no identity".to_owned(), |d| format!(
                        "identity {d}"
                    )),
                view::span(now_ms().saturating_sub(session.created_ms)),
            )
        }),
        HandleRevoke::NotFound { unreadable } => Err(Failure::NoMatch(format!(
            "mcp-sessions: error: no session with handle {handle} under {:?}: nothing revoked{}\n",
            String::from_utf8_lossy(etcd.prefix()),
            if unreadable > 0 {
                format!(" ({unreadable} key(s) with that handle hold a value this tool cannot read as a session record, perhaps a newer filter's: left in place)")
            } else {
                String::new()
            }
        ))),
        HandleRevoke::EndedMeanwhile(session) => Err(Failure::NoMatch(format!(
            "mcp-sessions: error: session {} ended before it could be revoked: nothing revoked\n",
            session.handle
        ))),
        HandleRevoke::GoneAfterError(session, error) => Ok(if json {
            pretty(&json!({"revoked": [session.handle], "identity": session.identity, "note": error.0}))
        } else {
            format!(
                "revoked session {}: it is gone, though etcd's answer to the delete was lost ({error})\n",
                session.handle
            )
        }),
        HandleRevoke::Unknown(session, error) => Err(Failure::Partial(
            String::new(),
            format!(
                "session {}: unknown whether it was revoked ({error}); run `mcp-sessions list` to see",
                session.handle
            ),
        )),
        HandleRevoke::Ambiguous(sessions) => Err(Failure::Bad(BadInput(format!(
            "--handle {handle} matches {} sessions ({}): nothing revoked; give the whole digest",
            sessions.len(),
            store::digests(&sessions)
        )))),
    }
}

async fn revoke_identity(etcd: &Etcd, digest: &str, json: bool) -> Result<String, Failure> {
    let snapshot = etcd.snapshot(etcd.prefix()).await?;
    // A key this tool cannot read may be one of this caller's: say so, as `list` does.
    warn_skipped(&snapshot);
    let sessions: Vec<_> = snapshot
        .sessions
        .into_iter()
        .filter(|s| s.identity.as_deref() == Some(digest))
        .collect();
    if sessions.is_empty() {
        return Err(Failure::NoMatch(format!(
            "mcp-sessions: error: no session of identity {digest} under {:?}: nothing revoked\n",
            String::from_utf8_lossy(etcd.prefix())
        )));
    }
    let outcome = etcd.revoke_all(&sessions).await;
    let text = if json {
        pretty(&identity_json(digest, &outcome))
    } else {
        identity_text(digest, &outcome)
    };
    if outcome.complete() {
        return Ok(text);
    }
    let nothing_done = outcome.revoked.is_empty() && outcome.gone.is_empty();
    match (&outcome.error, nothing_done) {
        (Some(error), true) if outcome.unknown.is_empty() => {
            Err(Failure::Etcd(EtcdError(format!(
                "{error}; nothing revoked ({} session(s) of identity {digest} still there)",
                outcome.not_revoked.len()
            ))))
        }
        _ => Err(Failure::Partial(
            text,
            format!(
                "revocation of identity {digest} stopped part-way: {}",
                outcome
                    .error
                    .as_ref()
                    .map_or("etcd's answer left some sessions out".to_owned(), |e| e
                        .0
                        .clone())
            ),
        )),
    }
}

fn identity_json(digest: &str, o: &IdentityRevoke) -> serde_json::Value {
    json!({
        "identity": digest,
        "complete": o.complete(),
        "revoked": o.revoked,
        "ended_meanwhile": o.ended_meanwhile,
        "gone_after_lost_answer": o.gone,
        "not_revoked": o.not_revoked,
        "unknown": o.unknown,
        "transactions": o.transactions,
        "error": o.error.as_ref().map(|e| e.0.clone()),
    })
}

fn identity_text(digest: &str, o: &IdentityRevoke) -> String {
    let mut out = String::new();
    let how = match o.transactions {
        1 => "in one transaction".to_owned(),
        n => format!(
            "in {n} transactions of at most {} sessions",
            store::SESSIONS_PER_TXN
        ),
    };
    if o.complete() {
        out.push_str(&format!(
            "revoked {} session(s) of identity {digest} ({how}):\n",
            o.revoked.len()
        ));
    } else {
        out.push_str(&format!(
            "INCOMPLETE: revoked {} session(s) of identity {digest} ({how}), not all:\n",
            o.revoked.len()
        ));
    }
    let list = |out: &mut String, handles: &[String]| {
        for h in handles {
            out.push_str("  ");
            out.push_str(h);
            out.push('\n');
        }
    };
    list(&mut out, &o.revoked);
    for (what, handles) in [
        ("ended before their revocation (gone)", &o.ended_meanwhile),
        (
            "gone after a transaction whose answer was lost (most likely revoked by it)",
            &o.gone,
        ),
        ("NOT revoked (still in etcd)", &o.not_revoked),
        (
            "unknown (etcd did not say; run `mcp-sessions list`)",
            &o.unknown,
        ),
    ] {
        if !handles.is_empty() {
            out.push_str(&format!("{} session(s) {what}:\n", handles.len()));
            list(&mut out, handles);
        }
    }
    out
}

#[cfg(test)]
mod tests;
