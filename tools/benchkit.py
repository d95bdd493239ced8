"""What the benchmarks and the chaos run share (the tests use a part of it): the
stack a run measures, the service under measurement as its own process, where
results go, percentiles, a user row of its own, events produced as the ingest
relay produces them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from shared.contract.events import Event
from shared.contract.jobs import EventMessage, dump_message
from shared.contract.topics import partition_key

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"


def stack() -> tuple[str, str]:
    """(DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS) of the stack a run uses: the database
    URL names the one scratch databases are made and dropped from."""
    return os.environ["DATABASE_URL"], os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


def bench_py_args() -> list[str]:
    """BENCH_PY_ARGS: interpreter options for the service measured, e.g.
    "-m cProfile -o d.prof"."""
    return os.environ.get("BENCH_PY_ARGS", "").split()


@dataclass
class BenchService:
    name: str
    proc: subprocess.Popen[bytes]
    #: its stdout and stderr
    log: IO[bytes]

    def check(self) -> None:
        """SystemExit, with the end of its output, if the process exited."""
        if self.proc.poll() is not None:
            self.log.seek(0)
            raise SystemExit(f"{self.name} exited:\n{self.log.read().decode()[-3000:]}")


@contextmanager
def service(
    name: str,
    env: dict[str, str],
    *,
    wrap: Sequence[str] = (),
    py_args: Sequence[str] = (),
    stop_within: float = 20,
) -> Iterator[BenchService]:
    """``python -m services.<name>`` from ROOT with this environment (``wrap`` before
    it, e.g. taskset; ``py_args`` the interpreter's options), its output in a
    temporary file; terminated at the end."""
    with tempfile.TemporaryFile() as log:
        cmd = [*wrap, sys.executable, *py_args, "-m", f"services.{name}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            yield BenchService(name, proc, log)
        finally:
            proc.terminate()
            proc.wait(timeout=stop_within)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(names: dict[int, str]) -> dict[str, float]:
    """CPU seconds (user + system) so far of every process of the machine, summed
    by who it is: the pids in ``names`` by their name, this process as "load
    generator" (the bench posts the load), PostgreSQL's processes as "postgres",
    Kafka's JVM as "kafka", everything else as "other". Take it before and after a
    phase (:func:`cpu_split`): how the cores were shared."""
    totals: dict[str, float] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        if pid in names:
            who = names[pid]
        elif pid == me:
            who = "load generator"
        elif comm == "postgres":
            who = "postgres"
        elif comm == "java" and b"kafka" in cmdline:
            who = "kafka"
        else:
            who = "other"
        totals[who] = totals.get(who, 0.0) + seconds
    return totals


def cpu_split(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Cores each group kept busy between two :func:`cpu_seconds` (CPU seconds over
    wall seconds; processes that ended in between are not counted)."""
    return {
        who: round((after[who] - before.get(who, 0.0)) / wall, 3)
        for who in sorted(after, key=lambda w: before.get(w, 0.0) - after[w])
        if after[who] - before.get(who, 0.0) > 0
    }


@dataclass(frozen=True)
class Schedule:
    """Seconds a thread ran on a core and waited for one while runnable, so far
    (Linux's ``/proc/<pid>/schedstat``: the task whose id is the pid, the process's
    main thread alone; the kernel counts in nanoseconds)."""

    running: float
    waiting: float


def main_thread_schedule(pid: int) -> Schedule | None:
    """Where the main thread of ``pid`` spent its time so far; None where the kernel
    does not say (not Linux, or no scheduler statistics)."""
    try:
        fields = Path(f"/proc/{pid}/schedstat").read_text().split()
        running, waiting = int(fields[0]), int(fields[1])
    except (OSError, IndexError, ValueError):
        return None
    if running == 0 and waiting == 0:
        return None  # a kernel keeping no scheduler statistics writes zeros
    return Schedule(running=running / 1e9, waiting=waiting / 1e9)


def schedule_split(before: Schedule, after: Schedule, wall: float) -> dict[str, float]:
    """Shares of ``wall`` seconds between two :func:`main_thread_schedule`: on a core,
    runnable but waiting for a core (the machine busy elsewhere), and idle (the
    rest: the thread had nothing to run, e.g. every request out and no answer back).
    A single-threaded event loop runs no faster than its running share allows."""
    if wall <= 0:
        raise ValueError("wall must be positive")
    running = (after.running - before.running) / wall
    waiting = (after.waiting - before.waiting) / wall
    return {
        "running": round(running, 3),
        "waiting_for_core": round(waiting, 3),
        "idle": round(max(0.0, 1.0 - running - waiting), 3),
    }


def timestamp() -> str:
    """The time now, as results and logs are named by it."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def save(kind: str, result: dict[str, Any]) -> Path:
    """``result`` written to bench-results/<kind>-<time>.json; the path, from ROOT."""
    path = RESULTS / f"{kind}-{timestamp()}.json"
    write_json(path, result)
    return path.relative_to(ROOT)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def insert_user(conn: asyncpg.Connection, prefix: str, user: str | None = None) -> str:
    """A new user, of this id or a new one (username ``prefix`` + 8 hex digits of it);
    its id."""
    user = user or str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO users (id, username, email, password_hash) VALUES ($1, $2, $3, 'x')",
        user,
        f"{prefix}{user[:8]}",
        f"{user[:8]}@example.org",
    )
    return user


async def send_events(
    producer: AIOKafkaProducer, topic: str, events: Sequence[Event], *, ingested_at: datetime
) -> list[asyncio.Future[RecordMetadata]]:
    """Each event as the relay produces it (an EventMessage with its partition key),
    in order; the futures of their delivery."""
    return [
        await producer.send(
            topic,
            dump_message(EventMessage(kind="event", event=e, ingested_at=ingested_at)),
            key=partition_key(e.chain_id, e.agent_id),
        )
        for e in events
    ]
