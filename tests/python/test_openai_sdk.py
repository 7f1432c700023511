"""The official `openai` Python SDK against ccgate, which runs each request
as a real Claude Code CLI process talking to the simulated Anthropic API.

The simulator's replies are deterministic: "Simulated reply: " followed by
the prompt's words (directives removed), or "w1 … wN" for `[sim:words=N]`,
and it counts ceil(chars / 4) output tokens for a reply.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
import uuid

import openai
import pytest

HAIKU_ID = "claude-haiku-4-5-20251001"


def words_reply(n: int) -> str:
    return "Simulated reply: " + " ".join(f"w{i}" for i in range(1, n + 1))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def post_json(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.load(response)


def test_non_streaming_completion(client: openai.OpenAI):
    completion = client.chat.completions.create(
        model="haiku",
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.model == HAIKU_ID
    assert completion.id.startswith("chatcmpl-")
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content.startswith("Simulated reply:"), content
    # The simulator echoes the last user message: the prompt reached it intact.
    assert content == "Simulated reply: What is the capital of France?"

    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The simulator bills ceil(chars / 4) tokens for the reply it wrote (a
    # plain request runs without Claude Code's thinking).
    assert usage.completion_tokens == math.ceil(len(content) / 4)
    # The prompt carries at least the system prompt and the question.
    assert usage.prompt_tokens >= math.ceil(len("Answer in one word.What is the capital of France?") / 4)


def test_raw_response_carries_the_cost_header(client: openai.OpenAI, gateway):
    # A project of its own, so its spend is exactly this request's cost.
    project = f"pytest-{uuid.uuid4().hex[:12]}"
    status, _ = post_json(f"{gateway.url}/admin/projects", {"id": project, "name": project, "budget": {}})
    assert status == 201

    raw = client.chat.completions.with_raw_response.create(
        model="haiku",
        messages=[{"role": "user", "content": "Price this [sim:words=20]"}],
        extra_headers={"X-Project-Id": project},
    )
    assert raw.status_code == 200
    cost = float(raw.headers["x-ccgate-cost-usd"])
    assert cost > 0
    request_id = raw.headers["x-request-id"]
    assert request_id

    completion = raw.parse()
    assert completion.id == f"chatcmpl-{request_id}"
    assert completion.choices[0].message.content == words_reply(20)

    # The ledger charges the project what the header said (settled just
    # after the response is sent, so poll briefly).
    deadline = time.monotonic() + 10
    while True:
        usage = get_json(f"{gateway.url}/v1/usage?project_id={project}&period=day")
        if usage["reserved_usd"] == 0 and usage["spent_usd"] > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert usage["reserved_usd"] == 0, usage
    assert usage["spent_usd"] == pytest.approx(cost, abs=1e-6), usage
    assert [row["model"] for row in usage["by_model"]] == [HAIKU_ID]
    assert usage["by_model"][0]["requests"] == 1


def test_streaming_with_usage(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "Count [sim:words=9]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len(chunks) >= 3

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == words_reply(9)
    # The reply arrived in several deltas, not one block at the end.
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2

    ids = {c.id for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.model == HAIKU_ID for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"

    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]

    # include_usage: one last chunk with empty choices and the usage.
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == math.ceil(len(text) / 4)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    # ccgate's extension on the last chunk: the run's cost.
    assert last.model_extra["x_ccgate"]["cost_usd"] > 0


def test_streaming_without_include_usage_has_no_usage_chunk(client: openai.OpenAI):
    chunks = list(
        client.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "[sim:words=4]"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == words_reply(4)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_unknown_model_is_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    error = caught.value
    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert "gpt-4o" in error.message


def test_bad_requests_are_rejected(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi"}], n=2)
    assert caught.value.status_code == 400
    assert caught.value.param == "n"

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="haiku", messages=[])
    assert caught.value.param == "messages"

    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="haiku",
            messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        )
    assert caught.value.status_code == 400


def test_models_list(client: openai.OpenAI):
    ids = [m.id for m in client.models.list()]
    assert "sonnet" in ids
    assert "haiku" in ids
    assert HAIKU_ID in ids
    assert len(ids) == len(set(ids)), ids


def test_models_retrieve(client: openai.OpenAI):
    model = client.models.retrieve("haiku")
    assert model.id == "haiku"
    assert model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_responses_api_whole_and_streamed(client: openai.OpenAI):
    response = client.responses.create(model="haiku", instructions="Be brief.", input="hello there")
    assert response.status == "completed"
    assert response.output_text == "Simulated reply: hello there"
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens

    with client.responses.stream(
        model="haiku", input=[{"role": "user", "content": "count [sim:words=5]"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert "response.output_text.delta" in kinds
    assert final.output_text == words_reply(5)

    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="haiku", input="again", previous_response_id=response.id)
    assert caught.value.body["param"] == "previous_response_id"


def test_upstream_rate_limit_is_a_rate_limit_error(client: openai.OpenAI):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "hi [sim:status=429]"}])
    assert caught.value.status_code == 429
    assert "429" in caught.value.message


def test_async_client_concurrent_requests(gateway):
    prompts = [f"Concurrent request number {i} [sim:words={i + 3}]" for i in range(4)]

    async def run() -> list:
        async with openai.AsyncOpenAI(base_url=gateway.api_base, api_key="sk-unused", max_retries=0) as aclient:
            return await asyncio.gather(
                *(
                    aclient.chat.completions.create(model="haiku", messages=[{"role": "user", "content": p}])
                    for p in prompts
                )
            )

    # Four requests at once against a pool of two: some wait in the queue.
    completions = asyncio.run(run())
    assert len(completions) == len(prompts)
    for i, completion in enumerate(completions):
        assert completion.model == HAIKU_ID
        # Each caller got its own reply, not a neighbour's.
        assert completion.choices[0].message.content == words_reply(i + 3)
        assert completion.usage.completion_tokens > 0
    assert len({c.id for c in completions}) == len(prompts)



def test_structured_output_on_the_cli_parses_into_a_pydantic_model(client: openai.OpenAI, ask_for_a_person):
    # Claude Code gets the schema (`--json-schema`) and answers through the
    # tool it offers the model; the simulated upstream fills it in.
    person = ask_for_a_person(client, "haiku")
    assert (person.name, person.age) == ("w1", 1)
