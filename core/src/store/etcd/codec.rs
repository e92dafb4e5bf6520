//! How sessions look in etcd (keys, values) and the etcd v3 messages the store sends, built
//! with `prost`; Envoy's `GrpcService` naming the cluster.

use super::*;
use crate::digest;
use crate::record::DIGEST_LEN;
use crate::session_id::SECRET_LEN;
use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;

/// The key of session `id`: the prefix and its digest ([`SessionId::digest`]) in hex, which
/// begins with its handle ([`SessionId::handle`]).
pub fn key(prefix: &str, id: &SessionId) -> Vec<u8> {
    let digest = id.digest();
    let mut key = Vec::with_capacity(prefix.len() + 32);
    key.extend_from_slice(prefix.as_bytes());
    for byte in digest {
        key.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    key
}

/// Where the index of each caller's sessions lives, under the prefix: `<prefix>idn/`. Session
/// keys continue the prefix with a hex digit, so no session key begins with it, and
/// [`sessions_range`] (what the count and the watch read) holds no index key.
pub const INDEX: &str = "idn/";

/// The keys of the sessions alone under `prefix`, `[prefix "0", prefix "g")`: every lowercase
/// hex digit, and nothing of the [`INDEX`] ("i" comes after "g").
pub fn sessions_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = prefix.as_bytes().to_vec();
    let mut end = start.clone();
    start.push(b'0');
    end.push(b'g');
    (start, end)
}

/// The index keys of the caller with identity digest `identity` begin with this:
/// `<prefix>idn/<32 hex: identity digest>/`.
pub fn identity_prefix(prefix: &str, identity: &[u8; DIGEST_LEN]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + INDEX.len() + 2 * DIGEST_LEN + 1);
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(INDEX.as_bytes());
    for byte in identity {
        key.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    key.push(b'/');
    key
}

/// The index key of the session stored under `session_key`, bound to `identity`:
/// [`identity_prefix`] and the session key's digest. Empty value; it is written, leased and
/// deleted with the session key, so counting the keys of an identity prefix counts the
/// caller's sessions (`max_sessions_per_identity`).
pub fn index_key(prefix: &str, identity: &[u8; DIGEST_LEN], session_key: &[u8]) -> Vec<u8> {
    let mut key = identity_prefix(prefix, identity);
    key.extend_from_slice(session_key.get(prefix.len()..).unwrap_or_default());
    key
}

/// The end of the key range of `prefix` (etcd's "prefix + 1").
pub fn range_end(prefix: &str) -> Vec<u8> {
    range_end_of(prefix.as_bytes())
}

/// The end of the key range of the bytes `prefix`.
pub fn range_end_of(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Envoy's `envoy.config.core.v3.GrpcService` naming `cluster`, as a proxy-wasm host takes the
/// upstream of a gRPC call: passing the bare name also works, unless the name's bytes happen to
/// parse as that message (Envoy tries that first; "h1" does). The SDK takes it as a `&str`: the
/// message is ASCII for any ASCII name under 120 bytes (its tags and lengths are single bytes
/// below 0x80); any other name goes bare.
pub fn grpc_service(cluster: &str) -> String {
    let message = encode(&proto::GrpcService {
        envoy_grpc: Some(proto::EnvoyGrpc {
            cluster_name: cluster.to_owned(),
        }),
    });
    String::from_utf8(message).unwrap_or_else(|_| cluster.to_owned())
}

/// The value stored for a record: its encoding with the secret zeroed, and the upstream's own
/// session ID, when it has one, sealed under the session's key ([`seal`]).
pub fn value(record: &Record) -> Vec<u8> {
    let mut stored = record.clone();
    stored.secret = [0; SECRET_LEN];
    stored.encode_sealed(|upstream| seal(&record.secret, upstream))
}

/// The record in a value read back for `id` (the key matched, so the secret is the ID's).
pub fn record_of(value: &[u8], id: &SessionId) -> Option<Record> {
    let mut record = Record::decode_opened(value, |upstream| seal(&id.secret, upstream))?;
    record.secret = id.secret;
    (record.state == State::Live).then_some(record)
}

/// Seals (or opens: the same) a session's upstream session ID in place: ChaCha20 under a key
/// derived from the session's secret. etcd holds no part of that secret (the key is a digest
/// of the ID, the value has its secret zeroed), so only a request that presents the session ID
/// can read the upstream's, which is a credential for the upstream itself. A key seals one
/// text only, so one nonce serves: a session's upstream ID is set once, when the session goes
/// live ([`Record::activated`]), and every later write seals the same bytes again.
fn seal(secret: &[u8; SECRET_LEN], bytes: &mut [u8]) {
    let key = digest::digest(&[SEAL_DOMAIN, secret]);
    ChaCha20::new(&key.into(), &[0; 12].into()).apply_keystream(bytes);
}

/// What the key that seals an upstream session ID is derived under (no other digest of a
/// secret begins with it).
const SEAL_DOMAIN: &[u8] = b"mcp-session-filter upstream id seal\0";

pub(super) fn encode(message: &impl Message) -> Vec<u8> {
    message.encode_to_vec()
}

pub(super) fn range(key: &[u8]) -> proto::RangeRequest {
    proto::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

pub(super) fn put(key: &[u8], record: &Record, lease: i64) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(Request::Put(proto::PutRequest {
            key: key.to_vec(),
            value: value(record),
            lease,
        })),
    }
}

