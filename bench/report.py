"""BENCHMARKS.md's figures, generated from the stored outputs of the benchmark runs.

Every number in BENCHMARKS.md stands between a pair of markers

    <!-- generated:NAME from OUTPUT[, OUTPUT] by bench/report.py; edit the script, not this -->
    ...
    <!-- /generated:NAME -->

and is written here from the output the marker names: bench/results.json (bench/bench.py),
bench/cluster.json and bench/cluster.native.json (bench/cluster.py, once per build: the Wasm
filter, then the native module with MCP_ARTIFACT=native) or bench/profile.json
(bench/profile.py). Each output carries its `provenance` (bench/provenance.py: the commit,
whether the tree was clean, the SHA-256 of the Wasm modules and native modules measured, the
machine, the settings). An output that may be missing (OPTIONAL: the native cluster run, which
older trees lack) renders as a line saying so. The prose around the blocks is not touched, and
states no measured number of its own (tests/e2e/test_benchmarks_doc.py checks both: every
block as this script writes it from its output, and the prose).

    python3 bench/report.py           rewrite the blocks of BENCHMARKS.md and bench/results.svg
    python3 bench/report.py --check   exit 1, naming them, when any differs from its output

`make bench` (bash bench/run.sh) runs it after the runs. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
RESULTS_SVG = BENCH / "results.svg"
OUTPUTS = {
    "results": BENCH / "results.json",
    "cluster": BENCH / "cluster.json",
    "cluster_native": BENCH / "cluster.native.json",
    "profile": BENCH / "profile.json",
}
# Outputs whose absence the page states instead of failing.
OPTIONAL = ("cluster_native",)
# bench/cluster.py's output per build (MCP_ARTIFACT); an output without `artifact` is the Wasm
# filter's (it predates the native run).
CLUSTER_OUTPUT = {"wasm": "cluster", "native": "cluster_native"}
BUILD_NAME = {"wasm": "Wasm", "native": "native"}

NOFILTER, EMPTY, FILTER = "nofilter", "empty", "filter"
EMPTY_NATIVE, NATIVE, MCP = "empty_native", "native", "mcp"
# Every listener of bench/envoy.bench.yaml the tables show, in their order: Envoy alone, the Wasm
# build, the native build, Envoy's own MCP filter. An output that lacks a listener (one measured
# before the native build, or a scenario Envoy's filter did not run) shows "–" in its place.
LISTENERS = (NOFILTER, EMPTY, FILTER, EMPTY_NATIVE, NATIVE, MCP)
LABELS = {
    NOFILTER: "no filter",
    EMPTY: "empty filter (Wasm floor)",
    FILTER: "session filter (Wasm)",
    EMPTY_NATIVE: "empty module (native floor)",
    NATIVE: "session module (native)",
    MCP: "Envoy's mcp filter",
}
SHORT = {
    NOFILTER: "none",
    EMPTY: "Wasm floor",
    FILTER: "Wasm",
    EMPTY_NATIVE: "native floor",
    NATIVE: "native",
    MCP: "mcp filter",
}
# The parts of a callgrind count (bench/profile.py): `module` is a native module's own code (ours
# or the empty one); each build's filter shows the parts it can run in.
PARTS = ("envoy", "v8 code", "libc")
# Natively the `v8 code` part (code callgrind cannot place in a file: mostly Envoy's tcmalloc,
# whose `google_malloc` section it does not map to the binary; every listener has some, the one
# without a filter too) is not V8's: it is shown as unnamed.
NATIVE_PARTS = ("envoy", "module", "v8 code", "libc")
NATIVE_ARTIFACT = "target/release/libmcp_session_native.so"
WASM_ARTIFACT = "target/wasm32-wasip1/release/mcp_session_filter.wasm"
DASH = "–"

BEGIN = re.compile(r"<!-- generated:(?P<name>[\w-]+) from (?P<sources>[^ ]+(?:, [^ ]+)*) by bench/report\.py;[^>]*-->")


def load(name: str) -> dict[str, Any] | None:
    """The stored output `name`; None when it is an OPTIONAL one and missing."""
    if name in OPTIONAL and not OUTPUTS[name].exists():
        return None
    return json.loads(OUTPUTS[name].read_text())


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --------------------------------------------------------------------------- shared pieces


def short_version(version: str) -> str:
    """`<commit>/1.40.0/Clean/RELEASE/BoringSSL` -> `1.40.0 (RELEASE, BoringSSL)`."""
    fields = version.split("/")
    return f"{fields[1]} ({', '.join(fields[3:])})" if len(fields) >= 5 else version


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def value(v: Any) -> str:
    if isinstance(v, list):
        return " ".join(value(x) for x in v)
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def provenance_line(p: dict[str, Any]) -> str:
    """Where an output comes from, in one paragraph."""
    tree = "a clean tree" if p["clean"] else "uncommitted changes to " + ", ".join(f"`{c}`" for c in p["changed"])
    artifacts = "; ".join(f"`{path}` sha256 `{a['sha256'][:16]}`" for path, a in p["artifacts"].items())
    text = (
        f"Provenance: commit `{p['commit'][:12]}` ({tree}); {artifacts}; {p['cpu']}, nproc {p['nproc']}, "
        f"Linux {p['kernel']}, Envoy {short_version(p['envoy_version'])}; started {p['date']}; "
        f"command `{p['command']}`."
    )
    if p["short"]:
        changes = ", ".join(f"`{flag(k)} {value(d['used'])}` (default {value(d['default'])})" for k, d in
                            p["deviations"].items())  # fmt: skip
        text += (
            f"\n\n**A short run** ({changes}): it shows that the harness works; its figures are not the published "
            "ones. Run `make bench` for those."
        )
    return text


def fmt(v: Any, spec: str, bold: bool = False) -> str:
    """`v` formatted, or a dash when the output has no such figure."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DASH
    text = format(v, spec)
    return f"**{text}**" if bold else text


def field(t: dict[str, Any], listener: str, name: str) -> Any:
    return t.get(listener, {}).get(name)


def block(name: str, sources: list[str], body: str) -> str:
    paths = ", ".join(rel(OUTPUTS[s]) for s in sources)
    return (
        f"<!-- generated:{name} from {paths} by bench/report.py; edit the script, not this -->\n"
        f"{body.strip()}\n"
        f"<!-- /generated:{name} -->"
    )


# --------------------------------------------------------------------------- the runs


