"""The operator's view, read with standard tools: `/metrics` parses with the
Prometheus client library's own parser and its counters move with traffic,
and `/openapi.json` validates as an OpenAPI 3 document."""

from __future__ import annotations

import json
import urllib.request

import openai
from openapi_spec_validator import validate
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def chat_requests_ok(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "ccgate_http_requests_total"
                and labels.get("route") == "/v1/chat/completions"
                and labels.get("status") == "200"
            ):
                total += sample.value
    return total


def test_metrics_parse_and_move(gateway, client: openai.OpenAI) -> None:
    before_text = get(f"{gateway.url}/metrics").decode()
    families = {f.name: f for f in text_string_to_metric_families(before_text)}
    for name in [
        "ccgate_http_requests",
        "ccgate_time_to_first_token_seconds",
        "ccgate_gateway_overhead_seconds",
        "ccgate_workers",
        "ccgate_worker_events",
    ]:
        assert name in families, f"{name} missing from /metrics"
    before = chat_requests_ok(before_text)

    client.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "metrics please"}])

    after_text = get(f"{gateway.url}/metrics").decode()
    assert chat_requests_ok(after_text) == before + 1
    families = {f.name: f for f in text_string_to_metric_families(after_text)}
    assert families["ccgate_workers"].type == "gauge"
    assert families["ccgate_time_to_first_token_seconds"].type == "histogram"
    spawns = [s.value for s in families["ccgate_worker_events"].samples if s.labels.get("event") == "spawn"]
    assert spawns and spawns[0] >= 1


def test_openapi_document_is_valid_openapi_3(gateway) -> None:
    spec = json.loads(get(f"{gateway.url}/openapi.json"))
    validate(spec)
    assert spec["openapi"].startswith("3.")
    for path in ["/v1/chat/completions", "/v1/models", "/v1/usage", "/v1/route", "/admin/projects", "/metrics"]:
        assert path in spec["paths"], path
