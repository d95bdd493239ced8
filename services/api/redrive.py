"""The producer of redriven jobs: started on first use (the API serves everything
else without Kafka), acks=all and idempotent like the matcher's."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaProducer

from shared.contract.jobs import ActionJob
from shared.platform.kafka import new_producer, stop_producer
from shared.platform.kafka_access import KafkaAccess


class KafkaUnavailableError(Exception):
    """Kafka did not take the job in time."""


class JobProducer:
    def __init__(self, kafka: KafkaAccess | str, topic: str, *, timeout: float = 10.0) -> None:
        self.topic = topic
        self._kafka = kafka
        self._timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = new_producer(
                    self._kafka,
                    "erc8004-api",
                    linger_ms=0,
                    request_timeout_ms=int(self._timeout * 1000),
                )
                try:
                    async with asyncio.timeout(self._timeout):
                        await producer.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def send(self, job: ActionJob) -> None:
        """Produce the job (key: its trigger id) and wait for the broker's ack."""
        try:
            producer = await self._started()
            async with asyncio.timeout(self._timeout):
                await producer.send_and_wait(
                    self.topic, value=job.dump(), key=job.trigger_id.encode()
                )
        except (TimeoutError, OSError, ConnectionError) as exc:
            raise KafkaUnavailableError(str(exc)) from exc
        except Exception as exc:  # aiokafka's KafkaError family
            if type(exc).__module__.startswith("aiokafka"):
                raise KafkaUnavailableError(str(exc)) from exc
            raise

    async def close(self) -> None:
        if self._producer is not None:
            await stop_producer(self._producer)
            self._producer = None
