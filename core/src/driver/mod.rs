//! The driver: everything of one worker's filter configuration that is not one request.
//!
//! Layers, each touching only the one below it (docs/DESIGN.md, "Layers"):
//! - the host adapter (proxy-wasm today) hands the driver the proxy's callbacks as events and
//!   carries out what the driver asks through two small traits, [`StreamIo`] (one stream's
//!   headers, local reply, body, calls) and [`TimerIo`] (the worker's calls and watch stream),
//!   with opaque handles (the host's call and stream tokens);
//! - the driver ([`Worker`]) steps each stream's request machine with the time and the
//!   CSPRNG as inputs, runs the store operations the machine asks for (from its cache, at once
//!   on the local store, or as etcd calls whose answers come back later), retries failed
//!   calls, keeps the timer's work (sweep, leases, count, backlog, the watch), maps call tokens
//!   to what the calls were for, and counts every stat;
//! - the request machine ([`crate::exchange::Exchange`]) decides, and touches nothing;
//! - the store ([`crate::store`]) answers operations, and knows nothing above it.

mod stream;
mod timer;

pub use stream::{Action, Hook, Side, Stream, StreamIo};
pub use timer::{NoCalls, TimerIo};

use crate::config::{Config, ConfigError, IdentitySource, StoreConfig};
use crate::digest;
use crate::exchange::{Edit, Input};
use crate::grpc;
use crate::host::Host;
use crate::metrics::{Event as Count, Metric, StoreStat};
use crate::record::Record;
use crate::session_id::SessionId;
use crate::store::cache::SessionCache;
use crate::store::etcd::{self, Chore, Remote};
use crate::store::local::{Local, Store, Sweep};
use crate::store::{Backend, Limits};
use log::info;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};

/// Sessions each worker remembers having validated (see `store/cache.rs`).
pub const CACHE_CAPACITY: usize = 4096;
/// How often the timer fires with the local store (a sweep step at most once a second).
pub const TICK_MS: u64 = 1000;

/// What a lookup notes before it reads the store, so that what it read is cached only if no
/// end could have come between: the process-wide epoch (ends in this Envoy) and, with etcd,
/// the ends this VM's watch reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The epoch counter (`None`: unusable, no cache).
    pub epoch: Option<u64>,
    /// Ends the watch reported.
    pub ends: u64,
}

/// The Envoy cluster the etcd store's calls go to, as each kind of host names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstream {
    /// The cluster's name.
    pub cluster: String,
    /// The cluster as a proxy-wasm host takes it ([`etcd::grpc_service`]).
    pub grpc_service: String,
}

/// One worker's filter configuration: its store, cache, timer work and stats.
pub struct Worker<H: Host> {
    host: H,
    config: Config,
    limits: Limits,
    backend: Backend,
    /// Sessions this worker validated a moment ago.
    cache: RefCell<SessionCache>,
    /// Fingerprint of the configuration: only the newest configuration on a store sweeps it.
    token: u64,
    /// The etcd store's cluster.
    upstream: Upstream,
    /// This VM's watch counts in the `watch_up` gauge.
    watch_counted: Cell<bool>,
    /// Ends (deleted keys) this VM's watch reported.
    ends_seen: Cell<u64>,
    /// With etcd: the key of each session the cache may hold, to know whether a DELETE
    /// anywhere ended one of them.
    cached_keys: RefCell<HashSet<Vec<u8>>>,
    /// The timer's calls in flight, by the host's token.
    chores: RefCell<HashMap<u32, Chore>>,
    /// The watch stream's token, while open.
    watch: Cell<Option<u32>>,
    /// The watch's bytes not yet cut into messages, from a host that hands over HTTP/2 data
    /// ([`Worker::stream_bytes`]).
    frames: RefCell<grpc::Deframer>,
    /// The list of the last edits carried out, for the machine's next ([`Input::keeping_edits`]).
    spare_edits: Cell<Vec<Edit>>,
    /// The host holds headers while it shows the body ([`Capabilities::hold_headers`]).
    hold_headers: bool,
}

