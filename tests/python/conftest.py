"""Session fixtures for the OpenAI SDK tests.

Starts the simulated Anthropic API (`ccgate-sim`) and the gateway (`ccgate
serve`) as real processes on port 0, each with its own temp directory and
SQLite database, waits for their "listening" lines (no sleeps), and stops
both with SIGTERM when the session ends. A test module that needs other
settings starts a gateway of its own with `running_gateway`.

Environment:
  CCGATE_BIN_DIR     directory holding ccgate and ccgate-sim
                     (default: <repo>/target/debug)
  CCGATE_CLAUDE_BIN  the Claude Code CLI (default: <repo>/.tools/claude/
                     node_modules/.bin/claude, else `claude` on PATH)
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]

# How long a process may take to print its listening line, and to exit
# after SIGTERM. Generous: debug builds on a loaded 2-core machine.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

SIM_LISTENING = re.compile(r"^ccgate-sim listening on (http://\S+)\s*$")
GATEWAY_LISTENING = re.compile(r"ccgate listening addr=(\S+)")


def bin_dir() -> Path:
    return Path(os.environ.get("CCGATE_BIN_DIR") or REPO / "target" / "debug").resolve()


def claude_bin() -> str:
    explicit = os.environ.get("CCGATE_CLAUDE_BIN")
    if explicit:
        return explicit
    local = REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
    if local.exists():
        return str(local)
    on_path = shutil.which("claude")
    if on_path:
        return on_path
    raise pytest.UsageError(
        "the Claude Code CLI is needed for these tests: set CCGATE_CLAUDE_BIN to its path"
    )


def clean_env() -> dict[str, str]:
    """The environment for child processes, without any CCGATE_* variable:
    the gateway refuses to start on a CCGATE_ variable that is not one of its
    settings (CCGATE_BIN_DIR is ours, not its), and the simulator reads
    CCGATE_SIM_* as its own flags. Settings are passed explicitly instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCGATE_")}
    # A nested Claude Code session refuses to start while this is set.
    env.pop("CLAUDECODE", None)
    return env


class LineReader:
    """Drains a process's pipe on a thread, forever (so the process never
    blocks on a full pipe), copying every line to a log file and handing
    lines to whoever waits for one."""

    def __init__(self, pipe, log_path: Path):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log_path = log_path
        self._thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self._thread.start()

    def _run(self, pipe) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                log.write(line)
                log.flush()
                self.lines.put(line)
        self.lines.put(None)  # end of output

    def wait_for(self, pattern: re.Pattern[str], proc: subprocess.Popen, what: str) -> re.Match[str]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{what} did not report listening within {START_TIMEOUT_S:.0f} s; log: {self.log_path}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=STOP_TIMEOUT_S)
                raise RuntimeError(
                    f"{what} exited (code {proc.returncode}) before listening:\n{self.log_path.read_text()}"
                )
            match = pattern.search(line)
            if match:
                return match

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM, then wait; SIGKILL only if it will not stop (and say so)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"pid {proc.pid} did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM")


@dataclass
class Gateway:
    url: str  # e.g. http://127.0.0.1:PORT
    sim_url: str
    log_path: Path

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"


@dataclass
class Simulator:
    url: str
    bins: Path
    claude: str


@pytest.fixture(scope="session")
def simulator():
    """The simulated Anthropic API, shared by every gateway of the session."""
    bins = bin_dir()
    for name in ("ccgate", "ccgate-sim"):
        if not (bins / name).is_file():
            raise pytest.UsageError(f"{bins / name} is missing: run `cargo build --bins` or set CCGATE_BIN_DIR")
    claude = claude_bin()
    with tempfile.TemporaryDirectory(prefix="ccgate-pytest-sim-") as tmp_name:
        tmp = Path(tmp_name)
        with open(tmp / "sim.stderr.log", "wb") as sim_log:
            sim = subprocess.Popen(
                [str(bins / "ccgate-sim"), "--listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=sim_log,
                env=clean_env(),
                cwd=tmp,
            )
            try:
                sim_out = LineReader(sim.stdout, tmp / "sim.stdout.log")
                url = sim_out.wait_for(SIM_LISTENING, sim, "ccgate-sim").group(1)
                yield Simulator(url=url, bins=bins, claude=claude)
            finally:
                stop(sim)


@contextlib.contextmanager
def running_gateway(sim: Simulator, settings: dict[str, str]):
    """A `ccgate serve` of its own (temp directory, SQLite database, two
    workers) against the simulator, with `settings` as CCGATE_* variables;
    stopped with SIGTERM at the end, which it must survive cleanly and
    without a panic in its log."""
    with tempfile.TemporaryDirectory(prefix="ccgate-pytest-") as tmp_name:
        tmp = Path(tmp_name)
        env = clean_env()
        env.update(
            ANTHROPIC_BASE_URL=sim.url,
            ANTHROPIC_API_KEY="sk-test",
            CCGATE_WORK_DIR=str(tmp / "work"),
        )
        env.update(settings)
        gw = subprocess.Popen(
            [
                str(sim.bins / "ccgate"),
                "serve",
                "--listen", "127.0.0.1:0",
                "--database-url", f"sqlite://{tmp / 'ccgate.db'}",
                "--claude-bin", sim.claude,
                "--pool-size", "2",
                "--request-timeout", "120",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=tmp,
        )
        try:
            gw_err = LineReader(gw.stderr, tmp / "gateway.log")
            addr = gw_err.wait_for(GATEWAY_LISTENING, gw, "ccgate").group(1)
            yield Gateway(url=f"http://{addr}", sim_url=sim.url, log_path=gw_err.log_path)
        except BaseException:
            stop(gw)
            raise
        code = stop(gw)
        gw_err.join(STOP_TIMEOUT_S)
        log = gw_err.log_path.read_text()
        assert code == 0, f"the gateway exited with {code} after SIGTERM:\n{log}"
        assert "panicked" not in log, f"the gateway panicked:\n{log}"


@pytest.fixture(scope="session")
def gateway(simulator: Simulator):
    settings = dict(
        # No CLI-side retries, so the 429 test is quick.
        CCGATE_CLI_MAX_RETRIES="0",
        # Tests run one at a time, so batch tests may use the whole
        # (two-worker) pool; fair share itself is tested in Rust
        # (tests/batch.rs).
        CCGATE_BATCH_POOL_SHARE="1",
        # Sonnet runs on the direct backend (test_direct.py; no other
        # test uses it), and an overloaded opus falls back to it.
        CCGATE_BACKENDS="sonnet=api",
        CCGATE_FALLBACK_MODELS="opus=sonnet",
    )
    with running_gateway(simulator, settings) as gw:
        yield gw


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> openai.OpenAI:
    # No SDK retries: a 429 or 5xx must surface as the error the gateway sent.
    with openai.OpenAI(base_url=gateway.api_base, api_key="sk-unused", max_retries=0, timeout=120.0) as c:
        yield c


@pytest.fixture
def ask_for_a_person():
    """Asks a model for a `Person` through the SDK's structured-output
    `parse` (a `response_format` `json_schema`, strict); returns what it
    parsed."""
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    def ask(client: openai.OpenAI, model: str) -> Person:
        completion = client.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "Who is it?"}],
            response_format=Person,
        )
        return completion.choices[0].message.parsed

    return ask
