"""Dispatcher pieces without I/O: templates, escaping, splitting, signatures,
backoff, breakers, limits, outcomes of HTTP statuses."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.dispatcher.kinds import rest as rest_kind
from services.dispatcher.kinds.base import (
    Outcome,
    Target,
    http_outcome,
    mask,
    parse_retry_after,
    scrub,
    short,
)
from services.dispatcher.kinds.rest import (
    RestKind,
    build_rest_request,
    render_rest,
    rest_templates,
    webhook_signature,
)
from services.dispatcher.kinds.telegram import split_message
from services.dispatcher.policy import (
    Breakers,
    DestinationLimits,
    RateLimiter,
    backoff_delay,
)
from services.dispatcher.registration import ResolveError, ipfs_gateway_url
from services.dispatcher.templates import (
    TemplateRenderError,
    context_of,
    escape_markdown_v2,
    render_json_object,
    render_text,
)
from shared.contract.actions import ActionType, RestConfig
from shared.contract.events import Event
from shared.contract.jobs import MAX_CACHED_CONFIG, ActionJob, job_id
from shared.outbound.client import OutboundResponse
from shared.outbound.policy import OutboundPolicy, origin
from shared.platform.secrets import SecretBox
from tests.strategies import events
from tools.eventgen import make_event

pytestmark = pytest.mark.unit


def a_job(config: dict[str, Any] | None = None, **kw: Any) -> ActionJob:
    event = kw.pop("event", None) or Event.model_validate(
        make_event(random.Random(1), chain_id=8453, agent_id=7, block_number=100, log_index=0)
    )
    return ActionJob(
        job_id=job_id("t1", event.id, 1),
        trigger_id="t1",
        trigger_name="Low score",
        user_id="u1",
        action_id=1,
        action_type=ActionType.rest,
        config=config or {"url": "https://example.org/hook"},
        event=event,
        created_at=datetime.now(UTC),
        **{"explain": {"verdict": True, "ema": "41.5"}, **kw},
    )


# --------------------------------------------------------------------------- templates


def test_template_sees_event_trigger_explain_and_job() -> None:
    job = a_job()
    out = render_text(
        "{{ trigger.name }} agent {{ event.agent_id }} ema={{ explain.ema }} "
        "job={{ job.id }} #{{ job.attempt }}",
        context_of(job),
    )
    assert out == f"Low score agent 7 ema=41.5 job={job.job_id} #1"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ event.nope }}", "nope"),
        ("{{ undefined_name }}", "undefined_name"),
        ("{% for %}", "syntax error"),
        ("{{ ''.__class__.__mro__ }}", "sandbox"),
        ("{{ event.__class__ }}", "sandbox"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% for i in range(10) %}{{ 'x' * 60000 }}{% endfor %}", "exceeds"),
        ("{{ 'x' * 10**11 }}", "more than 65536"),
        ("{{ [1] * 100000 }}", "more than 65536"),
        ("{{ 2 ** 100000 }}", "exponent"),
        ("{{ range(1000000) | list | length }}", "range"),
        ("{% for i in range(60000) %}{% for j in range(60000) %}{% endfor %}{% endfor %}", "range"),
        ("{{ lipsum(1000) }}", "lipsum"),
    ],
)
def test_template_failures_are_clear(source: str, reason: str) -> None:
    with pytest.raises(TemplateRenderError, match=reason):
        render_text(source, context_of(a_job()))


def test_runaway_loops_are_stopped_quickly() -> None:
    """Nested loops over a string are not range(): the CPU budget stops them."""
    job = a_job(explain={"s": "x" * 2000})
    source = "{% for a in explain.s %}{% for b in explain.s %}{% for c in explain.s %}"
    source += "{% endfor %}{% endfor %}{% endfor %}"
    started = time.perf_counter()
    with pytest.raises(TemplateRenderError, match="CPU"):
        render_text(source, context_of(job))
    assert time.perf_counter() - started < 2.0
    # An ordinary loop is fine, and the tracer is gone afterwards.
    assert render_text("{% for k in explain %}{{ k }};{% endfor %}", context_of(job)) == "s;"
    assert sys.gettrace() is None


def test_sandbox_cannot_mutate_context() -> None:
    with pytest.raises(TemplateRenderError):
        render_text("{{ explain.update({'x': 1}) }}", context_of(a_job()))


def test_markdown_v2_escapes_values_not_the_template() -> None:
    job = a_job(explain={"note": "a_b*c [x](y) 1.5!"})
    out = render_text("*{{ explain.note }}*", context_of(job), parse_mode="MarkdownV2")
    assert out == r"*a\_b\*c \[x\]\(y\) 1\.5\!*"
    html_out = render_text(
        "<b>{{ explain.note2 }}</b>", {"explain": {"note2": "<i>&"}}, parse_mode="HTML"
    )
    assert html_out == "<b>&lt;i&gt;&amp;</b>"


@given(st.text(max_size=200))
def test_markdown_v2_escape_leaves_no_special_unescaped(text: str) -> None:
    escaped = escape_markdown_v2(text)
    i = 0
    while i < len(escaped):
        if escaped[i] == "\\":
            i += 2
            continue
        assert escaped[i] not in "_*[]()~`>#+-=|{}.!"
        i += 1


def test_json_object_templates() -> None:
    ctx = context_of(a_job())
    assert render_json_object({"agent": "{{ event.agent_id }}", "n": 3}, ctx) == {
        "agent": "7",
        "n": 3,
    }
    assert render_json_object('{"agent": {{ event.agent_id }}}', ctx) == {"agent": 7}
    with pytest.raises(TemplateRenderError, match="JSON object"):
        render_json_object("[1, 2]", ctx)
    with pytest.raises(TemplateRenderError, match="did not render to JSON"):
        render_json_object("{nope", ctx)


# --------------------------------------------------------------------------- rest requests


def test_rest_request_carries_idempotency_key_and_a_verifiable_signature() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    cfg = RestConfig.model_validate(
        {
            "url": "https://example.org/hook/{{event.agent_id}}",
            "headers": {"X-Agent": "{{ event.agent_id }}"},
            "body_template": {"text": "{{ trigger.name }}"},
        }
    )
    job = a_job()
    req = build_rest_request(job, cfg, secret=secret)
    assert req.url == "https://example.org/hook/7"
    assert req.headers["Idempotency-Key"] == job.job_id
    assert req.headers["X-Agent"] == "7"
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == b'{"text":"Low score"}'
    # The reference implementation of Standard Webhooks accepts it.
    payload = Webhook(secret).verify(req.body, req.headers)
    assert payload == {"text": "Low score"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body + b" ", req.headers)


class InProcessRenderer:
    """Renders here and notes what it was asked to render (no template workers)."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    async def call(self, fn: Any, *args: Any, templates: Any = None) -> Any:
        self.calls.append(templates)
        return fn(*args)


