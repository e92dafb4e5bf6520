//! The one test kit, shared by the unit tests, `core/tests/` and the fuzz targets: a seeded
//! PRNG, fixtures (a clock reading, a live record), an in-memory shared-data store with
//! Envoy's exact semantics, a reference model of the session store, a deterministic host,
//! header maps, and an [`Envoy`] that runs whole exchanges through a [`Worker`] the way the
//! proxy calls the filter. Nothing here is a secret source or used by the filter at run time.

use crate::config::EtcdConfig;
use crate::driver::{Action, Side, Stream, StreamIo, Upstream, Worker};
use crate::exchange::Reply;
use crate::headers::{Header, Names};
use crate::host::{Attributes, Headers, Host};
use crate::metrics::Metric;
use crate::record::{Record, State};
use crate::session_id::{SessionId, SECRET_LEN};
use crate::store::etcd::{Call, Remote};
use crate::store::local::slot_key;
use crate::store::memory::Table;
use crate::store::{Limits, SharedData, StoreOp, WriteError};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

/// A clock reading for tests, ms since the epoch (March 2030): far enough from 0 that no
/// test's arithmetic on it wraps, and fixed, so a failure reads the same every run.
pub const T0: u64 = 1_900_000_000_000;

/// A live, initialized session record holding `secret`, opened and last used at `now_ms`,
/// bound to no identity and mapped to no upstream session.
pub fn live_record(secret: [u8; SECRET_LEN], now_ms: u64) -> Record {
    Record {
        state: State::Live,
        initialized: true,
        secret,
        created_ms: now_ms,
        last_seen_ms: now_ms,
        identity: None,
        upstream_id: None,
        upstream_host: None,
    }
}

/// An etcd store as the tests configure one: cluster `etcd`, a 1 s deadline, keys under
/// `prefix`, sessions idle after `idle_ms`; `fall_back_to_local` is `unavailable: local`.
pub fn etcd_remote(prefix: &str, idle_ms: u64, fall_back_to_local: bool) -> Remote {
    Remote::new(
        EtcdConfig {
            cluster: "etcd".into(),
            prefix: prefix.into(),
            timeout_ms: 1000,
            fall_back_to_local,
        },
        idle_ms,
    )
}

/// Makes `remote` a VM that serves requests: only such a VM's timer makes calls. Any
/// operation that reaches etcd does; this one is a lookup, left unanswered (a release would
/// queue a delete of its own in the backlog).
pub fn start_serving(remote: &Remote, limits: &Limits) {
    let id = SessionId {
        slot: 1,
        secret: [1; SECRET_LEN],
    };
    let lookup = StoreOp::Lookup {
        id,
        identity: None,
        now_ms: 0,
    };
    let _ = remote.begin(lookup, limits);
}

/// splitmix64: reproducible, fast, not secret. Every seed, 0 included, gives a full stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next 32 bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// The store's source of probe positions, drawn from this generator:
    /// `store.reserve(now, secret, None, &mut rng.probes())`.
    pub fn probes(&mut self) -> impl FnMut() -> u32 + '_ {
        move || self.next_u32()
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            for (to, from) in chunk.iter_mut().zip(word) {
                *to = from;
            }
        }
    }
}

/// Envoy's shared data for tests: the native module's [`Table`] (Envoy's exact semantics: cas
/// counter from 1, writes to missing keys accept any cas, empty values kept as present keys),
/// with its reads and writes counted.
#[derive(Debug, Default)]
pub struct FakeShared {
    table: Table,
    gets: Cell<u64>,
    sets: Cell<u64>,
}

impl FakeShared {
    /// Number of keys ever created (the host never deletes one).
    pub fn key_count(&self) -> usize {
        self.table.len()
    }
    /// Total bytes held in values.
    pub fn value_bytes(&self) -> usize {
        self.table.value_bytes()
    }
    /// Reads so far. A read that returns a value is what costs in Envoy (a VM crossing and
    /// an allocation callback, ~11,000 instructions), so tests bound it per operation.
    pub fn gets(&self) -> u64 {
        self.gets.get()
    }
    /// Writes so far, successful or not.
    pub fn sets(&self) -> u64 {
        self.sets.get()
    }
}

