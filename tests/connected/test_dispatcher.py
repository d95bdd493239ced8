"""The dispatcher end to end: jobs on erc8004.actions -> telegram / rest / mcp against
real local servers -> action_results, retries through erc8004.actions.retry, dead
letters on erc8004.actions.dlq. The dispatcher runs as its own process; nothing is
mocked below HTTP."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from eth_hash.auto import keccak
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.contract.events import Event
from shared.contract.jobs import ActionJob, DeadLetter, UnreadableLetter
from shared.platform.secrets import SecretBox
from tests.conftest import ENV
from tests.dispatcherutil import (
    Dispatch,
    McpAgentServer,
    TriggerAction,
    an_event,
    feedback_trigger,
    has_status,
    link_chat,
    metric_value,
    recorded,
    results,
    serve_mcp,
    statuses,
    store_events,
    wait_for,
)
from tests.kafkautil import read_topic
from tests.procs import http_get
from tools.localnet import Receiver, Seen, serve

pytestmark = [pytest.mark.db, pytest.mark.kafka]

IDENTITY = "0x8004A169FB4a3325136EB29fA0ceB6D2e539a432"
OWNER = "0x" + "ab" * 20


async def rest_trigger(
    db: asyncpg.Connection,
    config: dict[str, Any],
    *,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
) -> TriggerAction:
    """A trigger with one rest action; the signing secret and the secret headers stored
    encrypted, as the API does."""
    (rest,) = await feedback_trigger(db, ("rest", config))
    action = rest.action
    box = SecretBox(_dev_key())
    if secret is not None:
        await db.execute(
            "UPDATE trigger_actions SET secret_ciphertext = $2 WHERE id = $1",
            action,
            box.encrypt(secret, context=f"trigger_actions:{action}"),
        )
    if headers is not None:
        await db.execute(
            "UPDATE trigger_actions SET secret_headers_ciphertext = $2,"
            " secret_header_names = $3 WHERE id = $1",
            action,
            box.encrypt(
                orjson.dumps(headers).decode(), context=f"trigger_actions:{action}:headers"
            ),
            sorted(headers),
        )
    return rest


async def rest_job(
    db: asyncpg.Connection,
    config: dict[str, Any],
    *,
    event: Event | None = None,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
) -> ActionJob:
    """A trigger with one rest action (secrets stored as the API does) and a job of it."""
    return (await rest_trigger(db, config, secret=secret, headers=headers)).job(event)


def _dev_key() -> str:
    return ENV["SECRETS_KEY"]


# --------------------------------------------------------------------------- rest


async def test_rest_delivered_after_retries_signed_with_one_idempotency_key(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    verified: list[bool] = []

    def respond(seen: Seen, n: int) -> web.Response:
        try:
            Webhook(secret).verify(seen.body, seen.headers)
            verified.append(True)
        except WebhookVerificationError:
            verified.append(False)
            return web.Response(status=401)
        if n <= 2:
            return web.Response(status=503, text="warming up")
        return web.json_response({"received": True})

    async with serve(Receiver(respond=respond)) as receiver:
        config = {
            "url": f"{receiver.base}/hooks/{{{{event.agent_id}}}}",
            "body_template": {"agent": "{{ event.agent_id }}", "who": "{{ trigger.name }}"},
            "max_attempts": 5,
        }
        rest = await rest_trigger(db, config, secret=secret)
        job = rest.job()
        dispatcher.start()
        await dispatcher.produce([job])
        await wait_for(
            lambda: has_status(db, job.job_id, "success"), within=30, what="delivery after retries"
        )
        await asyncio.sleep(1.0)  # nothing more may arrive

    rows = await results(db, job.job_id)
    assert statuses(rows) == ["retrying", "retrying", "success"]
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    assert [r["retry_count"] for r in rows] == [0, 1, 2]
    assert rows[0]["response_data"]["status"] == 503
    assert rows[0]["error_message"] == "HTTP 503"
    assert rows[2]["response_data"]["status"] == 200
    assert all(r["trigger_id"] == rest.trigger and r["user_id"] == rest.user for r in rows)
    assert len(receiver.seen) == 3
    assert verified == [True, True, True]
    assert {s.headers["idempotency-key"] for s in receiver.seen} == {job.job_id}
    assert {s.headers["webhook-id"] for s in receiver.seen} == {job.job_id}
    assert {s.path for s in receiver.seen} == {"/hooks/7"}
    assert receiver.seen[0].json() == {"agent": "7", "who": "test trigger"}
    # The waits between attempts are full jitter (uniform from 0): their spread is
    # random, so it is checked where the draw is fixed (unit/test_dispatcher.py).


async def test_a_replaced_event_is_retracted_and_its_replacement_delivered(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    """A firing of an event version a reorg replaced before its action ran is not
    delivered (terminal 'retracted', saying which reorg); the canonical event at the
    same position is another version, so its firing is another job, delivered."""
    async with serve(Receiver()) as receiver:
        config = {"url": f"{receiver.base}/hook", "max_attempts": 2}
        rest = await rest_trigger(db, config)
        replaced = an_event(41, block_hash="0x" + "aa" * 32)
        await store_events(db, [replaced])
        reorg = await db.fetchval(
            "INSERT INTO reorgs (chain_id, from_block, reason) VALUES ($1, $2, 'test')"
            " RETURNING id",
            replaced.chain_id,
            replaced.block_number,
        )
        canonical = replaced.model_copy(update={"block_hash": "0x" + "bb" * 32, "score": None})
        await store_events(db, [canonical])
        jobs = [rest.job(event) for event in (replaced, canonical)]
        assert jobs[0].job_id != jobs[1].job_id  # same position, another version
        dispatcher.start()
        await dispatcher.produce(jobs)

        async def both_recorded() -> bool:
            return all([await results(db, j.job_id) for j in jobs])

        await wait_for(both_recorded, within=30, what="both jobs recorded")
        await asyncio.sleep(0.5)

    (retracted,) = await results(db, jobs[0].job_id)
    assert retracted["status"] == "retracted"
    assert retracted["error_message"] == (f"retracted: reorg {reorg} replaced the event's block")
    assert statuses(await results(db, jobs[1].job_id)) == ["success"]
    assert [s.headers["idempotency-key"] for s in receiver.seen] == [jobs[1].job_id]


async def test_every_attempt_row_names_the_event_version_and_the_trigger_version(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    """The rows of a job's attempts carry the job's event version ({id}@{block_hash},
    not only the position) and the trigger version its explain names; a job whose
    explain names none (or not as a whole number) leaves trigger_version NULL."""

    def respond(seen: Seen, n: int) -> web.Response:
        return web.Response(status=503) if n == 1 else web.json_response({"ok": True})

    async with serve(Receiver(respond=respond)) as receiver:
        config = {"url": f"{receiver.base}/hook", "max_attempts": 3}
        rest = await rest_trigger(db, config)
        events = [an_event(51, block_hash="0x" + "cd" * 32), an_event(52), an_event(53)]
        explains: list[dict[str, Any]] = [
            {"fired": True, "trigger_version": 7},
            {"fired": True},
            {"fired": True, "trigger_version": "7"},
        ]
        jobs = [
            rest.job(event).model_copy(update={"explain": explain})
            for event, explain in zip(events, explains, strict=True)
        ]
        dispatcher.start()
        await dispatcher.produce(jobs[:1])
        await wait_for(
            lambda: has_status(db, jobs[0].job_id, "success"),
            within=30,
            what="delivery after a retry",
        )
        await dispatcher.produce(jobs[1:])

        async def all_recorded() -> bool:
            return all([await results(db, j.job_id) for j in jobs[1:]])

        await wait_for(all_recorded, within=30, what="the other jobs recorded")

    rows = await results(db, jobs[0].job_id)
    assert statuses(rows) == ["retrying", "success"]
    for row in rows:
        assert row["event_id"] == events[0].id
        assert row["event_version"] == f"{events[0].id}@0x{'cd' * 32}"
        assert row["trigger_version"] == 7
    for job, event in zip(jobs[1:], events[1:], strict=True):
        (row,) = await results(db, job.job_id)
        assert row["event_version"] == f"{event.id}@{event.block_hash}"
        assert row["trigger_version"] is None


async def test_rest_secret_headers_reach_the_receiver_and_nowhere_else(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    token = "Bearer tok-5d0b-very-secret"

    def echo(seen: Seen, n: int) -> web.Response:
        # Echoes the request's headers, as many test endpoints do: the audit trail
        # must not keep what the receiver hands back.
        status = 500 if n == 1 else 200
        return web.json_response({"headers": seen.headers}, status=status)

    async with serve(Receiver(respond=echo)) as receiver:
        config = {"url": f"{receiver.base}/in", "headers": {"X-Source": "erc8004"}}
        job = await rest_job(
            db, config, headers={"Authorization": token, "X-Api-Key": 'key"quoted'}
        )
        proc = dispatcher.start()
        await dispatcher.produce([job])
        await wait_for(lambda: has_status(db, job.job_id, "success"), within=30, what="delivery")

    assert [s.headers["authorization"] for s in receiver.seen] == [token, token]
    assert receiver.seen[0].headers["x-api-key"] == 'key"quoted'
    assert receiver.seen[0].headers["x-source"] == "erc8004"
    rows = await results(db, job.job_id)
    assert statuses(rows) == ["retrying", "success"]
    audit = orjson.dumps([dict(r) for r in rows], default=str).decode()
    assert "x-source" in audit.lower()  # the echo is kept ...
    assert "tok-5d0b" not in audit  # ... without the credentials
    assert "quoted" not in audit
    assert "tok-5d0b" not in proc.log_text()


@pytest.mark.slow
@pytest.mark.serial  # the first replica must hold the job within 2 s
async def test_a_retry_held_until_due_moves_to_a_new_replica_and_runs_once(
    db: asyncpg.Connection, dispatcher: Dispatch, retry_topic: str
) -> None:
    """A replica holds a retry job until it is due; another replica joins meanwhile.
    The holder puts the job back on the retry topic at once (the hand-over does not
    wait for the due time) and whoever owns it then runs it: exactly once."""
    async with serve(Receiver()) as receiver:
        config = {"url": f"{receiver.base}/held"}
        job = await rest_job(db, config)
        first = dispatcher.start(RETRY_MAX_HOLD="30")
        due, due_on_clock = time.time() + 16, time.monotonic() + 16  # Seen.at: monotonic
        held = job.retry(due_at=datetime.fromtimestamp(due, UTC))
        await dispatcher.produce([held], topic=retry_topic)
        await asyncio.sleep(2.0)  # the first replica holds it now
        dispatcher.start(RETRY_MAX_HOLD="30")
        await wait_for(
            lambda: has_status(db, job.job_id, "success"), within=60, what="the held retry"
        )
        await asyncio.sleep(3.0)  # nothing more may arrive

    assert len(receiver.seen) == 1, "the held job ran on both replicas"
    assert receiver.seen[0].at >= due_on_clock - 0.5
    assert metric_value(first, "erc8004_dispatcher_deferred_total", reason="handover") >= 1
    assert statuses(await results(db, job.job_id)) == ["success"]


async def test_rest_permanent_failures_dead_letters_and_metrics(
    db: asyncpg.Connection, dispatcher: Dispatch, dlq_topic: str
) -> None:
    def respond(seen: Seen, _n: int) -> web.Response:
        if seen.path == "/missing":
            return web.Response(status=404, text="no such hook")
        if seen.path == "/down":
            return web.Response(status=502, text="bad gateway")
        return web.Response(status=200)

    async with serve(Receiver(respond=respond)) as receiver:
        jobs: dict[str, ActionJob] = {}
        configs: dict[str, dict[str, Any]] = {
            "missing": {"url": f"{receiver.base}/missing"},
            "down": {"url": f"{receiver.base}/down", "max_attempts": 2},
            "template": {"url": f"{receiver.base}/ok", "body_template": "{{ event.no_such }}"},
        }
        for name, config in configs.items():
            jobs[name] = (await rest_trigger(db, config)).job()
        # A job whose trigger was disabled after it fired is not run.
        disabled = await rest_trigger(db, {"url": f"{receiver.base}/ok"})
        await db.execute("UPDATE triggers SET enabled = false WHERE id = $1", disabled.trigger)
        jobs["disabled"] = disabled.job()
        proc = dispatcher.start()
        await dispatcher.produce(list(jobs.values()))
        await wait_for(lambda: recorded(db, 5), within=30, what="all outcomes recorded")
        await asyncio.sleep(1.0)

    assert statuses(await results(db, jobs["missing"].job_id)) == ["failed"]
    assert (await results(db, jobs["missing"].job_id))[0]["error_message"] == "HTTP 404"
    assert statuses(await results(db, jobs["down"].job_id)) == ["retrying", "dead"]
    (template_row,) = await results(db, jobs["template"].job_id)
    assert template_row["status"] == "failed"
    assert "no_such" in template_row["error_message"]
    (disabled_row,) = await results(db, jobs["disabled"].job_id)
    assert disabled_row["status"] == "failed"
    assert "disabled" in disabled_row["error_message"]
    # The receiver saw /missing once, /down twice, nothing for the template or disabled job.
    assert Counter(s.path for s in receiver.seen) == {"/missing": 1, "/down": 2}

    (record,) = await read_topic(dispatcher.bootstrap, dlq_topic, expect=1, within=10)
    letter = DeadLetter.model_validate_json(record.value)
    assert letter.job.job_id == jobs["down"].job_id
    assert letter.attempts == 2
    assert letter.error == "HTTP 502"

    assert (
        metric_value(proc, "erc8004_dispatcher_actions_total", action_type="rest", status="failed")
        == 3
    )
    assert (
        metric_value(proc, "erc8004_dispatcher_actions_total", action_type="rest", status="dead")
        == 1
    )
    assert metric_value(proc, "erc8004_dispatcher_retries_total", action_type="rest") == 1
    assert metric_value(proc, "erc8004_dispatcher_dlq_total", action_type="rest") == 1


async def test_guard_refuses_internal_destinations(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    async with serve(Receiver()) as receiver:
        urls = [
            f"http://127.0.0.1:{receiver.port}/hook",
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data/",
            f"http://[::1]:{receiver.port}/hook",
            f"http://localhost:{receiver.port}/hook",
        ]
        jobs = [(await rest_trigger(db, {"url": url})).job() for url in urls]
        # Nothing is allowed: the loopback receiver is as private as the others.
        dispatcher.start(OUTBOUND_ALLOWED_NETWORKS="")
        await dispatcher.produce(jobs)
        await wait_for(lambda: recorded(db, len(jobs)), within=30, what="refusals recorded")
        await asyncio.sleep(0.5)
        assert receiver.seen == []
    for job in jobs:
        (row,) = await results(db, job.job_id)
        assert row["status"] == "failed", row
        assert "refused" in row["error_message"], row["error_message"]


# --------------------------------------------------------------------------- telegram


async def deliver_telegram(
    db: asyncpg.Connection,
    dispatcher: Dispatch,
    config: dict[str, Any],
    name: str = "test trigger",
) -> ActionJob:
    """A telegram trigger (its chat linked by its user) and one job of it produced;
    returns once it succeeded."""
    (telegram,) = await feedback_trigger(db, ("telegram", config))
    await link_chat(db, telegram.user, config["chat_id"])
    job = telegram.job(name=name)
    await dispatcher.produce([job])
    await wait_for(
        lambda: has_status(db, job.job_id, "success"), within=30, what="telegram delivery"
    )
    return job


async def test_telegram_escapes_and_honours_429_retry_after(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    def respond(seen: Seen, n: int) -> web.Response:
        if not seen.path.endswith("/sendMessage"):
            return web.json_response({"ok": False, "description": "Not Found"}, status=404)
        if n == 1:
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 429,
                    "description": "Too Many Requests: retry after 1",
                    "parameters": {"retry_after": 1},
                },
                status=429,
            )
        return web.json_response({"ok": True, "result": {"message_id": 100 + n}})

    config = {
        "chat_id": "-1001234567890",
        "message_template": "*{{ trigger.name }}* agent {{ event.agent_id }}: {{ explain.note }}",
        "parse_mode": "MarkdownV2",
    }
    async with serve(Receiver(respond=respond)) as bot_api:
        env = {"TELEGRAM_API_BASE": bot_api.base, "TELEGRAM_BOT_TOKEN": "123456:secret-bot-token"}
        proc = dispatcher.start(**env)
        job = await deliver_telegram(db, dispatcher, config, "Score.drop!")

    rows = await results(db, job.job_id)
    assert statuses(rows) == ["retrying", "success"]
    assert "429" in rows[0]["error_message"]
    assert rows[1]["response_data"] == {"message_ids": [102], "parts": 1}
    first, second = bot_api.seen
    assert first.path == "/bot123456:secret-bot-token/sendMessage"
    # Telegram asked for 1 s: the retry came no sooner.
    assert second.at - first.at >= 1.0
    body = second.json()
    assert body["chat_id"] == "-1001234567890"
    assert body["parse_mode"] == "MarkdownV2"
    # Values escaped for MarkdownV2, the template's own markup kept.
    assert body["text"] == r"*Score\.drop\!* agent 7: a\_b\*c"
    # The bot token is never written to the audit trail or the log.
    for row in rows:
        assert "secret-bot-token" not in (row["error_message"] or "")
        assert "secret-bot-token" not in orjson.dumps(row["response_data"]).decode()
    assert "secret-bot-token" not in proc.log_text()


async def test_telegram_retry_sends_only_the_parts_not_yet_delivered(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    def respond(seen: Seen, n: int) -> web.Response:
        if n == 2:  # the second part fails the first time
            return web.json_response({"ok": False, "description": "Bad Gateway"}, status=502)
        return web.json_response({"ok": True, "result": {"message_id": 100 + n}})

    # ~9,000 characters: three parts of at most 4,096
    config = {
        "chat_id": "42",
        "message_template": "{% for i in range(900) %}line {{ '%04d' % i }}\n{% endfor %}",
    }
    async with serve(Receiver(respond=respond)) as bot_api:
        env = {"TELEGRAM_API_BASE": bot_api.base, "TELEGRAM_BOT_TOKEN": "123456:token"}
        dispatcher.start(**env)
        job = await deliver_telegram(db, dispatcher, config)
        await asyncio.sleep(0.5)  # nothing more may arrive

    texts = [s.json()["text"] for s in bot_api.seen]
    assert len(texts) == 4
    first, second, second_again, third = texts
    assert first.startswith("line 0000")
    assert second == second_again  # the failed part, and only it, sent again
    assert texts.count(first) == 1
    assert (first + second + third).count("line 0899") == 1
    rows = await results(db, job.job_id)
    assert statuses(rows) == ["retrying", "success"]
    assert rows[0]["response_data"]["sent_parts"] == 1
    assert rows[1]["response_data"] == {"message_ids": [103, 104], "parts": 3, "resumed_at_part": 2}


# --------------------------------------------------------------------------- mcp


async def register_agent_7(db: asyncpg.Connection, files: Receiver, agent: McpAgentServer) -> None:
    """Agent 7 of chain 8453, owned by OWNER, registered with a file served over HTTP
    that names ``agent``'s MCP endpoint."""
    files.routes["/agents/7.json"] = orjson.dumps(registration_file(8453, 7, agent.url))
    await store_events(
        db,
        [
            an_event(
                11,
                event_type="Registered",
                agent_id=7,
                token_uri=f"{files.base}/agents/7.json",
                owner=OWNER,
            )
        ],
    )


