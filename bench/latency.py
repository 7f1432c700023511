#!/usr/bin/env python3
"""How much latency ccgate adds over running `claude -p` by hand.

Both sides run the same Claude Code CLI against the same simulated Anthropic
API (`ccgate-sim`), with the same prompt and model:

  baseline  the CLI run directly (`claude -p --output-format stream-json
            --verbose --include-partial-messages --model haiku --bare
            --tools "" --no-session-persistence`, prompt on stdin); timed
            from spawn to the process's exit, and to the `result` line on
            its stdout;
  ccgate    POST /v1/chat/completions (non-streaming) through the gateway;
            timed from sending the request to the end of the response body.

Each is measured at concurrency 1 and at concurrency = the gateway's pool
size, in batches that alternate between the two (ABBA order) so that machine
noise falls on both alike. A few unmeasured warm-up runs of each come first.

The script starts its own simulator and gateway (port 0, temp dir, SQLite)
and stops them with SIGTERM at the end. Python 3.9+ standard library only.

    cargo build --release --bins --workspace      # ccgate and ccgate-sim
    CCGATE_CLAUDE_BIN=/path/to/claude python3 bench/latency.py [--requests 60] [--pool-size 2] [--json [FILE]]

"added by ccgate" compares percentiles (gateway p90 minus baseline p90, and
so on), against the CLI's exit and against its result line; the paired
figure is the median of the differences between the i-th gateway run and the
i-th baseline run, which ran close together in time.

The baseline runs the CLI with the flags and environment the gateway gives
its workers, except `--max-budget-usd` (the gateway adds a per-request cap).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
DEFAULT_PROMPT = "Say hello to the benchmark. [sim:words=20]"
EXPECTED_PREFIX = "Simulated reply:"


# ---------------------------------------------------------------- processes


def clean_env() -> dict[str, str]:
    # The gateway refuses unknown CCGATE_* variables and the simulator reads
    # CCGATE_SIM_* as flags: settings go on the command line instead.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCGATE_")}
    env.pop("CLAUDECODE", None)  # a nested Claude Code session will not start
    return env


class Drain:
    """Reads a pipe to the end on a thread (so the child never blocks on a
    full pipe), logging every line to a file; `wait_for` returns the first
    line matching a pattern."""

    def __init__(self, pipe, log_path: Path):
        self.log_path = log_path
        self.lines: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self.thread.start()

    def _run(self, pipe) -> None:
        with open(self.log_path, "w", encoding="utf-8") as log:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                log.write(line)
                log.flush()
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: re.Pattern, what: str) -> re.Match:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{what} did not start within {START_TIMEOUT_S:.0f} s (log: {self.log_path})")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{what} exited before listening:\n{self.log_path.read_text()}")
            match = pattern.search(line)
            if match:
                return match


def stop(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# -------------------------------------------------------------- one request


def baseline_command(claude: str, model: str) -> list[str]:
    return [
        claude, "-p",
        "--output-format", "stream-json", "--verbose", "--include-partial-messages",
        "--model", model,
        "--bare", "--tools", "", "--no-session-persistence",
    ]


def baseline_env(sim_url: str) -> dict[str, str]:
    env = clean_env()
    env.update(
        ANTHROPIC_BASE_URL=sim_url,
        ANTHROPIC_API_KEY="sk-bench",
        DISABLE_TELEMETRY="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_MAX_RETRIES="2",
        # As ccgate's workers for a plain request: no thinking unless asked.
        MAX_THINKING_TOKENS="0",
    )
    return env


def run_baseline(cmd: list[str], env: dict[str, str], cwd: str, prompt: str) -> dict:
    """One CLI run by hand. Returns seconds to the result line and to exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    try:
        proc.stdin.write(prompt.encode())
        proc.stdin.close()
        result_at = None
        result = None
        for raw in proc.stdout:
            if result_at is None and raw.startswith(b'{"type":"result"'):
                result_at = time.perf_counter()
                result = json.loads(raw)
        proc.wait(timeout=REQUEST_TIMEOUT_S)
        exit_at = time.perf_counter()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None or result.get("is_error") or not str(result.get("result", "")).startswith(EXPECTED_PREFIX):
        raise RuntimeError(f"the CLI run failed (exit {proc.returncode}): {result}")
    return {"to_exit": exit_at - start, "to_result": result_at - start}


