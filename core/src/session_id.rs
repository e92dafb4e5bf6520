//! The session ID the filter mints and checks.
//!
//! Format: 40 lowercase hex characters, `<8: slot><32: secret>`. The slot names the shared-data
//! record; the 128-bit secret, drawn from the host CSPRNG and compared in constant time, proves
//! the caller holds the session. Everything is visible ASCII, as the spec requires.

use std::fmt;

/// Bytes of secret in a session ID (128 bits).
pub const SECRET_LEN: usize = 16;

/// Characters in an encoded session ID.
pub const ENCODED_LEN: usize = 8 + 2 * SECRET_LEN;

/// A parsed session ID.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    /// Index of the shared-data slot holding the session record.
    pub slot: u32,
    /// The random part, compared against the record's copy.
    pub secret: [u8; SECRET_LEN],
}

impl SessionId {
    /// Parses a header value; `None` for anything not exactly in the minted format.
    pub fn parse(value: &str) -> Option<SessionId> {
        SessionId::parse_bytes(value.as_bytes())
    }

    /// [`SessionId::parse`] of a header value as it came (no UTF-8 check needed: only ASCII
    /// hex digits are accepted).
    pub fn parse_bytes(bytes: &[u8]) -> Option<SessionId> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let (slot_hex, secret_hex) = bytes.split_at(8);
        let slot = decode_slot(slot_hex)?;
        let mut secret = [0u8; SECRET_LEN];
        decode_hex(secret_hex, &mut secret)?;
        Some(SessionId { slot, secret })
    }

    /// The header value for this ID.
    pub fn encode(&self) -> String {
        self.encoded().to_string()
    }

    /// The header value for this ID, on the stack.
    pub fn encoded(&self) -> Encoded {
        let mut digits = [0u8; ENCODED_LEN];
        let bytes = self.slot.to_be_bytes().into_iter().chain(self.secret);
        for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&hex_pair(b));
        }
        Encoded(digits)
    }

    /// 128 bits of the ID's SHA-256: a name for the session that does not let anyone use it,
    /// the same on every Envoy (the etcd store keys sessions by it, in hex).
    pub fn digest(&self) -> [u8; 16] {
        crate::digest::digest_prefix(&[b"mcp-session-id\0", self.encode().as_bytes()])
    }

    /// The session's handle for access logs, traces and `mcp-sessions`: the first 64 bits of
    /// [`SessionId::digest`] in hex (16 characters), which begin its etcd key.
    pub fn handle(&self) -> String {
        let mut out = String::with_capacity(16);
        push_hex(&mut out, self.digest().get(..8).unwrap_or_default());
        out
    }

    /// A short form safe for logs: the slot and the first 2 bytes of the secret.
    pub fn short(&self) -> String {
        let mut out = format!("{:08x}:", self.slot);
        push_hex(&mut out, self.secret.get(..2).unwrap_or_default());
        out.push('…');
        out
    }
}

/// A session ID's header value ([`SessionId::encoded`]): its 40 hex digits, as text.
#[derive(Clone, Copy)]
pub struct Encoded([u8; ENCODED_LEN]);

impl Encoded {
    /// The digits as bytes, with no UTF-8 check (a header value a host takes as bytes).
    pub fn as_bytes(&self) -> &[u8; ENCODED_LEN] {
        &self.0
    }
}

impl std::ops::Deref for Encoded {
    type Target = str;

    fn deref(&self) -> &str {
        // Hex digits only: the check cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Never prints the secret in full, so an ID cannot leak through a `{:?}` in a log line.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.short())
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Appends `bytes` in lowercase hex: twenty bytes at a time onto the stack, two digits per byte
/// from one table, then pushed as one `str` (a push per digit checks the capacity each time).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for chunk in bytes.chunks(ENCODED_LEN / 2) {
        let mut digits = [0u8; ENCODED_LEN];
        for (pair, &b) in digits.chunks_exact_mut(2).zip(chunk) {
            pair.copy_from_slice(&hex_pair(b));
        }
        let digits = digits.get(..chunk.len() * 2).unwrap_or_default();
        out.push_str(std::str::from_utf8(digits).unwrap_or_default());
    }
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Every byte's two lowercase hex digits. Built at compile time, where an index out of range
/// fails the build rather than panicking.
#[allow(clippy::indexing_slicing)]
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0x0f]];
        b += 1;
    }
    pairs
};

/// The two lowercase hex digits of `b` (a table lookup: any `u8` is in range, so the compiler
/// drops the bounds check).
fn hex_pair(b: u8) -> [u8; 2] {
    HEX_PAIRS.get(usize::from(b)).copied().unwrap_or_default()
}

/// The lowercase hex digit of `n`'s low four bits (a table lookup: the index is below 16, so
/// the compiler drops the bounds check).
pub fn hex_digit(n: u8) -> u8 {
    DIGITS.get(usize::from(n & 0x0f)).copied().unwrap_or(b'0')
}

/// A slot as an ID (and a slot's shared-data key) spells it: exactly eight lowercase hex digits.
pub fn decode_slot(digits: &[u8]) -> Option<u32> {
    let mut bytes = [0u8; 4];
    decode_hex(digits, &mut bytes)?;
    Some(u32::from_be_bytes(bytes))
}

