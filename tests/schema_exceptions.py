"""The rules the OpenAPI documents cannot express, and the Schemathesis hook that
excuses exactly them: a schema-valid request the server refuses with 422 is a
failure unless every problem the answer names is one of these (the field and the
message both). docs/api.md lists the same rules for people ("What the documents
cannot say"); tests/unit/test_contracts.py keeps the two lists equal.

Loaded by ``st run`` through ``SCHEMATHESIS_HOOKS=tests.schema_exceptions``."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True)
class Rule:
    """One rule: the field (``details[].field``, a regular expression matched in
    full), the message's start and what follows it (a regular expression matched in
    full; anything unless given)."""

    key: str
    field: str
    message: str
    rest: str = ".*"


_ACTION = r"(?:trigger\.)?actions\.[0-9]+\.config"
_CONDITION = r"(?:trigger\.)?conditions\.[0-9]+(?:\.config\.conditions\.[0-9]+)*"

#: The rules, each named by its key in docs/api.md.
EXCEPTIONS: Final[tuple[Rule, ...]] = (
    # a cursor is valid only as a list's own next_cursor
    Rule("cursor", r"cursor", "not a cursor of this list"),
    # query parameters depend on one another
    Rule("blocks-need-chain", r"", "from_block and to_block need chain_id"),
    # values compared with each other
    Rule("backtest-range", r"", "Value error, to must be after from"),
    Rule("backtest-range", r"", "Value error, the range may span at most"),
    Rule("reorg-range", r"to_block", "must be >= from_block"),
    # in the document, but not generated from by Schemathesis beside the other rules
    Rule("feedback-layout", r"value", "NewFeedback needs score"),
    Rule("feedback-layout", r"value(?:_decimals)?", "required with value"),
    # values compared with the clock
    Rule("signature-expiry", r"expires_at", "has passed"),
    Rule("signature-expiry", r"expires_at", "at most"),
    Rule("timestamp-ahead", r"timestamp", "must not be more than one day in the future"),
    # values compared with stored state
    Rule("telegram-chat-linked", rf"{_ACTION}\.chat_id", "this chat is not linked"),
    Rule("action-ids", r"actions\.[0-9]+\.id", "not an action of this trigger"),
    # header names compared without case
    Rule("header-names", rf"{_ACTION}\.(?:secret_)?headers\..*", "set by the dispatcher"),
    Rule("header-names", rf"{_ACTION}\.(?:secret_)?headers\..*", "the same header twice"),
    Rule("header-names", rf"{_ACTION}\.secret_headers\..*", "header named in both"),
    Rule("header-names", rf"{_ACTION}\.secret_headers\..*", "not a secret"),
    Rule("header-names", rf"{_ACTION}\.headers\..*", "a credential header"),
    # no NUL character anywhere, inside free-form JSON (object templates) too
    Rule("nul", r".*", "must not contain NUL characters"),
    # JSON Schema's integer is any number without a fraction, 1.0 too
    Rule("integers", r".*", "Input should be a valid integer"),
    Rule("integers", r"value|score", "must be an integer or a decimal string"),
    Rule("integers", rf"{_CONDITION}\.config\.window_size", "must be an integer"),
    # a condition's value is one item or a comma-separated list by its operator; the
    # value of a type taking both matches either
    Rule("condition-lists", rf"{_CONDITION}\.value", "must be a comma-separated list without"),
    Rule("condition-lists", rf"{_CONDITION}\.value", "must list at most"),
    Rule("condition-lists", rf"{_CONDITION}\.value", "not an agent id", r".*,.*"),
    Rule("condition-lists", rf"{_CONDITION}\.value", "unknown event type", r".*,.*"),
    Rule("condition-lists", rf"{_CONDITION}\.value", "tags are at most 256 characters"),
    Rule("condition-lists", rf"{_CONDITION}\.value", "values are at most 8192 characters"),
    # an event_type_equals value names events of the trigger's own registry
    Rule("event-type-registry", rf"{_CONDITION}\.value", "", r".* is not an event of the .*"),
    # a field_equals value on an address field is an address
    Rule("field-addresses", rf"{_CONDITION}\.value", "not an address (0x + 40 hex)"),
    # a decimal's length and size, an alpha written with an exponent
    Rule("decimal-bounds", rf"{_CONDITION}\.value", "must be a decimal number"),
    Rule("decimal-bounds", rf"{_CONDITION}\.config\.alpha", "must be a number with 0 < alpha"),
    Rule("decimal-bounds", rf"{_CONDITION}\.config\.hysteresis", "must be a number >= 0"),
    # where conditions may stand
    Rule("conditions", rf"{_CONDITION}\.config\.conditions", "a not group takes exactly one"),
    Rule("conditions", rf"{_CONDITION}", "groups nest at most"),
    Rule("conditions", rf"{_CONDITION}", "a trigger has at most one absence condition"),
    Rule("conditions", rf"{_CONDITION}", "an absence condition stands at the top level only"),
    Rule("conditions", rf"{_CONDITION}\.condition_type", "ema_threshold cannot be combined"),
    Rule("conditions", rf"{_CONDITION}\.condition_type", "rate_limit cannot be combined"),
    Rule("conditions", r"(?:trigger\.)?conditions", "at most"),
)

#: The keys, in the order docs/api.md lists them.
KEYS: Final = tuple(dict.fromkeys(rule.key for rule in EXCEPTIONS))


def excused(status: int, body: Any) -> bool:
    """Whether an answer refuses only for rules the document cannot express."""
    if status != 422 or not isinstance(body, dict):
        return False
    details = body.get("details")
    if not isinstance(details, list) or not details:
        return False
    return all(
        isinstance(d, dict)
        and any(
            re.fullmatch(rule.field, str(d.get("field", "")), re.DOTALL) is not None
            and str(d.get("message", "")).startswith(rule.message)
            and re.fullmatch(rule.rest, str(d["message"])[len(rule.message) :], re.DOTALL)
            is not None
            for rule in EXCEPTIONS
        )
        for d in details
    )


def _register() -> None:
    import schemathesis  # noqa: PLC0415 (only where Schemathesis loads this module)
    from schemathesis.core.failures import Failure  # noqa: PLC0415

    @schemathesis.hook
    def filter_failure(context: Any, failure: Failure, case: Any, response: Any) -> bool:
        if failure.code != "ST202":  # only "schema-valid request rejected" is excused
            return True
        try:
            body = json.loads(response.content)
        except ValueError:
            return True
        return not excused(response.status_code, body)


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:  # loaded by `st run`, not a test
    _register()
