//! What every exchange of one worker shares: the configuration, the session store over the
//! host's shared data, the worker's cache of sessions it validated a moment ago, and the stats.
//!
//! [`Plugin::on_event`] is the one entry point for an exchange's events: it steps the
//! [`Exchange`] and runs the store operations it asks for. The local store (Envoy shared
//! data) answers at once; the etcd store's operations come out as [`Flow::Call`]s, whose
//! answers the host hands to [`Plugin::on_reply`].

use crate::cache::SessionCache;
use crate::config::{Config, ConfigError, StoreConfig};
use crate::digest;
use crate::etcd::{self, Flight, Next, Remote, Reply, WatchNews};
use crate::exchange::{Event, Exchange, Flow, Step, StoreOp, StoreResult};
use crate::host::Host;
use crate::metrics::{Event as Count, Metric, StoreStat};
use crate::record::Record;
use crate::session_id::SessionId;
use crate::store::{Limits, Lookup, SlotPool, Store, Sweep};
use log::info;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;

/// Most random slots an initialize probes before the table grows (see `store.rs`).
pub const MAX_PROBES: u32 = 8;
/// Sessions each worker remembers having validated (see `cache.rs`).
pub const CACHE_CAPACITY: usize = 4096;
/// While probes keep finding nothing (the table only grows), one initialize in this many
/// probes: a probe is a read of a live record, the costliest part of an initialize then.
pub const PROBE_EVERY: u32 = 16;
/// Most store operations one event may chain (a guard against a machine that loops).
const MAX_CHAINED_OPS: usize = 8;

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

/// One worker's view of one filter configuration.
pub struct Plugin<H: Host> {
    host: H,
    config: Config,
    limits: Limits,
    /// xorshift state for probe positions (not for secrets: those come from the CSPRNG).
    probe_state: Cell<u64>,
    /// Random slots to probe before growing the table: back to the most when a probe found a
    /// slot, halved (to 1) when they all failed and the table grew.
    probe_budget: Cell<u32>,
    /// Initializes this worker reserved for.
    reserves: Cell<u32>,
    /// Slots this worker holds for its next initializes.
    pool: RefCell<SlotPool>,
    /// Sessions this worker validated a moment ago.
    cache: RefCell<SessionCache>,
    /// Fingerprint of the configuration: only the newest configuration on a store sweeps it.
    token: u64,
    /// The etcd store, when configured (else the local store).
    remote: Option<Remote>,
    /// This VM's watch counts in the `watch_up` gauge.
    watch_counted: Cell<bool>,
    /// Ends (deleted keys) this VM's watch reported.
    ends_seen: Cell<u64>,
    /// With etcd: the key of each session the cache may hold, to know whether a DELETE
    /// anywhere ended one of them.
    cached_keys: RefCell<HashSet<Vec<u8>>>,
}