def noting_rest_kind(
    monkeypatch: pytest.MonkeyPatch, renderer: InProcessRenderer
) -> tuple[RestKind, list[dict[str, Any]]]:
    """A REST kind whose requests are noted in the list returned instead of leaving."""
    sent: list[dict[str, Any]] = []

    async def fetch(_session: Any, method: str, url: str, **kw: Any) -> OutboundResponse:
        sent.append({"method": method, "url": url, **kw})
        return OutboundResponse(200, {}, b"", url)

    monkeypatch.setattr(rest_kind, "fetch", fetch)
    kind = RestKind(
        session=None,  # type: ignore[arg-type]
        policy=OutboundPolicy.from_setting("127.0.0.0/8"),
        secrets=SecretBox(base64.urlsafe_b64encode(b"k" * 32).decode()),  # unused
        renderer=renderer,  # type: ignore[arg-type]
    )
    return kind, sent


async def test_a_prepared_webhook_is_signed_when_it_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Built before its slot, a request may wait there: its Standard Webhooks
    # timestamp is the moment it leaves, not the moment it was built.
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    clock = [1_700_000_000.0]
    monkeypatch.setattr(rest_kind, "time", type("Clock", (), {"time": lambda: clock[0]}))
    renderer = InProcessRenderer()
    kind, sent = noting_rest_kind(monkeypatch, renderer)
    cfg = RestConfig(url="https://hooks.example/in")
    job = a_job({"url": cfg.url})
    exchange = await kind.prepare(
        job, cfg, Target(destination="https://hooks.example", secret=secret)
    )
    assert not isinstance(exchange, Outcome)
    assert renderer.calls  # built now...
    assert sent == []  # ...but not sent
    clock[0] += 90.0  # the slot came 90 s later
    assert (await exchange()).kind == "success"
    (request,) = sent
    headers, body = request["headers"], request["data"]
    assert headers["webhook-timestamp"] == "1700000090"
    assert headers["webhook-signature"] == webhook_signature(
        secret, job.job_id, 1_700_000_090, body
    )


