//! The stats the filter reports. Names are constants defined once; the glue registers them
//! with Envoy (`define_metric`), which lists them under `wasmcustom.` in `/stats`.

use crate::rejection::Reason;

/// Sessions that went live (initialize answered with a result).
pub const CREATED: &str = "mcp_session.created";
/// Sessions ended by DELETE or by the upstream answering 404.
pub const TERMINATED: &str = "mcp_session.terminated";
/// Sessions ended by idle or absolute expiry.
pub const EXPIRED: &str = "mcp_session.expired";
/// Sessionless-era requests passed through.
pub const PASSTHROUGH_SESSIONLESS: &str = "mcp_session.passthrough.sessionless";
/// Gauge: live sessions in this Envoy.
pub const LIVE: &str = "mcp_session.live";
/// Counter that moves whenever a session ends anywhere in this Envoy (and when a filter
/// configuration starts): the workers read it to know whether the sessions they validated a
/// moment ago may still be served without reading the store (src/cache.rs).
pub const EPOCH: &str = "mcp_session.epoch";

/// Panics caught at the native module's boundary (each failed one request closed); the Wasm
/// build never counts it (a panic there fails the VM, see `fail_open`).
pub const PANICS: &str = "mcp_session.panics";

/// Gauge: this Envoy's VMs whose watch on the etcd store is up.
pub const WATCH_UP: &str = "mcp_session.store.watch_up";

/// The counter name for a rejection reason.
pub fn rejected(reason: Reason) -> String {
    format!("mcp_session.rejected.{}", reason.name())
}

/// Something the filter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A session went live.
    Created,
    /// A session was ended by a client or the upstream.
    Terminated,
    /// Sessions expired (count).
    Expired,
    /// A sessionless-era request passed.
    Sessionless,
    /// A request was refused.
    Rejected(Reason),
}

/// What the etcd store counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreStat {
    /// Calls made to etcd (retries included).
    Calls,
    /// Calls that failed (unreachable, timed out, no leader, undecodable).
    Errors,
    /// Calls made again on another member after a failure.
    Retries,
    /// Operations served from this Envoy's memory because etcd could not answer
    /// (`unavailable: local`).
    Fallbacks,
    /// Watch streams (re)opened.
    WatchRestarts,
    /// Times a VM emptied its cache (a session ended elsewhere, or the watch may have missed
    /// events).
    CacheFlushes,
    /// Requests on a session served from the VM's cache, with no etcd call.
    CacheHits,
    /// Requests on a session that asked etcd.
    CacheMisses,
    /// Requests served from an entry older than the cache's trust, because etcd could not
    /// answer (`unavailable: local`).
    StaleServes,
}

impl StoreStat {
    /// Every store stat.
    pub const ALL: [StoreStat; 9] = [
        StoreStat::Calls,
        StoreStat::Errors,
        StoreStat::Retries,
        StoreStat::Fallbacks,
        StoreStat::WatchRestarts,
        StoreStat::CacheFlushes,
        StoreStat::CacheHits,
        StoreStat::CacheMisses,
        StoreStat::StaleServes,
    ];

    /// The stat's name.
    pub fn name(self) -> &'static str {
        match self {
            StoreStat::Calls => "mcp_session.store.calls",
            StoreStat::Errors => "mcp_session.store.errors",
            StoreStat::Retries => "mcp_session.store.retries",
            StoreStat::Fallbacks => "mcp_session.store.fallbacks",
            StoreStat::WatchRestarts => "mcp_session.store.watch_restarts",
            StoreStat::CacheFlushes => "mcp_session.store.cache_flushes",
            StoreStat::CacheHits => "mcp_session.cache.hits",
            StoreStat::CacheMisses => "mcp_session.cache.misses",
            StoreStat::StaleServes => "mcp_session.cache.stale_serves",
        }
    }
}

/// One stat as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// The counter of an [`Event`].
    Count(Event),
    /// Gauge: live sessions ([`LIVE`]).
    Live,
    /// Counter: moves on every end of a session ([`EPOCH`]).
    Epoch,
    /// Counter of the etcd store.
    Store(StoreStat),
    /// Gauge: VMs whose etcd watch is up ([`WATCH_UP`]).
    WatchUp,
    /// Counter: panics caught by a native host ([`PANICS`]).
    Panics,
}

