//! mcp-session-core: the MCP Streamable HTTP session logic of mcp-session-filter, with no
//! proxy in it.
//!
//! - [`exchange`]: the life of one request and its response, a sans-IO state machine fed
//!   events and answering with header edits, continue, pause, a local reply, or a store
//!   operation to run.
//! - [`plugin`]: what one worker's exchanges share (configuration, store, cache, stats), and
//!   the driver that runs the local store's operations.
//! - [`host`]: the small [`host::Host`] trait the logic needs from a proxy.
//! - [`policy`], [`message`], [`protocol`], [`rejection`]: the decisions, as pure functions.
//! - [`store`], [`record`], [`session_id`], [`cache`]: the sessions.
//! - [`etcd`]: the etcd store (every Envoy of a fleet): its calls and answers, no I/O.
//! - [`config`]: the configuration, parsed and checked.
//! - [`testkit`]: the fake host and helpers shared by every test and fuzz target.
//!
//! The Envoy adapter is the `mcp-session-filter` crate. The design is in `docs/DESIGN.md`.

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
pub mod digest;
pub mod etcd;
pub mod exchange;
pub mod headers;
pub mod host;
pub mod message;
pub mod metrics;
pub mod plugin;
pub mod policy;
pub mod protocol;
pub mod record;
pub mod rejection;
pub mod session_id;
pub mod store;
pub mod testkit;
