"""The API as its own process (``python -m services.api``) against its OpenAPI
document: Schemathesis generates requests for every operation from /openapi.json;
no answer may be a 5xx, and every answer must match the document (status code,
content type, headers, body schema). Also: the log file holds no secret."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apiutil import JWT_SECRET, SECRETS_KEY
from tests.procs import ServiceProcess, http_get

# Kafka: the API is ready (/readyz) only with its broker reachable.
pytestmark = [pytest.mark.db, pytest.mark.kafka, pytest.mark.slow]

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


@pytest.fixture
def api(env: dict[str, str], database_url: str, tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(
        "api",
        {
            **env,
            "DATABASE_URL": database_url,
            "JWT_SECRET": JWT_SECRET,
            "SECRETS_KEY": SECRETS_KEY,
            "ACTIONS_TOPIC": f"test.api.{uuid.uuid4().hex[:8]}",
        },
        tmp_path,
    ).start()
    try:
        proc.wait_http("/readyz", timeout=60)
        yield proc
    finally:
        proc.stop()


def post(url: str, body: dict[str, object], headers: dict[str, str] | None = None) -> object:
    request = urllib.request.Request(  # noqa: S310 (127.0.0.1 only)
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


def test_every_operation_conforms_to_the_openapi_document(
    api: ServiceProcess, tmp_path: Path
) -> None:
    status, raw = http_get(api.base + "/openapi.json")
    assert status == 200
    document = json.loads(raw)
    assert document["openapi"] == "3.1.0"
    assert len(document["paths"]) >= 15

    password = "pw-" + uuid.uuid4().hex
    post(api.base + "/v1/auth/register",
         {"username": "fuzzer", "email": "fuzzer@example.org", "password": password})  # fmt: skip
    token = post(api.base + "/v1/auth/login", {"username": "fuzzer", "password": password})
    assert isinstance(token, dict)
    access = token["access_token"]
    auth = {"Authorization": f"Bearer {access}"}
    trigger = {
        "name": "fuzz target", "chain_id": 1, "registry": "reputation",
        "conditions": [{"condition_type": "score_threshold", "operator": ">", "value": "1"}],
        "actions": [{"action_type": "rest", "config": {"url": "https://example.org/h",
                                                       "signing_secret": "fuzz-secret-1"}}],
    }  # fmt: skip
    post(api.base + "/v1/triggers", trigger, auth)

    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            api.base + "/openapi.json",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "8004",
            "--request-timeout",
            "20",
            "-H",
            f"Authorization: Bearer {access}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,  # schemathesis keeps a cache in its working directory
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    counts = re.search(r"(\d+) generated, (\d+) passed\s*$", output, re.MULTILINE)
    assert counts is not None, output[-3000:]
    assert int(counts.group(1)) == int(counts.group(2)) > 500

    log = api.log_text()
    # every 5xx of ours is logged as "request failed" (aiohttp's own 400s for
    # malformed HTTP, e.g. NUL in a header, log a traceback of the parser: not ours)
    assert '"request failed"' not in log, log[-3000:]
    for secret in (password, access, "fuzz-secret-1"):
        assert secret not in log
