"""``make demo``: a one-minute tour of the whole system on a local chain.

It runs against the local stack (``make demo`` starts it first with ``make up``):

1. a webhook receiver and a stand-in of Telegram's Bot API on 127.0.0.1;
2. a local EVM (Hardhat's node) with the three registries' test contracts, and the
   indexer following it (``python -m services.indexer``);
3. a user signed up through the API, a Telegram chat linked with ``/start <code>``,
   and five triggers: new agents, low feedback, a reputation EMA, a validation
   passed (to Telegram), and an agent gone quiet (absence);
4. registrations, feedback of the current and the first layouts, a validation,
   then two minutes of block time without feedback;

and prints every action as it is delivered, the explain of the EMA's firing and
where to look next. It exits 0 once every expected action arrived (1 if one did
not within ``--within`` seconds). The stack keeps running (``make down`` stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

from shared.platform.entrypoint import cli_parser
from tools.evmnode import CHAIN_ID, Chain, HardhatNode
from tools.localnet import Receiver, Seen

ROOT = Path(__file__).resolve().parent.parent
CHAT_ID = 4242
ZERO = b"\0" * 32
#: Deliveries the drive below owes: (trigger name, how many).
EXPECTED = {
    "new agent": 2,
    "low feedback": 2,
    "reputation EMA below 40": 1,
    "validation passed": 1,
    "agent went quiet": 1,
}


@dataclass(frozen=True)
class Endpoints:
    """Where the stack answers (``make up``'s ports by default; the tests' own)."""

    api: str = "http://127.0.0.1:8080"
    ingest: str = "http://127.0.0.1:8081"
    telegram_port: int = 8091
    indexer_port: int = 9103
    metrics: tuple[str, ...] = (
        "http://127.0.0.1:9104/metrics",
        "http://127.0.0.1:9105/metrics",
        "http://127.0.0.1:9101/metrics",
        "http://127.0.0.1:9102/metrics",
        "http://127.0.0.1:9103/metrics",
    )
    log_dir: Path = ROOT / ".run" / "logs"

    @classmethod
    def from_env(cls) -> Endpoints:
        base = URL(os.environ.get("TELEGRAM_API_BASE", "http://127.0.0.1:8091"))
        return cls(telegram_port=base.port or 8091)


def say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 (the demo's output is for a person)


@dataclass
class BotApi:
    """Telegram's Bot API as the dispatcher uses it: getUpdates (with the link
    command queued by the demo), getChatMember, sendMessage (recorded)."""

    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        method = request.path.rsplit("/", 1)[-1]
        body = await request.json()
        if method == "getUpdates":
            pending = [u for u in self.updates if u["update_id"] >= body.get("offset", 0)]
            if not pending:
                await asyncio.sleep(min(float(body.get("timeout", 0)), 0.5))
            return web.json_response({"ok": True, "result": pending})
        if method == "getChatMember":
            return web.json_response({"ok": True, "result": {"status": "creator"}})
        if method == "sendMessage":
            self.sent.append(body)
            return web.json_response({"ok": True, "result": {"message_id": len(self.sent)}})
        return web.json_response({"ok": False, "description": "Not Found"}, status=404)

    def start_command(self, code: str) -> None:
        chat = {"id": CHAT_ID, "type": "private", "first_name": "Demo"}
        message = {
            "message_id": 1,
            "date": int(time.time()),
            "chat": chat,
            "text": f"/start {code}",
        }
        self.updates.append({"update_id": len(self.updates) + 1, "message": message})


class Api:
    """The demo user's calls to the API."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.headers: dict[str, str] = {}

    async def call(self, method: str, path: str, body: Any = None, *, ok: int = 200) -> Any:
        async with self.session.request(
            method, self.base + path, json=body, headers=self.headers
        ) as response:
            answer = await response.json(content_type=None)
            if response.status != ok:
                raise RuntimeError(f"{method} {path}: {response.status} {answer}")
            return answer

    async def sign_up(self) -> str:
        name = f"demo-{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(16)
        user = {"username": name, "email": f"{name}@demo.example", "password": password}
        await self.call("POST", "/v1/auth/register", user, ok=201)
        login = await self.call("POST", "/v1/auth/login", {"username": name, "password": password})
        self.headers = {"Authorization": f"Bearer {login['access_token']}"}
        return name

    async def trigger(self, body: dict[str, Any]) -> str:
        created = await self.call("POST", "/v1/triggers", body, ok=201)
        return str(created["id"])


