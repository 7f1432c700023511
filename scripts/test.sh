#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need
# (the Claude Code CLI from npm, the Python client packages), makes sure the
# local PostgreSQL is up, then runs formatting and lint checks, every Rust
# test (unit, integration, end to end with the real CLI), and the tests that
# use the official OpenAI Python SDK as the client.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing the Claude Code CLI"
export CCGATE_CLAUDE_BIN="$(scripts/install-claude.sh)"
"$CCGATE_CLAUDE_BIN" --version

echo "== PostgreSQL"
pg_url="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if ! pg_isready -q -d "$pg_url"; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 100); do pg_isready -q -d "$pg_url" && break; sleep 0.2; done
fi
pg_isready -d "$pg_url"
# Databases left by an interrupted earlier run.
psql "$pg_url" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'ccgate_t_%'" |
    while read -r db; do psql "$pg_url" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"; done

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== Rust tests"
cargo build --workspace --bins --locked
cargo test --workspace --locked

echo "== Python client tests (official openai SDK)"
if [ ! -x .venv/bin/pytest ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
CCGATE_BIN_DIR="$PWD/target/debug" .venv/bin/pytest -q tests/python
