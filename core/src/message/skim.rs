//! A quick reading of the usual message: one JSON object, checked whole in one pass with no
//! allocation, keeping what serde_json's reading keeps ([`super::Message`]).
//!
//! serde_json reads an `initialize` request of 165 bytes in about 3,700 instructions (a third
//! of the native module's own work on an initialize; jiter, tried as well, took more), most of
//! it in the machinery it needs for any type: key and value visitors, its skipping of strings
//! tuned for long ones, a heap stack for nested values. A JSON-RPC message needs none of it.
//!
//! The rule that keeps the two readings one: this reader answers only for a body that serde_json
//! reads the same way, and otherwise says nothing (`None`), and serde_json reads the body as it
//! always did. It says nothing on any syntax error, a body that is not one object (a batch, a
//! scalar), a member name with an escape (serde_json unescapes it, so `"\u006dethod"` is
//! `method`) or a byte past ASCII (serde_json checks it as UTF-8), a method that is not a plain ASCII string, an id that is not UTF-8, or nesting past
//! [`MAX_DEPTH`]. What it accepts is the JSON grammar (RFC 8259) where serde_json's skipping
//! accepts it: escapes are checked as escapes, control characters refused, bytes past ASCII in
//! strings it skips left unchecked (as serde_json leaves them). `parse_body` compares the two
//! on every mutation of a set of bodies (`tests::skim_agrees_with_serde_json`), and so does the
//! `parse_body` fuzz target on any bytes.

use super::{message_of, Message, Method, MethodValue};

/// Deepest nesting of a member's value read here (serde_json reads a method that is an array or
/// an object to 128 levels; a message nested deeper than this is left to it). At most 64: the
/// open containers are bits of a word.
const MAX_DEPTH: u32 = 32;

