#![no_main]
//! `config::Config::parse` on any plugin configuration: never panics; what it accepts is in
//! range.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = Config::parse(data) {
        assert!(cfg.idle_timeout_ms >= 1000 && cfg.max_sessions >= 1 && cfg.max_body_bytes >= 1);
        assert!(cfg
            .paths
            .as_ref()
            .is_none_or(|p| p.iter().all(|p| cfg.guards(p.as_bytes()))));
    }
});
