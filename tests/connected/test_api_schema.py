"""The API as its own process (``python -m services.api``) against its OpenAPI
document: Schemathesis runs every check it has (``--checks all``) through its
coverage, fuzzing and stateful phases (three runs at once, see ``PARTS``). No
answer may be a 5xx; every answer must match the document (status code, content
type, headers, body schema, ``Allow`` of a 405); every request the document calls
valid must be accepted and every one it calls invalid refused, but for the rules a
schema cannot express, which tests/schema_exceptions.py lists (as docs/api.md does)
and excuses one by one. Also: the log file holds no secret."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.apiutil import JWT_SECRET, SECRETS_KEY
from tests.conftest import StartService
from tests.procs import ROOT, ServiceProcess, http_get

# Kafka: the API is ready (/readyz) only with its broker reachable.
pytestmark = [pytest.mark.db, pytest.mark.kafka, pytest.mark.slow, pytest.mark.serial]

#: What only a login's access token may do (an API key answers 403): fuzzed in a run
#: of their own, with such a token. Logging out everywhere is left out of it, since it
#: revokes the token the run goes on with (the API-key run covers its 403).
LOGIN_ONLY = r"^/v1/(api-keys.*|auth/password)$"

#: The run with an API key, as parts that run at once (Schemathesis is CPU-bound in
#: one process, and its coverage phase of the trigger bodies, a union of eleven
#: condition types nested in groups, is most of its time: thousands of cases). The
#: coverage phase is split by method, which covers every operation once; the other
#: phases run over every operation together (the stateful phase follows links from
#: one operation to another).
PARTS: dict[str, tuple[str, ...]] = {
    "coverage of POST": ("--phases", "coverage", "--include-method", "POST"),
    "coverage of the other methods": ("--phases", "coverage", "--exclude-method", "POST"),
    "examples, fuzzing, stateful": ("--phases", "examples,fuzzing,stateful"),
}


def schemathesis(
    url: str, token: str, cwd: Path, *extra: str, max_examples: int = 25
) -> tuple[int, str]:
    """``st run`` with every check and phase (unless ``extra`` names some), a fixed
    seed, the exceptions' hook."""
    phases = () if "--phases" in extra else ("--phases", "examples,coverage,fuzzing,stateful")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            url,
            "--checks",
            "all",
            *phases,
            "--max-examples",
            str(max_examples),
            "--seed",
            "8004",
            "--request-timeout",
            "20",
            "--output-truncate",
            "false",
            "-H",
            f"Authorization: Bearer {token}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,  # the longest part about 150 s on 2 cores beside the others
        check=False,
        cwd=cwd,  # schemathesis keeps a cache in its working directory
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.schema_exceptions",
        },
    )
    return result.returncode, result.stdout + result.stderr


def run_parts(url: str, token: str, directory: Path) -> dict[str, tuple[int, str]]:
    """Every part of ``PARTS`` at once, each in a directory of its own (Schemathesis
    keeps its cache in its working directory)."""
    with ThreadPoolExecutor(max_workers=len(PARTS)) as pool:
        futures = {}
        for n, (part, extra) in enumerate(PARTS.items()):
            cwd = directory / f"part-{n}"
            cwd.mkdir()
            futures[part] = pool.submit(schemathesis, url, token, cwd, *extra)
        return {part: future.result() for part, future in futures.items()}


def operations_tested(output: str) -> int:
    """How many operations a run tested (its summary's "Tested: N")."""
    found = re.search(r"Tested:\s+(\d+)", output)
    assert found is not None, output[-3000:]
    return int(found.group(1))


def report(output: str) -> str:
    """The output for an assertion message: without the reproducing curl lines
    (a batch of generated events is long), the end of it."""
    return "\n".join(line for line in output.splitlines() if not line.lstrip().startswith("curl "))[
        -30000:
    ]


def passed(output: str) -> int:
    counts = re.search(r"(\d+) generated, (\d+) passed", output)
    assert counts is not None, output[-3000:]
    assert counts.group(1) == counts.group(2), report(output)
    return int(counts.group(1))


@pytest.fixture
def api(env: dict[str, str], database_url: str, start_service: StartService) -> ServiceProcess:
    return start_service(
        "api",
        {
            **env,
            "DATABASE_URL": database_url,
            "JWT_SECRET": JWT_SECRET,
            "SECRETS_KEY": SECRETS_KEY,
            "ACTIONS_TOPIC": f"test.api.{uuid.uuid4().hex[:8]}",
        },
    )


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

    # the run authenticates with an API key: a fuzzed "log out everywhere" would
    # otherwise revoke its own token and leave every later request a 401
    created = post(api.base + "/v1/api-keys", {"name": "fuzz"}, auth)
    assert isinstance(created, dict)
    key = created["key"]
    outputs = run_parts(api.base + "/openapi.json", key, tmp_path)
    for part, (code, output) in outputs.items():
        assert code == 0, (part, report(output))
    generated = {part: passed(output) for part, (_, output) in outputs.items()}
    assert sum(generated.values()) > 1000, generated
    assert min(generated.values()) > 100, generated
    # between them, the coverage parts test every operation the other part tests
    tested = {part: operations_tested(output) for part, (_, output) in outputs.items()}
    assert tested["examples, fuzzing, stateful"] >= len(document["paths"]), tested
    assert (
        tested["coverage of POST"] + tested["coverage of the other methods"]
        == tested["examples, fuzzing, stateful"]
    ), tested
    everything = outputs["examples, fuzzing, stateful"][1]
    # only the four operations of a login's token answer an API key 403 throughout
    assert "Authentication failed: 4 operations" in everything, everything[-4000:]
    assert re.search(r"Stateful.*?Scenarios:\s+[1-9]", everything, re.DOTALL), everything[-4000:]

    code, output = schemathesis(
        api.base + "/openapi.json", access, tmp_path, "--include-path-regex", LOGIN_ONLY
    )
    assert code == 0, report(output)
    assert passed(output) > 50

    log = api.log_text()
    # every 5xx of ours is logged as "request failed" (aiohttp's own 400s for
    # malformed HTTP, e.g. NUL in a header, log a traceback of the parser: not ours)
    assert '"request failed"' not in log, log[-3000:]
    for secret in (password, access, key, "fuzz-secret-1"):
        assert secret not in log