impl SharedData for FakeShared {
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        self.gets.set(self.gets.get().wrapping_add(1));
        self.table.get(key)
    }

    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        self.sets.set(self.sets.get().wrapping_add(1));
        self.table.set(key, value, cas)
    }
}

/// The live records in the first `high` slots of `shared` (what the filter's live-sessions
/// gauge must equal).
pub fn live_records(shared: &FakeShared, high: u32) -> i64 {
    let live = (0..high)
        .filter_map(|slot| shared.get(&slot_key(slot)).0)
        .filter_map(|bytes| Record::decode(&bytes))
        .filter(|r| r.state == State::Live)
        .count();
    i64::try_from(live).unwrap_or(i64::MAX)
}

/// Where a session stands in a [`StoreModel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownState {
    /// Reserved by an initialize not yet answered.
    Pending,
    /// Activated: usable until it ends or expires.
    Live,
    /// Released, ended, expired or displaced: must never be found live again.
    Gone,
}

/// What a [`StoreModel`] knows of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its ID.
    pub id: SessionId,
    /// The identity header value it was opened with.
    pub identity: Option<Vec<u8>>,
    /// When it was reserved.
    pub created_ms: u64,
    /// When it was last used (activated, found live, answered).
    pub last_use_ms: u64,
    /// Where it stands.
    pub state: KnownState,
}

/// The reference model of the session store that the store's model test and fuzz target
/// check it against: every session ever reserved, in order, with where it stands, and the
/// live count the filter keeps (created - terminated - expired). The caller tells it what
/// the store did; it answers what the session was before, for the caller to judge.
#[derive(Debug, Clone)]
pub struct StoreModel {
    limits: Limits,
    sessions: Vec<Known>,
    /// created - terminated - expired, as the filter counts them: must equal
    /// [`live_records`].
    pub live_gauge: i64,
}

impl StoreModel {
    /// An empty model of a store with `limits`.
    pub fn new(limits: Limits) -> StoreModel {
        StoreModel {
            limits,
            sessions: Vec::new(),
            live_gauge: 0,
        }
    }

    /// Every session reserved so far, in order.
    pub fn sessions(&self) -> &[Known] {
        &self.sessions
    }

    /// The session `which` names (counting round the sessions), if there is any.
    pub fn pick(&self, which: u64) -> Option<Known> {
        let n = u64::try_from(self.sessions.len()).ok()?;
        let i = usize::try_from(which.checked_rem(n)?).ok()?;
        self.sessions.get(i).cloned()
    }

    /// What the model knows of `id`.
    pub fn get(&self, id: &SessionId) -> Option<&Known> {
        self.sessions.iter().find(|k| k.id == *id)
    }

    fn get_mut(&mut self, id: &SessionId) -> Option<&mut Known> {
        self.sessions.iter_mut().find(|k| k.id == *id)
    }

    /// A reserve at `now_ms` handed out `id` (for `identity`), reclaiming `expired` live
    /// sessions on the way. Returns the sessions it displaced from that slot as they stood
    /// before (now gone), for the caller to judge whether they could be.
    pub fn reserved(
        &mut self,
        id: SessionId,
        identity: Option<Vec<u8>>,
        now_ms: u64,
        expired: u32,
    ) -> Vec<Known> {
        self.swept(expired);
        let mut displaced = Vec::new();
        for k in &mut self.sessions {
            if k.id.slot == id.slot && k.state != KnownState::Gone {
                displaced.push(k.clone());
                k.state = KnownState::Gone;
            }
        }
        self.sessions.push(Known {
            id,
            identity,
            created_ms: now_ms,
            last_use_ms: now_ms,
            state: KnownState::Pending,
        });
        displaced
    }

    /// `id` was activated at `now_ms`: live, and counted. Returns its state before.
    pub fn activated(&mut self, id: &SessionId, now_ms: u64) -> Option<KnownState> {
        let k = self.get_mut(id)?;
        let before = k.state;
        k.state = KnownState::Live;
        k.last_use_ms = now_ms;
        self.live_gauge = self.live_gauge.saturating_add(1);
        Some(before)
    }

    /// `id` was used at `now_ms` (found live, or answered by the upstream).
    pub fn used(&mut self, id: &SessionId, now_ms: u64) {
        if let Some(k) = self.get_mut(id) {
            k.last_use_ms = k.last_use_ms.max(now_ms);
        }
    }

