//! The life of one HTTP exchange (a request and its response) as a sans-IO state machine.
//!
//! `(state, event) -> step`: the machine is fed [`Event`]s (request headers, body data,
//! response headers, response body data, a store's answer, the end of the stream) with an
//! [`Input`] (the configuration, the time, a CSPRNG to draw a new session's secret from) and
//! answers each with a [`Step`]: header edits, then continue, pause, answer locally, replace
//! the held response body, or run a store operation ([`Flow::Store`]) whose answer comes back
//! as [`Event::Stored`]; and what to count. It reads no clock, no store and no stat itself, and
//! knows nothing of the driver (`crate::driver`) that runs it or of which store answers.
//!
//! The decisions themselves are pure functions in [`crate::policy`]; this file sequences them.

use crate::config::{Config, IdentitySource, StoreConfig};
use crate::headers::{FixedNames, Header, Names};
use crate::host::{Attributes, Headers};
use crate::message::{json_outcome, Outcome, RequestId, SseScanner};
use crate::metrics::Event as Count;
use crate::policy::{
    self, HeadVerdict, HttpMethod, RequestHead, SessionVerdict, SessionlessBody, UninitializedBody,
};
use crate::record::{
    identity_handle, identity_of_parts, Record, MAX_UPSTREAM_HOST, MAX_UPSTREAM_ID,
};
use crate::rejection::Rejection;
use crate::session_id::{SessionId, SECRET_LEN};
use crate::store::{Ended, Lookup, StoreOp, StoreResult};
use log::{debug, info, warn};
use std::borrow::Cow;

pub use crate::headers::{SESSION_HEADER, VERSION_HEADER};
/// The CORS header that lets a browser client read the session header.
pub const EXPOSE_HEADER: &str = "access-control-expose-headers";
/// The header a browser sends with a request a CORS check may apply to; without it no browser
/// reads the answer's expose list, so none is added (as Envoy's `cors` filter answers).
pub const ORIGIN_HEADER: &str = "origin";

/// The request headers a decision may need, in one lookup; the identity header, when one is
/// configured, follows them.
const REQUEST_NAMES: FixedNames<'static> = FixedNames::new(&[
    ":method",
    ":path",
    SESSION_HEADER,
    VERSION_HEADER,
    "content-type",
    "content-length",
    ORIGIN_HEADER,
]);

/// The response headers an initialize's answer is judged by.
const RESPONSE_NAMES: Names<'static> =
    Names::new(&[":status", SESSION_HEADER, EXPOSE_HEADER, "content-type"]);

/// Reads a body a host holds: borrowed where the host keeps it in one piece for the event
/// (Envoy's dynamic modules), a copy where it is read out (proxy-wasm) or in pieces.
pub type ReadBody<'a> = dyn Fn() -> Cow<'a, [u8]> + 'a;

/// What happened, as the host reports it.
pub enum Event<'a> {
    /// The request's headers arrived; `end_of_stream` when there is no body.
    RequestHeaders {
        /// The headers.
        headers: &'a dyn Headers,
        /// What the proxy verified about the caller (read only for a verified identity).
        attributes: &'a dyn Attributes,
        /// No body follows.
        end_of_stream: bool,
    },
    /// Request body data arrived: `size()` bytes are buffered so far.
    RequestBody {
        /// Bytes buffered (asked only before the body is complete: a host may pay to learn it).
        size: &'a dyn Fn() -> usize,
        /// The body is complete.
        end_of_stream: bool,
        /// Reads the buffered body (only called when the machine needs it).
        body: &'a ReadBody<'a>,
    },
    /// The response's headers arrived.
    ResponseHeaders {
        /// The headers (`:status` among them).
        headers: &'a dyn Headers,
        /// What the proxy knows about the exchange (read only for `upstream.address`, when
        /// an `initialize` is answered and `affinity_header` is set).
        attributes: &'a dyn Attributes,
        /// No body follows.
        end_of_stream: bool,
    },
    /// A response body chunk arrived (`size()` bytes).
    ResponseBody {
        /// Bytes in this chunk; all the bytes held so far, when the machine paused the body
        /// (asked only while it holds the body).
        size: &'a dyn Fn() -> usize,
        /// The body is complete.
        end_of_stream: bool,
        /// Reads this chunk (only called when the machine needs it).
        body: &'a ReadBody<'a>,
    },
    /// The store answered the operation the machine waited for.
    Stored(StoreResult),
    /// The session the machine looked up is live: the answer to a [`StoreOp::Lookup`] that a
    /// worker's cache gives without the store (borrowed, not copied: on the hot path).
    Live(&'a Record),
    /// The stream is over (completed, reset or refused).
    Done,
}