def make_stub_cli(claude: str, model: str, prompt: str, sim_url: str, tmp: Path, cwd: str) -> str:
    """Records the real CLI's stdout for the prompt once and writes a shell
    script that reads its stdin and replays that output, whatever its flags."""
    cmd = baseline_command(claude, model)
    out = subprocess.run(
        cmd, input=prompt.encode(), capture_output=True, env=baseline_env(sim_url), cwd=cwd, timeout=REQUEST_TIMEOUT_S
    )
    if b'"type":"result"' not in out.stdout:
        raise RuntimeError(f"recording the CLI transcript failed: {out.stderr[-2000:]!r}")
    transcript = tmp / "transcript.jsonl"
    transcript.write_bytes(out.stdout)
    stub = tmp / "stub-claude"
    stub.write_text(f"#!/bin/sh\ncat >/dev/null\nexec cat '{transcript}'\n")
    stub.chmod(0o755)
    return str(stub)


def run_gateway(host: str, port: int, body: bytes) -> dict:
    """One non-streaming chat completion through the gateway."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        end = time.perf_counter()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"the gateway answered {response.status}: {data[:500]!r}")
    content = json.loads(data)["choices"][0]["message"]["content"]
    if not content.startswith(EXPECTED_PREFIX):
        raise RuntimeError(f"unexpected reply: {content!r}")
    return {"total": end - start, "cost_usd": float(response.getheader("x-ccgate-cost-usd", "0"))}


def run_batch(fn, count: int, concurrency: int) -> list[dict]:
    """`count` calls of `fn`, at most `concurrency` at once."""
    if concurrency == 1:
        return [fn() for _ in range(count)]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda _: fn(), range(count)))


# ------------------------------------------------------------------ figures


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process (not its children), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def summarize(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": cuts[89],
        "p99_ms": cuts[98],
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


def added_latency(gateway: dict, baseline: dict, gate_runs: list, base_runs: list, base_key: str) -> dict:
    """Gateway minus baseline, percentile by percentile, and the median of
    paired differences: runs of the same index ran close in time (same or
    next batch), so their differences cancel slow drifts in machine load."""
    added = {k: gateway[k] - baseline[k] for k in ("median_ms", "p90_ms", "p99_ms", "mean_ms")}
    added["median_pct"] = 100.0 * added["median_ms"] / baseline["median_ms"]
    paired = [(g["total"] - b[base_key]) * 1000 for b, g in zip(base_runs, gate_runs)]
    added["paired_median_ms"] = statistics.median(paired)
    added["paired_median_pct"] = 100.0 * added["paired_median_ms"] / baseline["median_ms"]
    return added


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(), "python": platform.python_version()}


def claude_version(claude: str) -> str:
    try:
        out = subprocess.run([claude, "--version"], capture_output=True, text=True, timeout=60, env=clean_env())
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def print_table(report: dict, out=sys.stdout) -> None:
    cfg = report["config"]
    m = report["machine"]
    print(f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}", file=out)
    la = report["load_average"]
    print(
        "load average (1/5/15 min) before: {} after: {}".format(
            " ".join(f"{x:.2f}" for x in la["before"]), " ".join(f"{x:.2f}" for x in la["after"])
        ),
        file=out,
    )
    print(f"CLI: {cfg['claude_version']}  model: {cfg['model']}  prompt: {cfg['prompt']!r}", file=out)
    if cfg["stub_cli"]:
        print(
            "STUB CLI: both sides ran a shell script replaying one recorded CLI transcript, "
            "so the figures show ccgate's fixed cost, not a real run",
            file=out,
        )
    print(
        f"gateway pool size: {cfg['pool_size']}  requests per mode and concurrency: {cfg['requests']} "
        f"(batches of {cfg['batch']}, alternating ABBA)  warm-up: {cfg['warmup']} of each",
        file=out,
    )
    for w in report["warmup"]:
        print(
            f"warm-up runs (ms): baseline {', '.join(f'{x:.0f}' for x in w['baseline_ms'])}; "
            f"ccgate {', '.join(f'{x:.0f}' for x in w['gateway_ms'])}",
            file=out,
        )
    print(file=out)
    header = f"{'concurrency':>11}  {'what':<28} {'n':>4} {'median':>9} {'p90':>9} {'p99':>9} {'mean':>9}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in report["results"]:
        c = r["concurrency"]
        rows = [
            ("baseline: claude -p to exit", r["baseline_exit"]),
            ("baseline: to result line", r["baseline_result"]),
            ("ccgate: HTTP request", r["gateway"]),
        ]
        for name, s in rows:
            print(
                f"{c:>11}  {name:<28} {s['n']:>4} {s['median_ms']:>7.1f}ms {s['p90_ms']:>7.1f}ms "
                f"{s['p99_ms']:>7.1f}ms {s['mean_ms']:>7.1f}ms",
                file=out,
            )
        for name, a in (("added by ccgate vs exit", r["added"]), ("added by ccgate vs result", r["added_vs_result_line"])):
            print(
                f"{c:>11}  {name:<28} {'':>4} {a['median_ms']:>+7.1f}ms {a['p90_ms']:>+7.1f}ms "
                f"{a['p99_ms']:>+7.1f}ms {a['mean_ms']:>+7.1f}ms",
                file=out,
            )
        a = r["added"]
        print(
            f"{'':>11}  median added = {a['median_ms']:+.1f} ms = {a['median_pct']:+.1f}% of the baseline median"
            + ("" if cfg["stub_cli"] else f" (target <= 5%: {'met' if a['median_pct'] <= 5 else 'NOT met'})")
            + f"; median of paired differences {a['paired_median_ms']:+.1f} ms = {a['paired_median_pct']:+.1f}%",
            file=out,
        )
        a = r["added_vs_result_line"]
        print(
            f"{'':>11}  vs the result line: median added {a['median_ms']:+.1f} ms = {a['median_pct']:+.1f}%; "
            f"paired {a['paired_median_ms']:+.1f} ms = {a['paired_median_pct']:+.1f}%",
            file=out,
        )
        if r.get("gateway_process_cpu_ms_per_request") is not None:
            print(
                f"{'':>11}  CPU time of the gateway process itself (workers not included): "
                f"{r['gateway_process_cpu_ms_per_request']:.1f} ms per request; "
                f"one CLI run by hand: {r['baseline_cli_cpu_ms_per_run']:.0f} ms of CPU",
                file=out,
            )
        print(file=out)


# --------------------------------------------------------------------- main


def find_claude(explicit: str | None) -> str:
    for candidate in (
        explicit,
        os.environ.get("CCGATE_CLAUDE_BIN"),
        str(REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"),
        shutil.which("claude"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("cannot find the Claude Code CLI: pass --claude-bin or set CCGATE_CLAUDE_BIN")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="measured requests per mode and concurrency (default 60)")
    parser.add_argument("--pool-size", type=int, default=2, help="gateway pool size, also the second concurrency (default 2)")
    parser.add_argument("--batch", type=int, default=4, help="requests per alternating batch (default 4)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs of each mode first (default 3)")
    parser.add_argument("--model", default="haiku")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--bin-dir", default=str(REPO / "target" / "release"), help="where ccgate and ccgate-sim are")
    parser.add_argument("--claude-bin", help="the Claude Code CLI (default: $CCGATE_CLAUDE_BIN, .tools/, PATH)")
    parser.add_argument(
        "--stub-cli", action="store_true",
        help="record one real CLI run, then benchmark both sides with a stub that replays it "
        "(isolates ccgate's fixed per-request cost from the CLI's own time and noise)",
    )
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="FILE",
        help="print the results as JSON instead of the table; with FILE, write JSON there and print the table",
    )
    args = parser.parse_args()
    if args.requests < 2 or args.pool_size < 1 or args.batch < 1 or args.warmup < 0:
        parser.error("--requests must be at least 2, --pool-size and --batch positive, --warmup not negative")

    bins = Path(args.bin_dir).resolve()
    for name in ("ccgate", "ccgate-sim"):
        if not (bins / name).is_file():
            sys.exit(f"{bins / name} is missing: run `cargo build --release --bins --workspace` (or pass --bin-dir)")
    claude = find_claude(args.claude_bin)
    log = sys.stderr

    tmp = Path(tempfile.mkdtemp(prefix="ccgate-bench-"))
    sim = gateway = None
    sim_err = open(tmp / "sim.stderr.log", "wb")
    try:
        sim = subprocess.Popen(
            [str(bins / "ccgate-sim"), "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=sim_err, env=clean_env(), cwd=tmp,
        )
        sim_url = Drain(sim.stdout, tmp / "sim.stdout.log").wait_for(
            re.compile(r"ccgate-sim listening on (http://\S+)"), "ccgate-sim"
        ).group(1)

        base_cwd = tmp / "baseline-cwd"
        base_cwd.mkdir()
        real_claude = claude
        if args.stub_cli:
            claude = make_stub_cli(real_claude, args.model, args.prompt, sim_url, tmp, str(base_cwd))

        gw_env = clean_env()
        gw_env.update(ANTHROPIC_BASE_URL=sim_url, ANTHROPIC_API_KEY="sk-bench", CCGATE_WORK_DIR=str(tmp / "work"))
        gateway = subprocess.Popen(
            [
                str(bins / "ccgate"), "serve",
                "--listen", "127.0.0.1:0",
                "--database-url", f"sqlite://{tmp / 'ccgate.db'}",
                "--claude-bin", claude,
                "--pool-size", str(args.pool_size),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=gw_env, cwd=tmp,
        )
        gw_log = Drain(gateway.stderr, tmp / "gateway.log")
        host, port = gw_log.wait_for(re.compile(r"ccgate listening addr=(\S+)"), "ccgate").group(1).rsplit(":", 1)

        cmd, env = baseline_command(claude, args.model), baseline_env(sim_url)
        body = json.dumps({"model": args.model, "messages": [{"role": "user", "content": args.prompt}]}).encode()

        def baseline() -> dict:
            return run_baseline(cmd, env, str(base_cwd), args.prompt)

        def through_gateway() -> dict:
            return run_gateway(host, int(port), body)

        concurrencies = sorted({1, args.pool_size})
        load_before = os.getloadavg()
        warmup = []
        results = []
        for concurrency in concurrencies:
            print(f"concurrency {concurrency}: warming up ({args.warmup} of each)…", file=log, flush=True)
            gw_cpu_before = cpu_seconds(gateway.pid)
            w_base = [baseline()["to_exit"] * 1000 for _ in range(args.warmup)]
            w_gate = [through_gateway()["total"] * 1000 for _ in range(args.warmup)]
            warmup.append({"concurrency": concurrency, "baseline_ms": w_base, "gateway_ms": w_gate})

            base_cpu = 0.0  # CPU of the CLI runs by hand (reaped children)
            base_runs: list[dict] = []
            gate_runs: list[dict] = []
            batch_no = 0
            while len(base_runs) < args.requests or len(gate_runs) < args.requests:
                # ABBA: baseline first in even batches, gateway first in odd ones.
                order = ("baseline", "gateway") if batch_no % 2 == 0 else ("gateway", "baseline")
                for mode in order:
                    if mode == "baseline":
                        n = min(args.batch, args.requests - len(base_runs))
                        before = resource.getrusage(resource.RUSAGE_CHILDREN)
                        base_runs += run_batch(baseline, n, concurrency) if n else []
                        after = resource.getrusage(resource.RUSAGE_CHILDREN)
                        base_cpu += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                    else:
                        n = min(args.batch, args.requests - len(gate_runs))
                        gate_runs += run_batch(through_gateway, n, concurrency) if n else []
                batch_no += 1
                print(
                    f"concurrency {concurrency}: {len(base_runs)}/{args.requests} baseline, "
                    f"{len(gate_runs)}/{args.requests} ccgate",
                    file=log, flush=True,
                )

            gw_cpu_after = cpu_seconds(gateway.pid)
            gw_cpu_ms = None
            if gw_cpu_before is not None and gw_cpu_after is not None:
                # Only gateway runs (warm-up included) reach the gateway.
                gw_cpu_ms = 1000 * (gw_cpu_after - gw_cpu_before) / (len(gate_runs) + args.warmup)
            b_exit = summarize([r["to_exit"] for r in base_runs])
            b_result = summarize([r["to_result"] for r in base_runs])
            g = summarize([r["total"] for r in gate_runs])
            added = added_latency(g, b_exit, gate_runs, base_runs, "to_exit")
            added_vs_result = added_latency(g, b_result, gate_runs, base_runs, "to_result")
            results.append(
                {
                    "concurrency": concurrency,
                    "baseline_exit": b_exit,
                    "baseline_result": b_result,
                    "gateway": g,
                    "added": added,
                    "added_vs_result_line": added_vs_result,
                    "gateway_cost_usd_per_request": statistics.fmean(r["cost_usd"] for r in gate_runs),
                    "gateway_process_cpu_ms_per_request": gw_cpu_ms,
                    "baseline_cli_cpu_ms_per_run": 1000 * base_cpu / len(base_runs),
                }
            )

        gw_code = stop(gateway)
        gateway = None
        if gw_code != 0:
            print(f"warning: the gateway exited with {gw_code}; log:\n{(tmp / 'gateway.log').read_text()}", file=log)

        report = {
            "config": {
                "requests": args.requests,
                "pool_size": args.pool_size,
                "batch": args.batch,
                "warmup": args.warmup,
                "model": args.model,
                "prompt": args.prompt,
                "claude_bin": claude,
                "claude_version": claude_version(real_claude),
                "stub_cli": args.stub_cli,
                "bin_dir": str(bins),
                "baseline_command": cmd[:1] + [a if a else '""' for a in cmd[1:]],
            },
            "machine": machine(),
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "warmup": warmup,
            "results": results,
        }
        if args.json == "-":
            json.dump(report, sys.stdout, indent=2)
            print()
        else:
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            print_table(report)
        return 0
    finally:
        stop(gateway)
        stop(sim)
        sim_err.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
