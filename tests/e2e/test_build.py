"""`make build` never serves a stale wasm: a change to any source file of a crate in the build
reaches the artifact (issue 16: the Makefile once listed `core/src/*.rs filter/src/*.rs` as the
wasm's inputs, so a change under core/src/etcd/ left the old wasm in place)."""

from __future__ import annotations

import pytest

import os
import subprocess
import time
from pathlib import Path

pytestmark = pytest.mark.wasm_only("tests the Wasm build's staleness rule")

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target/wasm32-wasip1/release/mcp_session_filter.wasm"


def test_a_change_to_a_nested_source_file_rebuilds_the_wasm() -> None:
    nested = sorted((ROOT / "core/src").glob("*/**/*.rs"))
    assert nested, "core has source files in folders"
    source = nested[0]
    before = source.stat()
    wasm = WASM.stat() if WASM.exists() else None
    try:
        # The wasm looks built, and then a nested source file changes.
        now = time.time()
        if wasm is not None:
            os.utime(WASM, (now - 60, now - 60))
        os.utime(source, (now, now))
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        plan = subprocess.run(
            ["make", "-n", "build"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        ).stdout
        assert "cargo build" in plan, plan
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
        if wasm is not None:
            os.utime(WASM, ns=(wasm.st_atime_ns, wasm.st_mtime_ns))