impl<H: Host> Plugin<H> {
    /// Starts a worker's plugin from the configuration bytes. Moves the epoch (so a counter
    /// that still reads 0 is one the host does not keep) and, unless stateless, records this
    /// configuration as the newest on the store.
    pub fn new(host: H, configuration: &[u8]) -> Result<Plugin<H>, ConfigError> {
        let config = Config::parse(configuration)?;
        let mut seed = [0u8; 8];
        if !host.fill_random(&mut seed) {
            return Err(ConfigError("the host has no random source".into()));
        }
        let limits = Limits {
            idle_ms: config.idle_timeout_ms,
            lifetime_ms: config.max_lifetime_ms,
            max_sessions: config.max_sessions,
            bind_identity: config.identity.is_some(),
        };
        host.increment(Metric::Epoch, 1);
        let plugin = Plugin {
            host,
            config,
            limits,
            probe_state: Cell::new(u64::from_le_bytes(seed) | 1),
            probe_budget: Cell::new(MAX_PROBES),
            reserves: Cell::new(0),
            pool: RefCell::new(SlotPool::new()),
            cache: RefCell::new(SessionCache::new(CACHE_CAPACITY)),
            token: u64::from_le_bytes(digest::digest_prefix(&[configuration])),
            remote: None,
            watch_counted: Cell::new(false),
            ends_seen: Cell::new(0),
            cached_keys: RefCell::new(HashSet::new()),
        };
        let mut plugin = plugin;
        if let (StoreConfig::Etcd(etcd), false) = (&plugin.config.store, plugin.config.stateless) {
            plugin.remote = Some(Remote::new(etcd.clone(), plugin.config.idle_timeout_ms));
        }
        if !plugin.config.stateless && plugin.remote.is_none() {
            plugin.store().adopt_configuration(plugin.token);
        }
        let config = &plugin.config;
        info!(
            "mcp-session-filter: configured (idle {} s, lifetime {} s, max {} sessions, stateless: {})",
            config.idle_timeout_ms / 1000,
            config.max_lifetime_ms / 1000,
            config.max_sessions,
            config.stateless
        );
        Ok(plugin)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    fn store(&self) -> Store<&H> {
        Store::new(&self.host, self.limits)
    }

    /// The etcd store, when configured.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// Feeds one event to an exchange and runs the store operations it asks for, feeding
    /// their answers back, until it continues, pauses, answers, or calls etcd.
    pub fn on_event(&self, exchange: &mut Exchange, event: Event<'_>) -> Step {
        let step = exchange.step(self, event);
        self.drive(exchange, step)
    }

    /// Feeds the answer to the etcd call an exchange waits for ([`Flow::Call`]).
    pub fn on_reply(&self, exchange: &mut Exchange, reply: Reply<'_>) -> Step {
        let (Some(remote), Some(flight)) = (&self.remote, exchange.flight.take()) else {
            return Flow::Continue.into();
        };
        if let Reply::Failed(status) = reply {
            self.count_store(StoreStat::Errors);
            log::warn!(
                "etcd {}/{} failed (gRPC status {status})",
                flight.call().service,
                flight.call().method
            );
        }
        let now_ms = self.host.now_ms();
        let result = match remote.advance(flight, reply, &self.limits, now_ms) {
            Next::Call(flight) => {
                if matches!(reply, Reply::Failed(_)) {
                    self.count_store(StoreStat::Retries);
                }
                return self.send(exchange, flight).into();
            }
            Next::Done(result) => result,
            Next::Unavailable(op) => self.unavailable(op),
        };
        let step = exchange.step(self, Event::Stored(result));
        self.drive(exchange, step)
    }

    fn send(&self, exchange: &mut Exchange, flight: Box<Flight>) -> Flow {
        self.count_store(StoreStat::Calls);
        let call = flight.call().clone();
        exchange.flight = Some(flight);
        Flow::Call(Box::new(call))
    }

    /// The timeout of the etcd call an exchange is about to make: what is left of its
    /// operation's deadline.
    pub fn call_timeout_ms(&self, exchange: &Exchange) -> u64 {
        match (&self.remote, &exchange.flight) {
            // Half of the deadline at most: a call stuck on a member that lost its leader
            // leaves time for another member.
            (Some(remote), Some(flight)) => remote
                .time_left(flight, self.host.now_ms())
                .min(remote.config().timeout_ms / 2)
                .max(10),
            (Some(remote), None) => remote.config().timeout_ms,
            (None, _) => 1000,
        }
    }

    /// Counts one of the etcd store's events.
    pub fn count_store(&self, stat: StoreStat) {
        self.host.increment(Metric::Store(stat), 1);
    }

    /// What etcd's silence means for `op`: 503 (`unavailable: reject`), or this VM's memory
    /// (`unavailable: local`): sessions it validated serve however old, new sessions live in
    /// it and are written to etcd when it is back.
    fn unavailable(&self, op: StoreOp) -> StoreResult {
        let Some(remote) = self
            .remote
            .as_ref()
            .filter(|r| r.config().fall_back_to_local)
        else {
            return StoreResult::Unavailable;
        };
        self.count_store(StoreStat::Fallbacks);
        let Ok(mut cache) = self.cache.try_borrow_mut() else {
            return StoreResult::Unavailable;
        };
        let epoch = self.host.epoch().unwrap_or(0);
        let key = |id: &SessionId| etcd::key(&remote.config().prefix, id);
        match op {
            StoreOp::Lookup {
                id,
                identity,
                now_ms,
            } => StoreResult::Lookup(
                match cache.get_within(
                    epoch,
                    &id,
                    identity.as_deref(),
                    now_ms,
                    &self.limits,
                    u64::MAX,
                ) {
                    Some(record) => {
                        self.count_store(StoreStat::StaleServes);
                        Lookup::Live(record.clone(), 0)
                    }
                    // A session another worker of this Envoy created while etcd was away.
                    None => match self.host.get(&fallback_key(&key(&id))).0 {
                        Some(bytes) => match etcd::record_of(&bytes, &id) {
                            Some(record)
                                if self.limits.serves(&record, now_ms, identity.as_deref()) =>
                            {
                                Lookup::Live(record, 0)
                            }
                            _ => Lookup::NotFound,
                        },
                        // Never seen here: it may well be live in etcd; not a 404.
                        None => return StoreResult::Unavailable,
                    },
                },
            ),
            StoreOp::End { id, .. } => {
                // Only a session this Envoy knows: the end is written to etcd when it is back.
                let Some(held) = cache.take(&id) else {
                    return StoreResult::Unavailable;
                };
                let key = key(&id);
                let _ = self.host.set(&fallback_key(&key), &[], None);
                remote.defer_delete(key);
                StoreResult::Ended(crate::store::Ended::Ended(held))
            }
            StoreOp::Activate {
                id,
                ref reserved,
                ref upstream_id,
                now_ms,
            } => {
                let mut live = reserved.activated(now_ms, upstream_id.as_deref());
                // Its `notifications/initialized` cannot be recorded while etcd is away.
                live.initialized = true;
                let key = key(&id);
                // Every worker of this Envoy finds it there until etcd has it.
                let _ = self
                    .host
                    .set(&fallback_key(&key), &etcd::value(&live), None);
                remote.defer_put(key, live.clone());
                cache.put(epoch, id.slot, live);
                StoreResult::Done(true)
            }
            StoreOp::MarkInitialized { .. } | StoreOp::Release { .. } => StoreResult::Done(true),
            StoreOp::Reserve { .. } => StoreResult::Reserved(None),
        }
    }

    /// The answer to a timer chore: the session count sets the `live` gauge; sessions a
    /// backlog flush wrote to etcd leave this Envoy's fallback memory.
    pub fn on_chore(&self, chore: etcd::Chore, reply: Reply<'_>) {
        let Some(remote) = &self.remote else {
            return;
        };
        match remote.chore_done(chore, reply, self.host.now_ms()) {
            None => self.count_store(StoreStat::Errors),
            Some(written) => {
                if chore == etcd::Chore::Count {
                    self.host.record(Metric::Live, remote.counted());
                }
                for key in written {
                    let _ = self.host.set(&fallback_key(&key), &[], None);
                }
            }
        }
    }

    /// What the watch said: forget the sessions whose keys were deleted, or everything when
    /// ends may have been missed.
    pub fn on_watch_news(&self, news: &WatchNews) {
        let (Ok(mut cache), Ok(mut keys)) = (
            self.cache.try_borrow_mut(),
            self.cached_keys.try_borrow_mut(),
        ) else {
            return;
        };
        if news.flush || !news.deleted.is_empty() {
            self.ends_seen.set(self.ends_seen.get().wrapping_add(1));
        }
        if news.flush {
            cache.clear();
            keys.clear();
            self.count_store(StoreStat::CacheFlushes);
            return;
        }
        let mut held = false;
        for key in &news.deleted {
            held |= keys.remove(key);
        }
        if held {
            // The epoch empties this worker's cache, and those of the other workers of this
            // Envoy, which may hold it too while their watches speak a moment later: once one
            // worker answers 404 every worker does.
            self.host.increment(Metric::Epoch, 1);
        }
    }

    /// Keeps the `watch_up` gauge in step with this VM's watch.
    pub fn note_watch(&self, now_ms: u64) {
        let fresh = self.remote.as_ref().is_some_and(|r| r.watch_fresh(now_ms));
        if fresh != self.watch_counted.get() {
            self.watch_counted.set(fresh);
            self.host
                .increment(Metric::WatchUp, if fresh { 1 } else { -1 });
        }
    }

    fn drive(&self, exchange: &mut Exchange, mut step: Step) -> Step {
        for _ in 0..MAX_CHAINED_OPS {
            let Flow::Store(op) = step.flow else {
                return step;
            };
            let result = match &self.remote {
                None => self.execute(*op),
                Some(remote) => match remote.begin(*op, &self.limits, self.next_probe()) {
                    Next::Done(result) => result,
                    Next::Unavailable(op) => self.unavailable(op),
                    Next::Call(flight) => {
                        step.flow = self.send(exchange, flight);
                        return step;
                    }
                },
            };
            let mut next = exchange.step(self, Event::Stored(result));
            step.edits.append(&mut next.edits);
            step.flow = next.flow;
        }
        if matches!(step.flow, Flow::Store(_)) {
            log::error!("store operations chained past {MAX_CHAINED_OPS}; letting traffic go on");
            step.flow = Flow::Continue;
        }
        step
    }

    /// Runs a store operation against the local store (Envoy shared data), at once.
    pub fn execute(&self, op: StoreOp) -> StoreResult {
        let store = self.store();
        match op {
            StoreOp::Lookup {
                id,
                identity,
                now_ms,
            } => StoreResult::Lookup(match store.lookup(&id, now_ms, identity.as_deref()) {
                Lookup::Live(mut record, cas) => {
                    if store.touch(&id, &record, cas, now_ms) {
                        record.last_seen_ms = now_ms;
                    }
                    Lookup::Live(record, cas)
                }
                other => other,
            }),
            StoreOp::End { id, now_ms } => StoreResult::Ended(store.end(&id, now_ms)),
            StoreOp::Reserve {
                secret,
                identity,
                now_ms,
            } => {
                let budget = self.probe_budget.get();
                let n = self.reserves.get().wrapping_add(1);
                self.reserves.set(n);
                let probes = if budget > 1 || n % PROBE_EVERY == 0 {
                    budget
                } else {
                    0
                };
                let mut probe = || self.next_probe();
                let reservation = match self.pool.try_borrow_mut() {
                    Ok(mut pool) => store.reserve_pooled(
                        now_ms,
                        secret,
                        identity.as_deref(),
                        &mut probe,
                        probes,
                        &mut pool,
                    ),
                    Err(_) => store.reserve_probing(
                        now_ms,
                        secret,
                        identity.as_deref(),
                        &mut probe,
                        probes,
                    ),
                };
                if let Some(reservation) = &reservation {
                    let next = reservation.from.next_probe_budget(budget, MAX_PROBES);
                    self.probe_budget.set(next);
                }
                StoreResult::Reserved(reservation)
            }
            StoreOp::Activate {
                id,
                reserved,
                upstream_id,
                now_ms,
            } => StoreResult::Done(store.activate_reserved(
                &id,
                &reserved,
                now_ms,
                upstream_id.as_deref(),
            )),
            StoreOp::Release { id } => StoreResult::Done(store.release(&id)),
            StoreOp::MarkInitialized { id, now_ms } => {
                StoreResult::Done(store.mark_initialized(&id, now_ms))
            }
        }
    }

    /// Hands the slots this worker holds back to the store, when its configuration goes away.
    pub fn return_slots(&self) {
        if let Ok(mut pool) = self.pool.try_borrow_mut() {
            self.store().return_pool(&mut pool);
        }
    }

    /// The timer: one sweep step, if this configuration is the newest on the store and it is
    /// this worker's turn.
    pub fn on_tick(&self) -> Sweep {
        if self.config.stateless || self.remote.is_some() {
            return Sweep::default();
        }
        let store = self.store();
        if !store.sweeps_for(self.token) {
            // A newer configuration of this store sweeps it, and makes the sessions: the slots
            // this one holds are of no more use here.
            if let Ok(mut pool) = self.pool.try_borrow_mut() {
                if !pool.is_empty() {
                    store.return_pool(&mut pool);
                }
            }
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

    /// Counts `n` of `event`; the live gauge follows the lifecycle counters, and every end
    /// moves the epoch before the request that caused it is answered.
    pub fn count(&self, event: Count, n: u32) {
        if n == 0 {
            return;
        }
        let n = i64::from(n);
        self.host.increment(Metric::Count(event), n);
        // With etcd, `live` is the fleet's count, set from the periodic count (an Envoy ends
        // sessions other Envoys created).
        let tally_live = self.remote.is_none();
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

    /// Notes the ends seen so far, before a lookup (read the epoch before the store).
    pub fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.host.epoch(),
            ends: self.ends_seen.get(),
        }
    }

    /// The record of session `id` from the worker's cache, if it may serve.
    pub fn cached(
        &self,
        stamp: Stamp,
        id: &SessionId,
        identity: Option<&[u8]>,
        now_ms: u64,
    ) -> Option<Record> {
        let epoch = stamp.epoch?;
        let mut cache = self.cache.try_borrow_mut().ok()?;
        let Some(remote) = &self.remote else {
            return cache
                .get(epoch, id, identity, now_ms, &self.limits)
                .cloned();
        };
        let trust = remote.trust_ms(now_ms);
        let hit = cache
            .get_within(epoch, id, identity, now_ms, &self.limits, trust)
            .cloned();
        self.count_store(if hit.is_some() {
            StoreStat::CacheHits
        } else {
            StoreStat::CacheMisses
        });
        hit
    }

    /// Remembers a live record just read from the store, at the epoch read before that read.
    /// Only a settled record: `initialized` is the one field a live session's record still
    /// changes in without an end.
    pub fn remember(&self, stamp: Stamp, id: &SessionId, record: &Record) {
        let epoch = stamp.epoch;
        // With etcd, a read answered after the watch reported an end may predate that end.
        let settled = (record.initialized || !self.config.enforce_initialized)
            && stamp.ends == self.ends_seen.get();
        if let (Some(epoch), Ok(mut cache), true) = (epoch, self.cache.try_borrow_mut(), settled) {
            cache.put(epoch, id.slot, record.clone());
            if let (Some(remote), Ok(mut keys)) = (&self.remote, self.cached_keys.try_borrow_mut())
            {
                if keys.len() >= 2 * CACHE_CAPACITY {
                    // Entries the cache dropped since: start the index over with the cache.
                    keys.clear();
                    cache.clear();
                }
                keys.insert(etcd::key(&remote.config().prefix, id));
            }
        }
    }

    fn next_probe(&self) -> u32 {
        let mut x = self.probe_state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.probe_state.set(x);
        (x >> 32) as u32
    }
}

/// Where this Envoy keeps a session created while etcd was away (`unavailable: local`), for
/// every worker, until the backlog has written it to etcd: shared data under its etcd key.
fn fallback_key(etcd_key: &[u8]) -> String {
    format!("mcps/fallback/{}", String::from_utf8_lossy(etcd_key))
}
