"""The official `anthropic` Python SDK against ccgate's `POST /v1/messages`,
with only `base_url` and `api_key` changed. Each request runs as a real
Claude Code CLI process talking to the simulated Anthropic API, whose
replies are deterministic: "Simulated reply: " and the prompt's words, or
"w1 … wN" for `[sim:words=N]`.
"""

from __future__ import annotations

import asyncio

import anthropic
import pytest

HAIKU_ID = "claude-haiku-4-5-20251001"
READ_TOOL = {
    "name": "Read",
    "description": "Reads a file",
    "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]},
}


def words_reply(n: int) -> str:
    return "Simulated reply: " + " ".join(f"w{i}" for i in range(1, n + 1))


@pytest.fixture(scope="module")
def claude(gateway) -> anthropic.Anthropic:
    # No SDK retries: an error must surface as the gateway sent it.
    with anthropic.Anthropic(base_url=gateway.url, api_key="sk-unused", max_retries=0, timeout=120.0) as c:
        yield c


def test_messages_create(claude: anthropic.Anthropic):
    message = claude.messages.create(
        model="haiku",
        max_tokens=1024,
        system="Answer in one word.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == HAIKU_ID
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert [block.type for block in message.content] == ["text"]
    # The simulator echoes the last user message: the prompt reached it intact.
    assert message.content[0].text == "Simulated reply: What is the capital of France?"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0


def test_raw_response_carries_the_cost_header(claude: anthropic.Anthropic):
    raw = claude.messages.with_raw_response.create(
        model="haiku", max_tokens=256, messages=[{"role": "user", "content": "cost? [sim:words=3]"}]
    )
    assert float(raw.headers["x-ccgate-cost-usd"]) > 0
    assert raw.parse().content[0].text == words_reply(3)


def test_async_messages_create(gateway):
    async def run() -> list:
        async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="sk-unused", max_retries=0) as aclient:
            return await asyncio.gather(
                *(
                    aclient.messages.create(
                        model="haiku",
                        max_tokens=256,
                        messages=[{"role": "user", "content": f"async {i} [sim:words={i + 2}]"}],
                    )
                    for i in range(2)
                )
            )

    messages = asyncio.run(run())
    assert [m.content[0].text for m in messages] == [words_reply(2), words_reply(3)]
    assert len({m.id for m in messages}) == 2


def test_messages_stream_text_and_final_message(claude: anthropic.Anthropic):
    with claude.messages.stream(
        model="haiku",
        max_tokens=1024,
        messages=[{"role": "user", "content": "Count [sim:words=10] [sim:delay_ms=50]"}],
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 3, pieces
    assert "".join(pieces) == words_reply(10)
    assert final.content[0].text == words_reply(10)
    assert final.stop_reason == "end_turn"
    assert final.model == HAIKU_ID
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


def test_async_messages_stream(gateway):
    async def run():
        async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key="sk-unused", max_retries=0) as aclient:
            async with aclient.messages.stream(
                model="haiku", max_tokens=256, messages=[{"role": "user", "content": "[sim:words=5]"}]
            ) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                return text, await stream.get_final_message()

    text, final = asyncio.run(run())
    assert text == words_reply(5)
    assert final.content[0].text == text


def test_errors_are_the_sdks_typed_errors(claude: anthropic.Anthropic):
    with pytest.raises(anthropic.NotFoundError) as not_found:
        claude.messages.create(model="gpt-4", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert not_found.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model="haiku",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "image", "source": {
                "type": "url", "url": "https://example.com/cat.png"}}]}],
        )
    assert "fetches nothing" in bad.value.message
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model="haiku",
            max_tokens=10,
            tools=[READ_TOOL],
            messages=[{"role": "user", "content": "hi"}],
        )
    assert "direct backend" in bad.value.message
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(
            model="haiku", max_tokens=10, messages=[{"role": "user", "content": "slow down [sim:status=429]"}]
        )


def test_count_tokens(claude: anthropic.Anthropic):
    short = claude.messages.count_tokens(model="haiku", messages=[{"role": "user", "content": "hello"}])
    long = claude.messages.count_tokens(
        model="haiku", messages=[{"role": "user", "content": "hello there, how are you? " * 40}]
    )
    assert 0 < short.input_tokens < long.input_tokens


def test_models_list_and_retrieve(claude: anthropic.Anthropic):
    page = claude.models.list()
    assert page.has_more is False
    by_id = {m.id: m for m in page.data}
    assert by_id["haiku"].type == "model"
    assert by_id["haiku"].display_name == "Claude Haiku 4.5"
    assert by_id["haiku"].max_tokens > 0 and by_id["haiku"].max_input_tokens > by_id["haiku"].max_tokens
    assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
    one = claude.models.retrieve("sonnet[1m]")
    assert one.id == "sonnet[1m]"
    assert one.display_name == "Claude Sonnet 5 (1M context)"
    assert one.created_at is not None
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("no-such-model")


def test_stop_sequences_cut_the_answer(claude: anthropic.Anthropic):
    message = claude.messages.create(
        model="haiku",
        max_tokens=256,
        stop_sequences=[" w3"],
        messages=[{"role": "user", "content": "[sim:words=6]"}],
    )
    assert message.content[0].text == words_reply(2)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " w3")


def test_tool_round_trip_on_the_direct_backend(claude: anthropic.Anthropic):
    # conftest serves sonnet on the direct backend, which carries client tools.
    prompt = 'read it [sim:tool=Read {"file_path": "/srv/notes.txt"}]'
    with claude.messages.stream(
        model="sonnet", max_tokens=256, tools=[READ_TOOL], messages=[{"role": "user", "content": prompt}]
    ) as stream:
        asked = stream.get_final_message()
    assert asked.stop_reason == "tool_use"
    assert [block.type for block in asked.content] == ["tool_use"]
    call = asked.content[0]
    assert (call.name, call.input) == ("Read", {"file_path": "/srv/notes.txt"})

    answer = claude.messages.create(
        model="sonnet",
        max_tokens=256,
        tools=[READ_TOOL],
        messages=[
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": asked.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "1\tthe launch code is 4711"}]},
        ],
    )
    assert answer.stop_reason == "end_turn"
    assert [block.type for block in answer.content] == ["text"]
    assert answer.content[0].text == "Simulated reply: tool result: 1\tthe launch code is 4711"


def test_extended_thinking_on_the_direct_backend(claude: anthropic.Anthropic):
    # conftest serves sonnet on the direct backend, which passes `thinking` on.
    prompt = 'read it [sim:tool=Read {"file_path": "/srv/notes.txt"}]'
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with claude.messages.stream(
        model="sonnet", max_tokens=2048, thinking=thinking, tools=[READ_TOOL],
        messages=[{"role": "user", "content": prompt}],
    ) as stream:
        asked = stream.get_final_message()
    assert [block.type for block in asked.content] == ["thinking", "tool_use"]
    assert asked.content[0].thinking.startswith("Simulated thinking")
    assert asked.content[0].signature.startswith("sim_sig_")

    # The SDK hands the signed thinking back with the tool result, as the API requires.
    answer = claude.messages.create(
        model="sonnet", max_tokens=2048, thinking=thinking, tools=[READ_TOOL],
        messages=[
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": asked.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": asked.content[1].id, "content": "42"}]},
        ],
    )
    assert [block.type for block in answer.content] == ["thinking", "text"]
    assert answer.content[1].text == "Simulated reply: tool result: 42"
