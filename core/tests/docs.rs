//! The operator's documentation names every stat the filter reports, so a new rejection
//! cannot ship without its row in docs/OPERATIONS.md.
#![allow(clippy::unwrap_used, clippy::panic)]

use mcp_session_core::metrics::Metric;
use mcp_session_core::rejection::Rejection;

fn operations() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md");
    std::fs::read_to_string(path).unwrap()
}

fn doc(name: &str) -> String {
    let path = format!("{}/../{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap()
}

/// DESIGN.md's rejection table has a row for every reason (it once lacked `identity` and
/// `unavailable`), and its stat list names every rejection counter.
#[test]
fn design_md_lists_every_rejection() {
    use mcp_session_core::rejection::Reason;
    let design = doc("docs/DESIGN.md");
    for reason in Reason::ALL {
        let row = format!("| {} |\n", reason.name());
        assert!(
            design.contains(&row),
            "no row for {} in DESIGN.md's rejections",
            reason.name()
        );
    }
    let list = Reason::ALL.map(Reason::name).join(",");
    assert!(
        design.contains(&format!(".rejected.{{{list}}}")),
        "DESIGN.md's stat list: {list}"
    );
    for rejection in [Rejection::unavailable(), Rejection::no_identity()] {
        assert!(design.contains(&rejection.message), "{}", rejection.message);
    }
}

/// Statements the code made false once, kept out of the docs: the adapter decides (its timer,
/// retries and call tokens are the driver's, but it is the one that hosts them), headers are
/// held on an etcd lookup, and the watch's index is a set, not a map to cache slots.
#[test]
fn the_docs_make_no_claim_the_code_broke() {
    for name in [
        "README.md",
        "docs/DESIGN.md",
        "docs/OPERATIONS.md",
        "deploy/istio/README.md",
    ] {
        let text = doc(name);
        for false_claim in [
            "the filter never pauses request headers,",
            "decides nothing",
            "Headers are never held",
            "never holds request headers",
            "never pauses a request at\n  the headers",
            "a map from etcd key to cache slot",
            "adapter sees only continue, pause or answer",
            "core/src/plugin.rs",
        ] {
            assert!(!text.contains(false_claim), "{name} says {false_claim:?}");
        }
    }
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
