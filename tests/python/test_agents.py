"""Agents through the official `openai` SDK: the agent fields travel in
`extra_body`, a streamed agentic run reads as a clean text stream (tool
activity rides on chunks whose delta is empty), and `session_id` continues
the conversation."""

from __future__ import annotations

import json
import tempfile
import urllib.request
from pathlib import Path

import openai


def admin(gateway, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{gateway.url}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_an_agent_reads_a_file_while_the_sdk_sees_only_text(gateway, client: openai.OpenAI) -> None:
    with tempfile.TemporaryDirectory(prefix="ccgate-agent-") as tmp_name:
        root = Path(tmp_name).resolve()
        (root / "notes.txt").write_text("the launch is on tuesday\n")
        admin(gateway, "POST", "/admin/projects", {"id": "agents"})
        policy = {"allowed_roots": [str(root)], "allowed_tools": ["Read", "Write"], "max_turns": 3}
        assert admin(gateway, "PUT", "/admin/projects/agents/agent-policy", policy)["allowed_roots"] == [str(root)]

        prompt = f'[sim:tool=Read {{"file_path":"{root / "notes.txt"}"}}] what is in my notes?'
        stream = client.chat.completions.create(
            model="haiku",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            extra_body={"project_id": "agents", "working_directory": str(root)},
        )
        text, tools, session = "", [], None
        for chunk in stream:
            extension = (chunk.model_extra or {}).get("x_ccgate") or {}
            if "tool" in extension:
                tools.append(extension["tool"])
                assert chunk.choices[0].delta.content is None
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            session = extension.get("session_id") or session
        assert "the launch is on tuesday" in text
        assert [t["type"] for t in tools] == ["use", "result"]
        assert tools[0]["name"] == "Read"
        assert session

        # The next request continues the same session and writes a file.
        out = root / "summary.txt"
        raw = client.chat.completions.with_raw_response.create(
            model="haiku",
            messages=[{"role": "user", "content": f'[sim:tool=Write {{"file_path":"{out}","content":"tuesday"}}] save it'}],
            extra_body={"project_id": "agents", "session_id": session},
        )
        assert raw.headers["x-ccgate-session-id"] == session
        completion = raw.parse()
        assert completion.model_extra["x_ccgate"]["session_id"] == session
        assert out.read_text() == "tuesday"

        # Outside the roots: refused with 403 before anything runs.
        try:
            client.chat.completions.create(
                model="haiku",
                messages=[{"role": "user", "content": "hi"}],
                extra_body={"project_id": "agents", "working_directory": str(root.parent)},
            )
            raise AssertionError("a directory outside the roots was accepted")
        except openai.PermissionDeniedError as error:
            assert "outside allowed_roots" in str(error)
