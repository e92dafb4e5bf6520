#![no_main]
//! `message::SseScanner::feed`: a stream cut into arbitrary chunks gives the outcome the whole
//! stream gives in one call.
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mcp_session_core::message::SseScanner;

#[derive(Arbitrary, Debug)]
struct Input {
    cuts: Vec<u8>,
    stream: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let whole = SseScanner::default().feed(&input.stream);
    let mut scanner = SseScanner::default();
    let mut rest = &input.stream[..];
    let mut chunked = None;
    for cut in input.cuts.iter().cycle().take(rest.len() + 1) {
        let (chunk, tail) = rest.split_at(usize::from(*cut).min(rest.len()));
        rest = tail;
        chunked = chunked.or_else(|| scanner.feed(chunk));
    }
    chunked = chunked.or_else(|| scanner.feed(rest));
    assert_eq!(chunked, whole);
});
