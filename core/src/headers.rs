//! Finding the headers the filter needs in a header map serialized by the host, without a
//! hostcall (and an allocation) per header.
//!
//! One `proxy_get_header_map_pairs` call returns the whole map in the proxy-wasm ABI's format:
//! a little-endian `u32` count N, then N pairs of `u32` lengths (name, value), then each name
//! and value in order, each followed by a NUL byte. Reading a header that is there costs a VM
//! crossing and an allocation callback (about 11,000 instructions in Envoy; BENCHMARKS.md), so
//! the filter reads the map once and [`scan`] picks out what it wants. Every occurrence is
//! counted: a header the filter relies on must not appear twice.

/// The session header, in both directions.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol version header.
pub const VERSION_HEADER: &str = "mcp-protocol-version";

/// What a request carried for one header name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header<'a> {
    /// The first value.
    pub value: Option<&'a [u8]>,
    /// How many times the header appears.
    pub count: u32,
}

impl<'a> Header<'a> {
    /// The first value as text; a value that is not UTF-8 becomes U+FFFD, which no check
    /// accepts.
    pub fn text(&self) -> Option<&'a str> {
        self.value
            .map(|bytes| std::str::from_utf8(bytes).unwrap_or("\u{fffd}"))
    }

    /// Whether the header appears more than once.
    pub fn repeated(&self) -> bool {
        self.count > 1
    }

    /// The first value as a decimal number ([`decimal`]).
    pub fn number(&self) -> Option<u64> {
        self.value.and_then(decimal)
    }
}

/// A header value (`:status`, `content-length`) as a decimal number, read as `u64`'s `FromStr`
/// reads it after ASCII whitespace is trimmed, but from the bytes: no UTF-8 check first.
pub fn decimal(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    let digits = digits.strip_prefix(b"+").unwrap_or(digits);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Finds `names` (lowercase; an empty name matches nothing) in a serialized header map.
/// Header names compare without regard to ASCII case. `None` when the map is malformed.
pub fn scan<'a, const N: usize>(map: &'a [u8], names: [&str; N]) -> Option<[Header<'a>; N]> {
    let mut found = [Header::default(); N];
    scan_into(map, &Names::new(&names), &mut found)?;
    Some(found)
}

/// [`scan`] into `found` (as long as `names`; entries past it are left alone). `None` when the
/// map is malformed (then `found` may be partly filled).
pub fn scan_into<'a>(map: &'a [u8], names: &Names<'_>, found: &mut [Header<'a>]) -> Option<()> {
    let count = read_u32(map, 0)?;
    let (sizes, mut data) = map.get(4..)?.split_at_checked(count.checked_mul(8)?)?;
    for size in sizes.chunks_exact(8) {
        let [n0, n1, n2, n3, v0, v1, v2, v3]: [u8; 8] = size.try_into().ok()?;
        let name_len = usize::try_from(u32::from_le_bytes([n0, n1, n2, n3])).ok()?;
        let value_len = usize::try_from(u32::from_le_bytes([v0, v1, v2, v3])).ok()?;
        let (name, rest) = data.split_at_checked(name_len)?;
        let (value, rest) = rest.get(1..)?.split_at_checked(value_len)?;
        data = rest.get(1..)?;
        names.offer(found, name, || value);
    }
    Some(())
}

/// [`scan_into`] over pairs a host hands out as they are (a native module reads Envoy's
/// header map in place, with nothing to serialize): `split` gives a pair's name, and a way to
/// its value, read only for a pair that is wanted.
pub fn scan_pairs<'a, P, V: Fn() -> &'a [u8]>(
    pairs: impl Iterator<Item = P>,
    split: impl Fn(P) -> (&'a [u8], V),
    names: &Names<'_>,
    found: &mut [Header<'a>],
) {
    for pair in pairs {
        let (name, value) = split(pair);
        names.offer(found, name, value);
    }
}

/// Header names to find (lowercase; an empty name matches nothing): a list that is constant,
/// and may be followed by one name known only at run time (a configured header: see
/// [`FixedNames`]), with a table that picks the pairs worth comparing. A constant list's table
/// is built at compile time (`const`); the name after it adds its bit.
///
/// The table holds the first 8 names (the filter never asks more) as bits, in 64 places keyed
/// by a name's length and last byte ([`bucket`]): most pairs are passed over on one lookup, and
/// one that is looked at is compared, as a rule, with the one name it may be. Keyed by the
/// length alone, most of a request's headers met a name of their length (`:scheme` and
/// `:method`, `content-length` and `mcp-session-id`). Names past the 8th are compared with
/// every pair.
#[derive(Debug, Clone, Copy)]
pub struct Names<'n> {
    list: &'n [&'n str],
    then: Option<&'n str>,
    table: [u8; 64],
}

