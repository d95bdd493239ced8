"""The API's pure parts: EIP-191 recovery, tokens, the login limiter, cursors, the
OpenAPI document and the one-trigger replay."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import jwt
import pytest
from eth_keys.datatypes import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from services.api.auth import LoginLimiter, Tokens, api_key_hash, new_api_key
from services.api.common import ApiError, client_address, decode_cursor, encode_cursor
from services.api.models import TriggerPatch
from services.api.routes import ROUTES, document
from services.api.settings import ApiSettings
from services.api.signatures import (
    SECP256K1_N,
    eip191_digest,
    mcp_token_message,
    recover_signer,
)
from shared.contract.conditions import Condition
from shared.contract.events import Event
from shared.engine.evaluate import ActionSpec, TriggerSpec, evaluate
from shared.engine.replay import Replay
from shared.outbound.policy import parse_networks
from tests.strategies import example_event

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-0123456789abcdefgh"


def signature_of(key: PrivateKey, message: str, *, v_offset: int = 27) -> str:
    sig = key.sign_msg_hash(eip191_digest(message))
    return "0x" + str(
        sig.r.to_bytes(32, "big").hex()
        + sig.s.to_bytes(32, "big").hex()
        + bytes([sig.v + v_offset]).hex()
    )


def test_eip191_digest_matches_the_personal_sign_vector() -> None:
    # personal_sign("hello"): keccak256("\x19Ethereum Signed Message:\n5hello")
    assert eip191_digest("hello").hex() == (
        "50b2c43fd39106bafbba0da34fc430e1f91e3c96ea2acee2bc34119f92b37750"
    )


def test_recover_signer_accepts_both_v_styles_and_refuses_tampering() -> None:
    key = PrivateKey(b"\x42" * 32)
    address = key.public_key.to_checksum_address().lower()
    message = mcp_token_message(
        deployment="erc8004-test",
        chain_id=1,
        agent_id=7,
        token="t",
        allowed_tools=None,
        allowed_users=None,
        nonce="n" * 8,
        expires_at=9,
    )
    assert recover_signer(message, signature_of(key, message)) == address
    assert recover_signer(message, signature_of(key, message, v_offset=0)) == address
    assert recover_signer(message + " ", signature_of(key, message)) != address
    for bad in ("0x", "0x" + "00" * 65, "0x" + "zz" * 65, "0x" + "11" * 64):
        assert recover_signer(message, bad) is None


def test_recover_signer_refuses_the_malleable_twin() -> None:
    key = PrivateKey(b"\x43" * 32)
    message = "m"
    sig = key.sign_msg_hash(eip191_digest(message))
    high_s = SECP256K1_N - sig.s
    twin = (
        "0x"
        + sig.r.to_bytes(32, "big").hex()
        + high_s.to_bytes(32, "big").hex()
        + bytes([(1 - sig.v) + 27]).hex()
    )
    assert recover_signer(message, twin) is None


def test_the_message_binds_deployment_chain_agent_token_scope_nonce_and_expiry() -> None:
    base = {"deployment": "here", "chain_id": 1, "agent_id": 2, "token": "s3cret-tok",
            "nonce": "abcdefgh", "expires_at": 3, "allowed_tools": ["lookup"],
            "allowed_users": None}  # fmt: skip
    message = mcp_token_message(**base)  # type: ignore[arg-type]
    assert "s3cret-tok" not in message  # only its hash
    assert message.splitlines()[0] == "ERC-8004 MCP token"
    assert "allowed_tools: lookup" in message.splitlines()
    assert "allowed_users: *" in message.splitlines()
    for field, other in (("deployment", "elsewhere"), ("chain_id", 9), ("agent_id", 9),
                         ("token", "x"), ("nonce", "zzzzzzzz"),
                         ("expires_at", 9), ("allowed_tools", None), ("allowed_users", ["u1"]),
                         ("allowed_tools", ["lookup", "write"])):  # fmt: skip
        assert mcp_token_message(**{**base, field: other}) != message  # type: ignore[arg-type]


def test_tokens_expire_and_are_bound_to_their_secret() -> None:
    tokens = Tokens(SECRET, 60)
    assert tokens.user_id(tokens.issue("u1")) == "u1"
    assert tokens.user_id(tokens.issue("u1", now=time.time() - 120)) is None
    assert Tokens(SECRET + "x", 60).user_id(tokens.issue("u1")) is None
    none_alg = jwt.encode({"sub": "u1", "exp": time.time() + 60}, "", algorithm="none")
    assert tokens.user_id(none_alg) is None
    foreign = jwt.encode(
        {"sub": "u1", "exp": int(time.time()) + 60, "iat": int(time.time()), "iss": "other"},
        SECRET,
        algorithm="HS256",
    )
    assert tokens.user_id(foreign) is None


def test_api_keys_are_random_and_hashed() -> None:
    key, prefix, digest = new_api_key()
    other, _, _ = new_api_key()
    assert key != other
    assert key.startswith(prefix)
    assert digest == api_key_hash(key)
    assert key not in digest


def test_login_limiter_counts_per_user_and_forgets_after_the_window() -> None:
    limiter = LoginLimiter(max_failures=3, window=60)
    for i in range(3):
        assert limiter.retry_after("Ann", "1.2.3.4", now=100 + i) == 0
        limiter.failed("ann", "1.2.3.4", now=100 + i)
    assert limiter.retry_after("ANN", "5.6.7.8", now=103) == 58
    assert limiter.retry_after("bob", "1.2.3.4", now=103) == 0  # the address allows 30
    assert limiter.retry_after("ann", "1.2.3.4", now=161) == 0
    limiter.failed("ann", "1.2.3.4", now=170)
    limiter.succeeded("ann")
    assert limiter.retry_after("ann", "1.2.3.4", now=171) == 0


@given(st.lists(st.one_of(st.text(max_size=50).filter(lambda s: "\x00" not in s),
                          st.integers(-(2**40), 2**40)), min_size=1, max_size=4))  # fmt: skip
@settings(max_examples=100)
def test_cursors_round_trip(values: list[object]) -> None:
    kinds = tuple(type(v) for v in values)
    assert decode_cursor(encode_cursor(values), kinds) == tuple(values)


@pytest.mark.parametrize("cursor", ["!!", "bm9uc2Vuc2U", encode_cursor([1]), encode_cursor(["a"])])
def test_foreign_cursors_are_422(cursor: str) -> None:
    with pytest.raises(ApiError) as caught:
        decode_cursor(cursor, (str, str))
    assert caught.value.status == 422
    assert caught.value.details[0]["loc"] == ["query", "cursor"]


def test_openapi_document_lists_every_route_with_resolvable_schemas() -> None:
    doc = document()
    assert doc["openapi"] == "3.1.0"
    operations = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert operations == {(r.method, r.path) for r in ROUTES}
    design = {
        ("POST", "/v1/auth/register"), ("POST", "/v1/auth/login"), ("POST", "/v1/api-keys"),
        ("GET", "/v1/triggers"), ("POST", "/v1/triggers"), ("GET", "/v1/triggers/{trigger_id}"),
        ("PATCH", "/v1/triggers/{trigger_id}"), ("DELETE", "/v1/triggers/{trigger_id}"),
        ("GET", "/v1/triggers/{trigger_id}/state"), ("GET", "/v1/triggers/{trigger_id}/results"),
        ("POST", "/v1/triggers/{trigger_id}/backtest"), ("GET", "/v1/events"),
        ("GET", "/v1/stats/events"), ("GET", "/v1/stats/actions"), ("GET", "/openapi.json"),
    }  # fmt: skip
    assert design <= operations
    schemas = doc["components"]["schemas"]
    text = str(doc)
    for ref in set(re.findall(r"#/components/schemas/([^'\"]+)", text)):
        assert ref in schemas, ref
    create = doc["paths"]["/v1/triggers"]["post"]
    assert "TriggerCreate" in str(create["requestBody"])
    assert {"201", "401", "413", "422"} <= set(create["responses"])
    # write-only secrets are not in any response schema
    trigger_out = schemas["TriggerOut"]
    assert "signing_secret" not in str(trigger_out)


def test_patch_body_is_documented_as_the_handler_reads_it() -> None:
    """The PATCH body schema: fields that refuse null do not advertise it, and a GET
    body sent back (ids, output-only fields) is valid; the model the handler
    validates with turns it into the update without them."""
    doc = document()
    body = doc["paths"]["/v1/triggers/{trigger_id}"]["patch"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TriggerPatch"
    }
    schemas = doc["components"]["schemas"]
    props = schemas["TriggerPatch"]["properties"]
    for name in ("name", "chain_id", "registry", "enabled", "conditions", "actions"):
        assert "null" not in str(props[name]), name
    for name in ("description", "cooldown_seconds"):
        assert {"type": "null"} in props[name]["anyOf"], name
    assert props["actions"]["items"] == {"$ref": "#/components/schemas/ActionPatch"}
    # one variant per action type, discriminated by action_type
    variants = schemas["ActionPatch"]["discriminator"]["mapping"]
    assert set(variants) == {"telegram", "rest", "mcp"}
    for kind, ref in variants.items():
        variant = schemas[ref.rsplit("/", 1)[1]]
        assert {"id", "signing_secret_set", "secret_headers_set"} <= set(variant["properties"])
        assert variant["properties"]["action_type"]["const"] == kind
        config = variant["properties"]["config"]["$ref"].rsplit("/", 1)[1]
        assert config == f"{kind.capitalize()}Config"
    # one variant per condition type, discriminated by condition_type
    conditions = schemas["ConditionPatch"]["discriminator"]["mapping"]
    assert len(conditions) == 11
    for kind, ref in conditions.items():
        variant = schemas[ref.rsplit("/", 1)[1]]
        assert "id" in variant["properties"]
        assert variant["properties"]["condition_type"]["const"] == kind
    group = schemas[conditions["group"].rsplit("/", 1)[1]]["properties"]["config"]
    assert group["properties"]["conditions"]["items"] == {"$ref": "#/components/schemas/Condition"}

    echoed = {
        "id": "3f1c", "enabled_at": "2026-01-01T00:00:00Z", "created_at": None,
        "updated_at": "2026-01-02T00:00:00Z", "version": 3,
        "name": "x",
        "is_stateful": False,
        "conditions": [{"id": 9, "condition_type": "event_type_equals", "field": "",
                        "operator": "=", "value": "NewFeedback", "config": {}}],
        "actions": [{"id": 4, "action_type": "telegram", "priority": 1,
                     "config": {"chat_id": "1", "message_template": "m"},
                     "signing_secret_set": False, "secret_headers_set": []},
                    {"action_type": "telegram", "config": {"chat_id": "2",
                                                           "message_template": "n"}}],
    }  # fmt: skip
    patch = TriggerPatch.model_validate(echoed)
    assert patch.action_ids() == [4, None]
    update = patch.as_update().storage_dump()
    assert set(update) == {"name", "conditions", "actions"}
    assert "id" not in update["conditions"][0]
    assert [set(a) for a in update["actions"]] == [
        {"action_type", "priority", "config"},
        {"action_type", "config"},  # unset stays unset: the stored form fills it in
    ]
    with pytest.raises(ValidationError, match="may be omitted but not null"):
        TriggerPatch.model_validate({"name": None})


def test_replay_is_the_matcher_step_by_step() -> None:
    """Replay carries one state per scope, skips non-candidates, and gives the same
    outcomes as evaluate() called with the state the previous step left."""
    condition = Condition.model_validate(
        {"condition_type": "rate_limit", "operator": ">=", "value": "2",
         "config": {"time_window": "1h"}}
    )  # fmt: skip
    spec = TriggerSpec(
        id="t", user_id="u", name="n", chain_id=1, registry="reputation",
        enabled_at=datetime.now(UTC),
        cooldown_seconds=None, conditions=(condition,),
        actions=(ActionSpec.of(1, "telegram", 1, {}),),
    )  # fmt: skip

    def feedback(chain: int, block: int) -> Event:
        raw = example_event(
            "NewFeedback", chain_id=chain, block_number=block, timestamp=1_700_000_000 + block
        )
        return Event.model_validate(raw)

    events = [feedback(1, 10 + i) for i in range(4)] + [feedback(2, 99)]
    replay = Replay(spec)
    steps = list(replay.run(events))
    assert len(steps) == 4  # the chain-2 event is no candidate
    state: dict[str, object] = {}
    for step in steps:
        outcome = evaluate(spec, step.event, states={"": state})
        assert outcome.fired == step.outcome.fired
        state = outcome.state
    assert [s.outcome.fired for s in steps] == [False, True, True, True]


def test_client_address_believes_only_trusted_proxies_from_the_right() -> None:
    trusted = parse_networks("10.0.0.0/8, 127.0.0.1, fd00::/8", "TRUSTED_PROXIES")
    # no trusted proxy: the peer, whatever the header says
    assert client_address("203.0.113.9", ["1.2.3.4"], ()) == "203.0.113.9"
    assert client_address("203.0.113.9", ["1.2.3.4"], trusted) == "203.0.113.9"
    # a trusted peer: the rightmost address that is not a trusted hop
    assert client_address("10.1.2.3", ["198.51.100.1, 203.0.113.5"], trusted) == "203.0.113.5"
    assert client_address("10.1.2.3", ["203.0.113.5, 10.9.9.9"], trusted) == "203.0.113.5"
    assert client_address("10.1.2.3", ["198.51.100.1", "203.0.113.5"], trusted) == "203.0.113.5"
    assert client_address("127.0.0.1", ["2001:db8::1, fd00::5"], trusted) == "2001:db8::1"
    # a port some proxies append is not part of the client
    assert client_address("10.1.2.3", ["203.0.113.5:5678"], trusted) == "203.0.113.5"
    assert client_address("10.1.2.3", ["[2001:db8::1]:443"], trusted) == "2001:db8::1"
    # IPv4-mapped peers are their IPv4 address
    assert client_address("::ffff:10.0.0.1", ["203.0.113.5"], trusted) == "203.0.113.5"
    # only trusted hops, or no header: the last one seen
    assert client_address("10.1.2.3", ["10.0.0.2"], trusted) == "10.0.0.2"
    assert client_address("10.1.2.3", [], trusted) == "10.1.2.3"
    # an unparsable entry is not a trusted hop: it is where the walk stops
    assert client_address("10.1.2.3", ["x" * 100], trusted) == "x" * 64
    assert client_address(None, ["203.0.113.5"], trusted) == "unknown"


def test_trusted_proxies_setting_is_checked() -> None:
    with pytest.raises(ValidationError, match="TRUSTED_PROXIES: 'not-a-net'"):
        ApiSettings(
            database_url=SecretStr("postgresql://x@127.0.0.1/x"),
            jwt_secret=SecretStr("x" * 32),
            secrets_key=SecretStr("k"),
            trusted_proxies="10.0.0.0/8, not-a-net",
        )
