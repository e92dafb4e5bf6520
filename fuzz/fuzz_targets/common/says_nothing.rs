//! Shared by the fuzz targets that answer etcd calls (`exchange`, `etcd_replies`).

use mcp_session_core::store::etcd::{proto, Call, Reply, KV, LEASE};
use prost::Message;

/// Whether an answer to `call` says nothing: the call failed, its bytes do not decode as the
/// call's response, or a lease grant granted nothing.
pub fn says_nothing(call: &Call, reply: Reply<'_>) -> bool {
    let Reply::Ok(bytes) = reply else {
        return true;
    };
    match (call.service, call.method) {
        (KV, "Range") => proto::RangeResponse::decode(bytes).is_err(),
        (KV, "DeleteRange") => proto::DeleteRangeResponse::decode(bytes).is_err(),
        (KV, "Txn") => proto::TxnResponse::decode(bytes).is_err(),
        (LEASE, "LeaseGrant") => proto::LeaseGrantResponse::decode(bytes)
            .map_or(true, |r| r.id == 0 || !r.error.is_empty()),
        other => panic!("an unexpected call to etcd: {other:?}"),
    }
}
