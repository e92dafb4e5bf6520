//! The session record kept in shared data, and its compact binary encoding.
//!
//! Every session costs one shared-data value, so the encoding is small and fixed-layout (see
//! docs/DESIGN.md): 36 bytes, plus 16 for an identity digest and the upstream's own session ID
//! when there is one.

use crate::digest;
use crate::session_id::{constant_time_eq, SECRET_LEN};
use std::ops::Range;

const FORMAT_VERSION: u8 = 1;
const FLAG_INITIALIZED: u8 = 1;
const FLAG_IDENTITY: u8 = 2;
/// The upstream session ID's length takes two bytes (it is longer than 255 bytes). Records
/// written before this flag existed never set it, and read as they always did.
const FLAG_LONG_UPSTREAM: u8 = 4;
/// The upstream session ID's bytes are sealed ([`Record::encode_sealed`]): only a reader that
/// can open them ([`Record::decode_opened`]) reads the ID.
const FLAG_SEALED_UPSTREAM: u8 = 8;
/// Bytes of identity digest kept (128 bits of SHA-256).
pub const DIGEST_LEN: usize = 16;
/// Longest upstream session ID the record can hold. The specification sets no length (only
/// visible ASCII); an upstream that signs its IDs (a JWT) easily passes 255 bytes.
pub const MAX_UPSTREAM_ID: usize = 1024;
/// Longest upstream host (`IP:port`) the record can hold.
pub const MAX_UPSTREAM_HOST: usize = 255;
/// The longest encoding: the fixed part (35 bytes), an identity digest, and an upstream
/// session ID and an upstream host of the longest each, with their lengths.
#[cfg(test)]
const MAX_ENCODED: usize = FIXED_LEN + DIGEST_LEN + 2 + MAX_UPSTREAM_ID + 1 + MAX_UPSTREAM_HOST;
/// The fixed part: format, state, flags, the secret, two times.
const FIXED_LEN: usize = 3 + SECRET_LEN + 8 + 8;

/// A record's encoding ([`Record::encoded`]): on the stack when it is short, as nearly every
/// record is (the fixed part, an identity digest and an upstream host of up to 43 bytes), on the
/// heap otherwise. A write of the session table copies it where it keeps it, so the usual
/// encoding needs no allocation of its own; and the room on the stack is small, as zeroing and
/// returning room for the longest record (563 bytes) cost an initialize more than its writes.
pub enum Encoded {
    /// Up to [`INLINE_ENCODED`] bytes.
    Inline {
        /// The room.
        bytes: [u8; INLINE_ENCODED],
        /// How much of it is the record.
        len: usize,
    },
    /// A longer record.
    Heap(Vec<u8>),
}

/// Room on the stack for an encoding.
pub const INLINE_ENCODED: usize = 96;

/// Writes into room sized beforehand, from its start (a record's encoding).
struct Writer<'b> {
    room: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    /// Appends `bytes` (the room was sized for all of them: nothing is written past it).
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.at.saturating_add(bytes.len());
        if let Some(to) = self.room.get_mut(self.at..end) {
            to.copy_from_slice(bytes);
            self.at = end;
        }
    }
}

impl std::ops::Deref for Encoded {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Encoded::Inline { bytes, len } => bytes.get(..*len).unwrap_or_default(),
            Encoded::Heap(bytes) => bytes,
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The slot is held for an `initialize` whose answer has not been seen yet.
    Pending,
    /// The upstream answered `initialize` with a result: the session is usable.
    Live,
}

