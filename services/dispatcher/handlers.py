"""The dispatcher's consumer handler: a batch of Kafka messages becomes jobs (what is
not a job is kept on the dead-letter topic for a person), handed to the
:class:`~services.dispatcher.batch.Dispatcher`; a failed batch is redelivered after a
growing pause."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import structlog
from pydantic import ValidationError

from services.dispatcher.attempt import Send
from services.dispatcher.batch import Dispatcher, StoppingError
from services.dispatcher.policy import now_utc
from services.dispatcher.settings import DispatcherSettings
from shared.contract.jobs import ActionJob, UnreadableLetter
from shared.platform.stream import with_backoff

log = structlog.get_logger(__name__)


def parse_jobs(bodies: Sequence[bytes]) -> tuple[list[ActionJob], list[tuple[bytes, str]]]:
    """Jobs, and the messages that are not jobs with the reason (field locations and
    error kinds only: input values may hold a user's header secrets)."""
    jobs: list[ActionJob] = []
    bad: list[tuple[bytes, str]] = []
    for body in bodies:
        try:
            jobs.append(ActionJob.parse(body))
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['type']}"
                for e in exc.errors(include_input=False, include_url=False)[:10]
            )
            bad.append((body, reason[:500]))
    return jobs, bad


class JobHandler:
    """Handles the batches of both subscribers (actions and retry topics); its
    dispatcher is set when the runtime starts, before the consumers do."""

    def __init__(self, settings: DispatcherSettings, send: Send) -> None:
        self.settings = settings
        self.send = send
        self.dispatcher: Dispatcher | None = None
        self._failures = 0
        #: A batch's end failed: the next batch waits first (it is the one fetched
        #: again, most likely: not hammered at once).
        self._pause_next = False

    async def handle(
        self, bodies: Sequence[bytes], *, from_retry: bool, interrupt: asyncio.Event
    ) -> Awaitable[None] | None:
        """Begin the batch; returns what is left of it (its attempts' end), or None."""
        settings = self.settings
        if self._pause_next:
            self._pause_next = False
            await with_backoff(self._failures)
        jobs, bad = parse_jobs(bodies)
        topic = settings.retry_topic if from_retry else settings.actions_topic
        for body, reason in bad:
            # Not dropped, not retried: kept on the dead-letter topic for a person.
            log.error("unreadable job sent to the dead-letter topic", topic=topic, error=reason)
            letter = UnreadableLetter.of(topic, body, reason, now_utc())
            await self.send(settings.dlq_topic, b"unreadable", letter.dump())
        assert self.dispatcher is not None
        try:
            rest = await self.dispatcher.begin_batch(
                jobs, from_retry=from_retry, interrupt=interrupt
            )
        except StoppingError:
            raise
        except Exception:
            log.exception("batch failed; it will be redelivered", jobs=len(jobs))
            await self._pause()
            raise
        if rest is None:
            self._failures = 0
            return None
        return self._ended(rest, len(jobs))

    async def _ended(self, rest: Awaitable[None], jobs: int) -> None:
        try:
            await rest
        except StoppingError:
            raise
        except Exception:
            # Raised at once, so that the batch is rewound before more work begins
            # behind it; the pause comes before the next batch instead.
            log.exception("batch failed; it will be redelivered", jobs=jobs)
            self._failures += 1
            self._pause_next = True
            raise
        self._failures = 0

    async def _pause(self) -> None:
        """A growing pause after each failure in a row, before the batch is redelivered."""
        self._failures += 1
        await with_backoff(self._failures)