async def test_a_webhook_with_templates_renders_within_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rendering goes to the shared template workers: ahead of the slot, a backlog's
    # renderings would all queue there at once. Only the exchange renders it.
    renderer = InProcessRenderer()
    kind, sent = noting_rest_kind(monkeypatch, renderer)
    cfg = RestConfig(
        url="https://hooks.example/in", body_template={"agent": "{{ event.agent_id }}"}
    )
    job = a_job({"url": cfg.url, "body_template": cfg.body_template})
    exchange = await kind.prepare(job, cfg, Target(destination="https://hooks.example"))
    assert not isinstance(exchange, Outcome)
    assert renderer.calls == []  # nothing rendered before the slot
    assert (await exchange()).kind == "success"
    assert len(renderer.calls) == 1
    assert sent[0]["data"] == b'{"agent":"7"}'


async def test_an_untemplated_webhooks_error_ends_it_before_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind, sent = noting_rest_kind(monkeypatch, InProcessRenderer())
    cfg = RestConfig(url="https://hooks.example/in")
    target = Target(destination="https://hooks.example", secret="whsec_@@@")
    outcome = await kind.prepare(a_job({"url": cfg.url}), cfg, target)
    assert isinstance(outcome, Outcome)
    assert (outcome.kind, outcome.sent) == ("permanent", False)
    assert outcome.error == "the signing secret is whsec_ but not base64"
    assert sent == []


def test_raw_secret_signature_and_default_body() -> None:
    job = a_job()
    req = build_rest_request(job, RestConfig(url="https://example.org/"), secret="plain-secret")
    assert req.body is not None
    assert b'"job_id"' in req.body
    ts = int(req.headers["webhook-timestamp"])
    assert req.headers["webhook-signature"] == webhook_signature(
        "plain-secret", job.job_id, ts, req.body
    )
    # Without a secret: no signature headers; GET has no body.
    get = build_rest_request(job, RestConfig(url="https://example.org/", method="GET"), secret=None)
    assert get.body is None
    assert "webhook-signature" not in get.headers


def test_only_an_untemplated_url_is_kept_by_the_url_check() -> None:
    """A template worker's memory is capped: what templates render must not fill the
    cache of URL checks, or one user's long rendered URLs would starve the others."""
    cache = rest_kind._configured_url_refusal
    cache.cache_clear()
    job = a_job()
    for i in range(3):
        cfg = RestConfig.model_validate({"url": "https://example.org/h/{{job.attempt}}" + "x" * i})
        render_rest(*rest_templates(job, cfg))
    assert cache.cache_info().currsize == 0
    plain = RestConfig.model_validate({"url": "https://example.org/hook"})
    render_rest(*rest_templates(job, plain))
    render_rest(*rest_templates(job, plain))
    assert (cache.cache_info().currsize, cache.cache_info().hits) == (1, 1)