/// One session.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    /// Pending or live.
    pub state: State,
    /// `notifications/initialized` has been accepted by the upstream.
    pub initialized: bool,
    /// The secret half of the session ID.
    pub secret: [u8; SECRET_LEN],
    /// When the slot was taken, ms since the epoch.
    pub created_ms: u64,
    /// When the session was last used (at touch granularity), ms since the epoch.
    pub last_seen_ms: u64,
    /// Digest of the identity header, when identity binding is on.
    pub identity: Option<[u8; DIGEST_LEN]>,
    /// The upstream's own `Mcp-Session-Id`, when it issued one.
    pub upstream_id: Option<String>,
    /// The upstream host (`IP:port`) that answered the `initialize`, when `affinity_header`
    /// is set.
    pub upstream_host: Option<String>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("state", &self.state)
            .field("initialized", &self.initialized)
            .field("created_ms", &self.created_ms)
            .field("last_seen_ms", &self.last_seen_ms)
            .field("identity", &self.identity.is_some())
            .field("upstream_id", &self.upstream_id.is_some())
            .field("upstream_host", &self.upstream_host)
            .finish_non_exhaustive()
    }
}

impl Record {
    /// The pending record of a new session, bound to `identity` when `bind`.
    pub fn pending(
        now_ms: u64,
        secret: [u8; SECRET_LEN],
        identity: Option<&[u8]>,
        bind: bool,
    ) -> Record {
        Record {
            state: State::Pending,
            initialized: false,
            secret,
            created_ms: now_ms,
            last_seen_ms: now_ms,
            identity: bind.then(|| identity_digest(identity)),
            upstream_id: None,
            upstream_host: None,
        }
    }

    /// The live session a reservation (this pending record) becomes when its `initialize` is
    /// answered with a result at `now_ms`, holding the upstream's own ID if it minted one.
    pub fn activated(&self, now_ms: u64, upstream_id: Option<&str>) -> Record {
        let mut live = self.clone();
        live.state = State::Live;
        live.last_seen_ms = now_ms;
        live.upstream_id = upstream_id.map(str::to_owned);
        live
    }

    /// Serialises the record.
    pub fn encode(&self) -> Vec<u8> {
        self.encoded().to_vec()
    }

    /// Serialises the record onto the stack: what a store write copies where it keeps it.
    pub fn encoded(&self) -> Encoded {
        self.encoded_as(false).0
    }

    /// The encoding with the upstream session ID's bytes passed through `seal`, which turns
    /// them in place into bytes of the same length that only its inverse reads back, and
    /// marked as sealed ([`Record::decode_opened`]). A record without an upstream session ID
    /// encodes as [`Record::encode`] does.
    pub fn encode_sealed(&self, seal: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let sealed = self.upstream_id.as_deref().is_some_and(|id| !id.is_empty());
        let (encoded, upstream) = self.encoded_as(sealed);
        let mut bytes = encoded.to_vec();
        if let Some(upstream) = bytes.get_mut(upstream).filter(|_| sealed) {
            seal(upstream);
        }
        bytes
    }

    /// The encoding, marked as sealed or not, and where in it the upstream session ID lies.
    fn encoded_as(&self, sealed: bool) -> (Encoded, Range<usize>) {
        let upstream = self.upstream_id.as_deref().unwrap_or("").as_bytes();
        let upstream = upstream.get(..MAX_UPSTREAM_ID).unwrap_or(upstream);
        let host = self.upstream_host.as_deref().map(str::as_bytes);
        let host = host.map(|host| host.get(..MAX_UPSTREAM_HOST).unwrap_or(host));
        let len = FIXED_LEN
            + self.identity.map_or(0, |d| d.len())
            + if upstream.len() > 255 { 2 } else { 1 }
            + upstream.len()
            + host.map_or(0, |h| 1 + h.len());
        // Written where it is kept, through one writer: the fixed part's places are known
        // when the room is an array on the stack.
        if len <= INLINE_ENCODED {
            let mut bytes = [0; INLINE_ENCODED];
            let (len, at) = self.write(&mut bytes, upstream, host, sealed);
            (Encoded::Inline { bytes, len }, at)
        } else {
            let mut bytes = vec![0; len];
            let (len, at) = self.write(&mut bytes, upstream, host, sealed);
            bytes.truncate(len);
            (Encoded::Heap(bytes), at)
        }
    }

