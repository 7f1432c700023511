#!/usr/bin/env python3
"""How close a large batch comes to the ideal time on a pool of P workers.

The ideal for N requests on P workers is N / P x the median time of one
request run alone. The script measures that median (sequential non-streaming
chat completions through the gateway, after a warm-up), and for reference
the median latency at concurrency P. Then it runs N requests as a batch and
times it from submission to the end:

  files  the OpenAI Batch API: upload a JSONL file (POST /v1/files), create
         the batch (POST /v1/batches), poll GET /v1/batches/{id} every 0.1 s
         until it is completed; timed from the create call to the first poll
         that sees it completed (so up to 0.1 s of polling is included);
  sync   POST /v1/batch with all N requests and max_concurrency P, timed to
         the end of the response.

Every request is the same prompt against the real Claude Code CLI and the
project's simulated Anthropic API (`ccgate-sim`). The gateway runs with
`batch_pool_share = 1` by default, so the batch may use all P workers, which
is what the ideal assumes (at the default share of 0.5 a batch gets half the
pool by design; pass --share to measure that).

The script starts its own simulator and gateway (port 0, temp dir, SQLite)
and stops them with SIGTERM at the end. Python 3.9+ standard library only.

    cargo build --release --bins --workspace
    CCGATE_CLAUDE_BIN=/path/to/claude python3 bench/batch.py [--requests 1000] [--pool-size 2] [--mode both] [--json [FILE]]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import queue
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
DEFAULT_PROMPT = "Say hello to the benchmark. [sim:words=20]"
EXPECTED_PREFIX = "Simulated reply:"


def clean_env() -> dict[str, str]:
    # The gateway refuses unknown CCGATE_* variables and the simulator reads
    # CCGATE_SIM_* as flags: settings go on the command line or are set below.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCGATE_")}
    env.pop("CLAUDECODE", None)  # a nested Claude Code session will not start
    return env


class Drain:
    """Reads a pipe to the end on a thread, logging every line to a file;
    `wait_for` returns the first line matching a pattern."""

    def __init__(self, pipe, log_path: Path):
        self.log_path = log_path
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, args=(pipe,), daemon=True).start()

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


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Gateway:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
             timeout: float = 600.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None, timeout: float = 600.0):
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self.call(method, path, body, {"content-type": "application/json"}, timeout)
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {data[:500]!r}")
        return json.loads(data)


def chat_body(model: str, prompt: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def one_request(gw: Gateway, model: str, prompt: str) -> float:
    start = time.perf_counter()
    reply = gw.json("POST", "/v1/chat/completions", chat_body(model, prompt))
    elapsed = time.perf_counter() - start
    if not reply["choices"][0]["message"]["content"].startswith(EXPECTED_PREFIX):
        raise RuntimeError(f"unexpected reply: {reply}")
    return elapsed


def request_timings(db: Path, batch_id: str, slots: int, wall_s: float) -> dict:
    """From the store: how long each request held its worker (claim to
    result written), and how busy the batch's workers were overall. Time
    the workers were not busy is the runner's own overhead (and polling)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT started_at_ms, finished_at_ms FROM batch_requests WHERE batch_id = ? ORDER BY started_at_ms",
            (batch_id,),
        ).fetchall()
    finally:
        conn.close()
    held = [(f - s) / 1000 for s, f in rows if s is not None and f is not None]
    tenth = max(1, len(rows) // 10)
    first = (rows[tenth - 1][1] - rows[0][0]) / 1000
    last = (rows[-1][1] - rows[-tenth][0]) / 1000
    return {
        "held_median_s": statistics.median(held),
        "held_first_tenth_median_s": statistics.median(held[:tenth]),
        "held_last_tenth_median_s": statistics.median(held[-tenth:]),
        "workers_busy_pct": sum(held) / (slots * wall_s) * 100,
        "first_tenth_s": first,
        "last_tenth_s": last,
        # Wall time of each tenth of the batch (by start order): a slow tenth
        # while the others keep pace points at load from outside.
        "tenths_s": [
            (rows[min(len(rows), (k + 1) * tenth) - 1][1] - rows[k * tenth][0]) / 1000
            for k in range(min(10, len(rows) // tenth))
        ],
    }


def run_files(gw: Gateway, n: int, model: str, prompt: str) -> dict:
    lines = "".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": chat_body(model, prompt)}) + "\n"
        for i in range(n)
    ).encode()
    boundary = f"bench-{uuid.uuid4().hex}"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.jsonl\"\r\n"
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode() + lines + f"\r\n--{boundary}--\r\n".encode()
    status, data = gw.call("POST", "/v1/files", body, {"content-type": f"multipart/form-data; boundary={boundary}"})
    if status != 200:
        raise RuntimeError(f"upload answered {status}: {data[:500]!r}")
    file_id = json.loads(data)["id"]
    start = time.perf_counter()
    batch = gw.json("POST", "/v1/batches",
                    {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.1)
        batch = gw.json("GET", f"/v1/batches/{batch['id']}")
    wall = time.perf_counter() - start
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != n:
        raise RuntimeError(f"the batch did not complete every request: {batch}")
    status, data = gw.call("GET", f"/v1/files/{batch['output_file_id']}/content")
    results = [json.loads(line) for line in data.decode().splitlines()]
    if len(results) != n or any(r["response"]["status_code"] != 200 for r in results):
        raise RuntimeError("the output file is incomplete")
    return {"wall_s": wall, "batch_id": batch["id"]}


def run_sync(gw: Gateway, n: int, pool_size: int, model: str, prompt: str) -> dict:
    requests = [dict(chat_body(model, prompt), custom_id=f"r{i}") for i in range(n)]
    start = time.perf_counter()
    out = gw.json("POST", "/v1/batch", {"requests": requests, "max_concurrency": pool_size}, timeout=3600.0)
    wall = time.perf_counter() - start
    if out["stats"]["succeeded"] != n:
        raise RuntimeError(f"not every request succeeded: {out['stats']}")
    return {"wall_s": wall, "server_wall_ms": out["stats"]["wall_time_ms"]}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release()}


def find_claude(explicit: str | None) -> str:
    for candidate in (explicit, os.environ.get("CCGATE_CLAUDE_BIN"),
                      str(REPO / ".tools" / "claude" / "node_modules" / ".bin" / "claude"), shutil.which("claude")):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("cannot find the Claude Code CLI: pass --claude-bin or set CCGATE_CLAUDE_BIN")


def print_report(r: dict, out=sys.stdout) -> None:
    c, m = r["config"], r["machine"]
    print(f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}", file=out)
    print("load average before: {}  after: {}".format(
        " ".join(f"{x:.2f}" for x in r["load_before"]), " ".join(f"{x:.2f}" for x in r["load_after"])), file=out)
    print(f"pool size P = {c['pool_size']}, batch_pool_share = {c['share']} ({c['batch_slots']} batch workers), "
          f"N = {c['requests']} requests, model {c['model']}, prompt {c['prompt']!r}", file=out)
    s = r["single"]
    print(f"one request alone: median {s['median_s'] * 1000:.0f} ms over {s['n']} "
          f"(min {s['min_s'] * 1000:.0f}, max {s['max_s'] * 1000:.0f}); "
          f"at concurrency {c['batch_slots']}: median {s['loaded_median_s'] * 1000:.0f} ms", file=out)
    print(f"ideal = N / workers x median alone = {r['ideal_s']:.1f} s "
          f"(with the median at concurrency {c['batch_slots']}: {r['ideal_loaded_s']:.1f} s)", file=out)
    for mode in ("files", "sync"):
        if mode not in r:
            continue
        x = r[mode]
        verdict = "met" if x["vs_ideal_pct"] <= 10 else "NOT met"
        print(f"{mode:>5}: {x['wall_s']:.1f} s = {x['vs_ideal_pct']:+.1f}% vs ideal (target <= +10%: {verdict}); "
              f"{x['vs_loaded_pct']:+.1f}% vs the loaded ideal; {c['requests'] / x['wall_s']:.2f} requests/s", file=out)
        if "held_median_s" in x:
            print(f"       a request held its worker {x['held_median_s'] * 1000:.0f} ms (median, claim to result "
                  f"written); workers busy {x['workers_busy_pct']:.1f}% of the wall time; first tenth of the "
                  f"requests took {x['first_tenth_s']:.1f} s, last tenth {x['last_tenth_s']:.1f} s "
                  f"(median held {x['held_first_tenth_median_s'] * 1000:.0f} and "
                  f"{x['held_last_tenth_median_s'] * 1000:.0f} ms)", file=out)
            print("       each tenth took (s): " + ", ".join(f"{t:.1f}" for t in x["tenths_s"]), file=out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests in the batch (default 1000)")
    parser.add_argument("--pool-size", type=int, default=2, help="gateway pool size P (default 2)")
    parser.add_argument("--share", type=float, default=1.0, help="batch_pool_share (default 1: the whole pool)")
    parser.add_argument("--singles", type=int, default=20, help="requests timed alone for the median (default 20)")
    parser.add_argument("--mode", choices=("files", "sync", "both"), default="both")
    parser.add_argument("--model", default="haiku")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--bin-dir", default=str(REPO / "target" / "release"), help="where ccgate and ccgate-sim are")
    parser.add_argument("--claude-bin", help="the Claude Code CLI (default: $CCGATE_CLAUDE_BIN, .tools/, PATH)")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="print JSON instead of the report; with FILE, write JSON there and print the report")
    args = parser.parse_args()
    if args.requests < 1 or args.pool_size < 1 or args.singles < 2 or not 0 < args.share <= 1:
        parser.error("--requests and --pool-size must be positive, --singles at least 2, --share in (0, 1]")

    bins = Path(args.bin_dir).resolve()
    for name in ("ccgate", "ccgate-sim"):
        if not (bins / name).is_file():
            sys.exit(f"{bins / name} is missing: run `cargo build --release --bins --workspace` (or pass --bin-dir)")
    claude = find_claude(args.claude_bin)
    log = sys.stderr
    slots = max(1, min(args.pool_size, math.ceil(args.pool_size * args.share)))

    tmp = Path(tempfile.mkdtemp(prefix="ccgate-batch-bench-"))
    sim = gateway = None
    sim_err = open(tmp / "sim.stderr.log", "wb")
    try:
        sim = subprocess.Popen([str(bins / "ccgate-sim"), "--listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=sim_err, env=clean_env(), cwd=tmp)
        sim_url = Drain(sim.stdout, tmp / "sim.stdout.log").wait_for(
            re.compile(r"ccgate-sim listening on (http://\S+)"), "ccgate-sim").group(1)
        env = clean_env()
        env.update(
            ANTHROPIC_BASE_URL=sim_url, ANTHROPIC_API_KEY="sk-bench", CCGATE_WORK_DIR=str(tmp / "work"),
            CCGATE_BATCH_POOL_SHARE=str(args.share), CCGATE_BATCH_MAX_TASKS=str(max(args.requests, 1000)),
        )
        gateway = subprocess.Popen(
            [str(bins / "ccgate"), "serve", "--listen", "127.0.0.1:0", "--database-url",
             f"sqlite://{tmp / 'ccgate.db'}", "--claude-bin", claude, "--pool-size", str(args.pool_size),
             "--request-timeout", "600"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp)
        gw_log = Drain(gateway.stderr, tmp / "gateway.log")
        host, port = gw_log.wait_for(re.compile(r"ccgate listening addr=(\S+)"), "ccgate").group(1).rsplit(":", 1)
        gw = Gateway(host, int(port))

        print("warming up…", file=log, flush=True)
        for _ in range(3):
            one_request(gw, args.model, args.prompt)
        load_before = os.getloadavg()
        print(f"timing {args.singles} requests alone…", file=log, flush=True)
        singles = [one_request(gw, args.model, args.prompt) for _ in range(args.singles)]
        with ThreadPoolExecutor(max_workers=slots) as pool:
            loaded = list(pool.map(lambda _: one_request(gw, args.model, args.prompt), range(args.singles * slots)))
        median = statistics.median(singles)
        report = {
            "config": {"requests": args.requests, "pool_size": args.pool_size, "share": args.share,
                       "batch_slots": slots, "model": args.model, "prompt": args.prompt},
            "machine": machine(),
            "load_before": load_before,
            "single": {"n": len(singles), "median_s": median, "min_s": min(singles), "max_s": max(singles),
                       "loaded_median_s": statistics.median(loaded)},
            "ideal_s": args.requests / slots * median,
            "ideal_loaded_s": args.requests / slots * statistics.median(loaded),
        }
        modes = ("files", "sync") if args.mode == "both" else (args.mode,)
        for mode in modes:
            print(f"running {args.requests} requests through {mode}…", file=log, flush=True)
            if mode == "files":
                result = run_files(gw, args.requests, args.model, args.prompt)
                result.update(request_timings(tmp / "ccgate.db", result["batch_id"], slots, result["wall_s"]))
            else:
                result = run_sync(gw, args.requests, slots, args.model, args.prompt)
            result["vs_ideal_pct"] = (result["wall_s"] / report["ideal_s"] - 1) * 100
            result["vs_loaded_pct"] = (result["wall_s"] / report["ideal_loaded_s"] - 1) * 100
            report[mode] = result
        report["load_after"] = os.getloadavg()
    finally:
        stop(gateway)
        stop(sim)
        sim_err.close()
        shutil.rmtree(tmp, ignore_errors=True)

    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