def rest(url: str) -> list[dict[str, Any]]:
    return [{"action_type": "rest", "config": {"url": url, "method": "POST"}}]


def triggers(hook: str) -> list[dict[str, Any]]:
    base = {"chain_id": CHAIN_ID}
    return [
        {
            **base,
            "name": "new agent",
            "registry": "identity",
            "conditions": [
                {"condition_type": "event_type_equals", "operator": "=", "value": "Registered"}
            ],
            "actions": rest(hook),
        },
        {
            **base,
            "name": "low feedback",
            "registry": "reputation",
            "conditions": [
                {"condition_type": "event_type_equals", "operator": "=", "value": "NewFeedback"},
                {
                    "condition_type": "score_threshold",
                    "field": "score",
                    "operator": "<",
                    "value": "50",
                },
            ],
            "actions": rest(hook),
        },
        {
            **base,
            "name": "reputation EMA below 40",
            "registry": "reputation",
            "conditions": [
                {
                    "condition_type": "ema_threshold",
                    "field": "score",
                    "operator": "<",
                    "value": "40",
                    "config": {"alpha": "0.5", "scope": "agent"},
                }
            ],
            "actions": rest(hook),
        },
        {
            **base,
            "name": "validation passed",
            "registry": "validation",
            "conditions": [
                {
                    "condition_type": "event_type_equals",
                    "operator": "=",
                    "value": "ValidationResponse",
                },
                {
                    "condition_type": "score_threshold",
                    "field": "response",
                    "operator": ">=",
                    "value": "80",
                },
            ],
            "actions": [
                {
                    "action_type": "telegram",
                    "config": {
                        "chat_id": str(CHAT_ID),
                        "message_template": "Agent {{ event.agent_id }} passed validation"
                        " ({{ event.response }}/100, {{ event.tag }})",
                    },
                }
            ],
        },
        {
            **base,
            "name": "agent went quiet",
            "registry": "reputation",
            "conditions": [
                {
                    "condition_type": "absence",
                    "operator": ">",
                    "value": "1m",
                    "config": {"scope": "agent"},
                }
            ],
            "actions": rest(hook),
        },
    ]


def describe(seen: Seen) -> str:
    body = seen.json()
    event = body.get("event", {})
    fields = {
        k: event.get(k)
        for k in ("agent_id", "score", "token_uri", "tag1")
        if event.get(k) not in (None, "")
    }
    return (
        f"  webhook  {body['trigger']['name']:<24} {event.get('event_type', '?'):<12} "
        f"block {event.get('block_number')}  {orjson.dumps(fields).decode()}"
    )


async def wait_for(check: Any, *, within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}")


