//! The Envoy glue: proxy-wasm root and HTTP contexts that feed request facts to
//! [`crate::policy`] and [`crate::store`] and turn their verdicts into hostcalls.
//!
//! Only this file talks to the host. Hostcalls go through `proxy_wasm::hostcalls` directly,
//! never through the SDK's trait helpers, which panic on unexpected host answers and on
//! non-UTF-8 header values.

use crate::cache::SessionCache;
use crate::config::Config;
use crate::headers;
use crate::message::{json_outcome, Outcome, SseScanner};
use crate::metrics::{self, Event};
use crate::policy::{
    self, HeadVerdict, RequestHead, SessionVerdict, SessionlessBody, UninitializedBody,
};
use crate::record::{Record, MAX_UPSTREAM_ID};
use crate::rejection::{Reason, Rejection};
use crate::session_id::{SessionId, SECRET_LEN};
use crate::sha256;
use crate::store::{Ended, Limits, Lookup, SharedData, Store, WriteError};
use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const EXPOSE_HEADER: &str = "access-control-expose-headers";
/// How often each worker's root context considers a sweep step.
const TICK: Duration = Duration::from_millis(1000);
/// Most random slots an initialize probes before the table grows (src/store.rs).
const MAX_PROBES: u32 = 8;
/// Sessions each worker remembers having validated (src/cache.rs).
const CACHE_CAPACITY: usize = 4096;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// Shared data through hostcalls.
#[derive(Clone, Copy)]
struct HostShared;

impl SharedData for HostShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), WriteError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(WriteError::CasMismatch),
            Err(_) => Err(WriteError::Host),
        }
    }
}

/// Metric ids in this VM.
struct Metrics {
    counters: HashMap<Event, u32>,
    live: Option<u32>,
    epoch: Option<u32>,
}

impl Metrics {
    fn define() -> Metrics {
        let mut counters = HashMap::new();
        let mut define =
            |event, name: &str| match hostcalls::define_metric(MetricType::Counter, name) {
                Ok(id) => {
                    counters.insert(event, id);
                }
                Err(status) => warn!("cannot define stat {name}: {status:?}"),
            };
        define(Event::Created, metrics::CREATED);
        define(Event::Terminated, metrics::TERMINATED);
        define(Event::Expired, metrics::EXPIRED);
        define(Event::Sessionless, metrics::PASSTHROUGH_SESSIONLESS);
        for reason in Reason::ALL {
            define(Event::Rejected(reason), &metrics::rejected(reason));
        }
        let live = hostcalls::define_metric(MetricType::Gauge, metrics::LIVE).ok();
        let epoch = hostcalls::define_metric(MetricType::Counter, metrics::EPOCH).ok();
        // A new configuration moves the epoch, so a counter that still reads 0 afterwards is
        // one Envoy does not keep (a stats matcher rejected it): the cache stays off then.
        if let Some(id) = epoch {
            let _ = hostcalls::increment_metric(id, 1);
        }
        Metrics {
            counters,
            live,
            epoch,
        }
    }

    /// The epoch (see src/cache.rs), or `None` when it cannot be trusted.
    fn epoch(&self) -> Option<u64> {
        let mut value: u64 = 0;
        // SAFETY: the host writes one u64 through the pointer, which outlives the call.
        let status = unsafe { proxy_get_metric(self.epoch?, &mut value) };
        (status == 0 && value > 0).then_some(value)
    }

    fn count(&self, event: Event, n: u32) {
        if n == 0 {
            return;
        }
        if let Some(id) = self.counters.get(&event) {
            let _ = hostcalls::increment_metric(*id, i64::from(n));
        }
        // The live gauge follows the lifecycle counters.
        let delta = match event {
            Event::Created => i64::from(n),
            Event::Terminated | Event::Expired => -i64::from(n),
            _ => 0,
        };
        if let (Some(id), true) = (self.live, delta != 0) {
            let _ = hostcalls::increment_metric(id, delta);
        }
        // Announce every end before the request that caused it is answered.
        if let (Some(id), true) = (self.epoch, delta < 0) {
            let _ = hostcalls::increment_metric(id, -delta);
        }
    }
}

