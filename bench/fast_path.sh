#!/usr/bin/env bash
# The fast-path figures of docs/BENCHMARKS.md in one run, one after the
# other on the same machine: the CLI path (ccgate's warm pool against cold
# `claude -p` runs, bench/warm.py) and the direct path (ccgate's direct
# backend against the simulated upstream alone, benches/direct.rs).
#
#     bench/fast_path.sh            # about 5 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
CCGATE_CLAUDE_BIN="${CCGATE_CLAUDE_BIN:-$(scripts/install-claude.sh)}"
export CCGATE_CLAUDE_BIN
echo "# CLI path: warm workers against cold claude -p"
python3 bench/warm.py
echo
echo "# Direct path: ccgate against the simulated upstream"
cargo bench --bench direct
