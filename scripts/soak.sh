#!/usr/bin/env bash
# `make soak`: continuous MCP session churn through Envoy (2 workers) for SOAK_SECONDS,
# once per build (MCP_ARTIFACT=wasm, then native; the harness renders that build)
# (default 180); passes when every answer was right, the filter's stats add up, and Envoy's
# heap stays flat once the live set is steady. Figures are printed as it runs.
#   SOAK_SECONDS=600 make soak           a longer run
#   SOAK_UPSTREAM=demo make soak         the Python SDK demo server upstream (slower)
# Other knobs: SOAK_CLIENTS (24), SOAK_SAMPLE_SECONDS (5), SOAK_TOLERANCE (0.10).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
exec .venv/bin/python tests/soak/soak.py