def render_runs(outputs: dict[str, dict[str, Any] | None]) -> str:
    """Which run each stored output comes from (a missing OPTIONAL output: a row saying so)."""
    lines = [
        "| output | written by | commit | clean tree | short run | started | seconds | filter wasm sha256 "
        "| native module sha256 |",
        "|---|---|---|:-:|:-:|---|--:|---|---|",
    ]
    writers = {
        "results": "bench/bench.py",
        "cluster": "bench/cluster.py",
        "cluster_native": "MCP_ARTIFACT=native bench/cluster.py",
        "profile": "bench/profile.py",
    }
    for name, out in outputs.items():
        if out is None:
            lines.append(f"| `{rel(OUTPUTS[name])}` | `{writers[name]}` | **missing** |" + f" {DASH} |" * 6)
            continue
        p = out["provenance"]
        wasm = p["artifacts"].get(WASM_ARTIFACT, {}).get("sha256")
        native = p["artifacts"].get(NATIVE_ARTIFACT, {}).get("sha256")
        lines.append(
            f"| `{rel(OUTPUTS[name])}` | `{writers[name]}` | `{p['commit'][:12]}` | {'yes' if p['clean'] else '**no**'} "
            f"| {'**yes**' if p['short'] else 'no'} | {p['date']} | {out['seconds']:,.0f} "
            f"| {f'`{wasm[:16]}`' if wasm else DASH} | {f'`{native[:16]}`' if native else 'not measured'} |"
        )
    present = [out for out in outputs.values() if out is not None]
    total = sum(out["seconds"] for out in present)
    lines += ["", f"The {len(present)} runs took {total / 60:.1f} minutes together (their `seconds`, added)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- bench/results.json


def render_matrix(r: dict[str, Any]) -> str:
    """The run's header, the throughput and latency tables, and the initialize at the cap."""
    m, s, p = r["machine"], r["summary"], r["provenance"]
    cores = r["cores"]
    lines = [
        f"Run of {r['date']} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, "
        f"Envoy {short_version(r['envoy_version'])}, {m['wrk']}.",
        f"Command: `{r['command']}` ({plural(r['rounds'], 'round', 'rounds')}; throughput: {r['duration']} s of "
        f"`wrk -t1 -c{r['connections']}`, latency: {r['latency_duration']} s of `wrk -t1 -c1`, after a discarded "
        f"warm-up of {r['warmup']} s per scenario and listener; Envoy `--concurrency 1` on core {cores['envoy']}, wrk "
        f"on core {cores['load']}; Envoy log level `{r['log_level']}`; {r['seconds']:,.0f} s in all with the "
        "memory run).",
        f"Load on Envoy's core from other processes during the runs (median): "
        f"{100 * r['other_load_median']:.0f}%. Load average at the start: "
        + ", ".join(f"{x:.2f}" for x in m["load_average_at_start"])
        + ".",
        "",
        provenance_line(p),
    ]
    spreads = {}
    for key, v in s.items():
        for name, what in (("ratio_filter_floor_range", "Wasm/Wasm floor"),
                           ("ratio_native_nofilter_range", "native/none")):  # fmt: skip
            if v["throughput"].get(name):
                spreads[(key, what)] = v["throughput"][name]
    widest = max(spreads.items(), key=lambda kv: kv[1][1] - kv[1][0], default=None)
    causes = []
    if r["other_load_median"] > 0.05:
        causes.append(f"other processes took {100 * r['other_load_median']:.0f}% of Envoy's core")
    if widest and widest[1][1] - widest[1][0] > 0.25:
        causes.append(
            f"the {widest[0][1]} ratio of scenario {widest[0][0]} spread from {widest[1][0]:.2f} to "
            f"{widest[1][1]:.2f} across rounds"
        )
    if causes:
        lines.append(
            f"\n**A noisy run**: {'; '.join(causes)}. The medians are indicative; the Envoy CPU time per request "
            "is steadier, and the instruction counts under *Where the time goes* do not move with the load. "
            "Re-run `make bench` on a quiet machine before quoting these numbers."
        )
    if not any(NATIVE in sc["throughput"] for sc in s.values()):
        lines.append(
            "\nThis output was measured before the benchmark had native listeners: the native columns are empty "
            "until `make bench` runs again."
        )
    lines += [
        "",
        f"![throughput and added latency per scenario]({rel(RESULTS_SVG)})",
        "",
        "**Throughput at saturation** (requests/s, medians; Envoy's mcp filter runs the session hot path only):",
        "",
        f"| scenario | {' | '.join(LABELS[x] for x in LISTENERS)} "
        f"| Envoy CPU µs/request: {' / '.join(SHORT[x] for x in LISTENERS)} |",
        "|---|" + "--:|" * (len(LISTENERS) + 1),
    ]
    for key, sc in s.items():
        t = sc["throughput"]
        cells = " | ".join(fmt(field(t, x, "rps"), ",.0f") for x in LISTENERS)
        cpu = " / ".join(fmt(field(t, x, "cpu_us_per_request"), ".1f") for x in LISTENERS)
        lines.append(f"| {key}. {sc['title']} | {cells} | {cpu} |")

    def ranged(t: dict[str, Any], name: str) -> str:
        rng = t.get(f"{name}_range") or []
        return fmt(t.get(name), ".3f", bold=True) + (f" ({rng[0]:.2f}–{rng[1]:.2f})" if rng else "")

    lines += [
        "",
        "**Throughput ratios** (medians of per-round pairs; in bold the ratio each build's targets are set on, "
        "with its range across rounds):",
        "",
        "| scenario | Wasm floor / none | Wasm / none | Wasm / Wasm floor | native floor / none | native / none "
        "| native / native floor | native / Wasm | mcp filter / none | native / mcp filter |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, sc in s.items():
        t = sc["throughput"]
        lines.append(
            f"| {key}. {sc['title']} | {fmt(t.get('ratio_floor_nofilter'), '.3f')} "
            f"| {fmt(t.get('ratio_filter_nofilter'), '.3f')} | {ranged(t, 'ratio_filter_floor')} "
            f"| {fmt(t.get('ratio_native_floor_nofilter'), '.3f')} | {ranged(t, 'ratio_native_nofilter')} "
            f"| {fmt(t.get('ratio_native_floor'), '.3f')} | {fmt(t.get('ratio_native_filter'), '.3f')} "
            f"| {fmt(t.get('ratio_mcp_nofilter'), '.3f')} | {fmt(t.get('ratio_native_mcp'), '.3f', bold=True)} |"
        )
    lines += [
        "",
        "**Latency at concurrency 1** (µs, medians; added = listener − other, per-round pairs):",
        "",
        f"| scenario | p50: {' / '.join(SHORT[x] for x in LISTENERS)} | p99: {' / '.join(SHORT[x] for x in LISTENERS)} "
        "| Wasm floor adds | Wasm adds vs none | Wasm adds vs Wasm floor | native floor adds | native adds vs none "
        "| native adds vs native floor |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, sc in s.items():
        t = sc["latency"]
        lines.append(
            f"| {key}. {sc['title']} "
            f"| {' / '.join(fmt(field(t, x, 'p50_us'), '.0f') for x in LISTENERS)} "
            f"| {' / '.join(fmt(field(t, x, 'p99_us'), '.0f') for x in LISTENERS)} "
            f"| {fmt(t.get('floor_added_p50_us'), '+.1f')} | {fmt(t.get('added_p50_us_vs_nofilter'), '+.1f')} "
            f"| {fmt(t.get('added_p50_us_vs_floor'), '+.1f', bold=True)} "
            f"| {fmt(t.get('native_floor_added_p50_us'), '+.1f')} "
            f"| {fmt(t.get('native_added_p50_us_vs_nofilter'), '+.1f', bold=True)} "
            f"| {fmt(t.get('native_added_p50_us_vs_floor'), '+.1f')} |"
        )
    for build, key in (("Wasm", "at_cap"), ("native", "at_cap_native")):
        cap = r.get(key)
        if cap:
            lines += [
                "",
                f"**Initialize at the cap, {build}** (the default configuration once {cap['live']:,} sessions = "
                f"`max_sessions` are live; {cap['requests']} initializes one at a time, every answer a 503): p50 "
                f"{cap['p50_us']:,.0f} µs, {cap['envoy_cpu_us_per_request']:,.0f} µs of Envoy CPU per request, so at "
                f"most {cap['max_rps']:,.0f} refused initializes per second per worker.",
            ]
    if r["problems"]:
        lines += ["", "**Harness checks that failed** (the numbers above are suspect):", ""]
        lines += [f"- {x}" for x in r["problems"]]
    return "\n".join(lines)


def render_memory(r: dict[str, Any]) -> str:
    """The heap per session of each build, side by side (a build not measured shows dashes)."""
    builds = [(name, r.get(key)) for name, key in (("Wasm", "memory"), ("native", "memory_native"))]
    model = next(mem for _, mem in builds if mem)
    live_cfg, churn_cfg = model["configs"]["live"], model["configs"]["churn"]
    lines = [
        "**Memory** (Envoy heap: admin `/memory`, `allocated`, against the heap before the first session; for each "
        f"build a separate Envoy run with {model['workers']} workers; the live set on a store with `max_sessions` "
        f"{live_cfg['max_sessions']:,} and idle timeout {live_cfg['idle_timeout_seconds']} s, which outlasts its fill "
        f"and then ends every session; the churn on a second store with idle timeout "
        f"{churn_cfg['idle_timeout_seconds']} s):",
        "",
        "| measurement | Wasm: heap (bytes; below it, over the first row) | Wasm: per session "
        "| native: heap (bytes; below it, over the first row) | native: per session |",
        "|---|--:|--:|--:|--:|",
    ]

    def row(label: str, cell: Callable[[dict[str, Any]], tuple[str, str]]) -> None:
        cells = []
        for _, mem in builds:
            cells += list(cell(mem)) if mem else [DASH, DASH]
        lines.append(f"| {label} | {' | '.join(cells)} |")

    row("before the first session", lambda m: (f"{m['baseline_heap']:,}", ""))
    for i, point in enumerate(model["live"]):
        row(
            f"{point['sessions']:,} live sessions",
            lambda m: (
                f"{m['live'][i]['heap'] - m['baseline_heap']:+,}",
                f"**{m['live'][i]['bytes_per_session']:.0f} B** per live session"
                + ("" if m["live"][i]["sessions"] == point["sessions"] else f" ({m['live'][i]['sessions']:,} live)"),
            ),
        )
    if "marginal_bytes_per_session" in model:
        row("marginal, between the first and the last",
            lambda m: ("", f"{m['marginal_bytes_per_session']:.0f} B per live session"))  # fmt: skip
    row(
        f"every one of the {model['live_expired']['peak']:,} expired",
        lambda m: (
            f"{m['live_expired']['heap'] - m['baseline_heap']:+,}",
            f"**{m['live_expired']['left_per_peak_session']:.0f} B** left per peak session (found "
            f"{m['live_expired']['wait_seconds']:.0f} s after the last reading)",
        ),
    )
    for i, point in enumerate(model["churn"]):
        row(
            f"churn: {point['sent']:,} initializes sent",
            lambda m: (
                f"{m['churn'][i]['heap'] - m['baseline_heap']:+,}",
                f"{m['churn'][i]['live']:,} churn sessions live, {m['churn'][i]['rate']:,.0f}/s",
            ),
        )
    row(
        "after the churn, everything expired",
        lambda m: (
            f"{m['after_churn']['heap'] - m['baseline_heap']:+,}",
            f"**{m['after_churn']['left_per_peak_session']:.0f} B** left per peak session (peaks: "
            f"{m['live_expired']['peak']:,} live-set and {m['churn_peak']:,} churn sessions live at once); the churn "
            f"alone: {m['after_churn']['churn_left_per_peak_session']:.0f} B per churn peak session",
        ),
    )
    for name, mem in builds:
        if not mem:
            lines += ["", f"{name}: not measured in this output (it predates the native memory run)."]
            continue
        lines += [
            "",
            f"{name}: the churn's peak is the highest `live` gauge of {mem['churn_samples']:,} readings taken while "
            f"it ran ({mem['churn_samples'] / mem['churn_seconds']:.1f} a second, and one at every checkpoint), so the "
            "true peak may be higher and the figure per peak session lower. The churn sent "
            f"{mem['churn'][-1]['sent']:,} initializes ({mem['churn_rate']:,.0f}/s over {mem['churn_seconds']:.0f} s"
            f"{asked(mem)}); the heap moved {mem['churn_growth']:.3f}× from its first checkpoint to its last.",
        ]
    return "\n".join(lines)


def asked(mem: dict[str, Any]) -> str:
    """The churn's rate as asked of h2load, when it was held to one (its live set follows it)."""
    rate = mem.get("churn_rate_asked", 0)
    return f", at most {rate:,}/s asked: a steady live set" if rate else ""


def render_targets(r: dict[str, Any]) -> str:
    builds = {"wasm": "Wasm (issue 4: against its floor)", "native": "native (issue 17: against no filter)"}
    lines = ["| build | target | measured | met |", "|---|---|--:|:-:|"]
    for v in r["verdicts"]:
        build = builds[v.get("build", "wasm")]
        lines.append(f"| {build} | {v['target']} | {v['measured']} | {'yes' if v['met'] else '**no**'} |")
    if not any(v.get("build") == "native" for v in r["verdicts"]):
        lines += ["", "No verdict on the native build: this output predates its listeners."]
    return "\n".join(lines)


def render_svg(r: dict[str, Any]) -> str:
    """Two panels: throughput per listener, and the p50 latency each filter adds."""
    s = r["summary"]
    keys = list(s)
    titles = {sc["key"]: sc["short"] for sc in r["scenarios"]}
    hot = {sc["key"] for sc in r["scenarios"] if sc["hot_path"]}
    target_added = r["targets"]["hot_added_us"]
    colours = {
        NOFILTER: "#9e9e9e",
        EMPTY: "#90caf9",
        FILTER: "#1565c0",
        EMPTY_NATIVE: "#a5d6a7",
        NATIVE: "#2e7d32",
        MCP: "#ffb74d",
    }
    # The listeners this output measured, in the tables' order (an older output has three).
    present = [x for x in LISTENERS if any(x in s[k]["throughput"] for k in keys)]
    width, panel_h, left, top = 900, 300, 70, 40
    plot_w = width - left - 20
    group_w = plot_w / len(keys)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * panel_h + 130}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]

    def text(x: float, y: float, body: str, anchor: str = "middle", size: int = 12, weight: str = "normal") -> None:
        body = body.replace("&", "&amp;").replace("<", "&lt;")
        out.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" font-weight="{weight}">{body}</text>'
        )

    def axis(y0: float, h: float, vmax: float, ticks: int, unit: str) -> Callable[[float], float]:
        # A round step (1, 2, 2.5 or 5 times a power of ten) and an axis that ends on one.
        raw = vmax / ticks
        power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
        step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
        ticks = math.ceil(vmax / step)
        vmax = ticks * step
        scale = lambda v: y0 + h - (v / vmax) * h  # noqa: E731
        for i in range(ticks + 1):
            v = step * i
            y = scale(v)
            out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
            text(left - 6, y + 4, f"{v:,.0f}{unit}", anchor="end", size=11)
        out.append(f'<line x1="{left}" x2="{left}" y1="{y0}" y2="{y0 + h}" stroke="#616161"/>')
        return scale

    m = r["machine"]
    short = ", a SHORT run" if r["provenance"]["short"] else ""
    text(width / 2, 14, f"{r['date']}, {m['nproc']} cores ({m['cpu']}), Envoy "
         f"{short_version(r['envoy_version'])} --concurrency 1; median of {r['rounds']} rounds; commit "
         f"{r['provenance']['commit'][:12]}{short}", size=11)  # fmt: skip
    # Panel 1: throughput.
    y0, h = top + 10, panel_h - 60
    text(width / 2, y0 - 16, "Throughput at saturation (requests/s, median)", size=14, weight="bold")
    vmax = max(s[k]["throughput"][lst]["rps"] for k in keys for lst in present if lst in s[k]["throughput"]) * 1.1
    scale = axis(y0, h, vmax, 5, "")
    bar_w = group_w / (len(present) + 1.5)
    # Above the Wasm filter's bar its ratio to its floor, above the native module's its ratio to no
    # filter: what each build's targets are set on.
    labels = {FILTER: "ratio_filter_floor", NATIVE: "ratio_native_nofilter"}
    for i, k in enumerate(keys):
        x0 = left + i * group_w + group_w / 2 - len(present) / 2 * bar_w
        for j, lst in enumerate(present):
            if lst not in s[k]["throughput"]:
                continue
            v = s[k]["throughput"][lst]["rps"]
            y = scale(v)
            out.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{y0 + h - y:.1f}" '
                f'fill="{colours[lst]}"/>'
            )
            if lst in labels and labels[lst] in s[k]["throughput"]:
                ratio = s[k]["throughput"][labels[lst]]
                text(x0 + (j + 0.5) * bar_w, y - 5, f"{ratio:.2f}", size=10)
        text(left + i * group_w + group_w / 2, y0 + h + 16, f"{k}. {titles[k]}", size=11)
    lx, ly = left + 10, y0 + h + 28
    for lst in present:
        if lx > width - 180:
            lx, ly = left + 10, ly + 16
        out.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colours[lst]}"/>')
        text(lx + 16, ly + 10, LABELS[lst], anchor="start", size=11)
        lx += 190
    text(lx + 10, ly + 10, "(labels: Wasm / Wasm floor, native / no filter)", anchor="start", size=11)

    # Panel 2: added p50 latency.
    y0 = top + panel_h + 60
    text(width / 2, y0 - 16, "Added p50 latency at concurrency 1 (µs over no filter, median of pairs)", size=14,
         weight="bold")  # fmt: skip
    names = {
        EMPTY: "floor_added_p50_us",
        FILTER: "added_p50_us_vs_nofilter",
        EMPTY_NATIVE: "native_floor_added_p50_us",
        NATIVE: "native_added_p50_us_vs_nofilter",
    }
    shown = [x for x in names if x in present]
    added = {k: [s[k]["latency"].get(names[x], 0.0) for x in shown] for k in keys}
    vmax = max(max(max(v) for v in added.values()) * 1.1, 10)
    scale = axis(y0, h, vmax, 5, "")
    for i, k in enumerate(keys):
        x0 = left + i * group_w + group_w / 2 - len(shown) / 2 * bar_w
        for j, (lst, v) in enumerate(zip(shown, added[k])):
            v = max(v, 0)
            y = scale(v)
            out.append(
                f'<rect x="{x0 + j * bar_w:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{y0 + h - y:.1f}" '
                f'fill="{colours[lst]}"/>'
            )
            text(x0 + j * bar_w + bar_w / 2, y - 5, f"{added[k][j]:.0f}", size=11)
        if k in hot:
            y = scale(min(added[k][0] + target_added, vmax))
            out.append(
                f'<line x1="{x0 - 4:.1f}" x2="{x0 + 2 * bar_w + 2:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                'stroke="#c62828" stroke-dasharray="4 3"/>'
            )
        text(left + i * group_w + group_w / 2, y0 + h + 16, f"{k}. {titles[k]}", size=11)
    lx = left + 10
    for lst in shown:
        out.append(f'<rect x="{lx}" y="{y0 + h + 28}" width="12" height="12" fill="{colours[lst]}"/>')
        text(lx + 16, y0 + h + 38, LABELS[lst], anchor="start", size=11)
        lx += 170 if len(shown) <= 2 else 190
    ly = y0 + h + 34
    if len(shown) > 2:  # the target's legend on a line of its own
        lx, ly = left + 10, ly + 16
    out.append(f'<line x1="{lx}" x2="{lx + 20}" y1="{ly}" y2="{ly}" stroke="#c62828" stroke-dasharray="4 3"/>')
    text(lx + 26, ly + 4, f"Wasm target: Wasm floor + {target_added:g} µs (hot path)", anchor="start", size=11)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- bench/profile.json