/// The message `bytes` hold, when they hold one object this reader reads as serde_json does.
pub(super) fn message(bytes: &[u8]) -> Option<Message> {
    let mut skim = Skim { bytes, at: 0 };
    skim.space();
    skim.eat(b'{')?;
    let (mut method, mut id, mut error, mut result) = (None, None, false, false);
    skim.space();
    if skim.peek() == Some(b'}') {
        skim.at += 1;
    } else {
        // Every member is read as serde_json's visitor reads it: the last `method` and `id`
        // win, `error` and `result` count wherever they are.
        loop {
            let key = skim.member_name()?;
            if key.escaped || !key.ascii {
                return None; // serde_json unescapes it, and checks it as UTF-8
            }
            match key.text {
                b"method" => method = Some(skim.method()?),
                b"id" => id = Some(skim.raw()?),
                other => {
                    // `"error": null` is no error (a serializer that writes every field).
                    let null = skim
                        .bytes
                        .get(skim.at..)
                        .is_some_and(|v| v.starts_with(b"null"));
                    error |= other == b"error" && !null;
                    result |= other == b"result";
                    skim.value()?;
                }
            }
            skim.space();
            match skim.next()? {
                b',' => skim.space(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    skim.space();
    if skim.at != bytes.len() {
        return None;
    }
    Some(message_of(method.map(MethodValue::Name), id, error, result))
}

/// A string's contents as written, and whether they hold an escape or a byte past ASCII.
struct Text<'a> {
    text: &'a [u8],
    escaped: bool,
    ascii: bool,
}

/// A reading position in a body.
struct Skim<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Skim<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline]
    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    #[inline]
    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// Skips JSON's four whitespace bytes (in compact JSON, none: one comparison finds that,
    /// every byte above the space being something else).
    #[inline]
    fn space(&mut self) {
        if self.peek().is_some_and(|b| b <= b' ') {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
                self.at += 1;
            }
        }
    }

    /// The rest of a string whose opening quote was read. Plain bytes are passed over eight at
    /// a time ([`specials`]); the byte that ends a run is looked at alone.
    #[inline(always)]
    fn string(&mut self) -> Option<Text<'a>> {
        let bytes = self.bytes;
        let start = self.at;
        let mut at = start;
        let (mut escaped, mut ascii) = (false, true);
        loop {
            while let Some(word) = bytes.get(at..at + 8) {
                let marks = specials(u64::from_le_bytes(word.try_into().ok()?));
                if marks != 0 {
                    at += (marks.trailing_zeros() / 8) as usize;
                    break;
                }
                at += 8;
            }
            let byte = *bytes.get(at)?;
            at += 1;
            match byte {
                b'"' => {
                    self.at = at;
                    let text = bytes.get(start..at - 1)?;
                    return Some(Text {
                        text,
                        escaped,
                        ascii,
                    });
                }
                b'\\' => {
                    escaped = true;
                    match *bytes.get(at)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at += 1,
                        // Any four hex digits, as serde_json takes them in a string it skips
                        // (what they encode matters only to a string read as text).
                        b'u' => {
                            let hex = bytes.get(at + 1..at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            at += 5;
                        }
                        _ => return None,
                    }
                }
                0x00..=0x1f => return None,
                0x80.. => ascii = false,
                _ => {}
            }
        }
    }

    /// A method: a plain ASCII string (anything else is left to serde_json).
    fn method(&mut self) -> Option<Method> {
        self.eat(b'"')?;
        let name = self.string()?;
        (!name.escaped && name.ascii).then(|| Method::of_bytes(name.text))
    }

    /// A value's JSON text, as serde_json's `RawValue` holds it (which must be UTF-8: a
    /// number's text is ASCII, as [`Skim::number`] read it; any other value is checked).
    fn raw(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        let first = self.peek()?;
        self.value()?;
        let text = self.bytes.get(start..self.at)?;
        match first {
            b'-' | b'0'..=b'9' => Some(text),
            _ => std::str::from_utf8(text).ok().map(str::as_bytes),
        }
    }

    /// Skips one value, a member's: a loop, not a recursion, with the open containers as bits
    /// of one word (1 an object, 0 an array), at most [`MAX_DEPTH`] of them.
    #[inline(always)]
    fn value(&mut self) -> Option<()> {
        let mut open: u64 = 0;
        let mut depth = 0;
        loop {
            // A value is due.
            match self.next()? {
                b'"' => {
                    self.string()?;
                }
                bracket @ (b'{' | b'[') => {
                    let object = bracket == b'{';
                    self.space();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.at += 1;
                    } else {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return None;
                        }
                        open = open << 1 | u64::from(object);
                        if object {
                            self.member_name()?;
                        }
                        continue;
                    }
                }
                b't' => self.word(b"rue")?,
                b'f' => self.word(b"alse")?,
                b'n' => self.word(b"ull")?,
                first @ (b'-' | b'0'..=b'9') => self.number(first)?,
                _ => return None,
            }
            // A value ended: the next of its container, or the container's end.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.space();
                let object = open & 1 == 1;
                match self.next()? {
                    b',' => {
                        self.space();
                        if object {
                            self.member_name()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                open >>= 1;
                depth -= 1;
            }
        }
    }

    /// A member's name and its colon, up to where its value begins.
    #[inline(always)]
    fn member_name(&mut self) -> Option<Text<'a>> {
        self.eat(b'"')?;
        let name = self.string()?;
        self.space();
        self.eat(b':')?;
        self.space();
        Some(name)
    }

    fn word(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.at.checked_add(rest.len())?;
        (self.bytes.get(self.at..end)? == rest).then(|| self.at = end)
    }

    /// The rest of a number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`. What
    /// follows it is the caller's to check (`01` is a `0`, then a byte no container takes).
    fn number(&mut self, first: u8) -> Option<()> {
        let lead = if first == b'-' { self.next()? } else { first };
        match lead {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digit()?;
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digit()?;
            self.digits();
        }
        Some(())
    }

    fn digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

/// The bytes of `word` (eight bytes of a string, the first lowest) that end a run of plain
/// ones: a quote, a backslash, a control character or a byte past ASCII, each marked by its
/// high bit. The lowest mark is exact; a borrow can mark bytes above it, which are looked at
/// again anyway.
fn specials(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (quote | backslash | control | word) & HIGH
}