    /// `id` is gone without the filter counting it (released, or reclaimed and counted by
    /// another operation). Returns its state before.
    pub fn gone(&mut self, id: &SessionId) -> Option<KnownState> {
        let k = self.get_mut(id)?;
        Some(std::mem::replace(&mut k.state, KnownState::Gone))
    }

    /// The store reported `id` ended or expired: it is gone, and the filter counts it.
    /// Returns its state before.
    pub fn ended(&mut self, id: &SessionId) -> Option<KnownState> {
        self.live_gauge = self.live_gauge.saturating_sub(1);
        self.gone(id)
    }

    /// A sweep (or a reserve) reported `expired` live sessions reclaimed.
    pub fn swept(&mut self, expired: u32) {
        self.live_gauge = self.live_gauge.saturating_sub(i64::from(expired));
    }

    /// Whether the store may have expired `k` by `now_ms`: it refreshes a session's last use
    /// at most once per touch interval, so it may expire one up to that much early, never
    /// late.
    pub fn may_be_expired(&self, k: &Known, now_ms: u64) -> bool {
        let slack = self.limits.touch_interval_ms();
        now_ms.saturating_sub(k.last_use_ms).saturating_add(slack) >= self.limits.idle_ms
            || self.past_lifetime(k, now_ms)
    }

    /// Whether the store must have expired `k` by `now_ms`.
    pub fn must_be_expired(&self, k: &Known, now_ms: u64) -> bool {
        now_ms.saturating_sub(k.last_use_ms) >= self.limits.idle_ms || self.past_lifetime(k, now_ms)
    }

    fn past_lifetime(&self, k: &Known, now_ms: u64) -> bool {
        self.limits.lifetime_ms > 0
            && now_ms.saturating_sub(k.created_ms) >= self.limits.lifetime_ms
    }
}

/// What one Envoy process shares between its workers: shared data, the stats and the clock.
#[derive(Debug)]
pub struct Process {
    /// Shared data.
    pub shared: FakeShared,
    stats: RefCell<BTreeMap<String, i64>>,
    clock: Cell<u64>,
    /// Whether the stats keep the epoch counter (a stats matcher may drop it).
    pub keeps_epoch: Cell<bool>,
}

impl Process {
    /// A process whose clock reads `now_ms`.
    pub fn new(now_ms: u64) -> Rc<Process> {
        Rc::new(Process {
            shared: FakeShared::default(),
            stats: RefCell::new(BTreeMap::new()),
            clock: Cell::new(now_ms),
            keeps_epoch: Cell::new(true),
        })
    }

    /// Moves the clock on.
    pub fn advance(&self, ms: u64) {
        self.clock.set(self.clock.get().saturating_add(ms));
    }

    /// Now.
    pub fn now_ms(&self) -> u64 {
        self.clock.get()
    }

    /// A stat's value, by name (0 when never moved).
    pub fn stat(&self, name: &str) -> i64 {
        self.stats.borrow().get(name).copied().unwrap_or(0)
    }

    /// The `mcp_session.*` stats that are not 0, without the prefix, the epoch left out.
    pub fn session_stats(&self) -> BTreeMap<String, i64> {
        self.stats
            .borrow()
            .iter()
            .filter(|(k, v)| **v != 0 && k.as_str() != crate::metrics::EPOCH)
            .map(|(k, v)| (k.trim_start_matches("mcp_session.").to_owned(), *v))
            .collect()
    }
}

/// One worker's host: the process it runs in and a random source of its own (seeded, so a
/// test is reproducible).
#[derive(Debug)]
pub struct FakeHost {
    /// The process.
    pub process: Rc<Process>,
    rng: RefCell<Rng>,
    /// Whether the random source works.
    pub random_works: Cell<bool>,
}

impl FakeHost {
    /// A worker of `process` whose random source is seeded with `seed`.
    pub fn new(process: &Rc<Process>, seed: u64) -> FakeHost {
        FakeHost {
            process: Rc::clone(process),
            rng: RefCell::new(Rng::new(seed)),
            random_works: Cell::new(true),
        }
    }
}

