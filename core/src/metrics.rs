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

/// One stat as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// The counter of an [`Event`].
    Count(Event),
    /// Gauge: live sessions ([`LIVE`]).
    Live,
    /// Counter: moves on every end of a session ([`EPOCH`]).
    Epoch,
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
        all.extend([Metric::Live, Metric::Epoch]);
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
        }
    }

    /// Whether the stat is a gauge (else a counter).
    pub fn is_gauge(self) -> bool {
        self == Metric::Live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_prefix() {
        for name in [CREATED, TERMINATED, EXPIRED, PASSTHROUGH_SESSIONLESS, LIVE] {
            assert!(name.starts_with("mcp_session."), "{name}");
        }
        assert_eq!(rejected(Reason::Capacity), "mcp_session.rejected.capacity");
    }

    #[test]
    fn every_stat_has_its_own_name() {
        let names: std::collections::BTreeSet<String> =
            Metric::all().into_iter().map(Metric::name).collect();
        assert_eq!(names.len(), Metric::all().len());
        assert!(names.iter().all(|n| n.starts_with("mcp_session.")));
    }
}