/// Decodes lowercase hex into `out` (exactly twice as many digits as bytes, in groups of
/// eight digits, as a session ID's slot and secret are).
fn decode_hex(digits: &[u8], out: &mut [u8]) -> Option<()> {
    if digits.len() != out.len() * 2 || digits.len() % 8 != 0 {
        return None;
    }
    for (eight, four) in digits.chunks_exact(8).zip(out.chunks_exact_mut(4)) {
        let word = decode_word(u64::from_le_bytes(eight.try_into().ok()?))?;
        four.copy_from_slice(&word.to_le_bytes());
    }
    Some(())
}

/// Eight lowercase hex digits, loaded little-endian, as the four bytes they spell (in the
/// same order), or `None`: all eight at once, as a few word operations, not a branch per
/// digit (this runs on every request).
fn decode_word(word: u64) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    if word & HIGH != 0 {
        return None;
    }
    // The high bit of each byte set where that byte is `c` or more: every byte is below 0x80,
    // and adding at most 0x50 to it carries into no neighbour.
    let at_least = |c: u8| word + ONES * u64::from(0x80 - c);
    let digit = at_least(b'0') & !at_least(b'9' + 1);
    let letter = at_least(b'a') & !at_least(b'f' + 1);
    if (digit | letter) & HIGH != HIGH {
        return None;
    }
    // A digit's value is its low nibble; a letter's, its low nibble and 9.
    let nibbles = (word & (ONES * 0x0f)) + ((letter & HIGH) >> 7) * 9;
    // Each 16-bit lane holds a pair of digits (high first): its low byte becomes that byte.
    let lanes = 0x000f_000f_000f_000f;
    let pairs = ((nibbles & lanes) << 4) | ((nibbles >> 8) & lanes);
    let pairs = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    u32::try_from((pairs | (pairs >> 16)) & 0xffff_ffff).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionId {
        SessionId {
            slot: 0x0102_a0ff,
            secret: [
                0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xfe, 0xff,
            ],
        }
    }

    #[test]
    fn hex_of_any_length_is_each_byte_in_two_lowercase_digits() {
        let bytes: Vec<u8> = (0..=255u8).rev().step_by(7).collect();
        for len in 0..=bytes.len() {
            let mut out = String::from("x");
            push_hex(&mut out, &bytes[..len]);
            let want: String = bytes[..len].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(out, format!("x{want}"), "{len} bytes");
        }
    }

    /// Every byte value, and inputs longer than one stack buffer, as `format!` writes them.
    #[test]
    fn push_hex_writes_what_format_does() {
        let all: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 19, 20, 21, 45, 256] {
            let bytes = all.get(..len).unwrap();
            let mut out = String::from("x");
            push_hex(&mut out, bytes);
            let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(out, format!("x{want}"), "{len} bytes");
        }
    }

    #[test]
    fn encodes_and_parses_round_trip() {
        let id = sample();
        let text = id.encode();
        assert_eq!(text, "0102a0ffdeadbeef00010203040506070809feff");
        assert_eq!(text.len(), ENCODED_LEN);
        assert!(text.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert_eq!(SessionId::parse(&text), Some(id));
    }

    #[test]
    fn rejects_anything_else() {
        let good = sample().encode();
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("short", good[..39].to_string()),
            ("long", format!("{good}0")),
            ("uppercase", good.to_uppercase()),
            ("non-hex", format!("{}g", &good[..39])),
            ("space", format!(" {}", &good[1..])),
            ("uuid", "550e8400-e29b-41d4-a716-446655440000".to_string()),
            ("multibyte", format!("{}é", &good[..38])),
        ];
        for (name, value) in cases {
            assert_eq!(SessionId::parse(&value), None, "{name}");
        }
    }

    #[test]
    fn every_byte_but_a_lowercase_hex_digit_is_refused_at_every_position() {
        let good = sample().encode().into_bytes();
        for at in 0..good.len() {
            for byte in 0..=255u8 {
                let mut value = good.clone();
                value[at] = byte;
                let digit = byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
                let parsed = SessionId::parse_bytes(&value);
                assert_eq!(parsed.is_some(), digit, "byte {byte:#x} at {at}");
                if let Some(id) = parsed {
                    assert_eq!(id.encode().into_bytes(), value);
                }
            }
        }
    }

    #[test]
    fn debug_and_short_never_show_the_whole_secret() {
        let id = sample();
        assert_eq!(id.short(), "0102a0ff:dead…");
        let debug = format!("{id:?}");
        assert!(!debug.contains("beef"), "{debug}");
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn the_handle_names_a_session_without_revealing_it_and_begins_its_etcd_key() {
        let id = SessionId {
            slot: 7,
            secret: [3; SECRET_LEN],
        };
        let handle = id.handle();
        assert_eq!(handle.len(), 16);
        assert!(!id.encode().contains(&handle));
        let key = crate::store::etcd::key("p/", &id);
        assert!(key.starts_with(format!("p/{handle}").as_bytes()));
        let other = SessionId { slot: 8, ..id };
        assert_ne!(other.handle(), handle);
    }
}
