"""The OpenAI Batch API through the official `openai` SDK, used exactly as
against OpenAI: upload a JSONL file with `files.create(purpose="batch")`,
`batches.create(...)`, poll `batches.retrieve`, read the output and error
files. Each request runs as a real Claude Code CLI process against the
simulated Anthropic API, whose reply echoes the prompt, so every result can
be checked against its own request.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
from openai.types.chat import ChatCompletion

HAIKU_ID = "claude-haiku-4-5-20251001"
DONE = ("completed", "failed", "expired", "cancelled")


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def request_line(custom_id: str, prompt: str, model: str = "haiku") -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]},
    }


def wait_until(client: openai.OpenAI, batch_id: str, done, timeout_s: float):
    """Polls the batch until `done(batch)`; returns it and every status seen."""
    deadline = time.monotonic() + timeout_s
    seen = []
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if done(batch):
            return batch, seen
        assert time.monotonic() < deadline, f"batch {batch_id} stuck: {batch}"
        time.sleep(0.5)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_two_hundred_requests_through_the_batch_api(client: openai.OpenAI, tmp_path: Path):
    n = 200
    path = write_jsonl(tmp_path / "requests.jsonl", [request_line(f"req-{i:03d}", f"Item number {i} please") for i in range(n)])

    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    assert uploaded.object == "file"
    assert uploaded.purpose == "batch"
    assert uploaded.bytes == path.stat().st_size
    assert uploaded.filename == "requests.jsonl"
    assert client.files.retrieve(uploaded.id).id == uploaded.id

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"suite": "pytest"},
    )
    assert batch.object == "batch"
    assert batch.status == "validating"
    assert batch.input_file_id == uploaded.id

    def counted(b) -> bool:
        counts = b.request_counts
        # request_counts stays current and consistent while the batch runs.
        assert counts.total in (0, n), counts
        assert counts.completed + counts.failed <= counts.total, counts
        return b.status in DONE

    batch, statuses = wait_until(client, batch.id, counted, timeout_s=900)
    assert batch.status == "completed", batch
    assert statuses[-1] == "completed"
    assert "in_progress" in statuses, statuses
    assert batch.request_counts.total == n
    assert batch.request_counts.completed == n
    assert batch.request_counts.failed == 0
    assert batch.metadata == {"suite": "pytest"}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.error_file_id is None
    assert batch.usage is not None and batch.usage.output_tokens > 0

    lines = read_lines(client, batch.output_file_id)
    assert len(lines) == n
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == n, "each custom_id exactly once"
    for i in range(n):
        line = by_id[f"req-{i:03d}"]
        assert line["error"] is None
        assert line["id"].startswith("batch_req_")
        assert line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        assert completion.model == HAIKU_ID
        # Each result answers its own request, not a neighbour's.
        assert completion.choices[0].message.content == f"Simulated reply: Item number {i} please"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.completion_tokens > 0

    output = client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    assert batch.id in [b.id for b in client.batches.list(limit=20)]


def test_partial_failures_land_in_the_error_file(client: openai.OpenAI, tmp_path: Path):
    lines = [request_line(f"ok-{i}", f"fine request {i}") for i in range(3)]
    lines.append(request_line("unknown-model", "never runs", model="gpt-4o"))
    lines.append(request_line("refused", "refused upstream [sim:status=400]"))
    with open(write_jsonl(tmp_path / "mixed.jsonl", lines), "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch, _ = wait_until(client, batch.id, lambda b: b.status in DONE, timeout_s=300)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 3, 2)

    output = {line["custom_id"]: line for line in read_lines(client, batch.output_file_id)}
    errors = {line["custom_id"]: line for line in read_lines(client, batch.error_file_id)}
    assert set(output) == {"ok-0", "ok-1", "ok-2"}
    assert set(errors) == {"unknown-model", "refused"}
    assert errors["unknown-model"]["response"]["status_code"] == 404
    assert errors["unknown-model"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert errors["refused"]["response"]["status_code"] == 502

    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True
    try:
        client.files.retrieve(uploaded.id)
        raise AssertionError("a deleted file is gone")
    except openai.NotFoundError:
        pass


def test_an_invalid_file_fails_validation_with_line_numbers(client: openai.OpenAI, tmp_path: Path):
    path = tmp_path / "invalid.jsonl"
    good = json.dumps(request_line("a", "hello"))
    path.write_text(f"{good}\nnot json\n{good}\n", encoding="utf-8")
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch, _ = wait_until(client, batch.id, lambda b: b.status in DONE, timeout_s=60)
    assert batch.status == "failed"
    assert [(e.line, e.code) for e in batch.errors.data] == [(2, "invalid_json"), (3, "duplicate_custom_id")]


def test_cancel_mid_batch(client: openai.OpenAI, tmp_path: Path):
    n = 30
    lines = [request_line(f"slow-{i}", f"slow {i} [sim:first_token_ms=500]") for i in range(n)]
    with open(write_jsonl(tmp_path / "slow.jsonl", lines), "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(client, batch.id, lambda b: b.request_counts.completed >= 2, timeout_s=120)

    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    batch, _ = wait_until(client, batch.id, lambda b: b.status in DONE, timeout_s=120)
    assert batch.status == "cancelled"
    assert batch.cancelling_at and batch.cancelled_at
    counts = batch.request_counts
    assert counts.failed == 0
    assert 2 <= counts.completed < n
    output = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    assert len(output) == counts.completed
    assert len(output) + len(errors) == n, "every request is accounted for"
    assert all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in errors)