/// What a host can do beyond the [`Host`] trait. A configuration that needs more is refused,
/// naming the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// gRPC calls and streams to an Envoy cluster (the etcd store).
    pub calls: bool,
    /// Attributes below a metadata key (`identity_jwt` reads the claims `jwt_authn` wrote as a
    /// struct).
    pub nested_metadata: bool,
    /// The host can hold a request's headers and still show the filter its body
    /// ([`Action::HoldHeaders`]: Envoy's `StopIteration`). Then a POST whose body must be read
    /// before it is judged reaches the upstream whole or not at all. A proxy-wasm host can only
    /// with the plugin option `allow_on_headers_stop_iteration`, which meshes cannot set: there
    /// the headers go on first, and a refused POST reaches the upstream as headers and a reset.
    pub hold_headers: bool,
}

impl Capabilities {
    /// A proxy-wasm host: calls and nested metadata; its headers go on before a body is read.
    pub const PROXY_WASM: Capabilities = Capabilities {
        calls: true,
        nested_metadata: true,
        hold_headers: false,
    };

    /// Why `config` cannot run on this host, if it cannot.
    pub fn check(self, config: &Config) -> Result<(), ConfigError> {
        let missing = |key: &str| {
            Err(ConfigError(format!(
                "`{key}` is not supported by this build yet (the Wasm build has it)"
            )))
        };
        match (&config.store, &config.identity) {
            (StoreConfig::Etcd(_), _) if !self.calls && !config.stateless => missing("store.etcd"),
            (_, Some(IdentitySource::Jwt { .. })) if !self.nested_metadata => {
                missing("identity_jwt")
            }
            _ => Ok(()),
        }
    }
}

/// A configuration read once and checked against what its host can do: what each [`Worker`]
/// of it starts from. A host that runs one configuration on several workers (a native module:
/// one per Envoy thread, and the main thread's) reads, checks and logs it once.
#[derive(Debug, Clone)]
pub struct Configured {
    config: Config,
    /// Fingerprint of the configuration's bytes ([`Worker`]'s `token`).
    token: u64,
    hold_headers: bool,
}