def start_indexer(
    deployment: dict[str, str], rpc_url: str, first_block: int, endpoints: Endpoints
) -> subprocess.Popen[bytes]:
    chains = [
        {
            "chain_id": CHAIN_ID,
            "rpc_url": rpc_url,
            "start_block": first_block,
            "confirmations": 12,
            **deployment,
        }
    ]
    env = {
        **os.environ,
        "INDEXER_CHAINS": orjson.dumps(chains).decode(),
        "INGEST_URL": endpoints.ingest,
        "INGEST_TOKEN": ingest_token(),
        "HTTP_PORT": str(endpoints.indexer_port),
        "POLL_INTERVAL": "0.5",
        "HEARTBEAT_INTERVAL": "5",
    }
    endpoints.log_dir.mkdir(parents=True, exist_ok=True)
    with (endpoints.log_dir / "indexer.log").open("ab") as out:  # the child keeps its copy
        return subprocess.Popen(
            [sys.executable, "-m", "services.indexer"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


async def drive(evm: Chain, contracts: dict[str, Any]) -> None:
    """Registrations, feedback of both layouts, a validation, then silence."""
    owner, client, validator = evm.accounts[0], evm.accounts[1], evm.accounts[2]
    identity = contracts["identity"].functions
    reputation = contracts["reputation"].functions
    validation = contracts["validation"].functions
    say("  chain    register agents 0 and 1")
    await evm.transact(
        identity.register("ipfs://agent-0", ["name"], [b"Ada"]), sender_key=owner.key
    )
    await evm.transact(identity.register("ipfs://agent-1", [], []), sender_key=owner.key)
    say("  chain    feedback on agent 0: 90.00 (value 9000, 2 decimals), 20 (v1.0 score), 15.00")
    await evm.transact(
        reputation.giveFeedback(0, 9000, 2, "starred", "", "https://a.example/mcp", "", ZERO),
        sender_key=client.key,
    )
    await evm.transact(
        reputation.legacyFeedbackV10(0, 20, b"starred".ljust(32, b"\0"), ZERO, "", ZERO),
        sender_key=client.key,
    )
    await evm.transact(
        reputation.giveFeedback(0, 1500, 2, "starred", "", "", "", ZERO), sender_key=client.key
    )
    say("  chain    validation of agent 1 requested, answered 100 (final)")
    request = b"\x42" * 32
    await evm.transact(
        validation.validationRequest(validator.address, 1, "ipfs://request", request),
        sender_key=owner.key,
    )
    await evm.transact(
        validation.validationResponse(request, 1, 100, "ipfs://answer", ZERO, "final"),
        sender_key=validator.key,
    )
    head = await evm.block("latest")
    say("  chain    two minutes of block time without feedback (one empty block)")
    await evm.mine_block(int(head["timestamp"]) + 120)


@dataclass
class Tour:
    """What the demo started, and what came back."""

    bot: BotApi = field(default_factory=BotApi)
    deliveries: list[Seen] = field(default_factory=list)
    telegram_reported: int = 0

    def received(self, seen: Seen) -> None:
        self.deliveries.append(seen)
        say(describe(seen))

    def counts(self) -> dict[str, int]:
        found = dict.fromkeys(EXPECTED, 0)
        for seen in self.deliveries:
            found[seen.json()["trigger"]["name"]] += 1
        found["validation passed"] += max(0, len(self.bot.sent) - 1)  # the first answers /start
        return found

    async def all_delivered(self) -> bool:
        for message in self.bot.sent[1 + self.telegram_reported :]:
            say(f"  telegram chat {message['chat_id']}: {message['text']}")
            self.telegram_reported += 1
        return self.counts() == EXPECTED


async def deploy(evm: Chain) -> dict[str, Any]:
    contracts = {
        "identity": await evm.deploy("IdentityRegistryMock"),
        "reputation": await evm.deploy("ReputationRegistryMock"),
        "validation": await evm.deploy("ValidationRegistryMock"),
    }
    say(f"local chain {CHAIN_ID} at {evm.url}; registries deployed:")
    for key, contract in contracts.items():
        say(f"  {key + ' registry':<20} {contract.address.lower()}")
    return contracts


async def link_telegram(api: Api, bot: BotApi) -> None:
    code = await api.call("POST", "/v1/telegram/link-codes", ok=201)
    bot.start_command(code["code"])
    say(f"/start <code> sent to the bot from chat {CHAT_ID}")

    async def linked() -> bool:
        chats = await api.call("GET", "/v1/telegram/chats")
        return any(c["chat_id"] == str(CHAT_ID) for c in chats["items"])

    await wait_for(linked, within=60, what="the Telegram chat to be linked")
    say("Telegram chat linked by the dispatcher\n")


async def explain_ema(api: Api, trigger_id: str, endpoints: Endpoints) -> None:
    results = await api.call("GET", f"/v1/triggers/{trigger_id}/results")
    say("\nwhy the EMA trigger fired (GET /v1/triggers/{id}/results, its explain):")
    say(orjson.dumps(results["items"][0]["explain"], option=orjson.OPT_INDENT_2).decode())
    say(
        "\nwhere to look next:\n"
        f"  API      {api.base}/v1/openapi.json; GET /v1/events?chain_id={CHAIN_ID} as the user\n"
        + "".join(f"  metrics  {url}\n" for url in endpoints.metrics)
        + f"  logs     {endpoints.log_dir}\n"
        "  the stack keeps running: make down stops it"
    )


def ingest_token() -> str:
    return os.environ.get("INGEST_TOKENS", "dev-indexer-token").split(",")[0].strip()


async def forget_earlier_chains(session: aiohttp.ClientSession, endpoints: Endpoints) -> None:
    """Each run's chain is a new one under Hardhat's chain id: an earlier run's blocks
    are announced as replaced, as a reorg from block 0, so the indexer starts afresh."""
    body = {"chain_id": CHAIN_ID, "from_block": 0, "reason": "demo: a new local chain"}
    headers = {"Authorization": f"Bearer {ingest_token()}"}
    async with session.post(endpoints.ingest + "/v1/reorgs", json=body, headers=headers) as r:
        if r.status != 201:
            raise RuntimeError(f"POST /v1/reorgs: {r.status} {await r.text()}")


async def tour(
    tour: Tour,
    evm: Chain,
    session: aiohttp.ClientSession,
    *,
    hook: str,
    within: float,
    endpoints: Endpoints,
) -> int:
    first_block = await evm.head() + 1
    contracts = await deploy(evm)
    await forget_earlier_chains(session, endpoints)
    deployment = {f"{k}_registry": c.address.lower() for k, c in contracts.items()}
    indexer = start_indexer(deployment, evm.url, first_block, endpoints)
    say(f"indexer started (pid {indexer.pid}, log {endpoints.log_dir / 'indexer.log'})\n")
    try:
        api = Api(session, endpoints.api)
        say(f"user {await api.sign_up()} signed up")
        await link_telegram(api, tour.bot)
        ids = {}
        for body in triggers(hook):
            ids[body["name"]] = await api.trigger(body)
            say(f"trigger  {body['name']}")
        say("")
        await drive(evm, contracts)
        say("")
        try:
            await wait_for(tour.all_delivered, within=within, what="every expected action")
        except RuntimeError:
            say(f"\nNOT every action arrived within {within:.0f} s: {tour.counts()}")
            say(f"expected: {EXPECTED}; logs: {endpoints.log_dir}")
            return 1
        done = ", ".join(f"{name} x{count}" for name, count in EXPECTED.items())
        say(f"\nevery expected action was delivered: {done}")
        await explain_ema(api, ids["reputation EMA below 40"], endpoints)
        return 0
    finally:
        indexer.terminate()
        try:
            indexer.wait(10)
        except subprocess.TimeoutExpired:
            indexer.kill()


async def run(within: float, endpoints: Endpoints) -> int:
    say("erc8004-backend demo: a local chain, the indexer, triggers and their actions\n")
    state = Tour()
    receiver = await Receiver(on_request=state.received).start()
    bot_server = await Receiver(handler=state.bot.handle, port=endpoints.telegram_port).start()
    node = HardhatNode().start()
    try:
        async with Chain(node.url) as evm, aiohttp.ClientSession() as session:
            return await tour(
                state, evm, session, hook=receiver.url("/hook"), within=within, endpoints=endpoints
            )
    finally:
        node.stop()
        await bot_server.stop()
        await receiver.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = cli_parser(
        "tools.demo",
        __doc__.split("\n")[0] + " Needs the running stack (make up) and the local EVM's"
        " npm packages (make evm-deps); make demo does both.",
    )
    parser.add_argument(
        "--within", type=float, default=120.0, help="seconds to wait for every action"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    raise SystemExit(asyncio.run(run(args.within, Endpoints.from_env())))


if __name__ == "__main__":
    main()
