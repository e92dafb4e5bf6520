"""Instructions per request in each function of V8's generated code.

Reads a callgrind output made with `--dump-instr=yes` (costs per instruction address) and the
map V8 writes with `--perf-basic-prof` (`/tmp/perf-PID.map`: start, size and name of each
piece of generated code, the Wasm module's functions by their names), and prints the
instructions that ran in each named function, divided by the requests, most first.

    python3 jit_cost.py CALLGRIND_OUT PERF_MAP REQUESTS [--wasm-only]
"""

from __future__ import annotations

import bisect
import collections
import re
import sys


def costs_by_address(path: str) -> collections.Counter[int]:
    """Self cost per instruction address (the inclusive cost after a `calls=` line skipped)."""
    cost: collections.Counter[int] = collections.Counter()
    previous = 0
    skip_next = False
    positions = 1
    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith("positions:"):
                positions = len(line.split(":", 1)[1].split())
                continue
            if line.startswith("calls="):
                skip_next = True
                continue
            first = line[:1]
            if not (first.isdigit() or first in "+-*"):
                continue
            fields = line.split()
            at = fields[0]
            # Positions are absolute, relative to the previous one (+n, -n) or the same (*).
            if at == "*":
                address = previous
            elif at[0] in "+-":
                address = previous + int(at, 0)
            else:
                address = int(at, 0)
            previous = address
            if skip_next:
                skip_next = False
                continue
            if len(fields) > positions:
                cost[address] += int(fields[positions])
    return cost


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    callgrind, perf_map, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    wasm_only = "--wasm-only" in sys.argv
    pieces = []
    with open(perf_map) as lines:
        for line in lines:
            start, size, name = line.rstrip("\n").split(" ", 2)
            pieces.append((int(start, 16), int(size, 16), name))
    pieces.sort()
    starts = [piece[0] for piece in pieces]
    by_name: collections.Counter[str] = collections.Counter()
    for address, cost in costs_by_address(callgrind).items():
        at = bisect.bisect_right(starts, address) - 1
        if at >= 0 and address < pieces[at][0] + pieces[at][1]:
            # Without the Rust hash suffix and V8's "-<index>-turbofan".
            name = re.sub(r"17h[0-9a-f]{16}E|-\d+-(turbofan|liftoff)$", "", pieces[at][2])
            by_name[name] += cost
    # A Wasm function is a `JS:` entry that is not a script's (those name their file).
    rows = [(n, c) for n, c in by_name.most_common() if not wasm_only or (n.startswith("JS:") and " /" not in n)]
    print(f"{sum(c for _, c in rows) / requests:,.0f} instructions per request in these functions")
    for name, cost in rows:
        print(f"{cost / requests:9.1f} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