/// A header name's place in a [`Names`] table: its length and its last byte, in lowercase where
/// it is a letter (`| 0x20` leaves the digits and `-` as they are). No two of the names the
/// filter asks for share one.
#[inline]
const fn bucket(name: &[u8]) -> usize {
    let last = match name.last() {
        Some(b) => (*b | 0x20) as usize,
        None => 0,
    };
    name.len().wrapping_add(last.wrapping_mul(5)) & 63
}

/// `table` with the bit of the name at `at` (none past the 8th, nor for an empty name).
const fn with_bit(mut table: [u8; 64], at: usize, name: &str) -> [u8; 64] {
    if at < 8 && !name.is_empty() {
        let place = bucket(name.as_bytes());
        if place < table.len() {
            #[allow(clippy::indexing_slicing)] // `place` is checked just above
            {
                table[place] |= 1 << at;
            }
        }
    }
    table
}

impl<'n> Names<'n> {
    /// The names of `list`.
    pub const fn new(list: &'n [&'n str]) -> Names<'n> {
        let mut table = [0u8; 64];
        let mut at = 0;
        while at < list.len() {
            #[allow(clippy::indexing_slicing)] // `at` is below the length
            {
                table = with_bit(table, at, list[at]);
            }
            at += 1;
        }
        Names {
            list,
            then: None,
            table,
        }
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.list.len() + usize::from(self.then.is_some())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name at `at`.
    pub fn get(&self, at: usize) -> Option<&'n str> {
        self.list
            .get(at)
            .copied()
            .or_else(|| self.then.filter(|_| at == self.list.len()))
    }

    /// Every name, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'n str> + '_ {
        self.list.iter().copied().chain(self.then)
    }

    /// Counts the pair `name: value` in the slot (of `found`) of each name it is.
    #[inline]
    fn offer<'a>(&self, found: &mut [Header<'a>], name: &[u8], value: impl Fn() -> &'a [u8]) {
        let mut bits = self.table.get(bucket(name)).copied().unwrap_or(0);
        while bits != 0 {
            let at = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let (Some(want), Some(slot)) = (self.get(at), found.get_mut(at)) {
                note(slot, name, want.as_bytes(), &value);
            }
        }
        if self.len() > 8 {
            for (want, slot) in self.iter().zip(found.iter_mut()).skip(8) {
                if !want.is_empty() {
                    note(slot, name, want.as_bytes(), &value);
                }
            }
        }
    }
}

/// A constant list of [`Names`] that one name known only at run time may follow (a configured
/// header): [`FixedNames::then`] gives the names to find, which cannot be followed again.
#[derive(Debug, Clone, Copy)]
pub struct FixedNames<'n>(Names<'n>);

impl<'n> FixedNames<'n> {
    /// The names of `list`, with their table built at compile time.
    pub const fn new(list: &'n [&'n str]) -> FixedNames<'n> {
        FixedNames(Names::new(list))
    }

    /// These names and then `name` (its place is the list's length), which adds its bit to
    /// the table. The result has no `then`: a second name cannot be added and lost.
    ///
    /// ```compile_fail
    /// use mcp_session_core::headers::FixedNames;
    /// const FIXED: FixedNames<'static> = FixedNames::new(&[":method"]);
    /// let _ = FIXED.then("x-user").then("x-other");
    /// ```
    pub fn then<'m>(&self, name: &'m str) -> Names<'m>
    where
        'n: 'm,
    {
        let names = self.0;
        Names {
            list: names.list,
            then: Some(name),
            table: with_bit(names.table, names.list.len(), name),
        }
    }
}

/// Counts `value` in `slot` when header `name` is `want`, regardless of ASCII case.
#[inline]
fn note<'a>(slot: &mut Header<'a>, name: &[u8], want: &[u8], value: impl Fn() -> &'a [u8]) {
    if matches(name, want) {
        if slot.value.is_none() {
            slot.value = Some(value());
        }
        slot.count = slot.count.saturating_add(1);
    }
}

