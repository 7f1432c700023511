#!/usr/bin/env bash
# Installs the Claude Code CLI from the npm registry into .tools/claude
# (no global install, no root needed) and prints the path of its binary.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${CLAUDE_CODE_VERSION:-2.1.197}"
bin=".tools/claude/node_modules/.bin/claude"
if [ ! -x "$bin" ] || ! "$bin" --version 2>/dev/null | grep -q "^$version "; then
    if ! command -v npm >/dev/null; then
        echo "npm is needed to install the Claude Code CLI (apt-get install -y npm)" >&2
        exit 1
    fi
    npm install --prefix .tools/claude --no-audit --no-fund --loglevel=error "@anthropic-ai/claude-code@$version" >&2
fi
echo "$PWD/$bin"