pub(super) fn compare(key: &[u8], target: proto::compare::TargetUnion) -> proto::Compare {
    proto::Compare {
        result: proto::EQUAL,
        target: match target {
            proto::compare::TargetUnion::CreateRevision(_) => proto::TARGET_CREATE,
            proto::compare::TargetUnion::ModRevision(_) => proto::TARGET_MOD,
        },
        key: key.to_vec(),
        target_union: Some(target),
        range_end: Vec::new(),
    }
}

/// No key of `[key, range_end)` was created after `revision` (true for an empty range).
pub(super) fn none_created_since(key: &[u8], range_end: Vec<u8>, revision: i64) -> proto::Compare {
    proto::Compare {
        result: proto::LESS,
        target: proto::TARGET_CREATE,
        key: key.to_vec(),
        target_union: Some(proto::compare::TargetUnion::CreateRevision(
            revision.saturating_add(1),
        )),
        range_end,
    }
}

/// The put of an index key (empty, on the session's lease).
pub(super) fn put_index(key: Vec<u8>, lease: i64) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(Request::Put(proto::PutRequest {
            key,
            value: Vec::new(),
            lease,
        })),
    }
}

/// The delete of one key.
pub(super) fn delete(key: Vec<u8>, prev_kv: bool) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(Request::DeleteRange(proto::DeleteRangeRequest {
            key,
            prev_kv,
        })),
    }
}

/// A count-only read of `[key, range_end)`.
pub(super) fn count(key: Vec<u8>, range_end: Vec<u8>) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(Request::Range(proto::RangeRequest {
            key,
            range_end,
            count_only: true,
        })),
    }
}

/// A Txn: if `key` still has `target`, run `then`; else read the key.
pub(super) fn txn(
    key: &[u8],
    target: proto::compare::TargetUnion,
    then: Vec<proto::RequestOp>,
) -> Call {
    txn_of(vec![compare(key, target)], then, vec![read_op(key)])
}

/// A Txn of its parts.
pub(super) fn txn_of(
    compare: Vec<proto::Compare>,
    success: Vec<proto::RequestOp>,
    failure: Vec<proto::RequestOp>,
) -> Call {
    Call {
        service: KV,
        method: "Txn",
        message: encode(&proto::TxnRequest {
            compare,
            success,
            failure,
        }),
    }
}

/// A read of `key` as a Txn's operation.
pub(super) fn read_op(key: &[u8]) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(Request::Range(range(key))),
    }
}

/// The count the `at`th operation of a Txn's branch read (a count-only read), if it is one.
pub(super) fn counted_at(response: &proto::TxnResponse, at: usize) -> Option<u64> {
    match response.responses.get(at).and_then(|r| r.response.as_ref()) {
        Some(Response::Range(range)) => u64::try_from(range.count).ok(),
        _ => None,
    }
}

/// The key-value a Txn's failure branch read, if any.
pub(super) fn failure_read(response: &proto::TxnResponse) -> Option<&proto::KeyValue> {
    response.responses.iter().find_map(|r| match &r.response {
        Some(Response::Range(range)) => range.kvs.first(),
        _ => None,
    })
}

/// The session ID of a new session with `secret`. The slot only keys the caches; it is drawn
/// from a digest of the secret, not from the secret itself, so the slot (shown in full by the
/// shortened IDs of the logs) tells nothing of the secret.
pub fn session_id(secret: [u8; SECRET_LEN]) -> SessionId {
    let [a, b, c, d, ..] = digest::digest_prefix::<16>(&[b"mcp-session-slot\0", &secret]);
    SessionId {
        slot: u32::from_le_bytes([a, b, c, d]),
        secret,
    }
}

/// The mod revision, as the `u32` tag a lookup carries (unused by the machine).
pub(super) fn revision_tag(revision: i64) -> u32 {
    u32::try_from(revision & 0xffff_ffff).unwrap_or(0)
}

pub(super) fn read(key: &[u8]) -> Call {
    Call {
        service: KV,
        method: "Range",
        message: encode(&range(key)),
    }
}