    /// Writes the encoding into `room` (sized for it): how many bytes it took, and where the
    /// upstream session ID went.
    #[inline(always)]
    fn write(
        &self,
        room: &mut [u8],
        upstream: &[u8],
        host: Option<&[u8]>,
        sealed: bool,
    ) -> (usize, Range<usize>) {
        let mut out = Writer { room, at: 0 };
        let state = match self.state {
            State::Pending => 1,
            State::Live => 2,
        };
        let mut flags = 0;
        if self.initialized {
            flags |= FLAG_INITIALIZED;
        }
        if self.identity.is_some() {
            flags |= FLAG_IDENTITY;
        }
        // Bounded to MAX_UPSTREAM_ID by the caller, so the length fits two bytes.
        let short = u8::try_from(upstream.len()).ok();
        if short.is_none() {
            flags |= FLAG_LONG_UPSTREAM;
        }
        if sealed {
            flags |= FLAG_SEALED_UPSTREAM;
        }
        out.put(&[FORMAT_VERSION, state, flags]);
        out.put(&self.secret);
        out.put(&self.created_ms.to_le_bytes());
        out.put(&self.last_seen_ms.to_le_bytes());
        if let Some(digest) = &self.identity {
            out.put(digest);
        }
        match short {
            Some(len) => out.put(&[len]),
            None => out.put(
                &u16::try_from(upstream.len())
                    .unwrap_or(u16::MAX)
                    .to_le_bytes(),
            ),
        }
        let start = out.at;
        out.put(upstream);
        let upstream = start..out.at;
        // Optional tail: the upstream host (records without one end here).
        if let Some(host) = host {
            out.put(&[u8::try_from(host.len()).unwrap_or(u8::MAX)]);
            out.put(host);
        }
        (out.at, upstream)
    }

    /// Reads a record; `None` for an empty (free) slot or bytes in no known format. A sealed
    /// upstream session ID ([`Record::encode_sealed`]) reads as none: [`Record::decode_opened`]
    /// reads it, and [`Record::upstream_sealed`] says there is one.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        Record::decode_with(bytes, None::<fn(&mut [u8])>)
    }

    /// Reads a record whose upstream session ID may be sealed: `open` undoes the `seal` of
    /// [`Record::encode_sealed`] in place.
    pub fn decode_opened(bytes: &[u8], open: impl FnOnce(&mut [u8])) -> Option<Record> {
        Record::decode_with(bytes, Some(open))
    }

    /// Whether the encoding `bytes` holds a sealed upstream session ID.
    pub fn upstream_sealed(bytes: &[u8]) -> bool {
        bytes.first() == Some(&FORMAT_VERSION)
            && bytes
                .get(2)
                .is_some_and(|flags| flags & FLAG_SEALED_UPSTREAM != 0)
    }

    fn decode_with(bytes: &[u8], open: Option<impl FnOnce(&mut [u8])>) -> Option<Record> {
        let mut r = Reader(bytes);
        if r.byte()? != FORMAT_VERSION {
            return None;
        }
        let state = match r.byte()? {
            1 => State::Pending,
            2 => State::Live,
            _ => return None,
        };
        let flags = r.byte()?;
        let secret = r.array::<SECRET_LEN>()?;
        let created_ms = u64::from_le_bytes(r.array::<8>()?);
        let last_seen_ms = u64::from_le_bytes(r.array::<8>()?);
        let identity = if flags & FLAG_IDENTITY != 0 {
            Some(r.array::<DIGEST_LEN>()?)
        } else {
            None
        };
        let len = if flags & FLAG_LONG_UPSTREAM != 0 {
            usize::from(u16::from_le_bytes(r.array::<2>()?))
        } else {
            usize::from(r.byte()?)
        };
        let upstream = r.take(len)?;
        let upstream_host = if r.0.is_empty() {
            None
        } else {
            let len = usize::from(r.byte()?);
            let host = r.take(len)?;
            if !r.0.is_empty() || host.is_empty() {
                return None;
            }
            Some(String::from_utf8(host.to_vec()).ok()?)
        };
        let upstream_id = match (upstream, flags & FLAG_SEALED_UPSTREAM != 0, open) {
            ([], ..) | (_, true, None) => None,
            (bytes, sealed, open) => {
                let mut bytes = bytes.to_vec();
                if let (true, Some(open)) = (sealed, open) {
                    open(&mut bytes);
                }
                Some(String::from_utf8(bytes).ok()?)
            }
        };
        Some(Record {
            state,
            initialized: flags & FLAG_INITIALIZED != 0,
            secret,
            created_ms,
            last_seen_ms,
            identity,
            upstream_id,
            upstream_host,
        })
    }

    /// Whether the session has passed its idle or absolute limit at `now_ms`.
    pub fn expired(&self, now_ms: u64, idle_ms: u64, lifetime_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_seen_ms) >= idle_ms
            || (lifetime_ms > 0 && now_ms.saturating_sub(self.created_ms) >= lifetime_ms)
    }

    /// Whether `secret` is this session's, in constant time.
    pub fn secret_matches(&self, secret: &[u8; SECRET_LEN]) -> bool {
        constant_time_eq(&self.secret, secret)
    }

    /// Whether a caller presenting the identity header value `identity` may use the session.
    /// `bind`: identity binding is on (otherwise everyone may). A record made before binding
    /// was switched on has no digest and matches no one.
    pub fn identity_matches(&self, bind: bool, identity: Option<&[u8]>) -> bool {
        if !bind {
            return true;
        }
        match &self.identity {
            Some(have) => constant_time_eq(have, &identity_digest(identity)),
            None => false,
        }
    }
}