/// Whether header `name` is `want`, regardless of ASCII case. Compared a word at a time (the
/// last word overlapping the one before; Wasm's `memcmp` goes a byte at a time), as the XOR of
/// the two: a name of the wanted length that differs in any bit but the case bit (0x20) of a
/// byte, which is what most such names do, is settled at once; only one that differs in case
/// bits alone (Envoy hands names in lowercase, so nearly never) is compared again byte by byte.
#[inline]
fn matches(name: &[u8], want: &[u8]) -> bool {
    const CASE: u64 = 0x2020_2020_2020_2020;
    let len = name.len();
    if len != want.len() {
        return false;
    }
    let diff = match len {
        0..4 => name
            .iter()
            .zip(want)
            .fold(0, |diff, (a, b)| diff | u64::from(a ^ b)),
        4..8 => xor::<4>(name, want, 0) | xor::<4>(name, want, len - 4),
        _ => {
            let mut diff = 0;
            let mut at = 0;
            while at + 8 < len && diff & !CASE == 0 {
                diff |= xor::<8>(name, want, at);
                at += 8;
            }
            diff | xor::<8>(name, want, len - 8)
        }
    };
    diff == 0 || (diff & !CASE == 0 && name.eq_ignore_ascii_case(want))
}

/// The XOR of the `N` (4 or 8) bytes of `a` and of `b` at `at`; all ones when either is too
/// short (callers stay in range), which no comparison takes for a match.
#[inline]
fn xor<const N: usize>(a: &[u8], b: &[u8], at: usize) -> u64 {
    let word = |s: &[u8]| {
        let bytes = s.get(at..)?.first_chunk::<N>()?;
        let mut word = [0u8; 8];
        word.get_mut(..N)?.copy_from_slice(bytes);
        Some(u64::from_ne_bytes(word))
    };
    match (word(a), word(b)) {
        (Some(a), Some(b)) => a ^ b,
        _ => u64::MAX,
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// Serializes pairs as the proxy-wasm host does (for tests and fuzzing), into one allocation.
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let bytes: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + pairs.len() * 10 + bytes);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header's number is what `u64`'s `FromStr` reads from the trimmed text.
    #[test]
    fn a_number_is_read_as_from_str_reads_it() {
        let values: &[&[u8]] = &[
            b"200",
            b"0",
            b" 42\t",
            b"+7",
            b"+",
            b"",
            b"-1",
            b"1 2",
            b"4x",
            b"007",
            b"18446744073709551615",
            b"18446744073709551616",
            b"99999999999999999999",
            b"\xff1",
        ];
        for &value in values {
            let header = Header {
                value: Some(value),
                count: 1,
            };
            let want = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            assert_eq!(
                header.number(),
                want,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        assert_eq!(Header::default().number(), None);
    }

    #[test]
    fn finds_first_values_and_counts_repeats() {
        let map = serialize(&[
            (b":method", b"POST"),
            (b"Mcp-Session-Id", b"first"),
            (b"content-type", b"application/json"),
            (b"mcp-session-id", b"second"),
        ]);
        let [method, session, version, empty] = scan(
            &map,
            [":method", "mcp-session-id", "mcp-protocol-version", ""],
        )
        .unwrap();
        assert_eq!(method.text(), Some("POST"));
        assert_eq!(session.value, Some(&b"first"[..]));
        assert_eq!(session.count, 2);
        assert!(session.repeated());
        assert_eq!(version, Header::default());
        assert_eq!(empty, Header::default());
    }

    #[test]
    fn names_of_one_length_and_long_names_are_all_found() {
        let long = "x-".repeat(40);
        let longer = "y-".repeat(40);
        let map = serialize(&[
            (b"content-length", b"7"),
            (b"mcp-session-id", b"s"),
            (long.as_bytes(), b"l"),
            (longer.as_bytes(), b"m"),
            (b"", b"empty name"),
        ]);
        let [session, length, l, m, empty] = scan(
            &map,
            ["mcp-session-id", "content-length", &long, &longer, ""],
        )
        .unwrap();
        assert_eq!(session.text(), Some("s"));
        assert_eq!(length.text(), Some("7"));
        assert_eq!((l.text(), m.text()), (Some("l"), Some("m")));
        assert_eq!(empty, Header::default());
    }

    /// The names the filter asks for, of a request and of a response, each have a place of
    /// their own in the table ([`bucket`]'s promise).
    #[test]
    fn the_filters_names_have_places_of_their_own() {
        let request = [
            ":method",
            ":path",
            "mcp-session-id",
            "mcp-protocol-version",
            "content-type",
            "content-length",
            "origin",
        ];
        let response = [
            ":status",
            "mcp-session-id",
            "access-control-expose-headers",
            "content-type",
        ];
        for names in [&request[..], &response[..]] {
            let places: std::collections::BTreeSet<usize> =
                names.iter().map(|n| bucket(n.as_bytes())).collect();
            assert_eq!(places.len(), names.len(), "{names:?}");
        }
        assert_eq!(bucket(b"Content-Type"), bucket(b"content-type"));
    }

    /// A constant list followed by a name known at run time finds what the whole list does
    /// (a second name cannot follow: `FixedNames::then`'s doctest fails to compile).
    #[test]
    fn a_name_after_a_constant_list_is_found_as_in_the_list() {
        const FIXED: FixedNames<'static> = FixedNames::new(&[":method", "mcp-session-id"]);
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":method", b"POST"),
            (b"X-User", b"alice"),
            (b"mcp-session-id", b"s"),
            (b"x-user", b"bob"),
        ];
        let map = serialize(&pairs);
        let user = String::from("x-user");
        let names = FIXED.then(&user);
        assert_eq!(names.len(), 3);
        assert_eq!(names.get(2), Some("x-user"));
        let mut found = [Header::default(); 3];
        scan_into(&map, &names, &mut found).unwrap();
        assert_eq!(
            Some(found),
            scan(&map, [":method", "mcp-session-id", "x-user"])
        );
        assert_eq!((found[2].text(), found[2].count), (Some("alice"), 2));
        let mut none = [Header::default(); 3];
        scan_into(&map, &FIXED.then(""), &mut none).unwrap();
        assert_eq!(none[2], Header::default(), "an empty name matches nothing");
    }

    #[test]
    fn more_names_than_the_length_table_holds_are_found_too() {
        let names: Vec<String> = (0..40).map(|n| format!("h{n}")).collect();
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = names
            .iter()
            .rev()
            .map(|n| (n.to_uppercase().into_bytes(), n.clone().into_bytes()))
            .collect();
        let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let map = serialize(&refs);
        let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut found = vec![Header::default(); wanted.len()];
        scan_into(&map, &Names::new(&wanted), &mut found).unwrap();
        for (name, header) in names.iter().zip(&found) {
            assert_eq!(header.text(), Some(name.as_str()));
            assert_eq!(header.count, 1, "{name}");
        }
    }

    #[test]
    fn matches_agrees_with_eq_ignore_ascii_case_at_every_length_and_position() {
        // Letters, digits and the punctuation of header names; `@`/`` ` `` and `[`/`{` differ
        // from each other in the case bit alone without being letters.
        let base: Vec<u8> = b"mcp-session-id:@[0123456789abcdefghijklmnopqrstuvwxyz".to_vec();
        for len in 0..base.len() {
            let a = &base[..len];
            assert!(matches(a, a), "{len}");
            assert!(!matches(a, &base[..len + 1]), "{len}: lengths differ");
            for at in 0..len {
                for bit in [0x20, 0x01, 0x40, 0x80] {
                    let mut b = a.to_vec();
                    b[at] ^= bit;
                    assert_eq!(
                        matches(a, &b),
                        a.eq_ignore_ascii_case(&b),
                        "{len}: byte {at} ^ {bit:#x}"
                    );
                }
            }
        }
        assert!(matches(b"Mcp-Session-Id", b"mcp-session-id"));
        assert!(!matches(b"@", b"`"));
        assert!(!matches(b"x-[", b"x-{"));
        assert!(!matches(b"0123456789[", b"0123456789{"));
    }

    #[test]
    fn pairs_as_a_host_holds_them_are_found_as_in_the_serialized_map() {
        let pairs: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b"Mcp-Session-Id", b"first"),
            (b"content-type", b"application/json"),
            (b"mcp-session-id", b"second"),
            (b"", b"x"),
        ];
        let names = [":method", "mcp-session-id", "accept", "content-type", ""];
        let map = serialize(&pairs);
        let serialized = scan(&map, names).unwrap();
        let mut in_place = [Header::default(); 5];
        scan_pairs(
            pairs.iter(),
            |&(n, v)| (n, move || v),
            &Names::new(&names),
            &mut in_place,
        );
        assert_eq!(in_place, serialized);
        assert_eq!(in_place[1].count, 2);
    }

    #[test]
    fn empty_values_and_non_utf8() {
        let map = serialize(&[(b"a", b""), (b"b", b"\xff\xfe")]);
        let [a, b] = scan(&map, ["a", "b"]).unwrap();
        assert_eq!(a.text(), Some(""));
        assert_eq!(b.text(), Some("\u{fffd}"));
        assert_eq!(b.value, Some(&b"\xff\xfe"[..]));
    }

    #[test]
    fn an_empty_map() {
        assert_eq!(scan(&serialize(&[]), ["a"]), Some([Header::default()]));
        assert_eq!(scan(&[], ["a"]), None);
    }

    #[test]
    fn malformed_maps_are_refused_not_misread() {
        let map = serialize(&[(b"name", b"value"), (b"other", b"x")]);
        for cut in 0..map.len() {
            assert_eq!(scan(&map[..cut], ["name"]), None, "cut at {cut}");
        }
        let mut huge = map.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(scan(&huge, ["name"]), None);
        let mut long_value = map;
        long_value[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(scan(&long_value, ["name"]), None);
    }
}