@given(events())
def test_the_default_body_holds_the_event_as_its_json_dump(event: Event) -> None:
    """Without templates the event is written into the body by pydantic's own JSON
    (not dumped to a dict first): the bytes must be those of the dict written by
    orjson, which templates see, whatever text the event's fields hold."""
    job = a_job(event=event)
    req = build_rest_request(job, RestConfig(url="https://example.org/"), secret=None)
    assert req.body is not None
    whole = orjson.loads(req.body)
    assert whole["event"] == event.model_dump(mode="json")
    expected = orjson.dumps({"event": event.model_dump(mode="json")})
    assert orjson.dumps({"event": orjson.Fragment(event.model_dump_json())}) == expected
    assert expected[len(b'{"event":') : -1] in req.body


@pytest.mark.parametrize(
    "name",
    [
        "Transfer-Encoding",
        "content-length",
        "Host",
        "Connection",
        "Proxy-Authorization",
        "Idempotency-Key",
        "webhook-signature",
        "Expect",
    ],
)
def test_framing_and_own_headers_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="set by the dispatcher itself"):
        RestConfig.model_validate({"url": "https://example.org/", "headers": {name: "x"}})
    # A config written behind the models' back still cannot set them.
    cfg = RestConfig.model_construct(
        method="POST",
        url="https://example.org/",
        headers={name: "0"},
        body_template=None,
        timeout_ms=1000,
        expected_status=None,
        signing_secret=None,
        max_attempts=3,
    )
    req = build_rest_request(a_job(), cfg, secret=None)
    assert "0" not in [v for k, v in req.headers.items() if k.lower() == name.lower()]


def test_malformed_whsec_secret_is_a_clear_failure() -> None:
    with pytest.raises(TemplateRenderError, match="not base64"):
        build_rest_request(a_job(), RestConfig(url="https://example.org/"), secret="whsec_@@@")


@pytest.mark.parametrize(
    ("url", "reason"),
    [("{{ explain.verdict }}", "http"), ("https://x.org/\r\nX: y", "whitespace")],
)
def test_rendered_url_is_checked(url: str, reason: str) -> None:
    cfg = RestConfig.model_construct(
        method="POST",
        url=url,
        headers={},
        body_template=None,
        timeout_ms=1000,
        expected_status=None,
        signing_secret=None,
        max_attempts=3,
    )
    with pytest.raises(TemplateRenderError, match=reason):
        build_rest_request(a_job(), cfg, secret=None)


@pytest.mark.parametrize(
    ("status", "expected", "kind"),
    [
        (200, None, "success"),
        (204, None, "success"),
        (302, None, "permanent"),
        (400, None, "permanent"),
        (404, None, "permanent"),
        (408, None, "transient"),
        (429, None, "transient"),
        (500, None, "transient"),
        (503, None, "transient"),
        (202, [201], "permanent"),
        (201, [201], "success"),
    ],
)
def test_http_status_outcomes(status: int, expected: list[int] | None, kind: str) -> None:
    out = http_outcome(status, {"retry-after": "7"}, b"x" * 2000, expected)
    assert out.kind == kind
    assert out.response is not None
    assert len(out.response["body"]) <= 501
    if status == 429:
        assert out.retry_after == 7
        assert not out.destination_fault


def test_origin() -> None:
    assert origin("https://Example.org/a?b") == "https://example.org:443"
    assert origin("http://127.0.0.1:8080/x") == "http://127.0.0.1:8080"


# --------------------------------------------------------------------------- telegram split


