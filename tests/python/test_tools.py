"""Client-side tool calling and images through the official `openai` SDK,
on the direct backend (conftest serves sonnet with `backends = { sonnet = "api" }`)."""

from __future__ import annotations

import json

import openai
import pytest

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_tool_call_round_trip(client: openai.OpenAI):
    question = 'What is the weather in Paris? [sim:tool=get_weather {"city":"Paris"}]'
    messages: list[dict] = [{"role": "user", "content": question}]
    first = client.chat.completions.create(model="sonnet", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # The client runs the tool and sends the result back as a `tool` message.
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"})
    second = client.chat.completions.create(model="sonnet", messages=messages, tools=TOOLS)
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert not answer.message.tool_calls
    assert "18 degrees and sunny" in answer.message.content


def test_tool_calls_stream(client: openai.OpenAI):
    stream = client.chat.completions.create(
        model="sonnet",
        messages=[{"role": "user", "content": '[sim:tool=get_weather {"city":"Oslo"}]'}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id and deltas[0].function.name == "get_weather"
    assert {d.index for d in deltas} == {0}
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tools_on_the_cli_backend_are_refused(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS
        )
    assert "direct backend" in str(refused.value)


def test_an_image_is_answered_and_a_url_refused(client: openai.OpenAI):
    def ask(url: str):
        return client.chat.completions.create(
            model="sonnet",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "What is this? [sim:words=2]"},
                    ],
                }
            ],
        )

    assert ask(f"data:image/png;base64,{PNG}").choices[0].message.content.startswith("Simulated reply:")
    with pytest.raises(openai.BadRequestError) as refused:
        ask("https://example.com/cat.png")
    assert "only data: URLs" in str(refused.value)