/// What every context of this VM shares.
struct Plugin {
    config: Config,
    limits: Limits,
    metrics: Metrics,
    /// xorshift state for probe positions (not for secrets: those come from the CSPRNG).
    probe_state: Cell<u64>,
    /// Random slots to probe before growing the table: back to the most when a probe found a
    /// slot, halved (to 1) when they all failed and the table grew.
    probe_budget: Cell<u32>,
    /// Sessions this worker validated a moment ago.
    cache: RefCell<SessionCache>,
    /// Fingerprint of the configuration: only the newest configuration on a store sweeps it.
    token: u64,
}

impl Plugin {
    fn store(&self) -> Store<HostShared> {
        Store::new(HostShared, self.limits)
    }

    fn next_probe(&self) -> u32 {
        let mut x = self.probe_state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.probe_state.set(x);
        (x >> 32) as u32
    }

    fn reject(&self, rejection: &Rejection) {
        self.metrics.count(Event::Rejected(rejection.reason), 1);
        let body = rejection.body();
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(rejection.headers.iter().copied());
        if let Err(status) = hostcalls::send_http_response(rejection.status, headers, Some(&body)) {
            error!("cannot send local reply: {status:?}");
        }
    }
}

#[derive(Default)]
struct Root {
    plugin: Option<Rc<Plugin>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                error!("mcp-session-filter: configuration refused: {e}");
                return false;
            }
        };
        let limits = Limits {
            idle_ms: config.idle_timeout_ms,
            lifetime_ms: config.max_lifetime_ms,
            max_sessions: config.max_sessions,
            bind_identity: config.identity_header.is_some(),
        };
        let token = fingerprint(&bytes);
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            error!("mcp-session-filter: the host has no random source");
            return false;
        }
        info!(
            "mcp-session-filter: configured (idle {} s, lifetime {} s, max {} sessions, stateless: {})",
            config.idle_timeout_ms / 1000,
            config.max_lifetime_ms / 1000,
            config.max_sessions,
            config.stateless
        );
        let plugin = Rc::new(Plugin {
            config,
            limits,
            metrics: Metrics::define(),
            probe_state: Cell::new(u64::from_le_bytes(seed) | 1),
            probe_budget: Cell::new(MAX_PROBES),
            cache: RefCell::new(SessionCache::new(CACHE_CAPACITY)),
            token,
        });
        if !plugin.config.stateless {
            plugin.store().adopt_configuration(plugin.token);
        }
        self.plugin = Some(plugin);
        if let Err(status) = hostcalls::set_tick_period(TICK) {
            warn!("cannot set the sweep tick: {status:?}");
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(plugin) = &self.plugin else { return };
        if plugin.config.stateless {
            return;
        }
        let store = plugin.store();
        if !store.sweeps_for(plugin.token) {
            return; // a newer configuration of this store sweeps it, with its timeouts
        }
        let report = store.sweep(now_ms());
        plugin.metrics.count(Event::Expired, report.expired);
        if report.expired > 0 || report.stale_pending > 0 {
            info!(
                "sweep: {} sessions expired, {} stale initializes freed ({} slots read)",
                report.expired, report.stale_pending, report.scanned
            );
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let plugin = self.plugin.clone()?;
        Some(Box::new(Stream {
            plugin,
            phase: Phase::Pass,
            session: None,
            mapped: false,
            initialize: None,
            mark_initialized: false,
            identity: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What the request side is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing: the body flows.
    Pass,
    /// The body of a POST without a session.
    SessionlessBody,
    /// The body of a POST on a session waiting for `notifications/initialized`.
    UninitializedBody(SessionId),
    /// A local reply was sent.
    Replied,
}

/// An `initialize` in flight: its reserved session and how its answer is being read.
struct Initialize {
    id: SessionId,
    upstream_id: Option<String>,
    answer: Answer,
}

enum Answer {
    /// Response headers not seen yet.
    Awaiting,
    /// Reading a JSON body (bounded by `max_body_bytes`).
    Json(Vec<u8>),
    /// Reading an SSE stream; the count is the bytes seen so far.
    Sse(SseScanner, usize),
}

struct Stream {
    plugin: Rc<Plugin>,
    phase: Phase,
    /// The session this request uses, once validated.
    session: Option<SessionId>,
    /// The session maps to an upstream session ID.
    mapped: bool,
    initialize: Option<Initialize>,
    /// Mark the session initialized when the upstream accepts this request.
    mark_initialized: bool,
    /// The identity header's value, read with the request headers: Envoy refuses header
    /// reads from body callbacks (and the SDK panics on that refusal).
    identity: Option<Vec<u8>>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let cfg = &plugin.config;
        // Test builds only (`--features fault-injection`): a way to make the VM fail at
        // runtime, to prove the failure policy recovers. Never in the released module.
        #[cfg(feature = "fault-injection")]
        if request_header("x-mcp-session-filter-trap").is_some() {
            core::arch::wasm32::unreachable();
        }
        // All the headers in one hostcall; each one read alone would cost a VM crossing.
        let map = header_map(MapType::HttpRequestHeaders);
        let identity_name = cfg.identity_header.as_deref().unwrap_or("");
        let wanted = [
            ":method",
            ":path",
            SESSION_HEADER,
            VERSION_HEADER,
            "content-type",
            "content-length",
            identity_name,
        ];
        let [method, path, session_id, protocol_version, content_type, content_length, identity] =
            headers::scan(&map, wanted).unwrap_or_default();
        self.identity = identity.value.map(<[u8]>::to_vec);
        let method = method.text().unwrap_or_default();
        let head = RequestHead {
            method,
            path: path.text().unwrap_or_default(),
            session_id: session_id.text(),
            protocol_version: protocol_version.text(),
            content_type: content_type.text(),
            content_length: content_length.text(),
            session_id_repeated: session_id.repeated(),
            identity_repeated: identity.repeated(),
        };
        match policy::on_request_headers(cfg, &head) {
            HeadVerdict::Ignore => Action::Continue,
            HeadVerdict::Sessionless => {
                plugin.metrics.count(Event::Sessionless, 1);
                Action::Continue
            }
            HeadVerdict::Reject(rejection) => self.reply(&rejection),
            HeadVerdict::ReadSessionlessBody => {
                // Headers go on now (holding them would stop body callbacks on hosts without
                // allow_on_headers_stop_iteration); the body is held until it is complete.
                self.phase = Phase::SessionlessBody;
                if end_of_stream {
                    return self.on_complete_body(&[]);
                }
                Action::Continue
            }
            HeadVerdict::Session { id } => self.on_session_headers(method, id, end_of_stream),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::SessionlessBody | Phase::UninitializedBody(_) => {}
            Phase::Pass | Phase::Replied => return Action::Continue,
        }
        let limit = self.plugin.config.max_body_bytes;
        if body_size > limit {
            return self.reply(&Rejection::body_too_large(limit));
        }
        if !end_of_stream {
            return Action::Pause; // buffer until the whole body is here
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.on_complete_body(&body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.phase == Phase::Replied {
            return Action::Continue;
        }
        if self.initialize.is_some() {
            self.on_initialize_response(end_of_stream);
            return Action::Continue;
        }
        let Some(id) = self.session else {
            return Action::Continue;
        };
        if !self.mapped && !self.mark_initialized {
            return Action::Continue; // the hot path: nothing to do
        }
        let status = response_status();
        if self.mark_initialized && (200..300).contains(&status) {
            self.plugin.store().mark_initialized(&id, now_ms());
        }
        if self.mapped {
            if status == 404 {
                // The upstream lost its session: ours is useless now.
                if let Ended::Ended(_) = self.plugin.store().end(&id, now_ms()) {
                    self.plugin.metrics.count(Event::Terminated, 1);
                    info!("session {} ended: the upstream answered 404", id.short());
                }
            } else {
                // Never show the client the upstream's own ID.
                set_response_header(SESSION_HEADER, Some(&id.encode()));
            }
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(init) = &mut self.initialize else {
            return Action::Continue;
        };
        let limit = self.plugin.config.max_body_bytes;
        let chunk = || {
            hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let outcome = match &mut init.answer {
            Answer::Awaiting => return Action::Continue,
            Answer::Json(buffer) => {
                buffer.extend_from_slice(&chunk());
                if buffer.len() > limit {
                    Some(Outcome::Result) // too big to read: give it the benefit of the doubt
                } else if end_of_stream {
                    Some(json_outcome(buffer).unwrap_or(Outcome::Error))
                } else {
                    None
                }
            }
            Answer::Sse(scanner, seen) => {
                let bytes = chunk();
                *seen += bytes.len();
                match scanner.feed(&bytes) {
                    Some(outcome) => Some(outcome),
                    None if *seen > limit => Some(Outcome::Result),
                    None if end_of_stream => Some(Outcome::Error),
                    None => None,
                }
            }
        };
        if let Some(outcome) = outcome {
            self.decide_initialize(outcome);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // A stream that ended before the initialize was answered leaves no reservation.
        if self.initialize.is_some() {
            self.decide_initialize(Outcome::Error);
        }
    }
}

impl Stream {
    fn reply(&mut self, rejection: &Rejection) -> Action {
        debug!(
            "rejected: {} {} ({})",
            rejection.status,
            rejection.message,
            rejection.reason.name()
        );
        self.phase = Phase::Replied;
        self.plugin.reject(rejection);
        Action::Pause
    }

    fn on_session_headers(&mut self, method: &str, id: SessionId, end_of_stream: bool) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let now = now_ms();
        let Some(record) = self.find_session(&id, now) else {
            return Action::Pause; // answered
        };
        self.session = Some(id);
        self.mapped = record.upstream_id.is_some();
        if let Some(upstream) = &record.upstream_id {
            set_request_header(SESSION_HEADER, upstream);
        }
        match policy::on_session(&plugin.config, method, &record) {
            SessionVerdict::Forward => Action::Continue,
            SessionVerdict::ReadUninitializedBody => {
                self.phase = Phase::UninitializedBody(id);
                if end_of_stream {
                    return self.on_complete_body(&[]);
                }
                Action::Continue
            }
            SessionVerdict::End => self.end_session(&id, now),
        }
    }

    /// DELETE on a live session: ends it for every worker and answers (or lets the upstream
    /// answer, for a mapped session).
    fn end_session(&mut self, id: &SessionId, now: u64) -> Action {
        let plugin = Rc::clone(&self.plugin);
        match plugin.store().end(id, now) {
            Ended::Ended(record) => {
                plugin.metrics.count(Event::Terminated, 1);
                info!("session {} ended by the client", id.short());
                if record.upstream_id.is_some() {
                    // The upstream ends its own session; its answer goes to the client,
                    // with the upstream's ID replaced like on every mapped response.
                    Action::Continue
                } else {
                    self.phase = Phase::Replied;
                    if let Err(status) = hostcalls::send_http_response(204, vec![], None) {
                        error!("cannot send local reply: {status:?}");
                    }
                    Action::Pause
                }
            }
            Ended::Expired => {
                plugin.metrics.count(Event::Expired, 1);
                self.reply(&Rejection::session_not_found())
            }
            Ended::NotFound => self.reply(&Rejection::session_not_found()),
        }
    }

    /// The live record of session `id` for this caller: from the worker's cache when it may
    /// serve (src/cache.rs), else from the store, whose idle clock it restarts. `None` when the
    /// request was refused (404).
    fn find_session(&mut self, id: &SessionId, now: u64) -> Option<Record> {
        let plugin = Rc::clone(&self.plugin);
        let identity = self.identity.as_deref();
        // The epoch is read before the store, so an end between the two empties the cache.
        let epoch = plugin.metrics.epoch();
        let mut cache = plugin.cache.try_borrow_mut().ok();
        if let (Some(epoch), Some(cache)) = (epoch, cache.as_mut()) {
            if let Some(record) = cache.get(epoch, id, identity, now, &plugin.limits) {
                return Some(record.clone());
            }
        }
        let store = plugin.store();
        match store.lookup(id, now, identity) {
            Lookup::Live(mut record, cas) => {
                if store.touch(id, &record, cas, now) {
                    record.last_seen_ms = now;
                }
                // Only a record no request can change but by ending it: `initialized` is the
                // one field a live session's record still changes in (without an end).
                let settled = record.initialized || !plugin.config.enforce_initialized;
                if let (Some(epoch), Some(cache), true) = (epoch, cache.as_mut(), settled) {
                    cache.put(epoch, id.slot, record.clone());
                }
                Some(record)
            }
            Lookup::Expired => {
                drop(cache);
                plugin.metrics.count(Event::Expired, 1);
                info!("session {} expired", id.short());
                self.reply(&Rejection::session_not_found());
                None
            }
            Lookup::NotFound => {
                drop(cache);
                self.reply(&Rejection::session_not_found());
                None
            }
        }
    }

    fn on_complete_body(&mut self, body: &[u8]) -> Action {
        match self.phase {
            Phase::SessionlessBody => match policy::on_sessionless_body(body) {
                SessionlessBody::Initialize { id } => self.reserve(id),
                SessionlessBody::Reject(rejection) => self.reply(&rejection),
            },
            Phase::UninitializedBody(_) => match policy::on_uninitialized_body(body) {
                UninitializedBody::Forward { initialized } => {
                    self.mark_initialized = initialized;
                    self.phase = Phase::Pass;
                    Action::Continue
                }
                UninitializedBody::Reject(rejection) => self.reply(&rejection),
            },
            Phase::Pass | Phase::Replied => Action::Continue,
        }
    }

    fn reserve(&mut self, request_id: Value) -> Action {
        let plugin = Rc::clone(&self.plugin);
        let mut secret = [0u8; SECRET_LEN];
        if getrandom::fill(&mut secret).is_err() {
            error!("the host random source failed; refusing initialize");
            return self.reply(&Rejection::capacity().with_id(request_id));
        }
        let mut probe = || plugin.next_probe();
        let budget = plugin.probe_budget.get();
        let identity = self.identity.as_deref();
        match plugin
            .store()
            .reserve_probing(now_ms(), secret, identity, &mut probe, budget)
        {
            Some(reservation) => {
                let next = reservation.from.next_probe_budget(budget, MAX_PROBES);
                plugin.probe_budget.set(next);
                plugin.metrics.count(Event::Expired, reservation.expired);
                self.initialize = Some(Initialize {
                    id: reservation.id,
                    upstream_id: None,
                    answer: Answer::Awaiting,
                });
                self.phase = Phase::Pass;
                Action::Continue
            }
            None => {
                warn!(
                    "initialize refused: {} sessions open",
                    plugin.config.max_sessions
                );
                self.reply(&Rejection::capacity().with_id(request_id))
            }
        }
    }

    fn on_initialize_response(&mut self, end_of_stream: bool) {
        let map = header_map(MapType::HttpResponseHeaders);
        let [status, upstream_id, expose, content_type] = headers::scan(
            &map,
            [":status", SESSION_HEADER, EXPOSE_HEADER, "content-type"],
        )
        .unwrap_or_default();
        let status = parse_status(status.text());
        let upstream_id = upstream_id.text().map(str::to_owned);
        let Some(init) = &mut self.initialize else {
            return;
        };
        if !(200..300).contains(&status) {
            set_response_header(SESSION_HEADER, None);
            self.decide_initialize(Outcome::Error);
            return;
        }
        if let Some(upstream) = &upstream_id {
            let valid = !upstream.is_empty()
                && upstream.len() <= MAX_UPSTREAM_ID
                && upstream.bytes().all(|b| (0x21..=0x7e).contains(&b));
            if !valid {
                warn!("the upstream's session ID is not storable; initialize fails");
                set_response_header(SESSION_HEADER, None);
                self.decide_initialize(Outcome::Error);
                return;
            }
        }
        init.upstream_id = upstream_id;
        set_response_header(SESSION_HEADER, Some(&init.id.encode()));
        match expose.text() {
            Some(list) if list.to_ascii_lowercase().contains(SESSION_HEADER) => {}
            Some(list) if !list.trim().is_empty() => {
                set_response_header(EXPOSE_HEADER, Some(&format!("{list}, {SESSION_HEADER}")))
            }
            _ => set_response_header(EXPOSE_HEADER, Some(SESSION_HEADER)),
        }
        let content_type = content_type.text().unwrap_or_default();
        init.answer = if content_type
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
        {
            Answer::Sse(SseScanner::default(), 0)
        } else {
            Answer::Json(Vec::new())
        };
        if end_of_stream {
            // A 2xx with no body carries no result.
            self.decide_initialize(Outcome::Error);
        }
    }

    /// Activates or releases the reservation of the `initialize` in flight, once.
    fn decide_initialize(&mut self, outcome: Outcome) {
        let Some(init) = self.initialize.take() else {
            return;
        };
        let store = self.plugin.store();
        match outcome {
            Outcome::Result => {
                if store.activate(&init.id, now_ms(), init.upstream_id.as_deref()) {
                    self.plugin.metrics.count(Event::Created, 1);
                    info!(
                        "session {} created{}",
                        init.id.short(),
                        if init.upstream_id.is_some() {
                            " (upstream session mapped)"
                        } else {
                            ""
                        }
                    );
                } else {
                    warn!("session {} could not be activated", init.id.short());
                }
            }
            Outcome::Error => {
                if store.release(&init.id) {
                    debug!(
                        "initialize failed; reservation {} released",
                        init.id.short()
                    );
                }
            }
        }
    }
}

/// The first 8 bytes of the configuration's SHA-256: equal configurations, equal fingerprints.
fn fingerprint(configuration: &[u8]) -> u64 {
    u64::from_le_bytes(sha256::digest_prefix(&[configuration]))
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(feature = "fault-injection")]
fn request_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

fn response_status() -> u32 {
    let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
        .ok()
        .flatten();
    parse_status(status.as_deref().and_then(|b| std::str::from_utf8(b).ok()))
}

/// `:status` as a number; 0 when absent or not a number.
fn parse_status(status: Option<&str>) -> u32 {
    status.and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A whole header map as the host serializes it (see [`headers::scan`]), in one hostcall.
fn header_map(map: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host hands over `size` bytes it allocated through this module's
    // `proxy_on_memory_allocate` (the SDK's, which allocates a `Vec<u8>` of that capacity), so
    // the buffer is ours to own and free as that `Vec`; this is what the SDK's own
    // `get_map_bytes` does, without its conversion of every pair into owned strings.
    unsafe {
        if proxy_get_header_map_pairs(map as u32, &mut data, &mut size) != 0 || data.is_null() {
            return Vec::new();
        }
        Vec::from_raw_parts(data, size, size)
    }
}

// Two calls of the proxy-wasm ABI declared here rather than taken from the SDK: its wrappers
// copy every header into owned strings (`get_map_bytes`) or panic on a status they do not
// expect (`get_metric`).
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
}

fn set_request_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
}

fn set_response_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
}
