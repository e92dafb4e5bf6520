//! What every exchange of one worker shares: the configuration, the session store over the
//! host's shared data, the worker's cache of sessions it validated a moment ago, and the stats.
//!
//! [`Plugin::on_event`] is the one entry point for an exchange's events: it steps the
//! [`Exchange`] and runs the store operations it asks for against the local store (Envoy
//! shared data answers at once), so the host adapter only sees continue, pause or answer.

use crate::cache::SessionCache;
use crate::config::{Config, ConfigError};
use crate::digest;
use crate::exchange::{Event, Exchange, Flow, Step, StoreOp, StoreResult};
use crate::host::Host;
use crate::metrics::{Event as Count, Metric};
use crate::record::Record;
use crate::session_id::SessionId;
use crate::store::{Limits, Lookup, SlotPool, Store, Sweep};
use log::info;
use std::cell::{Cell, RefCell};

/// Most random slots an initialize probes before the table grows (see `store.rs`).
pub const MAX_PROBES: u32 = 8;
/// Sessions each worker remembers having validated (see `cache.rs`).
pub const CACHE_CAPACITY: usize = 4096;
/// While probes keep finding nothing (the table only grows), one initialize in this many
/// probes: a probe is a read of a live record, the costliest part of an initialize then.
pub const PROBE_EVERY: u32 = 16;
/// Most store operations one event may chain (a guard against a machine that loops).
const MAX_CHAINED_OPS: usize = 8;

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
        };
        if !plugin.config.stateless {
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

    /// Feeds one event to an exchange and runs the store operations it asks for, feeding
    /// their answers back, until it continues, pauses or answers.
    pub fn on_event(&self, exchange: &mut Exchange, event: Event<'_>) -> Step {
        let mut step = exchange.step(self, event);
        for _ in 0..MAX_CHAINED_OPS {
            let Flow::Store(op) = step.flow else {
                return step;
            };
            let result = self.execute(*op);
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
        if self.config.stateless {
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
        match event {
            Count::Created => self.host.increment(Metric::Live, n),
            Count::Terminated | Count::Expired => {
                self.host.increment(Metric::Live, -n);
                self.host.increment(Metric::Epoch, n);
            }
            Count::Sessionless | Count::Rejected(_) => {}
        }
    }

    /// The record of session `id` from the worker's cache, if it may serve.
    pub fn cached(
        &self,
        epoch: Option<u64>,
        id: &SessionId,
        identity: Option<&[u8]>,
        now_ms: u64,
    ) -> Option<Record> {
        let epoch = epoch?;
        let mut cache = self.cache.try_borrow_mut().ok()?;
        cache
            .get(epoch, id, identity, now_ms, &self.limits)
            .cloned()
    }

    /// Remembers a live record just read from the store, at the epoch read before that read.
    /// Only a settled record: `initialized` is the one field a live session's record still
    /// changes in without an end.
    pub fn remember(&self, epoch: Option<u64>, id: &SessionId, record: &Record) {
        let settled = record.initialized || !self.config.enforce_initialized;
        if let (Some(epoch), Ok(mut cache), true) = (epoch, self.cache.try_borrow_mut(), settled) {
            cache.put(epoch, id.slot, record.clone());
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