/// A header change to make before the flow goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Set a request header (replacing every copy).
    Request(&'static str, String),
    /// Set a response header, or remove it (`None`).
    Response(&'static str, Option<String>),
    /// Add a response header the response does not carry (the machine read the headers and
    /// found none of that name): a host appends it without first looking for copies to
    /// replace, which costs Envoy more than the append itself.
    ResponseAdd(&'static str, Value),
    /// Set the configured `affinity_header` on the request, or remove it (`None`).
    Affinity(Option<String>),
    /// A fact about this request for access logs and traces (`session_facts`): its name
    /// (`mcp_session_handle`, `mcp_session_identity`, `mcp_session_outcome`) and value.
    Fact(&'static str, String),
}

/// A value [`Edit::ResponseAdd`] writes: text (a constant is not copied), or a session ID, written
/// out on the stack where the edit is carried out (an initialize's header, with no copy on the
/// heap to make and free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// This text.
    Text(Cow<'static, str>),
    /// This session's ID, as its header carries it ([`SessionId::encoded`]).
    Session(SessionId),
}

/// The fact naming the session a request presented or was given (its handle).
pub const FACT_HANDLE: &str = "mcp_session_handle";
/// The fact naming the caller (its identity handle), where an identity is configured.
pub const FACT_IDENTITY: &str = "mcp_session_identity";
/// The fact saying what the filter did: `minted`, `passed`, `ended`, `sessionless`, or
/// `rejected.<reason>`.
pub const FACT_OUTCOME: &str = "mcp_session_outcome";

/// A local answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u32,
    /// Headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body; empty for none.
    pub body: Vec<u8>,
}

impl Reply {
    /// 500 with a JSON-RPC error (-32603): the filter itself failed on this request (a panic
    /// caught at a native module's boundary).
    pub fn internal_error() -> Reply {
        let (status, body) = crate::rejection::internal_error();
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body,
        }
    }
}

/// What to do with the stream after the edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Let the headers or data go on.
    Continue,
    /// Hold them (buffering a body).
    Pause,
    /// Hold the request's headers, and go on showing the body (each chunk then answered
    /// [`Flow::Pause`] until the body is whole): asked only of a host that can
    /// ([`Input::holding_headers`]).
    HoldHeaders,
    /// Answer locally; the stream goes no further.
    Respond(Box<Reply>),
    /// Run the store operation [`Exchange::take_store_op`] gives and feed its answer back as
    /// [`Event::Stored`]. The machine keeps the operation itself, so that a step carries no
    /// heap allocation for it (an `initialize` runs two, the hot path's lookup one).
    Store,
    /// Replace the response body held so far with this, then let it go on (the headers have
    /// left already).
    Replace(Vec<u8>),
}

/// The machine's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Header changes, in order.
    pub edits: Vec<Edit>,
    /// Then this.
    pub flow: Flow,
}

impl Step {
    fn with(flow: Flow) -> Step {
        Step {
            edits: Vec::new(),
            flow,
        }
    }
}

/// What one step counted, in order ([`Exchange::take_counts`]): kept by the machine, not
/// carried in the step, up to two without an allocation (no step counts more today: an expiry
/// and a rejection) and on the heap past that. A list in every step cost an allocation on each
/// that counted anything, an initialize's among them, and a larger step to move on all others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    first: [Option<(Count, u32)>; 2],
    more: Vec<(Count, u32)>,
}

impl Counts {
    fn push(&mut self, count: (Count, u32)) {
        match self.first.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(count),
            None => self.more.push(count),
        }
    }

    /// Each count, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Count, u32)> + '_ {
        self.first.iter().flatten().chain(&self.more).copied()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.first[0].is_none()
    }
}

/// What the machine is given besides an event: it reads no clock, no random source and no
/// store of its own.
pub struct Input<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// Reads the time, ms since the Unix epoch (a host crossing: read at most once per event,
    /// and only by an event that needs it).
    pub clock: &'a dyn Fn() -> u64,
    /// Fills a buffer from the CSPRNG (a new session's secret); false when it cannot.
    pub random: &'a dyn Fn(&mut [u8]) -> bool,
    now: std::cell::Cell<Option<u64>>,
    /// A list the host carried out the edits of before, kept for the next step that makes
    /// edits ([`Input::keeping_edits`]).
    spare: Option<&'a std::cell::Cell<Vec<Edit>>>,
    /// The host can hold the request's headers while it shows the body.
    hold_headers: bool,
}

impl<'a> Input<'a> {
    /// The input of one event.
    pub fn new(
        config: &'a Config,
        clock: &'a dyn Fn() -> u64,
        random: &'a dyn Fn(&mut [u8]) -> bool,
    ) -> Input<'a> {
        Input {
            config,
            clock,
            random,
            now: std::cell::Cell::new(None),
            spare: None,
            hold_headers: false,
        }
    }

    /// This input, on a host that can (`true`) or cannot hold a request's headers while it
    /// shows the body ([`Flow::HoldHeaders`]; the driver's `Capabilities::hold_headers`).
    pub fn holding_headers(self, hold_headers: bool) -> Input<'a> {
        Input {
            hold_headers,
            ..self
        }
    }

    /// This input, whose steps take their list of edits from `spare` (a driver keeps the list
    /// of the last edits it carried out there): an initialize's answer makes two edits, and a
    /// list for them on each was an allocation and a free (make bench's native profile).
    pub fn keeping_edits(self, spare: &'a std::cell::Cell<Vec<Edit>>) -> Input<'a> {
        Input {
            spare: Some(spare),
            ..self
        }
    }

    /// An empty list of edits with room for `room`: the spare one when it has the room.
    fn edit_list(&self, room: usize) -> Vec<Edit> {
        match self.spare.map(std::cell::Cell::take) {
            Some(mut list) if list.capacity() >= room => {
                list.clear();
                list
            }
            _ => Vec::with_capacity(room),
        }
    }

    /// Now, ms since the Unix epoch: the clock read the first time it is asked for.
    pub fn now_ms(&self) -> u64 {
        match self.now.get() {
            Some(now) => now,
            None => {
                let now = (self.clock)();
                self.now.set(Some(now));
                now
            }
        }
    }
}

