"""Run a service as its own process, the way deployments do: ``python -m services.X``;
and reach the ops port (/metrics, detailed /readyz) of one running in process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient

from shared.platform.web import ops_port
from tools.localnet import free_port

ROOT = Path(__file__).resolve().parent.parent


def http_get(url: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (127.0.0.1 only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


#: Services with a public port and a second one for /metrics and the detailed
#: /readyz (OPS_PORT); the others serve everything on their one port.
OPS_PORT_SERVICES = frozenset({"api", "ingest"})


class ServiceProcess:
    """One service process with its own port(s) and log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.ops_port = free_port() if name in OPS_PORT_SERVICES else self.port
        self.env = {**os.environ, **env, "HTTP_PORT": str(self.port), "LOG_LEVEL": "INFO"}
        if name in OPS_PORT_SERVICES:
            self.env["OPS_PORT"] = str(self.ops_port)
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """The service's own port (the API's and ingest's public one)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_base(self) -> str:
        """Where /metrics and the detailed /readyz are (``base`` for the consumers)."""
        return f"http://127.0.0.1:{self.ops_port}"

    @property
    def metrics_url(self) -> str:
        return metrics_url(self)

    def start(self) -> ServiceProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_http(
        self, path: str = "/healthz", *, status: int = 200, timeout: float = 30, ops: bool = False
    ) -> bytes:
        """Until ``path`` (on the ops port with ``ops``) answers ``status``; its body."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                )
            try:
                code, body = http_get((self.ops_base if ops else self.base) + path, timeout=2)
            except OSError as exc:
                last = exc
            else:
                if code == status:
                    return body
                last = (code, body[:300])
            time.sleep(0.1)
        raise AssertionError(f"{self.name}{path} never answered {status}: {last}")

    def terminate(self, *, timeout: float = 10) -> float:
        """SIGTERM, wait for the exit; returns the seconds it took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL by the process's own pid."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def metrics_url(proc: ServiceProcess) -> str:
    """The URL of a service's Prometheus metrics: the ops port of the API and
    ingest, the one port of the others."""
    return f"{proc.ops_base}/metrics"


async def ops_get(client: TestClient[web.Request, web.Application], path: str) -> tuple[int, str]:
    """``path`` on the ops port of the API or ingest running in ``client``'s server."""
    url = f"http://127.0.0.1:{ops_port(client.app)}{path}"
    async with client.session.get(url) as resp:
        return resp.status, await resp.text()