impl Metric {
    /// Every stat, for the host to define once.
    pub fn all() -> Vec<Metric> {
        let mut all = vec![
            Metric::Count(Event::Created),
            Metric::Count(Event::Terminated),
            Metric::Count(Event::Expired),
            Metric::Count(Event::Sessionless),
        ];
        all.extend(Reason::ALL.map(|r| Metric::Count(Event::Rejected(r))));
        all.extend([Metric::Live, Metric::Epoch, Metric::WatchUp, Metric::Panics]);
        all.extend(StoreStat::ALL.map(Metric::Store));
        all
    }

    /// The stat's name.
    pub fn name(self) -> String {
        match self {
            Metric::Count(Event::Created) => CREATED.into(),
            Metric::Count(Event::Terminated) => TERMINATED.into(),
            Metric::Count(Event::Expired) => EXPIRED.into(),
            Metric::Count(Event::Sessionless) => PASSTHROUGH_SESSIONLESS.into(),
            Metric::Count(Event::Rejected(reason)) => rejected(reason),
            Metric::Live => LIVE.into(),
            Metric::Epoch => EPOCH.into(),
            Metric::Store(stat) => stat.name().into(),
            Metric::WatchUp => WATCH_UP.into(),
            Metric::Panics => PANICS.into(),
        }
    }

    /// Whether the stat is a gauge (else a counter).
    pub fn is_gauge(self) -> bool {
        matches!(self, Metric::Live | Metric::WatchUp)
    }

    /// How many stats there are: [`Metric::index`] is below it.
    pub const COUNT: usize = 4 + Reason::ALL.len() + 4 + StoreStat::ALL.len();

    /// The stat's place in [`Metric::all`], for a host to keep what it defined in an array
    /// (a lookup per count, where a hash map hashed the stat each time: make bench's profile).
    pub fn index(self) -> usize {
        const REASONS: usize = Reason::ALL.len();
        match self {
            Metric::Count(Event::Created) => 0,
            Metric::Count(Event::Terminated) => 1,
            Metric::Count(Event::Expired) => 2,
            Metric::Count(Event::Sessionless) => 3,
            Metric::Count(Event::Rejected(reason)) => 4 + reason as usize,
            Metric::Live => 4 + REASONS,
            Metric::Epoch => 5 + REASONS,
            Metric::WatchUp => 6 + REASONS,
            Metric::Panics => 7 + REASONS,
            Metric::Store(stat) => 8 + REASONS + stat as usize,
        }
    }
}

/// What a host defined for each stat (its id), by [`Metric::index`]: built once, when a
/// configuration starts, and read on every count without hashing the stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defined<T>([Option<T>; Metric::COUNT]);

impl<T: Copy> Defined<T> {
    /// Each stat's id as `define` answers it (`None`: the host could not define it, and the
    /// stat is not reported).
    pub fn by(mut define: impl FnMut(Metric) -> Option<T>) -> Defined<T> {
        let mut ids = [None; Metric::COUNT];
        for metric in Metric::all() {
            if let Some(id) = ids.get_mut(metric.index()) {
                *id = define(metric);
            }
        }
        Defined(ids)
    }

    /// The id defined for `metric`.
    #[inline]
    pub fn get(&self, metric: Metric) -> Option<T> {
        self.0.get(metric.index()).copied().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_prefix() {
        for name in [
            CREATED,
            TERMINATED,
            EXPIRED,
            PASSTHROUGH_SESSIONLESS,
            LIVE,
            PANICS,
        ] {
            assert!(name.starts_with("mcp_session."), "{name}");
        }
        assert_eq!(rejected(Reason::Capacity), "mcp_session.rejected.capacity");
    }

    #[test]
    fn every_stat_has_its_place() {
        let all = Metric::all();
        assert_eq!(all.len(), Metric::COUNT);
        for (at, metric) in all.into_iter().enumerate() {
            assert_eq!(metric.index(), at, "{metric:?}");
        }
    }

    #[test]
    fn each_stat_keeps_the_id_defined_for_it() {
        let mut asked = Vec::new();
        let defined = Defined::by(|metric| {
            asked.push(metric);
            (metric != Metric::Panics).then_some(metric.index() * 10)
        });
        assert_eq!(asked, Metric::all());
        for metric in Metric::all() {
            let want = (metric != Metric::Panics).then_some(metric.index() * 10);
            assert_eq!(defined.get(metric), want, "{metric:?}");
        }
    }

    #[test]
    fn every_stat_has_its_own_name() {
        let names: std::collections::BTreeSet<String> =
            Metric::all().into_iter().map(Metric::name).collect();
        assert_eq!(names.len(), Metric::all().len());
        assert!(names.iter().all(|n| n.starts_with("mcp_session.")));
    }
}
