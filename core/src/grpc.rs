//! gRPC over plain HTTP/2 calls, for a host that makes HTTP calls but not gRPC ones (a native
//! Envoy module's callouts and streams): the request's headers and framed body, the framing of
//! stream messages, and what a response's headers, trailers and body mean as a gRPC status.
//! No I/O here; a proxy-wasm host needs none of it (Envoy frames its gRPC calls).
//!
//! The wire format (gRPC's "PROTOCOL-HTTP2"): each message is a 5-byte prefix (a compressed
//! flag, then the length, big-endian u32) and the message. A status comes as `grpc-status` in
//! the trailers, or in the headers of a response that has no body ("Trailers-Only"); a
//! response whose HTTP status is not 200 has none, and maps to one.

/// gRPC OK.
pub const OK: u32 = 0;
/// gRPC UNKNOWN: a response that says nothing of its status.
pub const UNKNOWN: u32 = 2;
/// gRPC INTERNAL: a response that breaks the framing.
pub const INTERNAL: u32 = 13;
/// gRPC UNAVAILABLE: the call never got an answer (reset, refused, no host).
pub const UNAVAILABLE: u32 = 14;
/// The most one message may hold; a longer one is refused (etcd's own default limit on what
/// it sends is far lower).
pub const MAX_MESSAGE: usize = 16 << 20;

const PREFIX: usize = 5;

/// One gRPC call as an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Pseudo-headers first, then gRPC's and the call's metadata.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The framed message.
    pub body: Vec<u8>,
}

impl Request {
    /// The request of `method` of `service` on `authority` (Envoy's cluster name stands in
    /// for it), carrying `message` and `metadata`.
    pub fn new(
        authority: &str,
        service: &str,
        method: &str,
        message: &[u8],
        metadata: &[(&str, &[u8])],
    ) -> Request {
        let mut headers = vec![
            (":method".to_owned(), b"POST".to_vec()),
            (
                ":path".to_owned(),
                format!("/{service}/{method}").into_bytes(),
            ),
            (":authority".to_owned(), authority.as_bytes().to_vec()),
            ("content-type".to_owned(), b"application/grpc".to_vec()),
            ("te".to_owned(), b"trailers".to_vec()),
        ];
        headers.extend(
            metadata
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.to_vec())),
        );
        Request {
            headers,
            body: frame(message),
        }
    }
}

impl Request {
    /// Tells the server the caller waits `timeout_ms` at most (`grpc-timeout`, in ms; the
    /// header allows eight digits).
    pub fn set_deadline_ms(&mut self, timeout_ms: u64) {
        let value = format!("{}m", timeout_ms.min(99_999_999));
        self.headers
            .push(("grpc-timeout".to_owned(), value.into_bytes()));
    }
}

/// `message` with its 5-byte prefix (not compressed).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let length = u32::try_from(message.len()).unwrap_or(u32::MAX);
    let mut framed = Vec::with_capacity(PREFIX + message.len());
    framed.push(0);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// The gRPC status a response's headers or trailers state: `grpc-status`, or, without it, what
/// an HTTP status other than 200 maps to (gRPC's "HTTP to gRPC Status Code Mapping"). `None`:
/// they state none (the headers of a response whose status comes in its trailers).
pub fn status_in<'a>(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Option<u32> {
    let mut http = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"grpc-status") {
            return Some(
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(UNKNOWN),
            );
        }
        if name == b":status" {
            http = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
    }
    match http? {
        200u16 => None,
        400 => Some(INTERNAL),
        401 => Some(16),
        403 => Some(7),
        404 => Some(12),
        429 | 502..=504 => Some(UNAVAILABLE),
        _ => Some(UNKNOWN),
    }
}

/// What a unary call's HTTP answer means: its gRPC status, and the message when that is OK.
///
/// `answered` is false when the call got no response at all (reset, or a response too large
/// to buffer). A host that hands over the headers and body but not the trailers (Envoy's
/// callouts) loses a status sent there; a server that fails a unary call before answering
/// sends it in the headers (Trailers-Only), so a response with one whole message and no
/// status in its headers is taken as OK, and one without a message as UNKNOWN.
pub fn unary_answer<'a>(
    answered: bool,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    body: &[u8],
) -> (u32, Vec<u8>) {
    if !answered {
        return (UNAVAILABLE, Vec::new());
    }
    if let Some(status) = status_in(headers).filter(|s| *s != OK) {
        return (status, Vec::new());
    }
    let mut frames = Deframer::default();
    frames.push(body);
    match (frames.next(), frames.is_empty()) {
        (Some(Ok(message)), true) => (OK, message),
        (Some(Err(Malformed)), _) | (Some(Ok(_)), false) => (INTERNAL, Vec::new()),
        (None, _) => (UNKNOWN, Vec::new()),
    }
}

/// A stream's bytes that break the framing (a compressed message, which was never asked for,
/// or one longer than [`MAX_MESSAGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Cuts a stream's bytes, as they arrive in chunks of any size, into messages.
#[derive(Debug, Default)]
pub struct Deframer {
    buffer: Vec<u8>,
}

