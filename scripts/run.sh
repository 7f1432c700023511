#!/usr/bin/env bash
# Builds and runs the gateway. Installs the Claude Code CLI locally if it is
# not on PATH. With --offline, also starts the simulated Anthropic API and
# points the workers at it, so ccgate can be tried with no account at all.
#
#   scripts/run.sh [--offline] [ccgate serve flags…]
set -euo pipefail
cd "$(dirname "$0")/.."
offline=0
if [ "${1:-}" = "--offline" ]; then offline=1; shift; fi

cargo build --release --workspace --bins
if [ -z "${CCGATE_CLAUDE_BIN:-}" ]; then
    if command -v claude >/dev/null; then
        export CCGATE_CLAUDE_BIN="$(command -v claude)"
    else
        export CCGATE_CLAUDE_BIN="$(scripts/install-claude.sh)"
    fi
fi

if [ "$offline" = 1 ]; then
    sim_out="$(mktemp)"
    target/release/ccgate-sim --listen 127.0.0.1:0 >"$sim_out" &
    sim_pid=$!
    trap 'kill $sim_pid 2>/dev/null || true; rm -f "$sim_out"' EXIT
    until grep -q "listening on" "$sim_out"; do
        kill -0 $sim_pid 2>/dev/null || { echo "the simulated upstream did not start" >&2; exit 1; }
        sleep 0.1
    done
    export ANTHROPIC_BASE_URL="$(grep -o 'http://[^ ]*' "$sim_out")"
    export ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-sk-offline}"
    echo "offline: workers use the simulated Anthropic API at $ANTHROPIC_BASE_URL" >&2
    target/release/ccgate serve "$@"
else
    exec target/release/ccgate serve "$@"
fi
