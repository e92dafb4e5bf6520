#![no_main]
//! `record::Record::decode` on any shared-data value (another filter version, corruption):
//! never panics, and what it accepts encodes back to bytes that decode to the same record.
use libfuzzer_sys::fuzz_target;
use mcp_session_core::record::Record;

fuzz_target!(|data: &[u8]| {
    if let Some(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()), Some(record));
    }
});