def test_split_message_at_line_ends_and_truncates() -> None:
    text = "\n".join(f"line {i:04d} " + "x" * 90 for i in range(200))
    parts = split_message(text, limit=4096, max_parts=2)
    assert len(parts) == 2
    assert all(len(p) <= 4096 for p in parts)
    assert parts[0].startswith("line 0000")
    assert parts[1].endswith("…")
    assert not parts[1].startswith("\n")
    assert split_message("short") == ["short"]
    assert split_message("y" * 5000, limit=4096, max_parts=4) == ["y" * 4096, "y" * 904]


# --------------------------------------------------------------------------- policies


@given(st.integers(1, 30), st.floats(0, 1, exclude_max=True))
def test_backoff_full_jitter_bounds(attempt: int, r: float) -> None:
    delay = backoff_delay(attempt, base=1.0, cap=300.0, rng=lambda: r)
    assert 0 <= delay <= min(300.0, 2 ** (attempt - 1))


def test_retry_after_parsing() -> None:
    assert parse_retry_after("12") == 12
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_breaker_opens_half_opens_and_closes() -> None:
    t = [0.0]
    b = Breakers(threshold=3, pause=10.0, clock=lambda: t[0])
    for _ in range(2):
        assert b.admit("d") is None
        b.record("d", fault=True)
    assert not b.is_open("d")
    assert b.admit("d") is None
    b.record("d", fault=True)
    assert b.is_open("d")
    assert b.open_count() == 1
    assert b.admit("d") == 10.0
    t[0] = 5.0
    assert b.admit("d") == 5.0
    assert b.admit("other") is None  # per destination
    t[0] = 10.0
    assert b.admit("d") is None  # the half-open probe
    assert b.admit("d") is not None  # only one probe at a time
    b.record("d", fault=True)  # probe failed: open for another pause
    assert b.admit("d") == 10.0
    t[0] = 20.0
    assert b.admit("d") is None
    b.record("d", fault=False)  # probe succeeded: closed
    assert not b.is_open("d")
    assert b.admit("d") is None


def test_non_fault_results_reset_the_count() -> None:
    b = Breakers(threshold=2, pause=10.0)
    b.record("d", fault=True)
    b.record("d", fault=False)
    b.record("d", fault=True)
    assert not b.is_open("d")


