//! The operator's documentation names every stat the filter reports, so a new rejection
//! cannot ship without its row in docs/OPERATIONS.md.
#![allow(clippy::unwrap_used, clippy::panic)]

use mcp_session_core::metrics::Metric;
use mcp_session_core::rejection::Rejection;

fn operations() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_stat_is_in_operations_md() {
    let doc = operations();
    let missing: Vec<String> = Metric::all()
        .into_iter()
        .map(Metric::name)
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/OPERATIONS.md: {missing:?}");
}

#[test]
fn the_version_rejection_lists_every_handshake_revision() {
    let message = Rejection::unsupported_version().message;
    for revision in mcp_session_core::protocol::HANDSHAKE_REVISIONS {
        assert!(message.contains(revision), "{message}");
    }
}
