//! Finding the headers the filter needs in a header map serialized by the host, without a
//! hostcall (and an allocation) per header.
//!
//! One `proxy_get_header_map_pairs` call returns the whole map in the proxy-wasm ABI's format:
//! a little-endian `u32` count N, then N pairs of `u32` lengths (name, value), then each name
//! and value in order, each followed by a NUL byte. Reading a header that is there costs a VM
//! crossing and an allocation callback (about 11,000 instructions in Envoy; BENCHMARKS.md), so
//! the filter reads the map once and [`scan`] picks out what it wants. Every occurrence is
//! counted: a header the filter relies on must not appear twice.

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
}

/// Finds `names` (lowercase; an empty name matches nothing) in a serialized header map.
/// Header names compare without regard to ASCII case. `None` when the map is malformed.
pub fn scan<'a, const N: usize>(map: &'a [u8], names: [&str; N]) -> Option<[Header<'a>; N]> {
    let mut found = [Header::default(); N];
    scan_into(map, &names, &mut found)?;
    Some(found)
}

/// [`scan`] into `found` (as long as `names`; entries past it are left alone). `None` when the
/// map is malformed (then `found` may be partly filled).
pub fn scan_into<'a>(map: &'a [u8], names: &[&str], found: &mut [Header<'a>]) -> Option<()> {
    let count = read_u32(map, 0)?;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    let mut data = sizes_end;
    for pair in 0..count {
        let name_len = read_u32(map, 4 + pair * 8)?;
        let value_len = read_u32(map, 8 + pair * 8)?;
        let name = map.get(data..data.checked_add(name_len)?)?;
        let value_at = data.checked_add(name_len)?.checked_add(1)?;
        let value = map.get(value_at..value_at.checked_add(value_len)?)?;
        data = value_at.checked_add(value_len)?.checked_add(1)?;
        for (want, slot) in names.iter().zip(found.iter_mut()) {
            if !want.is_empty() && name.eq_ignore_ascii_case(want.as_bytes()) {
                if slot.value.is_none() {
                    slot.value = Some(value);
                }
                slot.count = slot.count.saturating_add(1);
            }
        }
    }
    (data <= map.len()).then_some(())
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// Serializes pairs as the proxy-wasm host does (for the native module, tests and fuzzing).
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    serialize_iter(pairs.iter().copied())
}

/// [`serialize`] from an iterator of pairs (walked twice), into one allocation.
pub fn serialize_iter<'a>(pairs: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone) -> Vec<u8> {
    let (count, bytes) = pairs.clone().fold((0usize, 0usize), |(c, b), (n, v)| {
        (c + 1, b + n.len() + v.len())
    });
    let mut out = Vec::with_capacity(4 + count * 10 + bytes);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(count));
    for (name, value) in pairs.clone() {
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
