//! The empty filter: one HTTP context per request that keeps every default callback (each
//! returns Continue without a hostcall). What remains is the price of any Rust proxy-wasm
//! filter in Envoy: the VM entries for each callback and the context's creation and deletion.

use proxy_wasm::traits::{Context, HttpContext};

proxy_wasm::main! {{
    proxy_wasm::set_http_context(|_context_id, _root_context_id| Box::new(EmptyStream));
}}

struct EmptyStream;

impl Context for EmptyStream {}

impl HttpContext for EmptyStream {}
