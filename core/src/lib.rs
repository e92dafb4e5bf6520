//! mcp-session-core: the MCP Streamable HTTP session logic of mcp-session-filter, with no
//! proxy in it.
//!
//! Layers, each touching only those below it (docs/DESIGN.md, "Layers"):
//! - [`driver`]: one worker's filter configuration: feeds the host's events to the request
//!   machine with the time and the CSPRNG as inputs, runs its store operations (cache, local
//!   store, etcd calls), the timer's work and the watch, and counts every stat. A host adapter
//!   carries out what it asks through [`driver::StreamIo`] and [`driver::TimerIo`].
//! - [`exchange`]: the life of one request and its response, a pure state machine:
//!   `(state, event) -> step`.
//! - [`store`]: the session store, one interface over two backends (local shared data, etcd),
//!   its cache, and the one rule of what a record means for a caller.
//! - [`host`]: the small [`host::Host`] trait the logic needs from a proxy.
//! - [`policy`], [`message`], [`protocol`], [`rejection`]: the decisions, as pure functions.
//! - [`grpc`]: gRPC as plain HTTP/2 calls, for a host that makes no gRPC calls of its own.
//! - [`record`], [`session_id`], [`digest`], [`headers`], [`metrics`]: the vocabulary.
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

pub mod config;
pub mod digest;
pub mod driver;
pub mod exchange;
pub mod grpc;
pub mod headers;
pub mod host;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod record;
pub mod rejection;
pub mod session_id;
pub mod store;
pub mod testkit;

/// A hash map for keys the filter makes itself (its stats, its store's keys, slots of sessions
/// it validated), never ones a client chooses: foldhash with a fixed seed, a few
/// multiplications where SipHash's defence against chosen keys costs a hundred instructions
/// per lookup on the request path.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
