"""The gateway keeps the contract its OpenAPI document states, under inputs
generated from that document (schemathesis): valid, invalid and in
sequences that create, read and delete resources.

For every generated request: no 5xx, only documented status codes, every
response in its documented content type and schema, and nothing that was
deleted still served. Run twice: with the admin key over the whole API, and
with a project key over `/v1`, whose other projects it may not touch.

The generator's seed is fixed, so a run is repeatable; schemathesis prints
the failing request as a curl command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import running_gateway

ADMIN_KEY = "contract-admin-key-0123456789"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "use_after_free",
    ]
)
# Cases per operation and phase; the whole run takes well under a minute.
EXAMPLES = "15"
SEED = "1"


@pytest.fixture(scope="module")
def keyed_gateway(simulator):
    settings = dict(
        CCGATE_ADMIN_KEY=ADMIN_KEY,
        # Generated chat requests go to the simulator over HTTP: a CLI
        # process each would take minutes for nothing this test looks at.
        CCGATE_DEFAULT_BACKEND="api",
    )
    with running_gateway(simulator, settings) as gw:
        yield gw


def admin(gateway, method: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{gateway.url}{path}",
        data=json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def schemathesis(gateway, key: str, *extra: str, cwd: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{gateway.url}/openapi.json",
        "--header", f"Authorization: Bearer {key}",
        "--checks", CHECKS,
        "--max-examples", EXAMPLES,
        "--seed", SEED,
        "--generation-database", "none",
        "--workers", "1",
        "--request-timeout", "30",
        *extra,
    ]
    # In a temp directory: schemathesis keeps a cache where it runs.
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert run.returncode == 0, f"schemathesis found contract failures:\n{run.stdout}\n{run.stderr}"
    assert " passed" in run.stdout, run.stdout


def test_the_whole_api_with_the_admin_key(keyed_gateway, tmp_path) -> None:
    schemathesis(keyed_gateway, ADMIN_KEY, cwd=tmp_path)


def test_v1_with_a_project_key(keyed_gateway, tmp_path) -> None:
    admin(keyed_gateway, "POST", "/admin/projects", {"id": "contract", "budget": {"daily_usd": 100}})
    key = admin(keyed_gateway, "POST", "/admin/projects/contract/keys", {})["key"]
    schemathesis(keyed_gateway, key, "--include-path-regex", "^/v1/", cwd=tmp_path)