def profile_total(per: dict[str, dict[str, float]], label: str) -> float:
    return sum(per[label].values())


def hostcall_cost(prof: dict[str, Any], name: str) -> float:
    per = prof["per_request"]
    return (profile_total(per, f"probe.{name}") - profile_total(per, "probe.probe_none")) / prof["calls"]


def render_profile(prof: dict[str, Any]) -> str:
    per, n = prof["per_request"], prof["requests"]
    total = lambda label: profile_total(per, label)  # noqa: E731
    lines = [
        f"Measured {prof['date']} with `{prof['provenance']['command']}`: Envoy {short_version(prof['envoy_version'])} "
        f"under `valgrind --tool=callgrind`, {n} requests per listener on one keep-alive connection after "
        f"{prof['warmup']} of warm-up, the {prof.get('pass_taken', 'median')} of "
        f"{plural(prof['passes'], 'pass', 'interleaved passes')} (what else lands on the worker, a timer, a "
        "garbage collection, a store's sweep, only adds instructions) "
        f"({prof['seconds']:,.0f} s in all): instructions executed by Envoy's worker thread per request (kernel time "
        "is not counted). Envoy ran at log level `warning` here, so scenario 3 has no log line in it; scenario 3 "
        "ran last, and its figure may include its store's sweep, which valgrind's slowdown makes weigh more than "
        "it does in real time.",
        "",
        provenance_line(prof["provenance"]),
        "",
        "| scenario | no filter | Wasm floor | Wasm filter | Wasm − Wasm floor | of which envoy / v8 code / libc "
        "| native floor | native module | native − native floor | of which envoy / module / unnamed / libc "
        "| native − no filter |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, title in prof["scenarios"]:
        a, b, c, d, e = (f"s{key}.{x}" for x in (NOFILTER, EMPTY, FILTER, EMPTY_NATIVE, NATIVE))
        diff = {p: per[c].get(p, 0) - per[b].get(p, 0) for p in PARTS}
        row = (
            f"| {key}. {title} | {total(a):,.0f} | {total(b):,.0f} | {total(c):,.0f} "
            f"| **{total(c) - total(b):+,.0f}** | {' / '.join(f'{diff[p]:+,.0f}' for p in PARTS)} "
        )
        if d in per and e in per:
            ndiff = {p: per[e].get(p, 0) - per[d].get(p, 0) for p in NATIVE_PARTS}
            row += (
                f"| {total(d):,.0f} | {total(e):,.0f} | **{total(e) - total(d):+,.0f}** "
                f"| {' / '.join(f'{ndiff[p]:+,.0f}' for p in NATIVE_PARTS)} | {total(e) - total(a):+,.0f} |"
            )
        else:
            row += "| " + " | ".join([DASH] * 5) + " |"
        lines.append(row)
    if not any(f"s{key}.{NATIVE}" in per for key, _ in prof["scenarios"]):
        lines += ["", "This profile predates the native listeners: their columns are empty until it runs again."]
    lines += [
        "",
        f"One hostcall, in instructions (bench/hostcall-probe making {prof['calls']} per request, minus the probe "
        f"making none; the probe making none costs {total('probe.probe_none') - total('s1.empty'):+,.0f} against the "
        "empty filter):",
        "",
        "| hostcall | instructions per call | of which envoy / v8 code / libc |",
        "|---|--:|--:|",
    ]
    for name, description in prof["hostcalls"].items():
        label, none = f"probe.{name}", "probe.probe_none"
        diff = {p: (per[label].get(p, 0) - per[none].get(p, 0)) / prof["calls"] for p in PARTS}
        lines.append(
            f"| {description} | {hostcall_cost(prof, name):,.0f} | {' / '.join(f'{diff[p]:,.0f}' for p in PARTS)} |"
        )
    return "\n".join(lines)


def render_profile_reading(prof: dict[str, Any]) -> str:
    """The figures the prose under the profile argues from, each computed from the profile."""
    per = prof["per_request"]
    total = lambda label: profile_total(per, label)  # noqa: E731
    cost = lambda name: hostcall_cost(prof, name)  # noqa: E731
    data = {name: cost(name) for name in ("header", "shared_get")}
    empty = {name: cost(name) for name in ("clock", "metric", "missing_header", "set_header")}
    floor_hot, filter_hot = total("s1.empty"), total("s1.filter")
    floor_init, filter_init = total("s3.empty"), total("s3.filter")
    hot_target, init_target = prof["targets"]["hot_ratio"], prof["targets"]["init_ratio"]
    hot_budget = floor_hot * (1 / hot_target - 1)
    init_budget = floor_init * (1 / init_target - 1)
    native = []
    if "s1.native" in per and "s3.native" in per:
        targets = prof["targets"]
        n_hot, n_init = targets.get("native_hot_ratio", 0.95), targets.get("native_init_ratio", 0.85)
        for key, what, target in (("1", "Hot path", n_hot), ("3", "Initialize", n_init)):
            none, nfloor, module = total(f"s{key}.nofilter"), total(f"s{key}.empty_native"), total(f"s{key}.native")
            native.append(
                f"- Native, {what.lower()} (scenario {key}): no filter {none:,.0f}, the native floor {nfloor:,.0f} "
                f"({nfloor - none:+,.0f}), the session module {module:,.0f} ({module - nfloor:+,.0f} over its floor): "
                f"{none / module:.3f}× no filter by instruction count. At {target:.2f}× no filter a filter may add "
                f"{none * (1 / target - 1):,.0f} over no filter."
                + (
                    f" Envoy's mcp filter here: {total(f's{key}.mcp'):,.0f} ({total(f's{key}.mcp') - none:+,.0f} over "
                    "no filter)."
                    if f"s{key}.mcp" in per
                    else ""
                )
            )
            native += native_callbacks(prof, key, none, nfloor, module, target)
            native += session_floor(per, key, none, module, target)
    return "\n".join(
        [
            f"- A hostcall that returns data (a header that is there, a shared-data value) costs "
            f"{min(data.values()):,.0f} to {max(data.values()):,.0f} instructions; one that returns nothing (the "
            f"clock, a counter, an absent header, setting a header) {min(empty.values()):,.0f} to "
            f"{max(empty.values()):,.0f}.",
            f"- All request headers in one raw hostcall, scanned in place: {cost('header_scan'):,.0f}; three single "
            f"header reads: {3 * cost('header'):,.0f}; the SDK's map of all headers: {cost('header_map'):,.0f}.",
            f"- Hot path (scenario 1): the floor executes {floor_hot:,.0f} instructions per request, the session "
            f"filter {filter_hot:,.0f} ({filter_hot - floor_hot:+,.0f}): {floor_hot / filter_hot:.3f}× the floor by "
            f"instruction count. At {hot_target:.2f}× the floor a filter may add {hot_budget:,.0f}; the header scan "
            f"({cost('header_scan'):,.0f}) and one clock read ({cost('clock'):,.0f}) take "
            f"{(cost('header_scan') + cost('clock')) / hot_budget:.0%} of that.",
            f"- Initialize (scenario 3): the floor {floor_init:,.0f}, the session filter {filter_init:,.0f} "
            f"({filter_init - floor_init:+,.0f}): {floor_init / filter_init:.3f}× by instruction count. At "
            f"{init_target:.2f}× the floor a filter may add {init_budget:,.0f}.",
        ]
        + native
    )


def session_floor(per: dict[str, Any], key: str, none: float, module: float, target: float) -> list[str]:
    """Where the session floor (bench/empty-native with its `session-floor` feature: the least any
    session module does per request) puts the target, when the profile measured it."""
    label = f"s{key}.session_floor"
    if label not in per:
        return []
    floor = profile_total(per, label)
    left = none / target - floor
    return [
        f"  - The session floor (the empty module that also reads the header map, finds four headers in it, "
        f"looks the ID up in a table under a lock and reads the clock; no stream state, no decoding, no checks): "
        f"{floor:,.0f}, {none / floor:.3f}× no filter. Under {target:.2f}× no filter that leaves {left:,.0f} "
        f"instructions for all it leaves out; this module spends {module - floor:,.0f} more than the floor."
    ]


def native_callbacks(prof: dict[str, Any], key: str, none: float, nfloor: float, module: float, target: float) -> list[str]:
    """What the native module's calls into Envoy cost in scenario `key` (inclusive, per request),
    and on the hot path what a module that only read the request headers would leave of the
    target's budget."""
    calls = prof.get("callbacks", {}).get(f"s{key}.native")
    if not calls:
        return []
    spent = sum(c["instructions"] for c in calls.values())
    listed = ", ".join(
        f"`{name}` {c['instructions']:,.0f} ({c['calls']:.0f}×)"
        for name, c in sorted(calls.items(), key=lambda kv: -kv[1]["instructions"])
    )
    lines = [
        f"  - Envoy's callbacks the module made (inclusive, per request): {listed}; {spent:,.0f} in all, "
        f"{spent / (module - nfloor):.0%} of what the module adds."
    ]
    headers = sum(calls.get(name, {}).get("instructions", 0) for name in ("http_get_headers_size", "http_get_headers"))
    if key == "1" and headers:
        bound = nfloor + headers
        left = none / target - bound
        lines.append(
            f"  - The native floor plus one read of the request headers (those two callbacks, nothing else): "
            f"{bound:,.0f}, {none / bound:.3f}× no filter. Under {target:.2f}× no filter that leaves {left:,.0f} "
            f"instructions for everything else a session module does per request (its hooks, its stream's "
            f"allocation, the scan, the session lookup); this one spends {module - bound:,.0f} there."
        )
    return lines


# --------------------------------------------------------------------------- bench/cluster.json


LISTENER_LABEL = {"direct": "direct_response", "mcp": "demo MCP server"}


def fmt_range(r: list[float]) -> str:
    return f"{r[0]:.2f}–{r[1]:.2f}"


def cluster_heading(build: str) -> str:
    return f"### {BUILD_NAME[build].capitalize()} build"


def render_cluster(results: dict[str, Any]) -> str:
    """One build's cluster section (bench/cluster.py's output), under a heading naming the build."""
    m = results["machine"]
    cores = results["cores"]
    hosts = results["etcd_hosts"]
    build = results.get("artifact", "wasm")
    unit = "VM" if build == "wasm" else "worker"  # what keeps a store's own leases, count and Watch
    lines = [
        cluster_heading(build),
        "",
        f"Run of {results['date']} on {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, "
        f"Envoy {short_version(results['envoy_version'])}, etcd {results['etcd_version']} ({len(hosts)} members on "
        f"{', '.join(hosts)}, client port {results['etcd_ports'][0]}, peer port {results['etcd_ports'][1]}, one "
        f"machine, data on the local disk), {m['wrk']}. Command: `{results['command']}` ({results['seconds']:.0f} s). "
        "Load average at the start: " + ", ".join(f"{x:.2f}" for x in m["load_average_at_start"]) + ".",
        "",
        provenance_line(results["provenance"]),
    ]
    hot = results.get("hot", {})
    target = results["targets"]["hot_ratio"]
    if hot:
        lines += [
            "",
            "**1. Hot path, etcd store against local store** (`tools/call` on one initialized session; Envoy A with "
            "`store.etcd`, Envoy L the same bootstrap without `store`, and on the direct_response route a control, "
            f"L2, a second Envoy like L; all `--concurrency 1` on core {cores['envoy']}, wrk on core {cores['load']}; "
            "one run of each per round, the order rotating; medians, ratios per round):",
            "",
            "| route | rounds × s | etcd store (req/s) | local store (req/s) | etcd / local (range) "
            "| control: local L2 / local L (range) | Envoy CPU µs/request: etcd / local (etcd − local, per round) "
            "| etcd runs: requests / cache hits / misses / store calls |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for listener, h in hot.items():
            st = h["etcd_runs_stats"]
            control = (
                f"{h['control_ratio']:.3f} ({fmt_range(h['control_ratio_range'])})" if h.get("control_ratio") else "–"
            )
            lines.append(
                f"| {LISTENER_LABEL[listener]} (wrk -c{h['connections']}) | {h['rounds']} × {h['duration']} "
                f"| {h['etcd_rps']:,.0f} | {h['local_rps']:,.0f} | **{h['ratio']:.3f}** ({fmt_range(h['ratio_range'])}) "
                f"| {control} | {h['etcd_cpu_us']:.1f} / {h['local_cpu_us']:.1f} ({h['added_cpu_us']:+.1f}) "
                f"| {h['etcd_runs_requests']:,} / {st['cache.hits']:,} / {st['cache.misses']} / {st['store.calls']} |"
            )
        timer = results.get("timer")
        if timer:
            lines += [
                "",
                f"`store.calls` of A while idle ({timer['seconds']:g} s before the runs): {timer['stats']['store.calls']}"
                + (
                    f": no timer call fell in that window (each {unit}'s timer counts the sessions and grants leases "
                    "ahead, and those calls count too), so the runs' store calls are the requests' own, give or "
                    "take a timer call."
                    if timer["stats"]["store.calls"] == 0
                    else f" ({timer['calls_per_s']:.2f}/s): a background the runs' store calls include."
                ),
            ]
        d = hot.get("direct")
        if d:
            verdict = "met" if d["ratio"] >= target else "**not met**"
            ce, cl = d["cpu_us_range"]["etcd"], d["cpu_us_range"]["local"]
            lines += [
                "",
                f"Target (within {100 * (1 - target):.0f}% of the local store on the hot path): "
                f"{d['ratio']:.3f}× on the direct_response route, {verdict}"
                + (
                    f" (two identical local-store Envoys measured {d['control_ratio']:.3f}× in the same rounds)"
                    if d.get("control_ratio")
                    else ""
                )
                + f". Other processes on core {cores['envoy']} "
                f"during the runs: median {100 * d['other_load']:.0f}%, at most {100 * d['other_load_max']:.0f}%; "
                "time stolen by the hypervisor: median "
                f"{100 * d['steal']:.1f}%, at most {100 * d['steal_max']:.1f}%. Envoy CPU µs per request across the "
                f"rounds: etcd {ce[0]:.1f}–{ce[1]:.1f}, local {cl[0]:.1f}–{cl[1]:.1f}.",
            ]
            best = d.get("best", {})
            if "etcd" in best and "local" in best:
                b_e, b_l = best["etcd"], best["local"]
                lines += [
                    "",
                    f"Best rounds (the least disturbed: noise only ever slows a run): etcd {b_e['rps']:,.0f} req/s "
                    f"and {b_e['cpu_us']:.1f} µs of Envoy CPU per request, local {b_l['rps']:,.0f} req/s and "
                    f"{b_l['cpu_us']:.1f} µs"
                    + (
                        f", control {best['control']['rps']:,.0f} req/s and {best['control']['cpu_us']:.1f} µs"
                        if "control" in best
                        else ""
                    )
                    + f": etcd / local **{b_e['rps'] / b_l['rps']:.3f}** by throughput, "
                    f"{b_l['cpu_us'] / b_e['cpu_us']:.3f} by CPU time per request.",
                ]
            spread = d["ratio_range"][1] - d["ratio_range"][0]
            if spread > 0.15:
                lines += [
                    "",
                    f"**A noisy run**: the etcd/local ratio spread from {d['ratio_range'][0]:.2f} to "
                    f"{d['ratio_range'][1]:.2f} across rounds"
                    + (
                        f", the control's from {d['control_ratio_range'][0]:.2f} to {d['control_ratio_range'][1]:.2f}"
                        if d.get("control_ratio_range")
                        else ""
                    )
                    + ", and each Envoy's CPU time per request moved from round to round with the same work per "
                    "request. The median ratio is indicative only; re-run on a quiet machine before quoting it.",
                ]
            if d["etcd_runs_stats"]["cache.misses"] == 0 and d["etcd_runs_stats"]["store.calls"] == 0:
                lines += [
                    "",
                    f"The etcd rounds made no etcd call: {d['etcd_runs_stats']['cache.hits']:,} cache hits, no miss, "
                    "no store call (A's `mcp_session.cache.*` and `store.calls` around each run).",
                ]
    miss = results.get("miss")
    if miss:
        lines += [
            "",
            "**2. Cache misses** (sessions opened through Envoy B; then one `tools/call` per session on A, one at a "
            "time on one keep-alive connection: each a miss, one linearizable `Range`; then the same requests again: "
            "hits; µs as the client measured it):",
            "",
            "| route | sessions | miss p50 / p99 | hit p50 / p99 | a miss adds (p50 / p99) "
            "| A's stats, miss pass: misses / hits / store calls |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for listener, x in miss.items():
            st = x["miss"]["stats"]
            lines.append(
                f"| {LISTENER_LABEL[listener]} | {x['n']} | {x['miss']['p50_us']:,.0f} / {x['miss']['p99_us']:,.0f} "
                f"| {x['hit']['p50_us']:,.0f} / {x['hit']['p99_us']:,.0f} "
                f"| **{x['added_p50_us']:+,.0f}** / {x['added_p99_us']:+,.0f} "
                f"| {st['cache.misses']} / {st['cache.hits']} / {st['store.calls']} |"
            )
        o = next(iter(miss.values())).get("open")
        if o:
            lines += [
                "",
                f"Opening those sessions on B (`initialize`, then `notifications/initialized`) took "
                f"{o['calls_per_session']:.2f} etcd calls and {o['writes_per_session']:.2f} writes per session "
                "(the create; the initialized flag: the lookup's read, then one compare-and-swap on what it read).",
            ]
    init = results.get("initialize")
    if init:
        lines += [
            "",
            "**3. Initialize** (one at a time on one keep-alive connection, A and L interleaved request by request; "
            "the etcd store writes each session with one `Txn` before the answer is released):",
            "",
            "| route | initializes | etcd store p50 / p99 | local store p50 / p99 | etcd adds (p50 / p99) "
            "| etcd's mean WAL fsync meanwhile (one member) |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for listener, x in init.items():
            lines.append(
                f"| {LISTENER_LABEL[listener]} | {x['n']} each | {x['etcd']['p50_us']:,.0f} / {x['etcd']['p99_us']:,.0f} "
                f"| {x['local']['p50_us']:,.0f} / {x['local']['p99_us']:,.0f} "
                f"| **{x['added_p50_us']:+,.0f}** / {x['added_p99_us']:+,.0f} | {x['wal_fsync_mean_us']:,.0f} µs |"
            )
    w = results.get("writes")
    if w:
        lines += [
            "",
            f"**4. etcd writes under steady use** ({w['sessions']} sessions, each used about once a second for "
            f"{w['seconds']:.0f} s, alternately through Envoys C and D ({w['workers_per_envoy']} workers each), "
            f"`idle_timeout_seconds` {w['idle_timeout_s']}: touch interval {w['touch_interval_s']:g} s; etcd's "
            "`etcd_mvcc_put_total` and `etcd_mvcc_delete_total` before and after):",
            "",
            "| per session per minute | measured |",
            "|---|--:|",
            f"| requests | {w['requests_per_session_per_min']:.1f} |",
            f"| etcd writes (puts + deletes; {w['puts']:.0f} + {w['deletes']:.0f} in all) "
            f"| **{w['writes_per_session_per_min']:.2f}** |",
            f"| expected at most: one touch per touch interval (60 / {w['touch_interval_s']:g}) "
            f"| {w['expected_max_writes_per_session_per_min']:.1f} |",
            f"| etcd revisions (write transactions) | {w['revisions_per_session_per_min']:.2f} |",
            f"| cache misses (reads of etcd) in C and D | {w['misses_per_session_per_min']:.2f} |",
            f"| store calls of C and D (the misses' reads and the touches) | {w['calls_per_session_per_min']:.2f} |",
            "",
            f"Besides the writes: {w['lease_grants_per_min']:.0f} lease grants a minute for the whole run (C and D, "
            f"a lease per window per {'Wasm VM' if build == 'wasm' else 'worker'}, whatever the number of sessions).",
        ]
    by = results.get("bytes")
    if by:
        kb, vb = by["key_bytes"], by["value_bytes"]
        lines += [
            "",
            f"**5. Bytes per session in etcd** ({by['sessions']:,} sessions created by `initialize` on A; "
            f"{by['keys_total']:,} keys under the prefix `{by['prefix']}` afterwards):",
            "",
            "| measurement | bytes |",
            "|---|--:|",
            f"| key, as stored (`<prefix><32 hex>`; this prefix is {len(by['prefix'])} bytes) | {kb['median']:.0f}"
            + (f" ({kb['min']}–{kb['max']})" if kb["min"] != kb["max"] else "")
            + " |",
            f"| value, as stored (the record, secret zeroed) | {vb['median']:.0f}"
            + (f" ({vb['min']}–{vb['max']})" if vb["min"] != vb["max"] else "")
            + " |",
            f"| etcd backend in use (`etcd_mvcc_db_total_size_in_use_in_bytes`), growth per session "
            f"| **{by['in_use_per_session']:,.0f}** |",
            f"| etcd backend file (`etcd_mvcc_db_total_size_in_bytes`), growth per session | {by['db_per_session']:,.0f} |",
        ]
        if w and w.get("revisions"):
            lines.append(
                f"| backend in use per touch, until compaction (part 4: growth / revisions) "
                f"| {w['in_use_growth_per_write']:,.0f} |"
            )
    obs = results.get("observations", [])
    if obs:
        lines += ["", "**Observations** (counts that differ from what the design says):", ""]
        lines += [f"- {o}" for o in obs]
    if results.get("problems"):
        lines += ["", "**Harness checks that failed** (the numbers above are suspect):", ""]
        lines += [f"- {p}" for p in results["problems"]]
    return "\n".join(lines)


def render_cluster_of(build: str) -> Callable[[dict[str, Any] | None], str]:
    """The renderer of the block of `build`'s cluster output: its section, or that it is missing."""

    def renderer(results: dict[str, Any] | None) -> str:
        path = rel(OUTPUTS[CLUSTER_OUTPUT[build]])
        if results is None:
            return (
                f"{cluster_heading(build)}\n\nThe {BUILD_NAME[build]} cluster run is missing: there is no `{path}`. "
                "`make bench` writes it (`bash bench/run.sh --cluster-only` makes only the cluster runs), with "
                f"`MCP_ARTIFACT={build} bench/cluster.py`."
            )
        measured = results.get("artifact", "wasm")
        if measured != build:
            raise ValueError(f"{path} holds a run of the {measured} build, not of the {build} one")
        return render_cluster(results)

    return renderer


# --------------------------------------------------------------------------- the blocks


# name -> (the outputs it is written from, the renderer)
BLOCKS: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "runs": (
        ("results", "cluster", "cluster_native", "profile"),
        lambda r, c, cn, p: render_runs({"results": r, "cluster": c, "cluster_native": cn, "profile": p}),
    ),
    "matrix": (("results",), render_matrix),
    "memory": (("results",), render_memory),
    "targets": (("results",), render_targets),
    "profile": (("profile",), render_profile),
    "profile-reading": (("profile",), render_profile_reading),
    "cluster": (("cluster",), render_cluster_of("wasm")),
    "cluster-native": (("cluster_native",), render_cluster_of("native")),
}


def render(name: str, cache: dict[str, dict[str, Any]] | None = None) -> str:
    """The whole block `name`, markers included, from its outputs as stored."""
    cache = {} if cache is None else cache
    sources, renderer = BLOCKS[name]
    for s in sources:
        if s not in cache:
            cache[s] = load(s)
    return block(name, list(sources), renderer(*(cache[s] for s in sources)))


def blocks_in(text: str) -> list[tuple[str, str, str]]:
    """(name, sources as the marker names them, the whole block as it stands) for each block."""
    out = []
    for match in BEGIN.finditer(text):
        name = match.group("name")
        end_mark = f"<!-- /generated:{name} -->"
        end = text.find(end_mark, match.end())
        if end < 0:
            raise ValueError(f"BENCHMARKS.md: the block {name} has no end marker {end_mark}")
        out.append((name, match.group("sources"), text[match.start() : end + len(end_mark)]))
    return out


def regenerate(text: str) -> tuple[str, list[str]]:
    """The text with every block rewritten from its outputs, and the names of those that changed."""
    cache: dict[str, dict[str, Any]] = {}
    changed = []
    for name, sources, current in blocks_in(text):
        if name not in BLOCKS:
            raise ValueError(f"BENCHMARKS.md: unknown generated block {name!r}")
        fresh = render(name, cache)
        want_sources = ", ".join(rel(OUTPUTS[s]) for s in BLOCKS[name][0])
        if sources != want_sources:
            raise ValueError(f"BENCHMARKS.md: block {name} names {sources}, but is written from {want_sources}")
        if fresh != current:
            changed.append(name)
            text = text.replace(current, fresh)
    missing = set(BLOCKS) - {name for name, _, _ in blocks_in(text)}
    if missing:
        raise ValueError(f"BENCHMARKS.md lacks the generated blocks {sorted(missing)}")
    return text, changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything differs")
    args = parser.parse_args()
    text = BENCHMARKS_MD.read_text()
    fresh, changed = regenerate(text)
    svg = render_svg(load("results"))
    svg_changed = not RESULTS_SVG.exists() or RESULTS_SVG.read_text() != svg
    if args.check:
        for name in changed:
            print(f"BENCHMARKS.md: the block {name} differs from what its output gives", file=sys.stderr)
        if svg_changed:
            print(f"{rel(RESULTS_SVG)} differs from what bench/results.json gives", file=sys.stderr)
        return 1 if changed or svg_changed else 0
    if changed:
        BENCHMARKS_MD.write_text(fresh)
    if svg_changed:
        RESULTS_SVG.write_text(svg)
    print(f"report: {len(changed)} block(s) of BENCHMARKS.md rewritten ({', '.join(changed) or 'none'})"
          + (f", {rel(RESULTS_SVG)} rewritten" if svg_changed else ""), file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
