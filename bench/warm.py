#!/usr/bin/env python3
"""The CLI fast path: ccgate with warm workers against cold `claude -p` runs.

Both sides run the same Claude Code CLI against the same simulated Anthropic
API (`ccgate-sim`), same prompt and model, in one run of this script:

  cold    `claude -p` started by hand for every request (the flags ccgate
          gives its workers), prompt on stdin;
  ccgate  streaming POST /v1/chat/completions through a gateway with its warm
          pool on (pre-started CLI processes reused with /clear).

Figures:
  time to first token  median, at concurrency 1: for the cold run, from spawn
                       to the first text delta on stdout; for ccgate, from
                       sending the request to the first content chunk.
  throughput           requests/s at saturation: the cold runs at each of
                       --cold-concurrency, ccgate at --concurrency with
                       --pool-size warm workers; the best of each is compared.
  cost exactness       every ccgate request's `x-ccgate-cost-usd` against its
                       own usage (prompt and completion tokens) at the price
                       table's haiku price; warm processes report cumulative
                       totals, so a wrong difference shows up here.

    cargo build --release --bins --workspace
    python3 bench/warm.py [--requests 200] [--pool-size 4] [--json FILE]

Targets (issue: fast path): ccgate's median TTFT at most 20% of the cold
run's; ccgate's throughput at least 15x the cold runs'. Python 3.9+ standard
library only; the helpers for starting processes come from bench/latency.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import (  # noqa: E402  (the sibling module is the shared helper)
    REPO,
    Drain,
    baseline_command,
    baseline_env,
    clean_env,
    find_claude,
    machine,
    claude_version,
    stop,
)

PROMPT = "Say hello to the benchmark. [sim:words=20]"
HAIKU_USD_PER_MTOK = (1.0, 5.0)  # prices.toml: input, output


def cold_run(cmd: list[str], env: dict, cwd: str) -> dict:
    """One `claude -p` by hand: seconds to the first text delta and to exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, cwd=cwd)
    first = None
    ok = False
    try:
        proc.stdin.write(PROMPT.encode())
        proc.stdin.close()
        for raw in proc.stdout:
            if first is None and b'"text_delta"' in raw:
                first = time.perf_counter()
            if raw.startswith(b'{"type":"result"'):
                ok = not json.loads(raw).get("is_error")
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    end = time.perf_counter()
    if not ok or first is None:
        raise RuntimeError("a cold CLI run failed")
    return {"ttft": first - start, "total": end - start}


