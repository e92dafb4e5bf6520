"""Where a stored benchmark output comes from: the `provenance` object of bench/*.json.

bench/bench.py, bench/cluster.py (once per build) and bench/profile.py each store one, so that a
figure can be traced to the code and the machine that produced it:

- `commit`: `git rev-parse HEAD` when the run started;
- `clean`: whether the tracked files matched that commit (`git status --porcelain
  --untracked-files=no`), leaving out the files a benchmark run itself rewrites (its stored
  outputs, bench/results.svg and BENCHMARKS.md); `changed` lists the others when not clean;
- `artifacts`: the SHA-256 and size of every Wasm module and native module the run measured
  (the filter's builds, and the benchmark's own filters where used), by path;
- `cpu` (/proc/cpuinfo "model name"), `nproc`, `kernel`, `envoy_version`, `date` (UTC);
- `command` and `settings`: the flags the run was given; `short` is true when any of them
  differs from its default (a quick run, not the published figures), and `deviations` names
  those flags with the value used and the default.

Standard library only: bench/report.py and the documentation test read what this writes.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Files a benchmark run writes itself: their being modified does not make the tree unclean.
OUTPUTS = (
    "bench/results.json",
    "bench/cluster.json",
    "bench/cluster.native.json",
    "bench/profile.json",
    "bench/results.svg",
    "BENCHMARKS.md",
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def collect(
    *,
    command: str,
    settings: Mapping[str, Any],
    defaults: Mapping[str, Any],
    artifacts: list[Path],
    envoy_version: str,
) -> dict[str, Any]:
    """The provenance of a run about to start (or just made): call it before writing the output."""
    changed = []
    for line in git("status", "--porcelain", "--untracked-files=no").splitlines():
        path = line[3:].split(" -> ")[-1]
        if path not in OUTPUTS:
            changed.append(path)
    deviations = {
        key: {"used": value, "default": defaults[key]}
        for key, value in settings.items()
        if key in defaults and value != defaults[key]
    }
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "clean": not changed,
        "changed": changed,
        "artifacts": {
            str(path.relative_to(REPO)): {"sha256": sha256(path), "bytes": path.stat().st_size} for path in artifacts
        },
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "envoy_version": envoy_version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": command,
        "settings": dict(settings),
        "short": bool(deviations),
        "deviations": deviations,
    }
