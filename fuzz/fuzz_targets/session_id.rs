#![no_main]
//! `session_id::SessionId::parse` on any header value (the glue turns non-UTF-8 into U+FFFD):
//! only the exact minted format parses, and it encodes back to the same text.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::session_id::SessionId;

fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    if let Some(id) = SessionId::parse(&value) {
        assert_eq!(id.encode(), value);
        assert!(
            !format!("{id:?}").contains(&value[12..]),
            "Debug shows the secret"
        );
    }
});