/// Digest of a caller identity (the identity header's value, or the verified claims or peer
/// attributes, each length-prefixed): 128 bits of SHA-256, the same in every session and on
/// every Envoy, so an operator can count, find and end one caller's sessions (`mcp-sessions`)
/// and a limit per caller can be kept. It names the caller as a pseudonym: the value itself is
/// never stored. An absent identity is an identity too (distinct from every present value, the
/// empty one included); sessions are never bound to it (a missing identity is refused).
pub fn identity_digest(value: Option<&[u8]>) -> [u8; DIGEST_LEN] {
    match value {
        None => digest::digest_prefix(&[b"mcp-identity\0", b"\x00"]),
        Some(v) => digest::digest_prefix(&[b"mcp-identity\0", b"\x01", v]),
    }
}

/// A caller's handle for access logs and `mcp-sessions`: the first 64 bits of its
/// [`identity_digest`] in hex (16 characters).
pub fn identity_handle(value: &[u8]) -> String {
    let mut out = String::with_capacity(16);
    crate::session_id::push_hex(
        &mut out,
        identity_digest(Some(value)).get(..8).unwrap_or_default(),
    );
    out
}

/// The identity value of several parts (a JWT's claims, a peer certificate's attributes, in
/// the configured order): each length-prefixed (u32, little-endian), so no two lists of parts
/// read alike. `None` when a part is missing or empty.
pub fn identity_of_parts<P: AsRef<[u8]>>(
    parts: impl IntoIterator<Item = Option<P>>,
) -> Option<Vec<u8>> {
    let mut identity = Vec::new();
    for part in parts {
        let part = part.filter(|p| !p.as_ref().is_empty())?;
        let part = part.as_ref();
        identity.extend_from_slice(&u32::try_from(part.len()).ok()?.to_le_bytes());
        identity.extend_from_slice(part);
    }
    Some(identity)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{live_record, T0};

    /// Last used a while after it was opened, so idle and absolute expiry differ.
    fn live() -> Record {
        Record {
            last_seen_ms: T0 + 5_000,
            ..live_record([9; SECRET_LEN], T0)
        }
    }

    #[test]
    fn round_trips_every_shape() {
        let mut bound = live();
        bound.identity = Some(identity_digest(Some(b"alice")));
        let mut mapped = live();
        mapped.upstream_id = Some("f3a9c2-upstream".into());
        mapped.state = State::Pending;
        mapped.initialized = false;
        let mut both = bound.clone();
        both.upstream_id = Some("x".repeat(MAX_UPSTREAM_ID));
        // The longest there is: every field at its largest, on the stack buffer's last byte.
        let mut longest = both.clone();
        longest.upstream_host = Some("h".repeat(MAX_UPSTREAM_HOST));
        for record in [live(), bound, mapped, both, longest.clone()] {
            let bytes = record.encode();
            assert_eq!(Record::decode(&bytes), Some(record.clone()), "{record:?}");
            assert_eq!(&*record.encoded(), &bytes[..], "{record:?}");
        }
        assert_eq!(live().encode().len(), 36, "the base record stays small");
        assert_eq!(longest.encode().len(), MAX_ENCODED);
        // Longer than a record can hold is cut to it, as before, and still fits.
        let mut over = longest;
        over.upstream_host = Some("h".repeat(MAX_UPSTREAM_HOST + 9));
        assert_eq!(over.encode().len(), MAX_ENCODED);
    }

    /// An upstream session ID of up to 255 bytes has a one-byte length, as in every record
    /// written before longer ones were kept (so those read as they always did); a longer one
    /// has a two-byte length and a flag, up to [`MAX_UPSTREAM_ID`].
    #[test]
    fn upstream_ids_past_255_bytes_round_trip_with_a_two_byte_length() {
        for (len, flagged) in [
            (1, false),
            (255, false),
            (256, true),
            (700, true),
            (MAX_UPSTREAM_ID, true),
        ] {
            let mut record = live();
            record.upstream_id = Some("u".repeat(len));
            record.upstream_host = Some("10.0.0.7:8080".into());
            let bytes = record.encode();
            assert_eq!(bytes[2] & FLAG_LONG_UPSTREAM != 0, flagged, "{len}");
            let length_bytes = if flagged { 2 } else { 1 };
            assert_eq!(bytes.len(), 36 - 1 + length_bytes + len + 1 + 13, "{len}");
            assert_eq!(Record::decode(&bytes), Some(record), "{len}");
        }
        // As written before the flag: the length in one byte, then the host.
        let mut old = vec![FORMAT_VERSION, 2, FLAG_INITIALIZED];
        old.extend([9; SECRET_LEN]);
        old.extend(T0.to_le_bytes());
        old.extend((T0 + 5_000).to_le_bytes());
        old.push(255);
        old.extend([b'u'; 255]);
        let mut expected = live();
        expected.upstream_id = Some("u".repeat(255));
        assert_eq!(Record::decode(&old), Some(expected));
    }

    /// A sealed upstream session ID: the encoding holds what `seal` made of its bytes (the
    /// rest as the plain encoding has it, but for the flag), the opener reads it back, and a
    /// reader without one reads the record without it, and can tell that it has one.
    #[test]
    fn a_sealed_upstream_id_reads_back_only_through_its_opener() {
        let flip = |bytes: &mut [u8]| bytes.iter_mut().for_each(|b| *b ^= 0x5a);
        for len in [1, 36, 255, 256, MAX_UPSTREAM_ID] {
            let mut record = live();
            record.identity = Some(identity_digest(Some(b"alice")));
            record.upstream_id = Some("u".repeat(len));
            record.upstream_host = Some("10.0.0.7:8080".into());
            let (plain, sealed) = (record.encode(), record.encode_sealed(flip));
            assert_eq!(sealed.len(), plain.len(), "{len}");
            let differ: Vec<usize> = (0..plain.len())
                .filter(|&i| plain[i] != sealed[i])
                .collect();
            let upstream = plain.len() - 14 - len;
            assert_eq!(differ[0], 2, "the flags: {len}");
            assert_eq!(
                differ[1..],
                (upstream..upstream + len).collect::<Vec<_>>(),
                "{len}"
            );
            assert!(Record::upstream_sealed(&sealed) && !Record::upstream_sealed(&plain));
            assert_eq!(Record::decode_opened(&sealed, flip).as_ref(), Some(&record));
            let unread = Record::decode(&sealed).unwrap();
            assert_eq!(unread.upstream_id, None);
            let upstream_id = record.upstream_id.clone();
            assert_eq!(
                Record {
                    upstream_id,
                    ..unread
                },
                record
            );
        }
        // Nothing to seal: the plain encoding, and no opener is asked to read a plain one.
        let asked = std::cell::Cell::new(false);
        let ask = |_: &mut [u8]| asked.set(true);
        assert_eq!(live().encode_sealed(ask), live().encode());
        let mut mapped = live();
        mapped.upstream_id = Some("f3a9c2-upstream".into());
        assert_eq!(Record::decode_opened(&mapped.encode(), ask), Some(mapped));
        assert!(!asked.get());
    }

    /// A record as long as the room on the stack, and one byte longer, encode alike (the first
    /// on the stack, the second on the heap) and read back as written.
    #[test]
    fn records_either_side_of_the_room_on_the_stack_round_trip() {
        let fixed = live().encode().len() + 1; // the host's length byte
        for host_len in [
            1,
            INLINE_ENCODED - fixed - 1,
            INLINE_ENCODED - fixed,
            INLINE_ENCODED - fixed + 1,
        ] {
            let mut record = live();
            record.upstream_host = Some("h".repeat(host_len));
            let encoded = record.encoded();
            assert_eq!(encoded.len(), fixed + host_len);
            let on_stack = matches!(encoded, Encoded::Inline { .. });
            assert_eq!(on_stack, encoded.len() <= INLINE_ENCODED, "{host_len}");
            assert_eq!(Record::decode(&encoded), Some(record), "{host_len}");
        }
    }

    #[test]
    fn refuses_free_and_corrupt_slots() {
        let good = live().encode();
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        let mut wrong_state = good.clone();
        wrong_state[1] = 0;
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("truncated", good[..20].to_vec()),
            ("missing upstream length", good[..34].to_vec()),
            ("wrong version", wrong_version),
            ("wrong state", wrong_state),
            ("trailing bytes", trailing),
        ];
        for (name, bytes) in cases {
            assert_eq!(Record::decode(&bytes), None, "{name}");
        }
        for len in 0..good.len() {
            assert_eq!(Record::decode(&good[..len]), None, "prefix {len}");
        }
    }

    #[test]
    fn expiry_is_idle_or_absolute() {
        let r = live();
        let idle = 10_000;
        let life = 60_000;
        assert!(!r.expired(r.last_seen_ms + idle - 1, idle, life));
        assert!(r.expired(r.last_seen_ms + idle, idle, life));
        assert!(r.expired(r.created_ms + life, 1_000_000, life));
        assert!(
            !r.expired(r.created_ms + life, 1_000_000, 0),
            "0 means no lifetime"
        );
        assert!(
            !r.expired(0, idle, life),
            "a clock going back never expires a session"
        );
    }

    #[test]
    fn identity_digests_differ_by_value_and_are_the_same_in_every_session() {
        let alice = identity_digest(Some(b"alice"));
        assert_eq!(alice, identity_digest(Some(b"alice")));
        assert_ne!(alice, identity_digest(Some(b"bob")));
        assert_ne!(identity_digest(None), identity_digest(Some(b"")));
        // Pinned: `mcp-sessions revoke --identity` computes the same digest outside the filter.
        let hex: String = alice.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.len(), 32);
        assert_eq!(
            alice,
            crate::digest::digest_prefix(&[b"mcp-identity\0", b"\x01", b"alice"])
        );
    }

    #[test]
    fn debug_hides_secret_and_identity() {
        let text = format!("{:?}", live());
        assert!(!text.contains("secret"), "{text}");
    }
}
