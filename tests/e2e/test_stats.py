"""The filter's stats: every name defined up front, visible in /stats and in Prometheus form."""

from __future__ import annotations

from harness import PROMETHEUS_PREFIX, open_session, post, request, rpc

COUNTERS = [
    "created",
    "terminated",
    "expired",
    "rejected.missing",
    "rejected.unknown",
    "rejected.capacity",
    "rejected.version",
    "rejected.lifecycle",
    "rejected.body",
    "rejected.method",
    "rejected.header",
    "rejected.identity",
    "rejected.unavailable",
    "rejected.identity_limit",
    "passthrough.sessionless",
    "epoch",
    # The etcd store's (defined with either store; they stay 0 without etcd).
    "store.calls",
    "store.errors",
    "store.retries",
    "store.fallbacks",
    "store.watch_restarts",
    "store.cache_flushes",
    "cache.hits",
    "cache.misses",
    "cache.stale_serves",
]
GAUGES = ["live", "store.watch_up"]
# Defined by both builds; only the native module counts it (a panic caught at its boundary).
COUNTERS.append("panics")


def test_every_stat_is_defined(envoy) -> None:
    assert sorted(envoy.stats()) == sorted(COUNTERS + GAUGES)


def test_stat_types(envoy) -> None:
    text = envoy.admin_get("/stats/prometheus").text
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    for name in COUNTERS:
        assert types.get(PROMETHEUS_PREFIX + "mcp_session_" + name.replace(".", "_")) == "counter", name
    for name in GAUGES:
        assert types.get(PROMETHEUS_PREFIX + "mcp_session_" + name.replace(".", "_")) == "gauge", name


def test_the_epoch_moves_with_every_end_and_only_then(envoy) -> None:
    """Workers serve sessions they validated a moment ago without reading the store only while
    `epoch` has not moved: every end (DELETE here) must move it before the answer."""
    before = envoy.stats()["epoch"]
    assert before > 0, "bumped when the configuration started"
    session = open_session(envoy.url())
    assert post(envoy.url(), rpc("tools/list", 2), session=session).status_code == 200
    assert envoy.stats()["epoch"] == before
    assert request("DELETE", envoy.url(), session=session).status_code == 204
    assert envoy.stats()["epoch"] == before + 1