impl From<Flow> for Step {
    fn from(flow: Flow) -> Step {
        Step::with(flow)
    }
}

/// What the request side is reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing: the body flows.
    Pass,
    /// The body of a POST without a session.
    SessionlessBody,
    /// The body of a POST on a session waiting for `notifications/initialized`.
    UninitializedBody,
    /// A local reply was sent.
    Replied,
}

/// What the store operation under way is for.
#[derive(Debug, Clone, PartialEq)]
enum Waiting {
    /// Nothing.
    Nothing,
    /// The session of a request: then decide on it.
    Lookup {
        id: SessionId,
        method: HttpMethod,
        end_of_stream: bool,
        now_ms: u64,
    },
    /// A DELETE.
    Delete,
    /// A new session for an `initialize` with this request id.
    Reserve { request_id: RequestId },
    /// The decision on an `initialize`'s answer.
    Initialize {
        outcome: Outcome,
        request_id: RequestId,
        /// How its answer is framed: JSON of this length so far, or SSE (`None`).
        held: Option<usize>,
    },
    /// `notifications/initialized` went through.
    Initialized,
    /// The upstream answered 404 on a mapped session.
    UpstreamGone,
    /// The upstream accepted a DELETE of its session: ours ends too.
    Ending,
}

/// An `initialize` in flight: its reserved session and how its answer is being read.
#[derive(Debug)]
struct Initialize {
    id: SessionId,
    request_id: RequestId,
    reserved: Record,
    upstream_id: Option<String>,
    answer: Answer,
}

#[derive(Debug)]
enum Answer {
    /// Response headers not seen yet.
    Awaiting,
    /// Reading a JSON body (bounded by `max_body_bytes`).
    Json(Vec<u8>),
    /// Reading an SSE stream; the count is the bytes seen so far.
    Sse(SseScanner, usize),
}

/// One exchange's state.
#[derive(Debug)]
pub struct Exchange {
    phase: Phase,
    waiting: Waiting,
    /// The session this request uses, once validated.
    session: Option<SessionId>,
    /// The session maps to an upstream session ID.
    mapped: bool,
    /// A DELETE on a mapped session, forwarded: ours ends if the upstream ends its own.
    end_on_answer: bool,
    initialize: Option<Initialize>,
    /// Mark the session initialized when the upstream accepts this request.
    mark_initialized: bool,
    /// The identity header's value, read with the request headers.
    identity: Option<Vec<u8>>,
    /// The request carried `origin`: an initialize's answer exposes the session header.
    cross_origin: bool,
    /// What the event being stepped counted.
    counts: Counts,
    /// Facts for the access log found while stepping, when `session_facts` is on.
    facts: Option<Vec<Edit>>,
    /// The store operation the last step's [`Flow::Store`] asks for (a lookup is built from
    /// what the machine waits for instead).
    op: Option<StoreOp>,
}

impl Default for Exchange {
    fn default() -> Exchange {
        Exchange::new()
    }
}

impl Exchange {
    /// A new exchange, before its request headers.
    pub fn new() -> Exchange {
        Exchange {
            phase: Phase::Pass,
            waiting: Waiting::Nothing,
            session: None,
            mapped: false,
            end_on_answer: false,
            initialize: None,
            mark_initialized: false,
            identity: None,
            cross_origin: false,
            counts: Counts::default(),
            facts: None,
            op: None,
        }
    }

    /// Whether request body events would do anything: a host may skip them otherwise (the
    /// machine answers them with `Continue`), saving the crossing into the machine on every
    /// chunk of every request on a session.
    pub fn reads_request_body(&self) -> bool {
        matches!(
            self.phase,
            Phase::SessionlessBody | Phase::UninitializedBody
        )
    }

    /// Whether the response headers event would do anything: an `initialize` in flight, a
    /// session whose upstream ID is replaced, or a `notifications/initialized` to record.
    pub fn reads_response_headers(&self) -> bool {
        self.phase != Phase::Replied
            && (self.initialize.is_some()
                || (self.session.is_some() && (self.mapped || self.mark_initialized)))
    }

    /// Whether response body events would do anything (an `initialize` answer is being read).
    pub fn reads_response_body(&self) -> bool {
        self.initialize.is_some()
    }

    /// Whether [`Event::Done`] would do anything (a reservation is still held).
    pub fn holds_reservation(&self) -> bool {
        self.initialize.is_some()
    }

    /// Feeds one event: `(state, event) -> step`. A [`Flow::Store`] is answered with
    /// [`Event::Stored`] (the driver, `crate::driver`, does that).
    pub fn step(&mut self, input: &Input<'_>, event: Event<'_>) -> Step {
        if input.config.session_facts && self.facts.is_none() {
            self.facts = Some(Vec::new());
        }
        // An operation a step kept but did not ask for (its flow was replaced) is not run;
        // what an earlier step counted was taken, or is not counted twice.
        self.op = None;
        if !self.counts.is_empty() {
            self.counts = Counts::default();
        }
        let mut step = self.on_event(input, event);
        if let Some(facts) = &mut self.facts {
            step.edits.append(facts);
        }
        step
    }

