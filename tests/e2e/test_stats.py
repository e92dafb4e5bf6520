"""The filter's stats: every name defined up front, visible in /stats and in Prometheus form."""

from __future__ import annotations

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
    "passthrough.sessionless",
]
GAUGES = ["live"]


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
        assert types.get("mcp_session_" + name.replace(".", "_")) == "counter", name
    assert types.get("mcp_session_live") == "gauge"