impl Configured {
    /// Reads a configuration from its bytes, refusing what the host cannot do.
    pub fn parse(
        configuration: &[u8],
        capabilities: Capabilities,
    ) -> Result<Configured, ConfigError> {
        let config = Config::parse(configuration)?;
        capabilities.check(&config)?;
        info!(
            "mcp-session-filter: configured (idle {} s, lifetime {} s, max {} sessions, stateless: {})",
            config.idle_timeout_ms / 1000,
            config.max_lifetime_ms / 1000,
            config.max_sessions,
            config.stateless
        );
        Ok(Configured {
            config,
            token: u64::from_le_bytes(digest::digest_prefix(&[configuration])),
            hold_headers: capabilities.hold_headers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A worker of this configuration on `host` ([`Configured::into_worker`]).
    pub fn worker<H: Host>(&self, host: H) -> Result<Worker<H>, ConfigError> {
        self.clone().into_worker(host)
    }

    /// Starts a worker of this configuration on `host`. Moves the epoch (so a counter that
    /// still reads 0 is one the host does not keep) and, with the local store, records this
    /// configuration as the newest on it.
    pub fn into_worker<H: Host>(self, host: H) -> Result<Worker<H>, ConfigError> {
        let Configured {
            config,
            token,
            hold_headers,
        } = self;
        let mut seed = [0u8; 8];
        if !host.fill_random(&mut seed) {
            return Err(ConfigError("the host has no random source".into()));
        }
        let limits = Limits {
            idle_ms: config.idle_timeout_ms,
            lifetime_ms: config.max_lifetime_ms,
            max_sessions: config.max_sessions,
            bind_identity: config.identity.is_some(),
            per_identity: config.max_sessions_per_identity,
        };
        let (backend, upstream) = match (&config.store, config.stateless) {
            (StoreConfig::Etcd(etcd), false) => (
                Backend::Etcd(Box::new(
                    Remote::new(etcd.clone(), config.idle_timeout_ms)
                        .indexed(config.max_sessions_per_identity.is_some()),
                )),
                Upstream {
                    cluster: etcd.cluster.clone(),
                    grpc_service: etcd::grpc_service(&etcd.cluster),
                },
            ),
            _ => (
                Backend::Local(Local::new(u64::from_le_bytes(seed))),
                Upstream::default(),
            ),
        };
        host.increment(Metric::Epoch, 1);
        let worker = Worker {
            host,
            limits,
            backend,
            cache: RefCell::new(SessionCache::new(CACHE_CAPACITY)),
            token,
            upstream,
            watch_counted: Cell::new(false),
            ends_seen: Cell::new(0),
            cached_keys: RefCell::new(HashSet::new()),
            chores: RefCell::new(HashMap::new()),
            watch: Cell::new(None),
            frames: RefCell::new(grpc::Deframer::default()),
            spare_edits: Cell::default(),
            hold_headers,
            config,
        };
        if !worker.config.stateless && worker.backend.remote().is_none() {
            let now_ms = worker.host.now_ms();
            worker.store().adopt_configuration(worker.token, now_ms);
        }
        Ok(worker)
    }
}

impl<H: Host> Worker<H> {
    /// Starts a worker's configuration from its bytes on a proxy-wasm host
    /// ([`Capabilities::PROXY_WASM`], [`Worker::on_host`]).
    pub fn new(host: H, configuration: &[u8]) -> Result<Worker<H>, ConfigError> {
        Worker::on_host(host, configuration, Capabilities::PROXY_WASM)
    }

    /// Starts a worker's configuration from its bytes, refusing what the host cannot do: one
    /// worker of its own [`Configured`].
    pub fn on_host(
        host: H,
        configuration: &[u8],
        capabilities: Capabilities,
    ) -> Result<Worker<H>, ConfigError> {
        Configured::parse(configuration, capabilities)?.into_worker(host)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// The etcd store, when configured.
    pub fn remote(&self) -> Option<&Remote> {
        self.backend.remote()
    }

    fn store(&self) -> Store<&H> {
        Store::new(&self.host, self.limits)
    }

    /// Hands the slots this worker holds back to the store, when its configuration goes away.
    pub fn shutdown(&self) {
        if let Backend::Local(local) = &self.backend {
            local.return_slots(&self.store());
        }
        // The `watch_up` gauge counts this VM's watch while it is up: it goes with it.
        if self.watch_counted.replace(false) {
            self.host.increment(Metric::WatchUp, -1);
        }
    }

    /// Counts `n` of `event`; the live gauge follows the lifecycle counters, and every end
    /// moves the epoch before the request that caused it is answered.
    fn count(&self, event: Count, n: u32) {
        if n == 0 {
            return;
        }
        let n = i64::from(n);
        self.host.increment(Metric::Count(event), n);
        // With etcd, `live` is the fleet's count, set from the periodic count (an Envoy ends
        // sessions other Envoys created).
        let tally_live = self.backend.remote().is_none();
        match event {
            Count::Created if tally_live => self.host.increment(Metric::Live, n),
            Count::Terminated | Count::Expired => {
                if tally_live {
                    self.host.increment(Metric::Live, -n);
                }
                self.host.increment(Metric::Epoch, n);
            }
            Count::Created | Count::Sessionless | Count::Rejected(_) => {}
        }
    }

    /// Counts one of the etcd store's events.
    fn count_store(&self, stat: StoreStat) {
        self.host.increment(Metric::Store(stat), 1);
    }

    /// What the machine is given with each event.
    fn with_input<T>(&self, f: impl FnOnce(&Input<'_>) -> T) -> T {
        let clock = || self.host.now_ms();
        let random = |buf: &mut [u8]| self.host.fill_random(buf);
        let input = Input::new(&self.config, &clock, &random).keeping_edits(&self.spare_edits);
        f(&input.holding_headers(self.hold_headers))
    }

    /// Notes the ends seen so far, before a lookup (read the epoch before the store).
    fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.host.epoch(),
            ends: self.ends_seen.get(),
        }
    }

    /// `serve` applied to the record of session `id` in the worker's cache, if it may serve
    /// (lent, not copied: a copy of a record costs a call out of the Wasm VM).
    fn cached<T>(
        &self,
        stamp: Stamp,
        id: &SessionId,
        identity: Option<&[u8]>,
        now_ms: u64,
        serve: impl FnOnce(&Record) -> T,
    ) -> Option<T> {
        let epoch = stamp.epoch?;
        let mut cache = self.cache.try_borrow_mut().ok()?;
        let Some(remote) = self.backend.remote() else {
            return cache
                .get(epoch, id, identity, now_ms, &self.limits)
                .map(serve);
        };
        let trust = remote.trust_ms(now_ms);
        let hit = cache.get_within(epoch, id, identity, now_ms, &self.limits, trust);
        self.count_store(if hit.is_some() {
            StoreStat::CacheHits
        } else {
            StoreStat::CacheMisses
        });
        hit.map(serve)
    }

    /// Remembers a live record just read from the store, at the epoch read before that read.
    /// Only a settled record: `initialized` is the one field a live session's record still
    /// changes in without an end.
    fn remember(&self, stamp: Stamp, id: &SessionId, record: &Record) {
        // With etcd, a read answered after the watch reported an end may predate that end.
        let settled = (record.initialized || !self.config.enforce_initialized)
            && stamp.ends == self.ends_seen.get();
        if let (Some(epoch), true) = (stamp.epoch, settled) {
            self.cache_put(epoch, id, record);
        }
    }

    /// Puts a session in this worker's cache; with etcd, also in the index of the keys the
    /// cache may hold, which the watch's ends are checked against.
    fn cache_put(&self, epoch: u64, id: &SessionId, record: &Record) {
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            return;
        };
        cache.put(epoch, id.slot, record.clone());
        if let (Some(remote), Ok(mut keys)) =
            (self.backend.remote(), self.cached_keys.try_borrow_mut())
        {
            if keys.len() >= 2 * CACHE_CAPACITY {
                // Entries the cache dropped since: start the index over with the cache.
                keys.clear();
                cache.clear();
            }
            keys.insert(etcd::key(&remote.config().prefix, id));
        }
    }

    /// One sweep step of the local store, if this configuration is the newest on the store
    /// and it is this worker's turn.
    pub fn sweep(&self) -> Sweep {
        let Backend::Local(local) = &self.backend else {
            return Sweep::default();
        };
        if self.config.stateless {
            return Sweep::default();
        }
        let store = self.store();
        if !store.sweeps_for(self.token, self.host.now_ms()) {
            // A newer configuration of this store sweeps it, and makes the sessions: the slots
            // this one holds are of no more use here.
            local.return_slots(&store);
            return Sweep::default();
        }
        let report = store.sweep(self.host.now_ms());
        self.count(Count::Expired, report.expired);
        if report.expired > 0 || report.stale_pending > 0 {
            info!(
                "sweep: {} sessions expired, {} stale initializes freed ({} slots read)",
                report.expired, report.stale_pending, report.scanned
            );
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{FakeHost, Process, Request, StreamLog, T0};
    use std::rc::Rc;

    const ETCD: &str = r#"{"store":{"etcd":{"cluster":"etcd"}}}"#;
    const JWT: &str = r#"{"identity_jwt":{"metadata_key":"jwt","claims":["sub"]}}"#;

    /// Every hook a host may skip.
    const ALL_HOOKS: [Hook; 4] = [
        Hook::RequestBody,
        Hook::ResponseHeaders,
        Hook::ResponseBody,
        Hook::Done,
    ];

    /// A worker of the default configuration on a host that can do `caps`.
    fn worker(process: &Rc<Process>, caps: Capabilities) -> Worker<FakeHost> {
        Worker::on_host(FakeHost::new(process, 7), b"{}", caps)
            .map_err(|e| e.0)
            .unwrap()
    }

    /// A stream whose `initialize` has sent its headers, and the request: it waits for its
    /// body, which the driver reads.
    fn initialize_awaiting_body(worker: &Worker<FakeHost>) -> (Stream, Request) {
        let init = Request::post(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            &[],
        );
        let mut stream = Stream::default();
        let mut log = StreamLog::default();
        worker.request_headers(
            &mut stream,
            &init.headers,
            &init.attributes,
            false,
            &mut log,
        );
        assert!(
            !stream.passes(Hook::RequestBody),
            "an initialize reads its body"
        );
        (stream, init)
    }

    #[test]
    fn a_host_without_calls_or_nested_metadata_refuses_what_needs_them_by_key() {
        let native = Capabilities {
            calls: false,
            nested_metadata: false,
            hold_headers: true,
        };
        let process = Process::new(T0);
        let on =
            |text: &str, caps| Worker::on_host(FakeHost::new(&process, 7), text.as_bytes(), caps);
        let refused = |text: &str| on(text, native).err().map(|e| e.0).unwrap_or_default();
        assert!(refused(ETCD).contains("`store.etcd`"), "{}", refused(ETCD));
        assert!(refused(JWT).contains("`identity_jwt`"), "{}", refused(JWT));
        assert!(on(r#"{"identity_peer":"uri_san"}"#, native).is_ok());
        assert!(on(
            r#"{"stateless":true,"store":{"etcd":{"cluster":"e"}}}"#,
            native
        )
        .is_ok());
        assert!(on(ETCD, Capabilities::PROXY_WASM).is_ok());
        assert!(on(JWT, Capabilities::PROXY_WASM).is_ok());
    }

    /// A configuration read once starts every worker a host runs it on: each is the worker
    /// its bytes would start alone (the same configuration, and the same fingerprint, by
    /// which the store knows them for one configuration).
    #[test]
    fn workers_of_one_reading_are_workers_of_its_configuration() {
        let process = Process::new(T0);
        let bytes = br#"{"max_sessions":5,"idle_timeout_seconds":60}"#;
        let alone = Worker::on_host(FakeHost::new(&process, 9), bytes, Capabilities::PROXY_WASM)
            .map_err(|e| e.0)
            .unwrap();
        let configured = Configured::parse(bytes, Capabilities::PROXY_WASM)
            .map_err(|e| e.0)
            .unwrap();
        assert_eq!(configured.config(), alone.config());
        for seed in [7, 8] {
            let worker = configured
                .worker(FakeHost::new(&process, seed))
                .map_err(|e| e.0)
                .unwrap();
            assert_eq!(worker.config(), alone.config());
            assert_eq!(worker.token, alone.token);
            assert_eq!(worker.limits, alone.limits);
        }
        let other = Configured::parse(b"{}", Capabilities::PROXY_WASM)
            .map_err(|e| e.0)
            .unwrap();
        assert_ne!(other.token, configured.token);
    }

    /// What a host may skip: a stream that reads nothing passes every hook; an initialize
    /// that waits for its body passes none of its request's.
    #[test]
    fn a_stream_passes_the_hooks_it_has_nothing_to_do_in() {
        let process = Process::new(T0);
        let worker = worker(&process, Capabilities::PROXY_WASM);
        let fresh = Stream::default();
        assert!(ALL_HOOKS.iter().all(|&hook| fresh.passes(hook)));

        initialize_awaiting_body(&worker);
        // The sessionless era passes untouched.
        let mut log = StreamLog::default();
        let mut sessionless = Stream::default();
        let era = Request::post("{}", &[("mcp-protocol-version", "2026-07-28")]);
        worker.request_headers(
            &mut sessionless,
            &era.headers,
            &era.attributes,
            false,
            &mut log,
        );
        assert!(ALL_HOOKS.iter().all(|&hook| sessionless.passes(hook)));
    }

    /// A stream whose hook failed (a native module caught a panic) is answered a JSON-RPC 500
    /// once, while an answer can still be sent, and from then on the driver does nothing on
    /// it: every hook passes, and one the host calls anyway lets the stream go on untouched.
    #[test]
    fn a_failed_stream_is_answered_once_and_passes_every_hook_after() {
        let process = Process::new(T0);
        let worker = worker(&process, Capabilities::PROXY_WASM);
        let (mut stream, init) = initialize_awaiting_body(&worker);

        let stats = process.session_stats();
        let reply = stream.fail().expect("a 500 while the stream is open");
        assert_eq!(reply, crate::exchange::Reply::internal_error());
        assert_eq!(reply.status, 500);
        assert_eq!(stream.fail(), None, "answered once");
        assert!(ALL_HOOKS.iter().all(|&hook| stream.passes(hook)));
        let body = init.body.clone();
        let size = || body.len();
        let read = || std::borrow::Cow::Borrowed(&body[..]);
        let mut after = StreamLog::default();
        let action = worker.body(&mut stream, Side::Request, &size, true, &read, &mut after);
        assert_eq!(action, Action::Continue);
        let again = worker.request_headers(
            &mut stream,
            &init.headers,
            &init.attributes,
            true,
            &mut after,
        );
        assert_eq!(again, Action::Continue);
        assert_eq!(
            (after.reply, after.calls.len()),
            (None, 0),
            "nothing done on it"
        );
        assert_eq!(
            after.request,
            crate::testkit::HeaderList::default(),
            "no edit"
        );
        assert_eq!(process.session_stats(), stats, "nothing counted");
    }

    /// A hook that fails once the stream's last hook has begun sends nothing: the response
    /// is over.
    #[test]
    fn a_stream_that_fails_in_its_last_hook_is_not_answered() {
        let process = Process::new(T0);
        let worker = worker(&process, Capabilities::PROXY_WASM);
        let mut stream = Stream::default();
        worker.stream_done(&mut stream, &mut StreamLog::default());
        assert_eq!(stream.fail(), None);
        assert!(stream.passes(Hook::Done));
    }

    /// A POST judged by its body holds its headers where the host can still show the body
    /// then (a dynamic module: the upstream sees a refused POST not at all), and lets them go
    /// on where it cannot (proxy-wasm: the upstream sees them, then a reset). Requests judged
    /// on their headers alone go the same way on both.
    #[test]
    fn a_post_judged_by_its_body_holds_its_headers_where_the_host_can() {
        let process = Process::new(T0);
        let holding = Capabilities {
            hold_headers: true,
            ..Capabilities::PROXY_WASM
        };
        let wasm = Capabilities::PROXY_WASM;
        let sessionless_era = [("mcp-protocol-version", "2026-07-28")];
        type Case<'a> = (
            &'a str,
            Capabilities,
            &'a [(&'a str, &'a str)],
            bool,
            Action,
        );
        let cases: [Case<'_>; 6] = [
            ("a body follows", holding, &[], false, Action::HoldHeaders),
            ("a body follows", wasm, &[], false, Action::Continue),
            // No body: judged at once (refused: no JSON-RPC message).
            ("no body", holding, &[], true, Action::Pause),
            ("no body", wasm, &[], true, Action::Pause),
            (
                "the sessionless era",
                holding,
                &sessionless_era,
                false,
                Action::Continue,
            ),
            (
                "the sessionless era",
                wasm,
                &sessionless_era,
                false,
                Action::Continue,
            ),
        ];
        for (what, caps, extra, end_of_stream, want) in cases {
            let worker = worker(&process, caps);
            let call = Request::post("{}", extra);
            let mut log = StreamLog::default();
            let action = worker.request_headers(
                &mut Stream::default(),
                &call.headers,
                &call.attributes,
                end_of_stream,
                &mut log,
            );
            assert_eq!(action, want, "{what}, {caps:?}");
        }
    }
}