async def test_destination_limits_bound_concurrency_and_each_users_queue() -> None:
    limits = DestinationLimits(per_destination=2, queue=1)
    running = 0
    peak = 0
    release = asyncio.Event()

    async def work() -> None:
        nonlocal running, peak
        slot = limits.slot("d", "alice")
        assert slot is not None
        async with slot:
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

    tasks = [asyncio.create_task(work()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert limits.in_flight() == 2
    assert limits.slot("d", "alice") is None  # 2 running, 1 of hers waiting: full
    assert limits.slot("d", "bob") is not None  # his own queue is empty
    assert limits.slot("elsewhere", "alice") is not None  # a free slot: no waiting
    # Her queue counts every destination: where she would wait again, she may not.
    busy = [limits.slot("e", "bob") for _ in range(2)]
    for slot in busy:
        assert slot is not None
        await slot.__aenter__()
    assert None not in busy
    assert limits.slot("e", "alice") is None
    assert limits.slot("e", "carol") is not None
    for slot in busy:
        await slot.__aexit__(None, None, None)  # type: ignore[union-attr]
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2
    assert limits.in_flight() == 0
    assert limits.waiting_of == {}


async def test_a_freed_slot_goes_to_the_next_user_in_turn() -> None:
    """One user's flood does not hold up another user's jobs to the same host: the
    slots go round the users, not first come first served."""
    limits = DestinationLimits(per_destination=1, queue=100)
    served: list[str] = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def work(name: str, *, hold: bool = False) -> None:
        slot = limits.slot("d", name[0])
        assert slot is not None
        async with slot:
            served.append(name)
            if hold:
                holding.set()
                await release.wait()
            await asyncio.sleep(0)

    first = asyncio.create_task(work("a0", hold=True))
    await holding.wait()
    tasks = [asyncio.create_task(work(f"a{i}")) for i in range(1, 6)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(work(f"b{i}")) for i in range(1, 3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(work("c1")))
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, *tasks)
    assert served == ["a0", "a1", "b1", "c1", "a2", "b2", "a3", "a4", "a5"]
    assert limits.in_flight() == 0


async def test_a_waiter_that_gives_up_loses_its_turn_but_no_slot() -> None:
    limits = DestinationLimits(per_destination=1, queue=100)
    held = limits.slot("d", "a")
    assert held is not None
    await held.__aenter__()
    served: list[str] = []

    async def work(user: str) -> None:
        slot = limits.slot("d", user)
        assert slot is not None
        async with slot:
            served.append(user)

    gives_up = asyncio.create_task(work("b"))
    waits = asyncio.create_task(work("c"))
    await asyncio.sleep(0.01)
    gives_up.cancel()
    await asyncio.gather(gives_up, return_exceptions=True)
    await held.__aexit__(None, None, None)
    await waits
    assert served == ["c"]
    assert limits.in_flight() == 0
    # A waiter cancelled just after it was handed the slot passes it on.
    await held.__aenter__()
    late, next_in_line = asyncio.create_task(work("b")), asyncio.create_task(work("c"))
    await asyncio.sleep(0.01)
    await held.__aexit__(None, None, None)  # hands the slot to b's waiter...
    late.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(late, next_in_line, return_exceptions=True)
    assert served == ["c", "c"]
    assert limits.in_flight() == 0


async def test_rate_limiter_spaces_calls_per_key() -> None:
    t = [0.0]
    limiter = RateLimiter(rate=30, burst=30, per_key_interval=1.0, clock=lambda: t[0])
    assert await limiter.acquire("chat", max_wait=0) is None
    assert await limiter.acquire("chat", max_wait=0) == pytest.approx(1.0)
    assert await limiter.acquire("other", max_wait=0) is None
    limiter.pause("other", 20)
    assert await limiter.acquire("other", max_wait=5) == pytest.approx(20)
    t[0] = 1.0
    assert await limiter.acquire("chat", max_wait=0) is None


async def test_rate_limiter_bucket_caps_the_overall_rate() -> None:
    t = [0.0]
    limiter = RateLimiter(rate=30, burst=30, per_key_interval=0, clock=lambda: t[0])
    for i in range(30):
        assert await limiter.acquire(f"c{i}", max_wait=0) is None
    wait = await limiter.acquire("c30", max_wait=0)
    assert wait == pytest.approx(1 / 30)


def test_scrub_masks_secrets_and_keeps_what_the_attempt_did() -> None:
    unsent = Outcome.transient(
        "refused https://x/bot123:SECRET/send", response={"echo": "SECRET"}, sent=False
    )
    out = scrub(unsent, "123:SECRET")
    assert out.error == "refused https://x/bot***/send"
    assert out.response == {"echo": "SECRET"}  # only the whole secret is masked
    assert out.sent is False
    assert out.destination_fault is False
    parted = scrub(Outcome("transient", error="x SECRET", parts=(2, "d")), "SECRET")
    assert parted.parts == (2, "d")
    assert parted.error == "x ***"


@pytest.mark.parametrize(
    "source",
    [
        '{{ ""|center(100000000) }}',
        "{{ '%0999999999d' % 1 }}",
        "{{ '%.999999999f'|format(1.5) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ ('a' * 60000)|replace('a', 'bbbbbbbbbb') }}",
        "{{ ('a\\n' * 30000)|indent(100) }}",
    ],
)
def test_text_growing_operations_are_refused_before_they_build(source: str) -> None:
    started = time.perf_counter()
    with pytest.raises(TemplateRenderError, match="refused by the sandbox"):
        render_text(source, {})
    assert time.perf_counter() - started < 0.5


def test_text_growing_operations_within_the_cap_still_work() -> None:
    assert render_text("{{ 'ab'|center(6) }}|{{ '%05d' % 42 }}|{{ '%.2f'|format(1.5) }}", {}) == (
        "  ab  |00042|1.50"
    )
    assert render_text("{{ '{:>4}'.format('x') }}|{{ 'aXa'|replace('X', 'yy') }}", {}) == (
        "   x|ayya"
    )
    assert render_text("{{ 'a\\nb'|indent(2) }}", {}) == "a\n  b"


#: The review's repro: the host part holds a template that renders a "/". Unrendered,
#: the URL's origin is 127.0.0.1:9999 (the part before the "@" reads as userinfo);
#: rendered, the request goes to 127.0.0.1:9998.
_ESCAPING_URL = 'http://127.0.0.1:9998{{"\\x2f"}}@127.0.0.1:9999/hook'


def test_a_url_template_may_not_reach_the_host() -> None:
    with pytest.raises(ValidationError, match="templates may not be in the scheme"):
        RestConfig(url=_ESCAPING_URL)
    with pytest.raises(ValidationError, match="templates may not be in the scheme"):
        RestConfig(url="https://{{event.owner}}.example/hook")
    ok = RestConfig(url="https://hooks.example/a/{{event.agent_id}}?x={{trigger.id}}")
    assert build_rest_request(a_job(), ok, secret="s").url == "https://hooks.example/a/7?x=t1"


def test_secrets_go_only_to_the_actions_own_origin() -> None:
    # a trigger stored before the rule above: its URL renders to another origin
    legacy = RestConfig.model_construct(
        method="POST", url=_ESCAPING_URL, headers={}, body_template=None, expected_status=None
    )
    assert origin(legacy.url) == "http://127.0.0.1:9999"
    assert origin(build_rest_request(a_job(), legacy, secret=None).url) == "http://127.0.0.1:9998"
    with pytest.raises(TemplateRenderError, match="origin differs"):
        build_rest_request(a_job(), legacy, secret="whsec_c2VjcmV0")
    with pytest.raises(TemplateRenderError, match="origin differs"):
        build_rest_request(a_job(), legacy, secret=None, secret_headers={"Authorization": "x"})


def test_a_jobs_templates_share_one_output_budget() -> None:
    # 350 leaves, each just under the per-template cap: 90 MB if each leaf had its own
    body = {f"k{i}": "{{ job.id|center(262000) }}" for i in range(350)}
    started = time.perf_counter()
    with pytest.raises(TemplateRenderError, match="all of the job's templates together"):
        build_rest_request(
            a_job(), RestConfig(url="https://a.example/", body_template=body), secret=None
        )
    assert time.perf_counter() - started < 0.5
    with pytest.raises(TemplateRenderError, match="header X-A: rendered value exceeds 8192"):
        build_rest_request(
            a_job(),
            RestConfig(url="https://a.example/", headers={"X-A": "{{ job.id|center(9000) }}"}),
            secret=None,
        )


def test_secrets_are_masked_in_every_encoding_and_before_any_cut() -> None:
    token = "tok/én-" + "x" * 40
    body = (
        f"raw {token} orjson {orjson.dumps(token).decode()} "
        f"ascii {json.dumps(token)} slashes {json.dumps(token).replace('/', chr(92) + '/')}"
    ).encode()
    masked = mask(body, [token])
    assert b"x" * 40 not in masked
    assert masked.count(b"***") == 4
    # a secret straddling the 200-character cut of an error text
    error = RuntimeError("e" * 180 + " Bearer " + token)
    assert "x" * 5 not in short(error, token)
    assert short(error, token).startswith("e" * 180)


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        ("ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
         "https://gw.test/ipfs/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"),
        ("ipfs://QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/agent.json",
         "https://gw.test/ipfs/QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG/agent.json"),
        ("ipfs://ipfs/bafy1/a b/c?d#e", "https://gw.test/ipfs/bafy1/a%20b/c%3Fd%23e"),
        ("IPFS://bafy1/dir/", "https://gw.test/ipfs/bafy1/dir/"),
    ],
)  # fmt: skip
def test_an_ipfs_uri_is_fetched_under_the_gateways_path(uri: str, url: str) -> None:
    assert ipfs_gateway_url("https://gw.test/ipfs/", uri) == url