impl SharedData for FakeHost {
    fn get(&self, key: &[u8]) -> (Option<Vec<u8>>, Option<u32>) {
        self.process.shared.get(key)
    }
    fn set(&self, key: &[u8], value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        self.process.shared.set(key, value, cas)
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.process.now_ms()
    }

    fn fill_random(&self, buf: &mut [u8]) -> bool {
        if !self.random_works.get() {
            return false;
        }
        self.rng.borrow_mut().fill(buf);
        true
    }

    fn increment(&self, metric: Metric, delta: i64) {
        let mut stats = self.process.stats.borrow_mut();
        let value = stats.entry(metric.name()).or_insert(0);
        *value = value.saturating_add(delta);
    }

    fn record(&self, metric: Metric, value: u64) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.process.stats.borrow_mut().insert(metric.name(), value);
    }

    fn epoch(&self) -> Option<u64> {
        if !self.process.keeps_epoch.get() {
            return None;
        }
        let value = self.process.stat(crate::metrics::EPOCH);
        u64::try_from(value).ok().filter(|v| *v > 0)
    }
}

/// A header map: pairs in order, names compared without regard to ASCII case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList(pub Vec<(String, String)>);

impl HeaderList {
    /// From pairs.
    pub fn of(pairs: &[(&str, &str)]) -> HeaderList {
        HeaderList(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` (replacing every copy), or removes it.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }
}

impl Headers for HeaderList {
    fn find<'s>(&'s self, names: &Names<'_>, found: &mut [Header<'s>]) {
        for (name, slot) in names.iter().zip(found.iter_mut()) {
            for (k, v) in &self.0 {
                if !name.is_empty() && k.eq_ignore_ascii_case(name) {
                    if slot.value.is_none() {
                        slot.value = Some(v.as_bytes());
                    }
                    slot.count = slot.count.saturating_add(1);
                }
            }
        }
    }
}

/// Attributes the proxy established about a request, by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeMap(pub Vec<(Vec<String>, Vec<u8>)>);

impl AttributeMap {
    /// Sets the attribute at `path`.
    pub fn set(&mut self, path: &[&str], value: &[u8]) {
        let path: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
        self.0.retain(|(p, _)| *p != path);
        self.0.push((path, value.to_vec()));
    }
}

impl Attributes for AttributeMap {
    fn get(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(p, _)| p.iter().map(String::as_str).eq(path.iter().copied()))
            .map(|(_, v)| v.clone())
    }
}

/// An HTTP request as a client sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Headers, pseudo-headers (`:method`, `:path`) included.
    pub headers: HeaderList,
    /// Body.
    pub body: Vec<u8>,
    /// What the proxy verified about the caller (a JWT's claims, the TLS peer).
    pub attributes: AttributeMap,
}

impl Request {
    /// A POST of `body` to `/mcp` as a JSON-RPC client sends it, with `extra` headers.
    pub fn post(body: &str, extra: &[(&str, &str)]) -> Request {
        let mut headers = HeaderList::of(&[
            (":method", "POST"),
            (":path", "/mcp"),
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ]);
        headers.0.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Request {
            headers,
            body: body.as_bytes().to_vec(),
            attributes: AttributeMap::default(),
        }
    }

    /// A request with another method and no body.
    pub fn bare(method: &str, extra: &[(&str, &str)]) -> Request {
        let mut request = Request::post("", extra);
        request.headers.set(":method", Some(method));
        request.headers.set("content-type", None);
        request
    }
}

/// An HTTP response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Status.
    pub status: u32,
    /// Headers (`:status` not among them).
    pub headers: HeaderList,
    /// Body.
    pub body: Vec<u8>,
    /// Whether the filter answered it (a local reply) rather than the upstream.
    pub local: bool,
}

impl Response {
    /// A response from the upstream.
    pub fn upstream(status: u32, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: HeaderList::of(headers),
            body: body.as_bytes().to_vec(),
            local: false,
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.value(name)
    }
}

/// How an [`Envoy`] delivers bodies to the filter: whole, or cut in chunks of this many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunks {
    /// One piece.
    Whole,
    /// Pieces of this size.
    Of(usize),
}

/// How a test's etcd answers a call: the gRPC status and, when it is 0, the message.
pub type EtcdAnswer = Box<dyn Fn(&Call) -> (u32, Option<Vec<u8>>)>;

/// Runs exchanges through a [`Worker`] as Envoy calls the filter: request headers, the body
/// (buffered while the filter pauses), the upstream, response headers, the response body
/// (held while the filter pauses), then the end of the stream. It goes through the same
/// applier as the proxy-wasm adapter (the driver, with this kit's [`StreamIo`]): header edits
/// land in the headers the upstream or the client sees, a local reply ends the exchange, and
/// a call to etcd is answered by [`Envoy::etcd`] before the stream goes on.
pub struct Envoy<'p, H: Host> {
    /// The worker.
    pub worker: &'p Worker<H>,
    /// How bodies arrive.
    pub chunks: Chunks,
    /// How etcd answers; without it every call fails with gRPC status 14 (unavailable).
    pub etcd: Option<EtcdAnswer>,
    /// Whether each body ends with trailers (HTTP/2) rather than with a chunk that ends the
    /// stream: then no body call says `end_of_stream`, and the trailers call comes last.
    pub trailers: bool,
}

/// The kit's side of one stream: the headers as edited, and what the filter did.
#[derive(Debug, Default)]
pub struct StreamLog {
    /// The request headers, as edited.
    pub request: HeaderList,
    /// The response headers, as edited.
    pub response: HeaderList,
    /// The local reply, if the filter answered.
    pub reply: Option<Reply>,
    /// What the filter replaced the held response body with.
    pub replaced: Option<Vec<u8>>,
    /// Every call the filter made.
    pub calls: Vec<Call>,
    /// A call made and not answered yet.
    pending: Option<(u32, Call)>,
    /// Sides the filter let go on after a call.
    resumed: Vec<Side>,
    /// The facts the filter recorded for the access log, the last value of each.
    pub facts: BTreeMap<String, String>,
}

impl StreamIo for StreamLog {
    fn set_header(&mut self, side: Side, name: &str, value: Option<&str>) {
        match side {
            Side::Request => self.request.set(name, value),
            Side::Response => self.response.set(name, value),
        }
    }

    fn add_header(&mut self, side: Side, name: &str, value: &[u8]) {
        // Appended, as a host does: an add of a header the side already has shows as a copy.
        let list = match side {
            Side::Request => &mut self.request,
            Side::Response => &mut self.response,
        };
        list.0
            .push((name.to_owned(), String::from_utf8_lossy(value).into_owned()));
    }

    fn respond(&mut self, reply: &Reply) {
        self.reply = Some(reply.clone());
    }

    fn replace_body(&mut self, body: &[u8]) {
        self.replaced = Some(body.to_vec());
    }

    fn call(&mut self, _: &Upstream, call: &Call, _timeout_ms: u64) -> Result<u32, u32> {
        self.calls.push(call.clone());
        let token = u32::try_from(self.calls.len()).unwrap_or(u32::MAX);
        self.pending = Some((token, call.clone()));
        Ok(token)
    }

    fn resume(&mut self, side: Side) {
        self.resumed.push(side);
    }

    fn set_fact(&mut self, name: &str, value: &str) {
        // Envoy's dynamic modules store a fact read-only: a second write of one name on a
        // stream may be refused, so the machine writes each once (review: `passed`, then a
        // rejection of the body).
        let first = self.facts.insert(name.to_owned(), value.to_owned());
        assert!(
            first.is_none(),
            "fact {name} written twice: {first:?}, then {value}"
        );
    }
}

impl<'p, H: Host> Envoy<'p, H> {
    /// An Envoy worker running `worker`.
    pub fn new(worker: &'p Worker<H>) -> Envoy<'p, H> {
        Envoy {
            worker,
            chunks: Chunks::Whole,
            etcd: None,
            trailers: false,
        }
    }

    /// Sends `request`; `upstream` answers what the filter forwards (it sees the request as
    /// edited). Returns what the client gets.
    pub fn send(
        &self,
        request: Request,
        upstream: &mut dyn FnMut(&Request) -> Response,
    ) -> Response {
        self.exchange(request, Some(upstream)).0
    }

    /// [`Envoy::send`], and what the filter did on the way.
    pub fn exchange(
        &self,
        mut request: Request,
        upstream: Option<&mut dyn FnMut(&Request) -> Response>,
    ) -> (Response, StreamLog) {
        let mut stream = Stream::default();
        let mut log = StreamLog::default();
        let response = self.run(&mut stream, &mut log, &mut request, upstream);
        self.worker.stream_done(&mut stream, &mut log);
        (response, log)
    }

    /// Answers the calls the filter made until it waits for none; the action it ends with.
    fn settle(&self, stream: &mut Stream, log: &mut StreamLog, mut action: Action) -> Action {
        while let Some((token, call)) = log.pending.take() {
            let (status, message) = match &self.etcd {
                Some(etcd) => etcd(&call),
                None => (14, None),
            };
            log.resumed.clear();
            self.worker.stream_call_answered(
                stream,
                token,
                status,
                &message.unwrap_or_default(),
                log,
            );
            action = if log.resumed.is_empty() {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        action
    }

    fn run(
        &self,
        stream: &mut Stream,
        log: &mut StreamLog,
        request: &mut Request,
        upstream: Option<&mut dyn FnMut(&Request) -> Response>,
    ) -> Response {
        let worker = self.worker;
        let no_body = request.body.is_empty() && !self.trailers;
        log.request = request.headers.clone();
        let action = worker.request_headers(
            stream,
            &request.headers.clone(),
            &request.attributes.clone(),
            no_body,
            log,
        );
        let _ = self.settle(stream, log, action);
        request.headers = log.request.clone();
        if let Some(reply) = log.reply.take() {
            return local(reply);
        }
        if !no_body {
            let pieces = pieces(&request.body, self.chunks);
            let mut buffered: Vec<u8> = Vec::new();
            for (i, piece) in pieces.iter().enumerate() {
                buffered.extend_from_slice(piece);
                let end = i + 1 == pieces.len() && !self.trailers;
                let whole = buffered.clone();
                let read = move || Cow::Owned(whole.clone());
                let action =
                    worker.body(stream, Side::Request, &|| buffered.len(), end, &read, log);
                let action = self.settle(stream, log, action);
                request.headers = log.request.clone();
                if let Some(reply) = log.reply.take() {
                    return local(reply);
                }
                if action == Action::Continue {
                    buffered.clear(); // passed on: the next callback sees only new data
                }
            }
            if self.trailers {
                let whole = buffered.clone();
                let read = move || Cow::Owned(whole.clone());
                let action = worker.trailers(stream, Side::Request, &|| buffered.len(), &read, log);
                let _ = self.settle(stream, log, action);
                request.headers = log.request.clone();
                if let Some(reply) = log.reply.take() {
                    return local(reply);
                }
            }
        }
        let Some(upstream) = upstream else {
            return Response::default(); // the stream ends before the upstream answers
        };
        let mut response = upstream(request);
        let mut headers = response.headers.clone();
        headers
            .0
            .insert(0, (":status".into(), response.status.to_string()));
        let no_body = response.body.is_empty() && !self.trailers;
        log.response = response.headers.clone();
        // The test's request attributes stand for the exchange's (e.g. `upstream.address`).
        let action =
            worker.response_headers(stream, &headers, &request.attributes.clone(), no_body, log);
        let _ = self.settle(stream, log, action);
        response.headers = log.response.clone();
        if let Some(reply) = log.reply.take() {
            return local(reply);
        }
        let body = std::mem::take(&mut response.body);
        let pieces = if no_body {
            Vec::new()
        } else {
            pieces(&body, self.chunks)
        };
        let mut held: Vec<u8> = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            held.extend_from_slice(piece);
            let end = i + 1 == pieces.len() && !self.trailers;
            let chunk = held.clone();
            let read = move || Cow::Owned(chunk.clone());
            let action = worker.body(stream, Side::Response, &|| held.len(), end, &read, log);
            let action = self.settle(stream, log, action);
            if let Some(reply) = log.reply.take() {
                return local(reply);
            }
            if action == Action::Continue {
                let sent = log.replaced.take().unwrap_or_else(|| held.clone());
                response.body.extend_from_slice(&sent);
                held.clear();
            }
        }
        if self.trailers {
            let chunk = held.clone();
            let read = move || Cow::Owned(chunk.clone());
            let action = worker.trailers(stream, Side::Response, &|| held.len(), &read, log);
            let action = self.settle(stream, log, action);
            if let Some(reply) = log.reply.take() {
                return local(reply);
            }
            if action == Action::Continue {
                if let Some(sent) = log.replaced.take() {
                    held = sent;
                }
            }
        }
        response.body.extend_from_slice(&held);
        response
    }
}

fn pieces(body: &[u8], chunks: Chunks) -> Vec<&[u8]> {
    match chunks {
        Chunks::Whole => vec![body],
        Chunks::Of(n) => body.chunks(n.max(1)).collect(),
    }
}

fn local(reply: Reply) -> Response {
    let mut headers = HeaderList::default();
    for (k, v) in &reply.headers {
        headers.0.push(((*k).to_owned(), v.clone()));
    }
    Response {
        status: reply.status,
        headers,
        body: reply.body,
        local: true,
    }
}

pub use fake_etcd::FakeEtcd;

/// An etcd member in memory, for tests and fuzz targets.
mod fake_etcd {
    use crate::store::etcd::proto::{
        self, compare::TargetUnion, request_op::Request, response_op::Response,
    };
    use crate::store::etcd::{Call, KV, LEASE};
    use prost::Message;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// gRPC status of a request etcd would refuse (one that does not decode, a compare the
    /// fake does not know).
    const INVALID_ARGUMENT: u32 = 3;
    /// gRPC status of a method the fake does not serve.
    const UNIMPLEMENTED: u32 = 12;

    /// Answers the calls the etcd store makes (`Range`, `DeleteRange`, `Txn` with `EQUAL`
    /// compares on a create or mod revision, `LeaseGrant`) as one etcd member would: one
    /// revision per write, create and mod revisions kept per key. Leases never expire; there
    /// is no watch. Give [`FakeEtcd::answer`] to an `Envoy`'s `etcd` to run conversations
    /// against it.
    #[derive(Debug, Default)]
    pub struct FakeEtcd {
        state: RefCell<State>,
    }

    #[derive(Debug, Default)]
    struct State {
        keys: BTreeMap<Vec<u8>, proto::KeyValue>,
        revision: i64,
        leases: i64,
    }

    impl FakeEtcd {
        /// An empty etcd at revision 0.
        pub fn new() -> FakeEtcd {
            FakeEtcd::default()
        }

        /// Answers `call`: gRPC status 0 and the response, or a failure status and nothing.
        pub fn answer(&self, call: &Call) -> (u32, Option<Vec<u8>>) {
            let mut state = self.state.borrow_mut();
            let message = call.message.as_slice();
            let response = match (call.service, call.method) {
                (KV, "Range") => proto::RangeRequest::decode(message).ok().map(|r| {
                    state
                        .range(&r.key, &r.range_end, r.count_only)
                        .encode_to_vec()
                }),
                (KV, "DeleteRange") => proto::DeleteRangeRequest::decode(message)
                    .ok()
                    .map(|r| state.delete(&r).encode_to_vec()),
                (KV, "Txn") => proto::TxnRequest::decode(message)
                    .ok()
                    .and_then(|r| state.txn(&r))
                    .map(|r| r.encode_to_vec()),
                (LEASE, "LeaseGrant") => proto::LeaseGrantRequest::decode(message).ok().map(|r| {
                    state.leases = state.leases.saturating_add(1);
                    proto::LeaseGrantResponse {
                        header: state.header(),
                        id: state.leases,
                        ttl: r.ttl,
                        error: String::new(),
                    }
                    .encode_to_vec()
                }),
                _ => return (UNIMPLEMENTED, None),
            };
            match response {
                Some(bytes) => (0, Some(bytes)),
                None => (INVALID_ARGUMENT, None),
            }
        }

        /// The keys held, in order.
        pub fn keys(&self) -> Vec<Vec<u8>> {
            self.state.borrow().keys.keys().cloned().collect()
        }

        /// The value held under `key`.
        pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.state.borrow().keys.get(key).map(|kv| kv.value.clone())
        }

        /// The revision of the last write.
        pub fn revision(&self) -> i64 {
            self.state.borrow().revision
        }

        /// The lease `key` is held on (0: none).
        pub fn lease(&self, key: &[u8]) -> Option<i64> {
            self.state.borrow().keys.get(key).map(|kv| kv.lease)
        }
    }

    impl State {
        fn header(&self) -> Option<proto::ResponseHeader> {
            Some(proto::ResponseHeader {
                revision: self.revision,
            })
        }

        /// `key` alone, or `[key, range_end)` (`range_end` "\0": every key from `key`).
        fn range(&self, key: &[u8], range_end: &[u8], count_only: bool) -> proto::RangeResponse {
            let kvs: Vec<proto::KeyValue> = self
                .keys
                .iter()
                .filter(|(k, _)| match range_end {
                    [] => k.as_slice() == key,
                    [0] => k.as_slice() >= key,
                    end => k.as_slice() >= key && k.as_slice() < end,
                })
                .map(|(_, kv)| kv.clone())
                .collect();
            proto::RangeResponse {
                header: self.header(),
                count: i64::try_from(kvs.len()).unwrap_or(i64::MAX),
                kvs: if count_only { Vec::new() } else { kvs },
            }
        }

        fn delete(&mut self, request: &proto::DeleteRangeRequest) -> proto::DeleteRangeResponse {
            let previous = self.keys.remove(&request.key);
            if previous.is_some() {
                self.revision = self.revision.saturating_add(1);
            }
            proto::DeleteRangeResponse {
                header: self.header(),
                deleted: i64::from(previous.is_some()),
                prev_kvs: previous.filter(|_| request.prev_kv).into_iter().collect(),
            }
        }

        /// Whether `compare` holds: for its key, or for every key of `[key, range_end)` (an
        /// empty range compares as a missing key), as etcd 3.4 does. EQUAL and LESS only.
        fn holds(&self, compare: &proto::Compare) -> Option<bool> {
            let target = compare.target_union.as_ref()?;
            let of = |kv: Option<&proto::KeyValue>| {
                let (have, want) = match target {
                    TargetUnion::CreateRevision(v) => (kv.map_or(0, |kv| kv.create_revision), *v),
                    TargetUnion::ModRevision(v) => (kv.map_or(0, |kv| kv.mod_revision), *v),
                };
                match compare.result {
                    proto::EQUAL => Some(have == want),
                    proto::LESS => Some(have < want),
                    _ => None,
                }
            };
            if compare.range_end.is_empty() {
                return of(self.keys.get(&compare.key));
            }
            let kvs = self.range(&compare.key, &compare.range_end, false).kvs;
            if kvs.is_empty() {
                return of(None);
            }
            let mut all = true;
            for kv in &kvs {
                all &= of(Some(kv))?;
            }
            Some(all)
        }

        /// A transaction: one revision for all its writes.
        fn txn(&mut self, request: &proto::TxnRequest) -> Option<proto::TxnResponse> {
            let mut succeeded = true;
            for compare in &request.compare {
                succeeded &= self.holds(compare)?;
            }
            let ops = if succeeded {
                &request.success
            } else {
                &request.failure
            };
            let writes = ops
                .iter()
                .any(|op| matches!(op.request, Some(Request::Put(_) | Request::DeleteRange(_))));
            if writes {
                self.revision = self.revision.saturating_add(1);
            }
            let revision = self.revision;
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                let response = match op.request.as_ref()? {
                    Request::Range(r) => {
                        Response::Range(self.range(&r.key, &r.range_end, r.count_only))
                    }
                    Request::Put(put) => {
                        let created = self
                            .keys
                            .get(&put.key)
                            .map_or(revision, |kv| kv.create_revision);
                        self.keys.insert(
                            put.key.clone(),
                            proto::KeyValue {
                                key: put.key.clone(),
                                create_revision: created,
                                mod_revision: revision,
                                value: put.value.clone(),
                                lease: put.lease,
                            },
                        );
                        Response::Put(proto::PutResponse {
                            header: self.header(),
                        })
                    }
                    Request::DeleteRange(delete) => {
                        let previous = self.keys.remove(&delete.key);
                        Response::DeleteRange(proto::DeleteRangeResponse {
                            header: self.header(),
                            deleted: i64::from(previous.is_some()),
                            prev_kvs: previous.filter(|_| delete.prev_kv).into_iter().collect(),
                        })
                    }
                };
                responses.push(proto::ResponseOp {
                    response: Some(response),
                });
            }
            Some(proto::TxnResponse {
                header: self.header(),
                succeeded,
                responses,
            })
        }
    }
}