impl Deframer {
    /// Adds a chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next whole message, if one has arrived. After an error, the stream is unusable.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Vec<u8>, Malformed>> {
        let &[flag, a, b, c, d] = self.buffer.get(..PREFIX)? else {
            return None;
        };
        let length = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
        if flag != 0 || length > MAX_MESSAGE {
            self.buffer.clear();
            return Some(Err(Malformed));
        }
        let end = PREFIX + length;
        let message = self.buffer.get(PREFIX..end)?.to_vec();
        self.buffer.drain(..end);
        Some(Ok(message))
    }

    /// Nothing is held (no part of a message awaits the rest).
    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    /// Forgets what is held (the stream ended, or another begins).
    pub fn clear(&mut self) {
        self.buffer.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Headers<'a> = &'a [(&'a str, &'a str)];
    type Answer = (u32, Vec<u8>);

    fn pairs<'a>(headers: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
        headers
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect()
    }

    #[test]
    fn a_request_names_the_method_and_frames_the_message() {
        let request = Request::new(
            "etcd",
            "etcdserverpb.KV",
            "Range",
            b"abc",
            &[("hasleader", b"true")],
        );
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        assert_eq!(header(":path"), Some(&b"/etcdserverpb.KV/Range"[..]));
        assert_eq!(header(":method"), Some(&b"POST"[..]));
        assert_eq!(header(":authority"), Some(&b"etcd"[..]));
        assert_eq!(header("content-type"), Some(&b"application/grpc"[..]));
        assert_eq!(header("te"), Some(&b"trailers"[..]));
        assert_eq!(header("hasleader"), Some(&b"true"[..]));
        assert_eq!(
            header("grpc-timeout"),
            None,
            "no deadline unless one is set"
        );
        assert_eq!(request.body, b"\0\0\0\0\x03abc");
        // Review: the native build's calls carried no deadline, where Envoy's gRPC client
        // (the Wasm build's) sends the call's timeout: etcd went on with calls Envoy had
        // given up on.
        let mut timed = request.clone();
        timed.set_deadline_ms(500);
        let deadline = timed.headers.iter().find(|(n, _)| n == "grpc-timeout");
        assert_eq!(deadline.map(|(_, v)| v.as_slice()), Some(&b"500m"[..]));
        timed.set_deadline_ms(u64::MAX);
        assert!(timed
            .headers
            .iter()
            .any(|(n, v)| n == "grpc-timeout" && v == b"99999999m"));
    }

    #[test]
    fn messages_come_out_whole_whatever_the_chunks() {
        let mut bytes = frame(b"first");
        bytes.extend(frame(b""));
        bytes.extend(frame(&[7u8; 300]));
        for cut in [1, 2, 5, 6, 7, 64, bytes.len()] {
            let mut frames = Deframer::default();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                frames.push(chunk);
                while let Some(message) = frames.next() {
                    got.push(message);
                }
            }
            assert_eq!(
                got,
                vec![Ok(b"first".to_vec()), Ok(Vec::new()), Ok(vec![7u8; 300])],
                "chunks of {cut}"
            );
            assert!(frames.is_empty());
        }
    }

    #[test]
    fn a_compressed_or_oversized_message_breaks_the_stream() {
        let mut frames = Deframer::default();
        frames.push(b"\x01\0\0\0\x01x");
        assert_eq!(frames.next(), Some(Err(Malformed)));
        assert!(frames.is_empty());
        let too_long = u32::try_from(MAX_MESSAGE + 1).unwrap_or(u32::MAX);
        frames.push(&[&[0u8][..], &too_long.to_be_bytes()].concat());
        assert_eq!(frames.next(), Some(Err(Malformed)));
    }

    #[test]
    fn statuses_come_from_grpc_status_or_the_http_status() {
        let table: &[(Headers<'_>, Option<u32>)] = &[
            (
                &[(":status", "200"), ("content-type", "application/grpc")],
                None,
            ),
            (&[(":status", "200"), ("grpc-status", "0")], Some(OK)),
            (&[(":status", "200"), ("grpc-status", "14")], Some(14)),
            (&[("Grpc-Status", " 9 ")], Some(9)),
            (&[("grpc-status", "nine")], Some(UNKNOWN)),
            (&[(":status", "503")], Some(UNAVAILABLE)),
            (&[(":status", "504")], Some(UNAVAILABLE)),
            (&[(":status", "404")], Some(12)),
            (&[(":status", "418")], Some(UNKNOWN)),
            (&[], None),
        ];
        for (headers, status) in table {
            assert_eq!(status_in(pairs(headers)), *status, "{headers:?}");
        }
    }

    #[test]
    fn a_unary_answer_is_its_one_message_or_its_failure() {
        let ok = [(":status", "200"), ("content-type", "application/grpc")];
        let table: &[(bool, Headers<'_>, Vec<u8>, Answer)] = &[
            (true, &ok, frame(b"reply"), (OK, b"reply".to_vec())),
            (true, &ok, frame(b""), (OK, Vec::new())),
            // Trailers-Only: the failure is in the headers.
            (
                true,
                &[(":status", "200"), ("grpc-status", "9")],
                Vec::new(),
                (9, Vec::new()),
            ),
            // Envoy's own answer when the cluster has no host, or the call timed out.
            (
                true,
                &[(":status", "503")],
                b"no healthy upstream".to_vec(),
                (UNAVAILABLE, Vec::new()),
            ),
            (
                true,
                &[(":status", "504")],
                Vec::new(),
                (UNAVAILABLE, Vec::new()),
            ),
            (false, &[], Vec::new(), (UNAVAILABLE, Vec::new())),
            // No message, no status: nothing to go on.
            (true, &ok, Vec::new(), (UNKNOWN, Vec::new())),
            // A cut or doubled message is not an answer.
            (
                true,
                &ok,
                frame(b"reply")[..6].to_vec(),
                (UNKNOWN, Vec::new()),
            ),
            (
                true,
                &ok,
                [frame(b"a"), frame(b"b")].concat(),
                (INTERNAL, Vec::new()),
            ),
            (
                true,
                &ok,
                b"\x01\0\0\0\x01x".to_vec(),
                (INTERNAL, Vec::new()),
            ),
        ];
        for (answered, headers, body, expected) in table {
            assert_eq!(
                unary_answer(*answered, pairs(headers), body),
                *expected,
                "{headers:?} {body:?}"
            );
        }
    }
}
