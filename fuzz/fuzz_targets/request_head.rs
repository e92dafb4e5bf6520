#![no_main]
//! `policy::on_request_headers` with any header values under a few configurations: never
//! panics, and a session verdict always names the ID the client sent.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::config::Config;
use mcp_session_core::policy::{on_request_headers, HeadVerdict, RequestHead};

const CONFIGS: [&str; 4] = [
    "{}",
    r#"{"paths":["/mcp"],"allow_delete":false}"#,
    r#"{"stateless":true}"#,
    r#"{"identity_header":"x-user","enforce_initialized":false}"#,
];

#[derive(Arbitrary, Debug)]
struct Head {
    config: u8,
    method: String,
    path: String,
    session_id: Option<String>,
    protocol_version: Option<String>,
    content_type: Option<String>,
    content_length: Option<String>,
    session_id_repeated: bool,
    protocol_version_repeated: bool,
    identity_repeated: bool,
}

fuzz_target!(|h: Head| {
    let config = CONFIGS[usize::from(h.config) % CONFIGS.len()];
    let cfg = Config::parse(config.as_bytes()).expect("the fixed configurations are valid");
    let head = RequestHead {
        method: h.method.as_bytes(),
        path: h.path.as_bytes(),
        session_id: h.session_id.as_deref().map(str::as_bytes),
        protocol_version: h.protocol_version.as_deref().map(str::as_bytes),
        content_type: h.content_type.as_deref().map(str::as_bytes),
        content_length: h.content_length.as_deref().map(str::as_bytes),
        session_id_repeated: h.session_id_repeated,
        protocol_version_repeated: h.protocol_version_repeated,
        identity_repeated: h.identity_repeated,
    };
    if let HeadVerdict::Session { id } = on_request_headers(&cfg, &head) {
        assert_eq!(Some(id.encode().as_str()), h.session_id.as_deref());
        assert!(
            !h.session_id_repeated,
            "a repeated session header is never a session"
        );
    }
});