    /// Notes a fact for the access log, when they are asked for.
    fn fact(&mut self, name: &'static str, value: impl Into<String>) {
        if let Some(facts) = &mut self.facts {
            facts.push(Edit::Fact(name, value.into()));
        }
    }

    fn count(&mut self, event: Count, n: u32) {
        if n > 0 {
            self.counts.push((event, n));
        }
    }

    fn on_event(&mut self, input: &Input<'_>, event: Event<'_>) -> Step {
        match event {
            Event::RequestHeaders {
                headers,
                attributes,
                end_of_stream,
            } => self.on_request_headers(input, headers, attributes, end_of_stream),
            Event::RequestBody {
                size,
                end_of_stream,
                body,
            } => self.on_request_body(input, size, end_of_stream, body),
            Event::ResponseHeaders {
                headers,
                attributes,
                end_of_stream,
            } => self.on_response_headers(input, headers, attributes, end_of_stream),
            Event::ResponseBody {
                size,
                end_of_stream,
                body,
            } => self.on_response_body(input, size, end_of_stream, body),
            Event::Stored(result) => self.on_stored(input, result),
            Event::Live(record) => self.on_live(input, record),
            Event::Done => self.on_done(input),
        }
    }

    fn reply(&mut self, rejection: &Rejection) -> Step {
        debug!(
            "rejected: {} {} ({})",
            rejection.status,
            rejection.message,
            rejection.reason.name()
        );
        self.phase = Phase::Replied;
        self.count(Count::Rejected(rejection.reason), 1);
        if self.facts.is_some() {
            self.fact(
                FACT_OUTCOME,
                format!("rejected.{}", rejection.reason.name()),
            );
        }
        let mut headers = vec![("content-type", "application/json".to_owned())];
        headers.extend(rejection.headers.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Flow::Respond(Box::new(Reply {
            status: rejection.status,
            headers,
            body: rejection.body(),
        }))
        .into()
    }

    fn on_request_headers(
        &mut self,
        input: &Input<'_>,
        headers: &dyn Headers,
        attributes: &dyn Attributes,
        end_of_stream: bool,
    ) -> Step {
        let cfg = input.config;
        // Every header the decision may need, in one lookup (an empty name matches nothing).
        let names = REQUEST_NAMES.then(cfg.identity_header().unwrap_or(""));
        let mut found = [Header::default(); 8];
        headers.find(&names, &mut found);
        let [method, path, session_id, protocol_version, content_type, content_length, origin, identity] =
            found;
        self.cross_origin = origin.value.is_some();
        let method = method.value.unwrap_or_default();
        let head = RequestHead {
            method,
            path: path.value.unwrap_or_default(),
            session_id: session_id.value,
            protocol_version: protocol_version.value,
            content_type: content_type.value,
            content_length: content_length.value,
            session_id_repeated: session_id.repeated(),
            protocol_version_repeated: protocol_version.repeated(),
            identity_repeated: identity.repeated(),
        };
        let mut step = self.on_head(
            input,
            policy::on_request_headers(cfg, &head),
            method,
            identity,
            attributes,
            end_of_stream,
        );
        if cfg.affinity_header.is_some() && !matches!(step.flow, Flow::Respond(_)) {
            // The client's own copy never steers a request: removed from every request that
            // goes on (a session's own host, if it has one, is set after this).
            step.edits.insert(0, Edit::Affinity(None));
        }
        step
    }

    fn on_head(
        &mut self,
        input: &Input<'_>,
        verdict: HeadVerdict,
        method: &[u8],
        identity: Header<'_>,
        attributes: &dyn Attributes,
        end_of_stream: bool,
    ) -> Step {
        let cfg = input.config;
        match verdict {
            HeadVerdict::Ignore => Flow::Continue.into(),
            HeadVerdict::Sessionless => {
                self.count(Count::Sessionless, 1);
                self.fact(FACT_OUTCOME, "sessionless");
                Flow::Continue.into()
            }
            HeadVerdict::Reject(rejection) => self.reply(&rejection),
            HeadVerdict::ReadSessionlessBody => {
                self.identity = read_identity(cfg.identity.as_ref(), identity, attributes);
                self.identity_fact();
                // The body is held until it is complete. The headers are held with it where
                // the host can still show the body then, so that a POST refused for its body
                // never reaches the upstream; elsewhere they go on now (a proxy-wasm host
                // without allow_on_headers_stop_iteration would stop the body callbacks too).
                self.phase = Phase::SessionlessBody;
                if end_of_stream {
                    self.on_complete_body(input, &[])
                } else if input.hold_headers {
                    Flow::HoldHeaders.into()
                } else {
                    Flow::Continue.into()
                }
            }
            HeadVerdict::Session { id } => {
                self.identity = read_identity(cfg.identity.as_ref(), identity, attributes);
                if self.facts.is_some() {
                    self.fact(FACT_HANDLE, id.handle());
                    self.identity_fact();
                }
                if cfg.identity.is_some() && self.identity.is_none() {
                    return self.reply(&Rejection::identity_not_found());
                }
                let method = HttpMethod::of(method);
                let now_ms = input.now_ms();
                // The driver answers from its cache when it can.
                self.waiting = Waiting::Lookup {
                    id,
                    method,
                    end_of_stream,
                    now_ms,
                };
                Flow::Store.into()
            }
        }
    }

    /// The store operation a [`Flow::Store`] asks for, once: the one the step kept, else the
    /// lookup of the session this exchange waits for, for its caller; `None` when it asks for
    /// none.
    pub fn take_store_op(&mut self) -> Option<StoreOp> {
        if let Some(op) = self.op.take() {
            return Some(op);
        }
        match self.waiting {
            Waiting::Lookup { id, now_ms, .. } => Some(StoreOp::Lookup {
                id,
                identity: self.identity.clone(),
                now_ms,
            }),
            _ => None,
        }
    }

    /// What the last step counted, once.
    pub fn take_counts(&mut self) -> Option<Counts> {
        (!self.counts.is_empty()).then(|| std::mem::take(&mut self.counts))
    }

    /// Keeps `op` for the driver to take ([`Exchange::take_store_op`]).
    fn store(&mut self, op: StoreOp) -> Flow {
        self.op = Some(op);
        Flow::Store
    }

    /// The caller's identity handle, as a fact.
    fn identity_fact(&mut self) {
        if let (Some(_), Some(identity)) = (&self.facts, &self.identity) {
            let handle = identity_handle(identity);
            self.fact(FACT_IDENTITY, handle);
        }
    }

    fn on_session(
        &mut self,
        input: &Input<'_>,
        id: SessionId,
        record: &Record,
        method: HttpMethod,
        end_of_stream: bool,
        now_ms: u64,
    ) -> Step {
        self.session = Some(id);
        self.mapped = record.upstream_id.is_some();
        let mut edits = Vec::new();
        if let Some(upstream) = &record.upstream_id {
            edits.push(Edit::Request(SESSION_HEADER, upstream.clone()));
        }
        if input.config.affinity_header.is_some() {
            edits.push(Edit::Affinity(record.upstream_host.clone()));
        }
        // Each fact is written once per stream (a host may refuse a second write): `passed`
        // when the request goes on, which for one whose body is read is once the body is.
        let verdict = policy::on_session(input.config, method, record);
        let mut step = match verdict {
            SessionVerdict::Forward => {
                self.fact(FACT_OUTCOME, "passed");
                Flow::Continue.into()
            }
            SessionVerdict::ReadUninitializedBody => {
                self.phase = Phase::UninitializedBody;
                if end_of_stream {
                    self.on_complete_body(input, &[])
                } else {
                    Flow::Continue.into()
                }
            }
            SessionVerdict::End if self.mapped => {
                // The upstream decides: a 2xx ends its session and then ours; a 405 (it lets
                // no client end a session) or a failure ends neither, and the client, told so,
                // goes on using it.
                self.end_on_answer = true;
                Flow::Continue.into()
            }
            SessionVerdict::End => {
                self.waiting = Waiting::Delete;
                self.store(StoreOp::End {
                    id,
                    identity: self.identity.clone(),
                    now_ms,
                })
                .into()
            }
        };
        edits.append(&mut step.edits);
        step.edits = edits;
        step
    }

    fn on_request_body(
        &mut self,
        input: &Input<'_>,
        size: &dyn Fn() -> usize,
        end_of_stream: bool,
        body: &ReadBody<'_>,
    ) -> Step {
        match self.phase {
            Phase::SessionlessBody | Phase::UninitializedBody => {}
            Phase::Pass | Phase::Replied => return Flow::Continue.into(),
        }
        let limit = input.config.max_body_bytes;
        if !end_of_stream {
            if size() > limit {
                return self.reply(&Rejection::body_too_large(limit));
            }
            return Flow::Pause.into(); // buffer until the whole body is here
        }
        // Complete: the body read is all of it (its size is not asked apart).
        let body = body();
        if body.len() > limit {
            return self.reply(&Rejection::body_too_large(limit));
        }
        self.on_complete_body(input, &body)
    }

    fn on_complete_body(&mut self, input: &Input<'_>, body: &[u8]) -> Step {
        match self.phase {
            Phase::SessionlessBody => match policy::on_sessionless_body(body) {
                SessionlessBody::Initialize { id } => self.reserve(input, id),
                SessionlessBody::Reject(rejection) => self.reply(&rejection),
            },
            Phase::UninitializedBody => match policy::on_uninitialized_body(body) {
                UninitializedBody::Forward { initialized } => {
                    self.mark_initialized = initialized;
                    self.phase = Phase::Pass;
                    self.fact(FACT_OUTCOME, "passed");
                    Flow::Continue.into()
                }
                UninitializedBody::Reject(rejection) => self.reply(&rejection),
            },
            Phase::Pass | Phase::Replied => Flow::Continue.into(),
        }
    }

    fn reserve(&mut self, input: &Input<'_>, request_id: RequestId) -> Step {
        if input.config.identity.is_some() && self.identity.is_none() {
            return self.reply(&Rejection::no_identity().with_id(request_id));
        }
        let mut secret = [0u8; SECRET_LEN];
        if !(input.random)(&mut secret) {
            log::error!("the host random source failed; refusing initialize");
            return self.reply(&Rejection::capacity().with_id(request_id));
        }
        self.waiting = Waiting::Reserve { request_id };
        self.store(StoreOp::Reserve {
            secret,
            identity: self.identity.clone(),
            now_ms: input.now_ms(),
        })
        .into()
    }

    /// A live session's record, for the lookup waited for.
    fn on_live(&mut self, input: &Input<'_>, record: &Record) -> Step {
        match std::mem::replace(&mut self.waiting, Waiting::Nothing) {
            Waiting::Lookup {
                id,
                method,
                end_of_stream,
                now_ms,
            } => self.on_session(input, id, record, method, end_of_stream, now_ms),
            waiting => {
                warn!("a live session does not answer {waiting:?}");
                Flow::Continue.into()
            }
        }
    }

    fn on_stored(&mut self, input: &Input<'_>, result: StoreResult) -> Step {
        let waiting = std::mem::replace(&mut self.waiting, Waiting::Nothing);
        match (waiting, result) {
            (
                Waiting::Lookup {
                    id,
                    method,
                    end_of_stream,
                    now_ms,
                },
                StoreResult::Lookup(lookup),
            ) => match lookup {
                Lookup::Live(record, _) => {
                    self.on_session(input, id, &record, method, end_of_stream, now_ms)
                }
                Lookup::Expired => {
                    self.count(Count::Expired, 1);
                    info!("session {} expired", id.short());
                    self.reply(&Rejection::session_not_found())
                }
                Lookup::NotFound => self.reply(&Rejection::session_not_found()),
            },
            (Waiting::Delete, StoreResult::Ended(ended)) => match ended {
                Ended::Ended(_) | Ended::EndedEarlier => {
                    self.count(Count::Terminated, 1);
                    self.fact(FACT_OUTCOME, "ended");
                    if let Some(id) = &self.session {
                        info!("session {} ended by the client", id.short());
                    }
                    self.phase = Phase::Replied;
                    Flow::Respond(Box::new(Reply {
                        status: 204,
                        headers: Vec::new(),
                        body: Vec::new(),
                    }))
                    .into()
                }
                Ended::Expired => {
                    self.count(Count::Expired, 1);
                    self.reply(&Rejection::session_not_found())
                }
                Ended::NotFound => self.reply(&Rejection::session_not_found()),
            },
            (Waiting::Reserve { request_id }, StoreResult::Reserved(reservation)) => {
                match reservation {
                    Some(reservation) => {
                        self.count(Count::Expired, reservation.expired);
                        self.initialize = Some(Initialize {
                            id: reservation.id,
                            request_id,
                            reserved: reservation.record,
                            upstream_id: None,
                            answer: Answer::Awaiting,
                        });
                        self.phase = Phase::Pass;
                        Flow::Continue.into()
                    }
                    None => {
                        warn!(
                            "initialize refused: {} sessions open",
                            input.config.max_sessions
                        );
                        self.reply(&Rejection::capacity().with_id(request_id))
                    }
                }
            }
            (Waiting::Initialize { outcome, .. }, StoreResult::Done(done)) => {
                if let Some(id) = self.session {
                    match (outcome, done) {
                        (Outcome::Result, true) => {
                            self.count(Count::Created, 1);
                            if self.facts.is_some() {
                                self.fact(FACT_HANDLE, id.handle());
                                self.fact(FACT_OUTCOME, "minted");
                            }
                            debug!("session {} created", id.short());
                        }
                        (Outcome::Result, false) => {
                            warn!("session {} could not be activated", id.short());
                        }
                        (Outcome::Error, _) => {
                            self.fact(FACT_OUTCOME, "passed");
                            debug!("initialize failed; reservation {} released", id.short());
                        }
                    }
                }
                Flow::Continue.into()
            }
            // Ours ends after the upstream's own: it answered 404 to a request on the session,
            // or accepted a DELETE of it (whose outcome is written here, once).
            (waiting @ (Waiting::UpstreamGone | Waiting::Ending), result) => {
                let id = self.session.map(|id| id.short()).unwrap_or_default();
                let by_client = waiting == Waiting::Ending;
                let outcome = match result {
                    StoreResult::Ended(Ended::Ended(_) | Ended::EndedEarlier) => {
                        self.count(Count::Terminated, 1);
                        if by_client {
                            info!("session {id} ended by the client");
                        } else {
                            info!("session {id} ended: the upstream answered 404");
                        }
                        "ended"
                    }
                    StoreResult::Ended(Ended::Expired) => {
                        self.count(Count::Expired, 1);
                        info!("session {id} expired");
                        "passed"
                    }
                    StoreResult::Ended(Ended::NotFound) => "passed",
                    other => {
                        // The upstream's answer goes on; ours ends at the upstream's next 404,
                        // or idle.
                        warn!("the upstream ended its session, but ours did not end: {other:?}");
                        "passed"
                    }
                };
                if by_client {
                    self.fact(FACT_OUTCOME, outcome);
                }
                Flow::Continue.into()
            }
            (Waiting::Initialized, StoreResult::Done(_)) => Flow::Continue.into(),
            (Waiting::Lookup { .. } | Waiting::Delete, StoreResult::Unavailable) => {
                self.reply(&Rejection::unavailable())
            }
            (Waiting::Reserve { request_id }, StoreResult::IdentityLimit) => {
                debug!("initialize refused: the caller holds max_sessions_per_identity sessions");
                self.reply(&Rejection::identity_limit().with_id(request_id))
            }
            (Waiting::Reserve { request_id }, StoreResult::Unavailable) => {
                // The session cannot be recorded: the upstream never sees this initialize.
                warn!("initialize refused: the session store cannot record the session");
                self.reply(&Rejection::unavailable().with_id(request_id))
            }
            (
                Waiting::Initialize {
                    outcome: Outcome::Result,
                    request_id,
                    held,
                },
                StoreResult::Unavailable,
            ) => {
                // The session could not be recorded. The answer's headers (with the session
                // ID) have left, its result has not: the client gets a JSON-RPC error in its
                // place, so it never uses the ID.
                warn!("initialize answered, but the session store cannot record the session");
                let rejection = Rejection::unavailable().with_id(request_id);
                let error = rejection.body();
                let body = match held {
                    // Same length as the answer's, which its content-length may announce.
                    Some(len) if error.len() <= len => {
                        let mut body = error;
                        body.resize(len, b' ');
                        body
                    }
                    Some(_) => return self.reply(&rejection),
                    None => {
                        let mut event = b"event: message\ndata: ".to_vec();
                        event.extend_from_slice(&error);
                        event.extend_from_slice(b"\n\n");
                        event
                    }
                };
                self.count(Count::Rejected(rejection.reason), 1);
                self.phase = Phase::Replied;
                Flow::Replace(body).into()
            }
            (waiting, result) => {
                // A host that answers the wrong question: never expected; let traffic go on.
                warn!("store answer {result:?} does not fit {waiting:?}");
                Flow::Continue.into()
            }
        }
    }

    fn on_response_headers(
        &mut self,
        input: &Input<'_>,
        headers: &dyn Headers,
        attributes: &dyn Attributes,
        end_of_stream: bool,
    ) -> Step {
        // The same test the host uses to skip this event: one place says when it matters.
        if !self.reads_response_headers() {
            return Flow::Continue.into(); // the hot path: nothing to do
        }
        if self.initialize.is_some() {
            return self.on_initialize_response(input, headers, attributes, end_of_stream);
        }
        let Some(id) = self.session else {
            return Flow::Continue.into();
        };
        let status = status_of(headers);
        let mut edits = Vec::new();
        if self.mapped {
            if status == 404 {
                // The upstream lost its session: ours is useless now. Its 404 goes to the
                // client (who starts over), without the upstream's own ID, should it name one.
                self.waiting = Waiting::UpstreamGone;
                let flow = self.store(StoreOp::End {
                    id,
                    identity: self.identity.clone(),
                    now_ms: input.now_ms(),
                });
                let edits = vec![Edit::Response(SESSION_HEADER, None)];
                return Step { edits, flow };
            }
            // Never show the client the upstream's own ID.
            edits.push(Edit::Response(SESSION_HEADER, Some(id.encode())));
            if self.end_on_answer {
                if !(200..300).contains(&status) {
                    self.fact(FACT_OUTCOME, "passed");
                    debug!("session {}: the upstream kept it ({status})", id.short());
                    return Step {
                        edits,
                        flow: Flow::Continue,
                    };
                }
                self.waiting = Waiting::Ending;
                let flow = self.store(StoreOp::End {
                    id,
                    identity: self.identity.clone(),
                    now_ms: input.now_ms(),
                });
                return Step { edits, flow };
            }
        }
        let flow = if self.mark_initialized && (200..300).contains(&status) {
            self.waiting = Waiting::Initialized;
            self.store(StoreOp::MarkInitialized {
                id,
                now_ms: input.now_ms(),
            })
        } else {
            Flow::Continue
        };
        Step { edits, flow }
    }

    fn on_initialize_response(
        &mut self,
        input: &Input<'_>,
        headers: &dyn Headers,
        attributes: &dyn Attributes,
        end_of_stream: bool,
    ) -> Step {
        let mut found = [Header::default(); 4];
        headers.find(&RESPONSE_NAMES, &mut found);
        let [status, upstream_id, expose, content_type] = found;
        let status = status_number(status);
        let upstream_id = upstream_id.text().map(str::to_owned);
        let removed = || Step {
            edits: vec![Edit::Response(SESSION_HEADER, None)],
            flow: Flow::Continue,
        };
        // A 2xx that ends at its headers carries no `InitializeResult`: no session goes out.
        if !(200..300).contains(&status) || end_of_stream {
            let mut step = removed();
            step.flow = self.decide_initialize(input, Outcome::Error).flow;
            return step;
        }
        if let Some(upstream) = &upstream_id {
            let valid = !upstream.is_empty()
                && upstream.len() <= MAX_UPSTREAM_ID
                && upstream.bytes().all(|b| (0x21..=0x7e).contains(&b));
            if !valid {
                warn!("the upstream's session ID is not storable; initialize fails");
                let mut step = removed();
                step.flow = self.decide_initialize(input, Outcome::Error).flow;
                return step;
            }
        }
        let Some(init) = &mut self.initialize else {
            return Flow::Continue.into();
        };
        // A header the response lacks is added, not set: Envoy's set first looks for copies.
        // Room for the expose header's edit too: one list, not a second to grow.
        let mut edits = input.edit_list(2);
        edits.push(match upstream_id {
            Some(_) => Edit::Response(SESSION_HEADER, Some(init.id.encode())),
            None => Edit::ResponseAdd(SESSION_HEADER, Value::Session(init.id)),
        });
        init.upstream_id = upstream_id;
        if input.config.affinity_header.is_some() {
            init.reserved.upstream_host = attributes
                .get(&["upstream", "address"])
                .and_then(|v| String::from_utf8(v).ok())
                .filter(|v| !v.is_empty() && v.len() <= MAX_UPSTREAM_HOST);
        }
        // Exposed to a browser (a request with `origin`) unless the upstream's (first) list
        // names it: in a line of its own, which leaves every line the upstream sent as it was
        // (a list may span several lines).
        let named = |list: &str| {
            list.split(',')
                .any(|name| name.trim().eq_ignore_ascii_case(SESSION_HEADER))
        };
        if self.cross_origin && !expose.text().is_some_and(named) {
            edits.push(Edit::ResponseAdd(
                EXPOSE_HEADER,
                Value::Text(Cow::Borrowed(SESSION_HEADER)),
            ));
        }
        const SSE: &[u8] = b"text/event-stream";
        let content_type = content_type.value.unwrap_or_default();
        init.answer = if content_type
            .get(..SSE.len())
            .is_some_and(|media| media.eq_ignore_ascii_case(SSE))
        {
            Answer::Sse(SseScanner::default(), 0)
        } else {
            Answer::Json(Vec::new())
        };
        Step {
            edits,
            flow: Flow::Continue,
        }
    }

    fn on_response_body(
        &mut self,
        input: &Input<'_>,
        size: &dyn Fn() -> usize,
        end_of_stream: bool,
        body: &ReadBody<'_>,
    ) -> Step {
        let Some(init) = &mut self.initialize else {
            return Flow::Continue.into();
        };
        let limit = input.config.max_body_bytes;
        // The etcd store writes what an answer taught (the upstream's own session ID, the host
        // that answered) before the answer leaves: the body is held until then.
        let hold = matches!(input.config.store, StoreConfig::Etcd(_))
            && (init.upstream_id.is_some() || init.reserved.upstream_host.is_some());
        let outcome = match &mut init.answer {
            Answer::Awaiting => return Flow::Continue.into(),
            Answer::Json(buffer) => {
                let whole;
                let answer: &[u8] = if hold {
                    // Held (the host buffers it: `size` and `body()` are all of it so far) until
                    // the decision and its write, and read once, when it is decided.
                    if !end_of_stream && size() <= limit {
                        return Flow::Pause.into();
                    }
                    *buffer = body().into_owned();
                    buffer
                } else if buffer.is_empty() && end_of_stream {
                    // The whole answer in one event: read where the host holds it, no copy.
                    whole = body();
                    &whole
                } else {
                    buffer.extend_from_slice(&body());
                    buffer
                };
                if answer.len() > limit {
                    Some(Outcome::Result) // too big to read: give it the benefit of the doubt
                } else if end_of_stream {
                    Some(json_outcome(answer).unwrap_or(Outcome::Error))
                } else {
                    None
                }
            }
            Answer::Sse(scanner, seen) => {
                let bytes = body();
                *seen += bytes.len();
                match scanner.feed(&bytes) {
                    Some(outcome) => Some(outcome),
                    None if *seen > limit => Some(Outcome::Result),
                    None if end_of_stream => Some(Outcome::Error),
                    None => None,
                }
            }
        };
        match outcome {
            Some(outcome) => self.decide_initialize(input, outcome),
            None => Flow::Continue.into(),
        }
    }

    fn on_done(&mut self, input: &Input<'_>) -> Step {
        // A stream that ended before the initialize was answered leaves no reservation.
        if self.initialize.is_some() {
            return self.decide_initialize(input, Outcome::Error);
        }
        Flow::Continue.into()
    }

    /// Activates or releases the reservation of the `initialize` in flight, once.
    fn decide_initialize(&mut self, input: &Input<'_>, outcome: Outcome) -> Step {
        let Some(init) = self.initialize.take() else {
            return Flow::Continue.into();
        };
        self.session = Some(init.id);
        self.waiting = Waiting::Initialize {
            outcome,
            request_id: init.request_id,
            held: match &init.answer {
                Answer::Json(buffer) => Some(buffer.len()),
                Answer::Awaiting | Answer::Sse(..) => None,
            },
        };
        let op = match outcome {
            Outcome::Result => StoreOp::Activate {
                id: init.id,
                reserved: init.reserved,
                upstream_id: init.upstream_id,
                now_ms: input.now_ms(),
            },
            Outcome::Error => StoreOp::Release {
                id: init.id,
                identity: self.identity.clone(),
            },
        };
        self.store(op).into()
    }
}

/// The caller identity a session is bound to, from where the configuration says: the header's
/// value, or the attributes' values (each length-prefixed, so no two lists of claims read
/// alike). `None` when not configured, or when any part is missing or empty.
fn read_identity(
    source: Option<&IdentitySource>,
    header: Header<'_>,
    attributes: &dyn Attributes,
) -> Option<Vec<u8>> {
    match source? {
        IdentitySource::Header(_) => header.value.filter(|v| !v.is_empty()).map(<[u8]>::to_vec),
        other => identity_of_parts(other.attributes().iter().map(|path| attributes.get(path))),
    }
}

/// `:status` as a number; 0 when absent or not a number.
fn status_of(headers: &dyn Headers) -> u32 {
    status_number(headers.get(":status"))
}

fn status_number(status: Header<'_>) -> u32 {
    status
        .number()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