def registration_file(chain_id: int, agent_id: int, endpoint: str) -> dict[str, Any]:
    return {
        "type": "https://eips.ethereum.org/EIPS/eip-8004#registration-v1",
        "name": f"agent {agent_id}",
        "services": [
            {"name": "web", "endpoint": "https://example.org"},
            {"name": "MCP", "endpoint": endpoint, "version": "2025-06-18"},
        ],
        "registrations": [{"agentId": agent_id, "agentRegistry": f"eip155:{chain_id}:{IDENTITY}"}],
        "active": True,
    }


async def test_mcp_tool_call_on_resolved_endpoint_with_token_and_file_hash(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    feedback = orjson.dumps({"agentId": 7, "value": 87, "valueDecimals": 0, "comment": "fast"})
    async with serve_mcp(McpAgentServer()) as agent, serve(Receiver()) as files:
        await register_agent_7(db, files, agent)
        files.routes["/feedback/ok.json"] = feedback
        files.routes["/feedback/tampered.json"] = feedback.replace(b"87", b"12")
        data_uri = (
            "data:application/json;base64,"
            + base64.b64encode(orjson.dumps(registration_file(8453, 8, agent.url))).decode()
        )
        # Agent 7 registers over HTTP, agent 8 with a data: URI; agent 9 names another chain.
        await store_events(
            db,
            [
                an_event(12, event_type="Registered", agent_id=8, token_uri=data_uri),
                an_event(
                    13,
                    event_type="Registered",
                    agent_id=9,
                    token_uri="data:application/json;base64,"
                    + base64.b64encode(orjson.dumps(registration_file(1, 9, agent.url))).decode(),
                ),
            ],
        )
        box = SecretBox(_dev_key())
        await db.execute(
            "INSERT INTO agent_mcp_tokens (chain_id, agent_id, token_ciphertext, owner_address)"
            " VALUES (8453, 7, $1, $2)",
            box.encrypt("agent-7-bearer", context="agent_mcp_tokens:8453:7"),
            OWNER,
        )
        config = {
            "resolve_endpoint": True,
            "tool_name": "notify",
            "verify_file_hash": True,
            "include_file_content": True,
            "arguments_template": {
                "message": (
                    "{{ trigger.name }}: agent {{ event.agent_id }} scored {{ file.content.value }}"
                ),
            },
        }
        plain = {"resolve_endpoint": True, "tool_name": "notify"}
        verified, unverified = await feedback_trigger(db, ("mcp", config), ("mcp", plain))
        ok_hash = "0x" + keccak(feedback).hex()

        def feedback_event(seed: int, path: str, agent_id: int = 7) -> Any:
            return an_event(
                seed, agent_id=agent_id, file_uri=f"{files.base}{path}", file_hash=ok_hash
            )

        good = verified.job(feedback_event(21, "/feedback/ok.json"))
        bad = verified.job(feedback_event(22, "/feedback/tampered.json"))
        by_data_uri = unverified.job(an_event(23, agent_id=8))
        other_chain = unverified.job(an_event(24, agent_id=9))
        dispatcher.start(IPFS_GATEWAY=f"{files.base}/ipfs/")
        await dispatcher.produce([good, bad, by_data_uri, other_chain])
        await wait_for(lambda: recorded(db, 4), within=40, what="mcp outcomes")
        await asyncio.sleep(0.5)

    (row,) = await results(db, good.job_id)
    assert row["status"] == "success", row["error_message"]
    assert row["response_data"]["content"] == "noted 1" or row["response_data"][
        "content"
    ].startswith("noted")
    (row,) = await results(db, bad.job_id)
    assert row["status"] == "failed"
    assert "hash mismatch" in row["error_message"]
    assert row["response_data"]["expected_hash"] == ok_hash
    (row,) = await results(db, by_data_uri.job_id)
    assert row["status"] == "success", row["error_message"]
    (row,) = await results(db, other_chain.job_id)
    assert row["status"] == "failed"
    assert "does not name agent 9 of chain 8453" in row["error_message"]

    assert len(agent.calls) == 2  # the tampered file and the foreign agent never reached the tool
    headers, args = next((h, a) for h, a in agent.calls if "message" in a)
    assert args["message"] == "test trigger: agent 7 scored 87"
    assert args["file"]["hash"] == ok_hash
    assert args["file"]["content"]["comment"] == "fast"
    assert headers["authorization"] == "Bearer agent-7-bearer"
    assert headers["idempotency-key"] == good.job_id
    headers, args = next((h, a) for h, a in agent.calls if "job_id" in a)
    assert args["job_id"] == by_data_uri.job_id
    assert args["event"]["agent_id"] == 8
    assert "authorization" not in headers  # agent 8 registered no token


# --------------------------------------------------------------------------- faults


async def test_kill_9_mid_flight_every_job_completed_duplicates_share_their_key(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    async with serve(Receiver(delay=0.02)) as receiver:
        config = {"url": f"{receiver.base}/hook", "timeout_ms": 5000}
        rest = await rest_trigger(db, config)
        jobs = [rest.job(an_event(seed)) for seed in range(400)]
        first = dispatcher.start(DISPATCHER_BATCH_MAX_RECORDS="50")
        await dispatcher.produce(jobs)
        deadline = time.monotonic() + 60
        while len(receiver.seen) < 100:
            assert time.monotonic() < deadline, "the dispatcher never got going"
            await asyncio.sleep(0.02)
        first.kill()
        killed_at = len(receiver.seen)
        dispatcher.start(DISPATCHER_BATCH_MAX_RECORDS="50")

        async def all_done() -> bool:
            n = await db.fetchval(
                "SELECT count(DISTINCT job_id) FROM action_results WHERE status = 'success'"
            )
            return bool(n == len(jobs))

        await wait_for(all_done, within=120, what="every job delivered after the kill")
        await asyncio.sleep(1.0)

    assert killed_at < len(jobs)  # the kill did land mid-flight
    delivered = Counter(s.json()["job_id"] for s in receiver.seen)
    assert set(delivered) == {j.job_id for j in jobs}
    for seen in receiver.seen:
        # Every request of a job carries that job's key: duplicates are deduplicable.
        assert seen.headers["idempotency-key"] == seen.json()["job_id"]
    assert await db.fetchval("SELECT count(*) FROM action_results WHERE status <> 'success'") == 0


async def test_mcp_endpoint_from_ipfs_follows_uri_updates(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    async with (
        serve_mcp(McpAgentServer()) as old,
        serve_mcp(McpAgentServer()) as new,
        serve(Receiver()) as gateway,
    ):
        gateway.routes["/ipfs/bafyold"] = orjson.dumps(registration_file(8453, 5, old.url))
        gateway.routes["/ipfs/bafynew/agent.json"] = orjson.dumps(
            registration_file(8453, 5, new.url)
        )
        await store_events(
            db,
            [
                an_event(
                    31, event_type="Registered", agent_id=5, token_uri="ipfs://bafyold", owner=OWNER
                )
            ],
        )
        await db.execute(
            "INSERT INTO agent_mcp_tokens (chain_id, agent_id, token_ciphertext, owner_address)"
            " VALUES (8453, 5, $1, $2)",
            SecretBox(_dev_key()).encrypt("agent-5-bearer", context="agent_mcp_tokens:8453:5"),
            OWNER,
        )
        config = {"resolve_endpoint": True, "tool_name": "notify"}
        (mcp,) = await feedback_trigger(db, ("mcp", config))
        dispatcher.start(IPFS_GATEWAY=f"{gateway.base}/ipfs/")
        first = mcp.job(an_event(41, agent_id=5))
        await dispatcher.produce([first])
        await wait_for(lambda: recorded(db, 1), within=30, what="first call")
        # The agent changes hands and its new owner moves the registration file: the
        # cached endpoint must not be used, and the old owner's token not sent.
        await store_events(
            db,
            [
                an_event(50, event_type="Transfer", agent_id=5, owner="0x" + "cd" * 20),
                an_event(
                    51,
                    event_type="URIUpdated",
                    agent_id=5,
                    token_uri="ipfs://bafynew/agent.json",
                ),
            ],
        )
        second = mcp.job(an_event(42, agent_id=5))
        await dispatcher.produce([second])
        await wait_for(lambda: recorded(db, 2), within=30, what="second call")

    assert statuses(await results(db)) == ["success", "success"]
    assert [args["job_id"] for _, args in old.calls] == [first.job_id]
    assert [args["job_id"] for _, args in new.calls] == [second.job_id]
    assert old.calls[0][0]["authorization"] == "Bearer agent-5-bearer"
    assert "authorization" not in new.calls[0][0]
    assert [s.path for s in gateway.seen] == ["/ipfs/bafyold", "/ipfs/bafynew/agent.json"]


async def test_breaker_opens_on_a_failing_destination_and_defers_its_jobs(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    async with serve(Receiver(respond=lambda _s, _n: web.Response(status=503))) as down:
        config = {"url": f"{down.base}/hook", "max_attempts": 1}
        rest = await rest_trigger(db, config)
        jobs = [rest.job(an_event(seed)) for seed in range(10)]
        proc = dispatcher.start(
            BREAKER_THRESHOLD="3", BREAKER_PAUSE="60", DISPATCHER_DESTINATION_CONCURRENCY="1"
        )
        await dispatcher.produce(jobs)

        async def deferred() -> bool:
            value = metric_value(proc, "erc8004_dispatcher_deferred_total", reason="breaker_open")
            return value >= 7

        await wait_for(deferred, within=30, what="jobs deferred by the open breaker")
        await asyncio.sleep(3.0)
        # The deferred jobs (due in 60 s) are put back on the retry topic at a bounded
        # pace while they wait, not spun through as fast as Kafka goes.
        parked = metric_value(proc, "erc8004_dispatcher_deferred_total", reason="not_due")
        assert parked <= 7 * 3
        # Three failures opened the breaker; the other jobs never reached the host.
        assert len(down.seen) == 3
        assert metric_value(proc, "erc8004_dispatcher_open_breakers") == 1
    assert statuses(await results(db)) == ["dead", "dead", "dead"]


async def test_one_users_failing_calls_open_the_breaker_for_that_user_alone(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    """The review's attack (issue 14, item 6): a trigger with 20 REST actions to a
    popular host and a 100 ms timeout opened the host's breaker for every user. Now
    the breaker is the user's: another user's jobs to the same host go through at
    once, each on its first attempt."""

    async def respond(seen: Seen, _n: int) -> web.Response:
        if seen.path == "/slow":
            await asyncio.sleep(1.0)
        return web.Response()

    async with serve(Receiver(respond=respond, shutdown_timeout=2)) as host:
        slow = {"url": f"{host.base}/slow", "timeout_ms": 100, "max_attempts": 1}
        mallory = await feedback_trigger(db, *[("rest", slow)] * 20)
        (victim,) = await feedback_trigger(db, ("rest", {"url": f"{host.base}/ok"}))
        proc = dispatcher.start(
            BREAKER_THRESHOLD="3", BREAKER_PAUSE="60", DISPATCHER_DESTINATION_CONCURRENCY="1"
        )
        await dispatcher.produce([action.job(an_event(1)) for action in mallory])

        async def opened() -> bool:
            return metric_value(proc, "erc8004_dispatcher_open_breakers") >= 1

        await wait_for(opened, within=30, what="mallory's breaker open")
        jobs = [victim.job(an_event(seed)) for seed in range(2, 7)]
        await dispatcher.produce(jobs)

        async def delivered() -> bool:
            return all([await has_status(db, job.job_id, "success") for job in jobs])

        await wait_for(delivered, within=15, what="the other user's jobs")
    for job in jobs:
        assert statuses(await results(db, job.job_id)) == ["success"]
    assert metric_value(proc, "erc8004_dispatcher_open_breakers") == 1
    assert sum(1 for seen in host.seen if seen.path == "/slow") == 3


async def test_slow_receiver_gets_each_job_once_and_a_poison_batch_moves_on(
    db: asyncpg.Connection, dispatcher: Dispatch, dlq_topic: str
) -> None:
    """Attempts outlasting the batch deadline are covered by guard copies, which must
    not run them a second time; a job whose trigger was deleted and a message that is
    not a job are recorded / dead-lettered without holding up their partition."""

    async def respond(seen: Seen, _n: int) -> web.Response:
        if seen.path == "/slow":
            await asyncio.sleep(1.5)
        return web.Response(status=200)

    async with serve(Receiver(respond=respond)) as receiver:
        config = {"url": f"{receiver.base}/slow", "timeout_ms": 5000}
        rest = await rest_trigger(db, config)
        slow = [rest.job(an_event(seed)) for seed in range(4)]
        gone_rest = await rest_trigger(db, {"url": f"{receiver.base}/fast"})
        gone = gone_rest.job(an_event(9))
        await db.execute("DELETE FROM triggers WHERE id = $1", gone_rest.trigger)
        after_cfg = {"url": f"{receiver.base}/fast"}
        after = await rest_job(db, after_cfg, event=an_event(10))
        proc = dispatcher.start(DISPATCHER_BATCH_DEADLINE="0.5")
        producer = AIOKafkaProducer(bootstrap_servers=dispatcher.bootstrap, acks="all")
        await producer.start()
        try:
            # All on one partition (one key), the poison ones before a good job.
            key = b"one-key"
            for job in [*slow, gone]:
                await producer.send_and_wait(dispatcher.topic, job.dump(), key=key)
            await producer.send_and_wait(dispatcher.topic, b'{"not": "a job"}', key=key)
            await producer.send_and_wait(dispatcher.topic, after.dump(), key=key)
        finally:
            await producer.stop()
        await wait_for(lambda: recorded(db, len(slow) + 2), within=60, what="all recorded")

        async def guard_copies_skipped() -> bool:
            # A guard copy read with its job recorded is skipped; one that ran the job
            # again shows as another request to /slow (asserted below).
            guards = metric_value(proc, "erc8004_dispatcher_guard_copies_total")
            skipped = metric_value(proc, "erc8004_dispatcher_duplicates_skipped_total")
            rerun = sum(1 for s in receiver.seen if s.path == "/slow") > len(slow)
            return rerun or 1 <= guards <= skipped

        # At the latest when the copies come due (the attempt's time limit, 5 s, + margin).
        await wait_for(guard_copies_skipped, within=60, what="every guard copy skipped")
        assert metric_value(proc, "erc8004_dispatcher_guard_copies_total") >= 1

    per_path = Counter(s.path for s in receiver.seen)
    assert per_path == {"/slow": len(slow), "/fast": 1}, per_path
    for job in slow:
        assert statuses(await results(db, job.job_id)) == ["success"]
    (row,) = await results(db, gone.job_id)
    assert row["status"] == "failed"
    assert row["trigger_id"] is None
    assert "deleted" in row["error_message"]
    assert statuses(await results(db, after.job_id)) == ["success"]
    (record,) = await read_topic(dispatcher.bootstrap, dlq_topic, expect=1, within=10)
    letter = UnreadableLetter.model_validate_json(record.value)
    assert letter.raw == b'{"not": "a job"}'
    assert letter.topic == dispatcher.env["ACTIONS_TOPIC"]


async def test_mcp_server_errors_are_retried_and_a_redrive_runs_again(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    async with serve(Receiver(respond=lambda _s, _n: web.Response(status=503))) as down:
        config = {"server_url": f"{down.base}/mcp", "tool_name": "notify", "max_attempts": 2}
        (mcp,) = await feedback_trigger(db, ("mcp", config))
        job = mcp.job(an_event(3))
        dispatcher.start()
        await dispatcher.produce([job])
        await wait_for(
            lambda: has_status(db, job.job_id, "dead"),
            within=30,
            what="the MCP job to be retried, then dead",
        )
    rows = await results(db, job.job_id)
    assert statuses(rows) == ["retrying", "dead"]
    assert "HTTP 503" in rows[0]["error_message"]

    # A redrive (as the API sends it: attempt 1, a new run id) runs again, and is
    # recorded under its own run.
    async with serve(Receiver()) as ok:
        cfg = {"url": f"{ok.base}/hook"}
        first = await rest_job(db, cfg, event=an_event(4))
        await dispatcher.produce([first])
        await wait_for(lambda: has_status(db, first.job_id, "success"), within=30, what="first run")
        again = first.model_copy(update={"run_id": "redrive-1"})
        await dispatcher.produce([first, again])

        async def redriven() -> bool:
            return len(await results(db, first.job_id)) >= 2

        await wait_for(redriven, within=30, what="the redrive")
        await asyncio.sleep(1.0)
    rows = await results(db, first.job_id)
    assert sorted((r["run_id"] or "", r["status"]) for r in rows) == [
        ("", "success"),
        ("redrive-1", "success"),
    ]
    assert len(ok.seen) == 2  # the plain redelivery of the first run was skipped


# --------------------------------------------------------------------------- templates


#: One expression that costs ~10 ms of CPU; the issue's repro used 400 of them.
_HEAVY = '{{ ("a" * 65536)|list|unique|list|length }}'


@pytest.mark.serial  # bounds /healthz to 0.1 s while the workers burn both cores
async def test_a_costly_template_neither_stalls_the_dispatcher_nor_delays_other_jobs(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    """An attack on the running dispatcher: templates built to burn CPU (400
    expressions of ~10 ms each) and memory (4 GiB of ``center``ed strings). They are rendered in
    the template workers: /healthz keeps answering at once, another user's job is
    delivered on time, each costly job fails once (not retried) and the dispatcher's
    memory does not grow."""
    async with serve(Receiver()) as receiver:
        slow = await rest_job(db, {"url": f"{receiver.base}/slow", "body_template": _HEAVY * 400})
        huge = await rest_job(
            db,
            {
                "url": f"{receiver.base}/huge",
                "body_template": '{{ ("a" * 65536)|list|map("center", 65536)|list|length }}',
            },
        )
        other = await rest_job(
            db, {"url": f"{receiver.base}/other", "body_template": {"a": "{{ event.agent_id }}"}}
        )
        proc = dispatcher.start(TEMPLATE_RENDER_SECONDS="1.0", TEMPLATE_WORKERS="2")
        rss_before = metric_value(proc, "process_resident_memory_bytes")
        await dispatcher.produce([slow, huge])
        await asyncio.sleep(0.3)  # the costly ones are being rendered
        sent_at = time.monotonic()
        await dispatcher.produce([other])
        slowest = 0.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            await has_status(db, slow.job_id, "failed")
            and await has_status(db, huge.job_id, "failed")
            and receiver.seen
        ):
            started = time.monotonic()
            status, _ = await asyncio.to_thread(http_get, proc.base + "/healthz")
            slowest = max(slowest, time.monotonic() - started)
            assert status == 200
            await asyncio.sleep(0.02)
        assert [s.path for s in receiver.seen] == ["/other"]
        assert receiver.seen[0].at - sent_at < 3.0  # on time, not behind the costly ones
        await asyncio.sleep(1.5)  # a retry would come now
        rss_after = metric_value(proc, "process_resident_memory_bytes")

    assert slowest < 0.1, f"/healthz took {slowest * 1000:.0f} ms while templates rendered"
    slow_rows, huge_rows = await results(db, slow.job_id), await results(db, huge.job_id)
    assert statuses(slow_rows) == ["failed"]  # once: a refused template is not retried
    assert slow_rows[0]["error_message"] == "template took more than 1s to render"
    assert statuses(huge_rows) == ["failed"]
    assert "out of memory" in huge_rows[0]["error_message"]
    assert rss_after - rss_before < 64 * 2**20


async def test_secrets_never_follow_a_rendered_url_to_another_origin(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    """A trigger stored before URL templates were kept out of the host (written to
    the table directly: the API refuses it now) whose URL renders to another origin
    than its own: the dispatcher fails the job instead of sending its secret
    headers and signature there (its config no longer validates; behind that, the
    rendered origin is compared with the action's own: tests/unit/test_dispatcher.py)."""
    async with serve(Receiver()) as claimed, serve(Receiver()) as elsewhere:
        url = f'http://127.0.0.1:{elsewhere.port}{{{{"\\x2f"}}}}@127.0.0.1:{claimed.port}/hook'
        rest = await rest_trigger(
            db, {"url": "http://127.0.0.1:9/unused"}, headers={"Authorization": "Bearer s3cr3t"}
        )
        config = {"url": url, "method": "POST"}
        await db.execute(
            "UPDATE trigger_actions SET config = $2::jsonb WHERE id = $1", rest.action, config
        )
        job = TriggerAction(rest.user, rest.trigger, rest.action, "rest", config).job()
        dispatcher.start()
        await dispatcher.produce([job])
        await wait_for(lambda: has_status(db, job.job_id, "failed"), within=30, what="failure")
        await asyncio.sleep(0.5)
    assert elsewhere.seen == []
    assert claimed.seen == []
    (row,) = await results(db, job.job_id)
    assert "templates may not be in the scheme" in row["error_message"]


async def test_an_agents_mcp_token_goes_only_where_its_owner_allowed_and_never_back(
    db: asyncpg.Connection, dispatcher: Dispatch
) -> None:
    """The review's attack: any user's trigger could call any tool of an agent with
    that agent's token and read the tool's output. Now the token is sent only on the
    calls its owner's signed scope allows (these users' triggers, these tools), and a
    tool that echoes it gets it masked in the results."""
    async with serve_mcp(McpAgentServer()) as agent, serve(Receiver()) as files:
        await register_agent_7(db, files, agent)
        notify = {"resolve_endpoint": True, "tool_name": "notify"}
        echo = {"resolve_endpoint": True, "tool_name": "echo_auth"}
        owners_notify, owners_echo = await feedback_trigger(db, ("mcp", notify), ("mcp", echo))
        (strangers_notify,) = await feedback_trigger(db, ("mcp", notify))
        await db.execute(
            "INSERT INTO agent_mcp_tokens (chain_id, agent_id, token_ciphertext, owner_address,"
            " allowed_tools, allowed_users) VALUES (8453, 7, $1, $2, $3, $4)",
            SecretBox(_dev_key()).encrypt("agent-7-bearer", context="agent_mcp_tokens:8453:7"),
            OWNER,
            ["notify", "echo_auth"],
            [owners_notify.user],
        )
        allowed = owners_notify.job(an_event(31, agent_id=7))
        stranger = strangers_notify.job(an_event(32, agent_id=7))
        echoed = owners_echo.job(an_event(33, agent_id=7))
        dispatcher.start()
        await dispatcher.produce([allowed, stranger, echoed])
        await wait_for(lambda: recorded(db, 3), within=40, what="mcp outcomes")

    by_job = {args.get("job_id") or "": headers for headers, args in agent.calls}
    sent = [h.get("authorization") for h, _ in agent.calls]
    assert sent.count("Bearer agent-7-bearer") == 2  # the owner's two calls
    assert by_job.get(echoed.job_id) == {"authorization": "Bearer agent-7-bearer"}
    assert None in sent  # the stranger's call went without it
    for job in (allowed, stranger, echoed):
        (row,) = await results(db, job.job_id)
        assert row["status"] == "success", row["error_message"]
    (row,) = await results(db, echoed.job_id)
    assert row["response_data"]["content"] == "you sent: Bearer ***"
    assert "agent-7-bearer" not in orjson.dumps(row["response_data"]).decode()