@pytest.mark.parametrize(
    "uri",
    [
        "ipfs://../x",  # the review's: https://gw.test/x, out of /ipfs/
        "ipfs://bafy1/../../admin",
        "ipfs://bafy1/%2e%2e/x",
        "ipfs://bafy1/a%2F..%2F..%2Fb",
        "ipfs://bafy1/a\\b",
        "ipfs://bafy1/a%00",
        "ipfs://",
        "ipfs://ba.fy/x",
        "ipfs://@evil.test/x",
    ],
)
def test_an_ipfs_uri_cannot_leave_the_gateways_path(uri: str) -> None:
    with pytest.raises(ResolveError):
        ipfs_gateway_url("https://gw.test/ipfs/", uri)


# --------------------------------------------------------------------------- per-job costs


def test_jobs_of_one_config_share_its_validated_model_and_a_bad_one_fails_each_time() -> None:
    config = {"url": "https://example.org/hook", "timeout_ms": 1234}
    first, second = a_job(dict(config)), a_job(dict(config))
    assert first.action_config() is second.action_config()
    cfg = first.action_config()
    assert isinstance(cfg, RestConfig)
    assert cfg.timeout_ms == 1234
    other = a_job({"url": "https://example.org/other"})
    assert other.action_config() is not first.action_config()
    other_cfg = other.action_config()
    assert isinstance(other_cfg, RestConfig)
    assert str(other_cfg.url) == "https://example.org/other"
    bad = a_job({"url": "ftp://example.org/hook"})
    for _ in range(2):
        with pytest.raises(ValidationError):
            bad.action_config()
    # a config beyond the cached size: validated for each job, the same result
    long_body = {"url": "https://example.org/hook", "body_template": "x" * MAX_CACHED_CONFIG}
    big, big_again = a_job(long_body), a_job(dict(long_body))
    assert big.action_config() is not big_again.action_config()
    assert big.action_config() == big_again.action_config()
    # beyond what the cache's key can hold: validated as before, not a TypeError
    with pytest.raises(ValidationError):
        a_job({"url": "https://example.org/hook", "timeout_ms": 2**70}).action_config()