def gateway_run(host: str, port: int, body: bytes) -> dict:
    """One streaming chat completion: seconds to the first content chunk and
    to the end, the reported cost, and the usage."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=120)
    first = None
    usage = None
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"ccgate answered {response.status}: {response.read()[:300]!r}")
        cost = float(response.getheader("x-ccgate-cost-usd", "nan"))
        for raw in response:
            if not raw.startswith(b"data: {"):
                continue
            chunk = json.loads(raw[6:])
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
            extra = chunk.get("x_ccgate") or {}
            if "cost_usd" in extra:
                cost = float(extra["cost_usd"])
    finally:
        conn.close()
    end = time.perf_counter()
    if first is None or usage is None:
        raise RuntimeError("a streamed reply had no text or no usage")
    return {"ttft": first - start, "total": end - start, "cost": cost, "usage": usage}


def saturate(fn, count: int, concurrency: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        runs = list(pool.map(lambda _: fn(), range(count)))
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": count, "wall_s": wall, "per_s": count / wall, "runs": runs}


def ms(values: list[float]) -> dict:
    values = sorted(v * 1000 for v in values)
    return {"p50": statistics.median(values), "p90": values[int(0.9 * (len(values) - 1))], "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="ccgate requests at saturation (default 200)")
    parser.add_argument("--ttft-requests", type=int, default=30, help="requests for the TTFT medians (default 30)")
    parser.add_argument("--cold-requests", type=int, default=16, help="cold runs per concurrency (default 16)")
    parser.add_argument("--cold-concurrency", default="1,2,4", help="cold concurrencies to try (default 1,2,4)")
    parser.add_argument("--pool-size", type=int, default=4, help="ccgate pool size (default 4)")
    parser.add_argument("--concurrency", type=int, default=8, help="ccgate client concurrency (default 8)")
    parser.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    parser.add_argument("--claude-bin")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = parser.parse_args()

    bins = Path(args.bin_dir).resolve()
    claude = find_claude(args.claude_bin)
    log = sys.stderr
    tmp = Path(tempfile.mkdtemp(prefix="ccgate-bench-warm-"))
    sim = gateway = None
    try:
        sim = subprocess.Popen([str(bins / "ccgate-sim"), "--listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=clean_env(), cwd=tmp)
        sim_url = Drain(sim.stdout, tmp / "sim.log").wait_for(
            re.compile(r"ccgate-sim listening on (http://\S+)"), "ccgate-sim").group(1)
        cwd = tmp / "cold"
        cwd.mkdir()
        cmd, env = baseline_command(claude, "haiku"), baseline_env(sim_url)

        print("cold runs by hand…", file=log, flush=True)
        cold_run(cmd, env, str(cwd))  # page the binary in
        cold_ttft = [cold_run(cmd, env, str(cwd)) for _ in range(args.ttft_requests // 2)]
        cold_sat = [saturate(lambda: cold_run(cmd, env, str(cwd)), args.cold_requests, int(c))
                    for c in args.cold_concurrency.split(",")]

        gw_env = clean_env()
        gw_env.update(ANTHROPIC_BASE_URL=sim_url, ANTHROPIC_API_KEY="sk-bench", CCGATE_WORK_DIR=str(tmp / "work"))
        gateway = subprocess.Popen(
            [str(bins / "ccgate"), "serve", "--listen", "127.0.0.1:0",
             "--database-url", f"sqlite://{tmp / 'ccgate.db'}", "--claude-bin", claude,
             "--pool-size", str(args.pool_size)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=gw_env, cwd=tmp)
        host, port = Drain(gateway.stderr, tmp / "gateway.log").wait_for(
            re.compile(r"ccgate listening addr=(\S+)"), "ccgate").group(1).rsplit(":", 1)
        body = json.dumps({"model": "haiku", "stream": True, "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": PROMPT}]}).encode()

        def through() -> dict:
            return gateway_run(host, int(port), body)

        print("ccgate: warming the pool…", file=log, flush=True)
        for _ in range(3):
            saturate(through, args.pool_size * 2, args.pool_size)
        print("ccgate: measuring…", file=log, flush=True)
        gate_ttft = [through() for _ in range(args.ttft_requests)]
        gate_sat = saturate(through, args.requests, args.concurrency)
        health = json.loads(subprocess.run(["curl", "-s", f"http://{host}:{port}/health"], capture_output=True,
                                           text=True).stdout or "{}")

        runs = gate_ttft + gate_sat["runs"]
        wrong = []
        for run in runs:
            usage = run["usage"]
            own = (usage["prompt_tokens"] * HAIKU_USD_PER_MTOK[0] + usage["completion_tokens"] * HAIKU_USD_PER_MTOK[1]) / 1e6
            if abs(own - run["cost"]) > 2e-6:
                wrong.append({"charged": run["cost"], "own": own})

        best_cold = max(cold_sat, key=lambda r: r["per_s"])
        report = {
            "machine": machine(),
            "claude": claude_version(claude),
            "ttft_ms": {"cold": ms([r["ttft"] for r in cold_ttft]), "ccgate": ms([r["ttft"] for r in gate_ttft])},
            "throughput_per_s": {
                "cold": {str(r["concurrency"]): round(r["per_s"], 2) for r in cold_sat},
                "ccgate": round(gate_sat["per_s"], 2),
                "ccgate_concurrency": args.concurrency,
                "pool_size": args.pool_size,
            },
            "cost": {"requests_checked": len(runs), "wrong": len(wrong), "examples": wrong[:3]},
            "warm": health.get("warm"),
        }
        ttft_ratio = report["ttft_ms"]["ccgate"]["p50"] / report["ttft_ms"]["cold"]["p50"]
        tput_ratio = gate_sat["per_s"] / best_cold["per_s"]
        report["ratios"] = {"ttft_ccgate_over_cold": round(ttft_ratio, 3),
                            "throughput_ccgate_over_best_cold": round(tput_ratio, 1)}
        print(json.dumps(report, indent=2))
        print(f"\nTTFT median: cold {report['ttft_ms']['cold']['p50']:.0f} ms, ccgate warm "
              f"{report['ttft_ms']['ccgate']['p50']:.1f} ms ({ttft_ratio:.1%} of cold; target <= 20%)")
        print(f"throughput: cold best {best_cold['per_s']:.2f}/s (concurrency {best_cold['concurrency']}), ccgate "
              f"{gate_sat['per_s']:.1f}/s ({tput_ratio:.1f}x; target >= 15x)")
        print(f"cost: {len(runs) - len(wrong)} of {len(runs)} requests charged exactly their own usage")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0
    finally:
        stop(gateway)
        stop(sim)


if __name__ == "__main__":
    sys.exit(main())
