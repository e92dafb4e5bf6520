//! mcp-session-filter: an Envoy HTTP filter (proxy-wasm) that gives any MCP server
//! spec-correct Streamable HTTP session management.
//!
//! The design, the session-store format and the rejection table are in `docs/DESIGN.md`.
//! Everything except [`filter`] (the Envoy glue, built only for wasm) is plain Rust with no
//! proxy-wasm in it, unit-tested on the host.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod cache;
pub mod config;
pub mod headers;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod record;
pub mod rejection;
pub mod session_id;
pub mod sha256;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod filter;