def test_rest_arguments_build_a_template_context_only_for_templates() -> None:
    job = a_job()
    dumped = job.event.model_dump(mode="json")
    plain = RestConfig.model_validate({"url": "https://example.org/hook"})
    url, _, body, default, ctx = rest_templates(job, plain)
    assert (url, body, ctx) == ("https://example.org/hook", None, {})
    assert default is not None
    # not dumped to a dict: written into the body as pydantic's JSON
    assert orjson.loads(orjson.dumps(default))["event"] == dumped
    assert default["job_id"] == job.job_id
    templated = RestConfig.model_validate(
        {"url": "https://example.org/hook", "headers": {"X-Agent": "{{ event.agent_id }}"}}
    )
    *_, default, ctx = rest_templates(job, templated)
    assert ctx["event"] == dumped
    assert ctx["job"] == {"id": job.job_id, "attempt": 1}
    assert default is not None
    assert default["event"] == dumped
    rendered = render_rest(*rest_templates(job, templated))
    assert rendered.headers["X-Agent"] == "7"
    assert orjson.loads(rendered.body or b"")["event"] == dumped
    # a GET sends no body: nothing of the event is dumped unless templated
    get = RestConfig.model_validate({"url": "https://example.org/hook", "method": "GET"})
    *_, default, ctx = rest_templates(job, get)
    assert default is None
    assert ctx == {}
