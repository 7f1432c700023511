"""The official `openai` SDK against a gateway that serves sonnet on the
direct Anthropic API backend (conftest sets `backends = { sonnet = "api" }`
and `fallback_models = { opus = "sonnet" }`)."""

from __future__ import annotations

import openai

SONNET_ID = "claude-sonnet-5"


def words_reply(n: int) -> str:
    return "Simulated reply: " + " ".join(f"w{i}" for i in range(1, n + 1))


def test_direct_backend_completion(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model="sonnet",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "[sim:words=6]"},
        ],
        max_tokens=200,
    )
    assert raw.headers["x-ccgate-model"] == SONNET_ID
    completion = raw.parse()
    assert completion.model == SONNET_ID
    assert completion.choices[0].message.content == words_reply(6)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0
    assert float(raw.headers["x-ccgate-cost-usd"]) > 0


def test_direct_backend_streams(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "[sim:words=15] [sim:delay_ms=20]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 3, texts
    assert "".join(texts) == words_reply(15)
    assert all(c.model == SONNET_ID for c in chunks)
    assert chunks[-1].usage.completion_tokens > 0


def test_an_overloaded_cli_model_falls_back_to_the_direct_one(client: openai.OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model="opus",
        messages=[{"role": "user", "content": "[sim:fail_model=claude-opus-4-8] [sim:words=3]"}],
    )
    assert raw.headers["x-ccgate-model"] == SONNET_ID
    completion = raw.parse()
    assert completion.model == SONNET_ID
    assert completion.choices[0].message.content == words_reply(3)


def test_stop_and_sampling_reach_the_direct_backend(client: openai.OpenAI):
    # The upstream stops the model before "w5": a shorter answer, billed as such.
    stopped = client.chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": "[sim:words=12]"}],
        stop=["w5", "never"],
        temperature=0.2,
        top_p=0.9,
    )
    full = client.chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": "[sim:words=12]"}]
    )
    assert stopped.choices[0].message.content == "Simulated reply: w1 w2 w3 w4 "
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < full.usage.completion_tokens


def test_stop_on_the_cli_backend_cuts_the_answer_streamed_or_not(client: openai.OpenAI):
    answer = client.chat.completions.create(
        model="haiku", messages=[{"role": "user", "content": "[sim:words=12]"}], stop="w7"
    )
    assert answer.choices[0].message.content == "Simulated reply: w1 w2 w3 w4 w5 w6 "
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "[sim:words=12]"}],
        stop=["w7"],
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Simulated reply: w1 w2 w3 w4 w5 w6 "
    assert chunks[-1].choices[0].finish_reason == "stop"



def test_structured_output_parses_into_a_pydantic_model(client: openai.OpenAI, ask_for_a_person):
    # The SDK sends the model's JSON Schema as `response_format`
    # `json_schema` (strict); the simulated upstream answers an instance.
    person = ask_for_a_person(client, "sonnet")
    assert (person.name, person.age) == ("w1", 1)
