#!/usr/bin/env python3
"""ccgate with the official `openai` Python SDK: only `base_url` changes.

    pip install openai
    CCGATE_URL=http://127.0.0.1:8080 CCGATE_API_KEY=ccg_… python examples/openai_python.py

Environment:
  CCGATE_URL        the gateway (default http://127.0.0.1:8080)
  CCGATE_API_KEY    a project key (`ccgate keys create --project ID`), or
  CCGATE_ADMIN_KEY  the admin key; with neither, the gateway must run in
                    open mode (no admin key, on loopback)
  CCGATE_PROJECT    the project to charge, when the key is the admin key
                    (default: `default`)

Shows: a chat completion and what it cost (the `x-ccgate-cost-usd` header,
read through `with_raw_response`), a stream with usage and cost on its last
chunks, the model list, `"model": "auto"` routing, the Files and Batch APIs,
ccgate's own endpoints (`/v1/usage`, `/v1/route`) through the SDK's
low-level `get`/`post`, and how errors arrive. Every call is documented in
docs/API_REFERENCE.md.
"""

from __future__ import annotations

import io
import json
import os
import time

import openai
from openai import OpenAI

URL = os.environ.get("CCGATE_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ.get("CCGATE_API_KEY") or os.environ.get("CCGATE_ADMIN_KEY") or "unused"
PROJECT = os.environ.get("CCGATE_PROJECT")


def make_client(**options) -> OpenAI:
    # A project key always acts for its own project; with the admin key the
    # X-Project-Id header (or `project_id` in a body) picks the project.
    headers = {"X-Project-Id": PROJECT} if PROJECT else {}
    return OpenAI(base_url=f"{URL}/v1", api_key=KEY, default_headers=headers, **options)


def section(title: str) -> None:
    print(f"\n=== {title}")


def chat(client: OpenAI) -> None:
    section("Chat, not streaming; the cost comes in the x-ccgate-cost-usd header")
    raw = client.chat.completions.with_raw_response.create(
        model="haiku",
        max_tokens=200,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is a monad?"},
        ],
    )
    completion = raw.parse()
    print(completion.choices[0].message.content)
    print(f"model {completion.model}, usage {completion.usage}")
    print(f"cost ${raw.headers['x-ccgate-cost-usd']}, request id {raw.headers['x-request-id']}")
    # Headers a project key's rate limits add (absent for the admin key).
    limits = {k: v for k, v in raw.headers.items() if k.startswith("x-ratelimit-")}
    if limits:
        print(f"rate limits: {limits}")


def stream(client: OpenAI) -> None:
    section("Chat, streaming, with usage; the cost is on the last chunks (x_ccgate)")
    cost = None
    for chunk in client.chat.completions.create(
        model="haiku",
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count to five"}],
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            print(f"\nusage {chunk.usage}")
        # ccgate's extension field: {"request_id", "cost_usd"}.
        extra = (chunk.model_extra or {}).get("x_ccgate")
        if extra:
            cost = extra["cost_usd"]
    print(f"cost ${cost}")


def models(client: OpenAI) -> None:
    section("Models: each id and alias, with ccgate's tier and context window")
    for model in client.models.list():
        extra = model.model_extra or {}
        print(f"{model.id:32} tier {extra.get('tier'):10} context {extra.get('context_window')}")


def auto(client: OpenAI) -> None:
    section('"model": "auto": the router picks the tier (x-ccgate-route says which)')
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    # ccgate's own endpoints through the SDK's low-level calls (`cast_to=object`: plain JSON).
    decision = client.post("/route", body={"messages": messages}, cast_to=object)
    print(f"/v1/route would pick {decision['model']}: {decision['reasons'][-1]}")
    raw = client.chat.completions.with_raw_response.create(model="auto", max_tokens=100, messages=messages)
    print(f"x-ccgate-route: {raw.headers.get('x-ccgate-route')}")
    print(raw.parse().choices[0].message.content)


def usage(client: OpenAI) -> None:
    section("Usage: the project's budget and spend today (GET /v1/usage)")
    params = {"period": "day"} | ({"project_id": PROJECT} if PROJECT else {})
    report = client.get("/usage", cast_to=object, options={"params": params})
    limit = report["limit_usd"]
    print(
        f"project {report['project_id']}: spent ${report['spent_usd']}, reserved ${report['reserved_usd']}, "
        f"limit {'none' if limit is None else f'${limit}'}"
    )
    for row in report["by_model"]:
        print(f"  {row['model']}: {row['requests']} requests, ${row['cost_usd']}")


def batch(client: OpenAI) -> None:
    section("Files and Batch APIs: upload JSONL, run it, read the output file")
    lines = [
        {
            "custom_id": f"colour-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "haiku", "max_tokens": 100, "messages": [{"role": "user", "content": f"Name colour {i}"}]},
        }
        for i in range(1, 4)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("colours.jsonl", io.BytesIO(data)), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    print(f"batch {created.id}: {created.status}")
    deadline = time.monotonic() + 120
    current = created
    while current.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(1)
        current = client.batches.retrieve(created.id)
    print(f"batch {current.id}: {current.status}, {current.request_counts}")
    if current.output_file_id:
        for line in client.files.content(current.output_file_id).text.splitlines():
            result = json.loads(line)
            reply = result["response"]["body"]["choices"][0]["message"]["content"]
            print(f"  {result['custom_id']}: {reply}")
    client.files.delete(uploaded.id)


def errors(client: OpenAI) -> None:
    section("Errors: OpenAI error objects, raised as the SDK's exceptions")
    attempts = {
        "unknown model": lambda: client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        ),
        "unsupported option": lambda: client.chat.completions.create(
            model="haiku", n=2, messages=[{"role": "user", "content": "hi"}]
        ),
        "wrong key": lambda: OpenAI(base_url=f"{URL}/v1", api_key="ccg_not_a_real_key").models.list(),
    }
    for what, attempt in attempts.items():
        try:
            attempt()
        except openai.APIStatusError as e:
            # status_code, and the error object's type, code, param and message;
            # request_id is the x-request-id to look for in the gateway's log.
            print(f"{what}: {type(e).__name__} {e.status_code} code={e.code} param={e.param}")
            print(f"  {e.body.get('message') if isinstance(e.body, dict) else e.message}")
            print(f"  request id {e.request_id}")
    # What to do with each, when it happens for real:
    #   RateLimitError (429): code "insufficient_quota" is the project's budget;
    #     retrying will not help before the period resets (the message says
    #     when). code "rate_limit_exceeded" is a key's per-minute limit or the
    #     upstream: retry after the Retry-After header.
    #   InternalServerError 503 code "overloaded": the queue is full; retry
    #     shortly. 504 "timeout": the run passed its deadline.
    #   APIError during a stream: the run failed after it had started; the
    #     text so far is all there is.
    # The SDK retries 429 and 5xx itself (max_retries, default 2).


def main() -> None:
    # No automatic retries here, so the errors section shows each error once.
    client = make_client(max_retries=0, timeout=120)
    chat(client)
    stream(client)
    models(client)
    auto(client)
    usage(client)
    batch(client)
    errors(client)


if __name__ == "__main__":
    main()
