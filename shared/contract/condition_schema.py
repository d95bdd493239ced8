"""What a condition's ``value`` and ``config`` hold per condition type, as JSON Schema:
the patterns, bounds and object schemas of the per-type variants that
shared.contract.conditions generates the document from. Nothing here validates: the
`Condition` model checks conditions, and these schemas say the same thing to
clients and to the Schemathesis check, except for what no schema of one value can
say (which docs/api.md lists):

* whether a value is one item or a comma-separated list depends on the operator
  (``in``/``not_in`` take lists), so the value of a type whose operators take both
  matches either form;
* a ``field_equals`` value on an address field is an address (the field decides);
* a decimal's size (at most 80 characters, below 10^61) and an ``alpha`` written
  with an exponent lying in (0, 1], which no reasonably sized pattern relates to the
  digits;
* a list's count of items (at most 1,000), and the length of a field_equals list's
  item (at most 8,192 characters): a pattern repeating its item, or a character,
  that many times is too large for validators to compile.

Patterns are ECMA-262 regular expressions that mean the same to Python's ``re``
(anchored with ``^``/``$``; the values that the server strips may carry around them
exactly what Python's ``str.strip()`` removes)."""

from __future__ import annotations

from typing import Any, Final

from shared.contract.condition_types import (
    MAX_DURATION,
    MAX_WINDOW_SIZE,
    ConditionType,
)
from shared.contract.event_fields import INT63_MAX
from shared.contract.events import EVENT_REGISTRY
from shared.contract.patterns import ADDRESS_RE

#: The longest value of a condition (the model's bound).
MAX_VALUE_LENGTH: Final = 65536
#: The longest tag, and the longest value of a field_equals item.
MAX_TAG_LENGTH: Final = 256
MAX_FIELD_VALUE_LENGTH: Final = 8192
#: The longest duration in digits (``parse_duration``).
_DURATION_DIGITS: Final = 9
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _escape(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


#: The characters ``str.strip()`` removes, as the inside of a character class.
_SPACE: Final = "".join(_escape(chr(i)) for i in range(0x110000) if chr(i).strip() == "")
_WS: Final = f"[{_SPACE}]*"
#: A character of a list item that may start or end it: neither comma nor space nor NUL.
_EDGE: Final = f"[^,\\x00{_SPACE}]"


def _repeat(atom: str, low: int, high: int) -> str:
    if high == 0:
        return ""
    if low == high:
        return atom if low == 1 else f"{atom}{{{low}}}"
    return f"{atom}{{{low},{high}}}"


def _fixed_width(lo: str, hi: str) -> str:
    """Digit strings of one width between ``lo`` and ``hi`` (as strings of that width)."""
    if lo == hi:
        return lo
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        if (lo[0], hi[0]) == ("0", "9"):
            return _repeat("[0-9]", rest + 1, rest + 1)
        head = lo[0] if lo[0] == hi[0] else f"[{lo[0]}-{hi[0]}]"
        return head + _repeat("[0-9]", rest, rest)
    if lo[0] == hi[0]:
        return lo[0] + _fixed_width(lo[1:], hi[1:])
    parts = [lo[0] + _fixed_width(lo[1:], "9" * rest)]
    low, high = int(lo[0]) + 1, int(hi[0]) - 1
    if low <= high:
        digit = str(low) if low == high else f"[{low}-{high}]"
        parts.append(digit + _repeat("[0-9]", rest, rest))
    parts.append(hi[0] + _fixed_width("0" * rest, hi[1:]))
    return "(?:" + "|".join(parts) + ")"


def uint_pattern(lo: int, hi: int, max_digits: int) -> str:
    """A group matching 1 to ``max_digits`` decimal digits (leading zeros included)
    whose value lies in ``lo..hi`` (``hi`` has at most ``max_digits`` digits)."""
    parts: list[str] = []
    # by the number of significant digits: leading zeros, then those
    lengths = [
        n for n in range(1, len(str(hi)) + 1) if max(lo, 10 ** (n - 1)) <= min(hi, 10**n - 1)
    ]
    full = [n for n in lengths if lo <= 10 ** (n - 1) and 10**n - 1 <= hi]
    if lo == 0 and full == list(range(1, len(full) + 1)):
        # zero and every value of up to len(full) digits: any such digits after zeros
        top = len(full)
        parts.append(_repeat("0", 0, max_digits - top) + _repeat("[0-9]", 1, top))
        lengths = [n for n in lengths if n > top]
    elif lo == 0:
        parts.append(_repeat("0", 1, max_digits))
    for n in lengths:
        zeros = _repeat("0", 0, max_digits - n)
        low, high = str(max(lo, 10 ** (n - 1))), str(min(hi, 10**n - 1))
        parts.append(zeros + _fixed_width(low, high))
    return "(?:" + "|".join(parts) + ")"


#: An agent id: 0..2^63-1 in at most 19 digits.
AGENT_ID: Final = uint_pattern(0, INT63_MAX, 19)
#: A duration of 1 second to 30 days: digits and s, m, h or d.
DURATION: Final = (
    "(?:"
    + "|".join(
        uint_pattern(1, MAX_DURATION // seconds, _DURATION_DIGITS) + unit
        for unit, seconds in _UNITS.items()
    )
    + ")"
)
_EXPONENT: Final = "[eE][+-]?[0-9]{1,3}"
_MANTISSA: Final = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
#: A decimal without its sign, and with one: DECIMAL_RE, as what parse_decimal reads.
_UNSIGNED: Final = f"{_MANTISSA}(?:{_EXPONENT})?"
_DECIMAL: Final = f"[+-]?{_UNSIGNED}"
#: alpha as text: 0 < alpha <= 1 (exactly when written without an exponent).
_ALPHA: Final = rf"\+?(?:0*1(?:\.0*)?|0*\.[0-9]*[1-9][0-9]*|{_MANTISSA}{_EXPONENT})"
#: hysteresis as text: a decimal >= 0 (a minus sign only on zero).
_NON_NEGATIVE: Final = rf"(?:\+?{_UNSIGNED}|-(?:0+(?:\.0*)?|\.0+)(?:{_EXPONENT})?)"


def _stripped(inner: str) -> str:
    """A whole value the server strips, matching ``inner``."""
    return f"^{_WS}{inner}{_WS}$"


def _listed(item: str) -> str:
    """A comma-separated list of ``item``s, each with space around (one item alone is a
    list of one). Not bounded to MAX_LIST_ITEMS: a repetition that many times is more
    than validators compile."""
    one = f"{_WS}{item}{_WS}"
    return f"^{one}(?:,{one})*$"


def _text_item(max_length: int | None) -> str:
    """A list item of 1 to ``max_length`` characters once stripped (unbounded: any)."""
    inner = "*" if max_length is None else f"{{0,{max_length - 2}}}"
    return f"{_EDGE}(?:[^,\\x00]{inner}{_EDGE})?"


def _string(pattern: str | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": MAX_VALUE_LENGTH}
    if pattern is not None:
        schema["pattern"] = pattern
    return schema | extra


def _text_or_list(max_length: int, max_item_length: int | None) -> dict[str, Any]:
    """One text of at most ``max_length`` characters, taken as written, or a list of
    such texts (for in/not_in), each bounded to ``max_item_length`` if given."""
    return _string(
        anyOf=[
            {"maxLength": max_length, "pattern": "^[^\\x00]*$"},
            {"pattern": _listed(_text_item(max_item_length))},
        ]
    )


_EVENT_TYPE: Final = "(?:" + "|".join(sorted(EVENT_REGISTRY)) + ")"
_DECIMAL_VALUE: Final = _stripped(_DECIMAL)

#: The JSON Schema of ``value`` per condition type.
VALUE_SCHEMAS: Final[dict[ConditionType, dict[str, Any]]] = {
    ConditionType.agent_id_equals: _string(
        _listed(AGENT_ID), description="An agent id (0..2^63-1), a comma list for in/not_in."
    ),
    ConditionType.score_threshold: _string(_DECIMAL_VALUE, description="A decimal number."),
    ConditionType.tag_equals: _text_or_list(MAX_TAG_LENGTH, MAX_TAG_LENGTH)
    | {"description": "A tag (at most 256 characters, as written), a comma list for in/not_in."},
    ConditionType.validator_whitelist: _string(
        _listed(ADDRESS_RE.pattern), description="A comma list of addresses (0x + 40 hex)."
    ),
    ConditionType.event_type_equals: _string(
        _listed(_EVENT_TYPE), description="An event type, a comma list for in/not_in."
    ),
    ConditionType.ema_threshold: _string(_DECIMAL_VALUE, description="The threshold, a decimal."),
    ConditionType.rate_limit: _string(
        _stripped("[0-9]{1,19}"), description="A count of events (an integer >= 0)."
    ),
    ConditionType.file_uri_exists: _string(
        _stripped("(?:[tT][rR][uU][eE]|[fF][aA][lL][sS][eE])"), description="true or false."
    ),
    ConditionType.field_equals: _text_or_list(MAX_FIELD_VALUE_LENGTH, None)
    | {
        "description": "A value (at most 8192 characters, as written; an address on an "
        "address field), a comma list for in/not_in."
    },
    ConditionType.absence: _string(
        _stripped(DURATION), description="A duration of 1s to 30d, like 30s, 15m, 1h or 7d."
    ),
}

#: Condition types whose value may be left out (it is then empty).
OPTIONAL_VALUE: Final = frozenset({ConditionType.tag_equals, ConditionType.field_equals})

_SCOPE: Final[dict[str, Any]] = {
    "enum": ["trigger", "agent", None],
    "description": "Whose state: one for the trigger (the default) or one per agent.",
}
_EMPTY: Final[dict[str, Any]] = {"type": ["object", "null"], "additionalProperties": False}

#: The JSON Schema of ``config`` per condition type (but group's, made by the model).
_EMPTY_CONFIGS: Final[dict[ConditionType, dict[str, Any]]] = {
    kind: dict(_EMPTY) for kind in ConditionType if kind is not ConditionType.group
}
CONFIG_SCHEMAS: Final[dict[ConditionType, dict[str, Any]]] = _EMPTY_CONFIGS | {
    ConditionType.ema_threshold: {
        "type": "object",
        "properties": {
            "window_size": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_WINDOW_SIZE},
            "alpha": {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    {"type": "string", "pattern": _stripped(_ALPHA)},
                    {"type": "null"},
                ]
            },
            "scope": _SCOPE,
            "hysteresis": {
                "anyOf": [
                    {"type": "number", "minimum": 0},
                    {"type": "string", "pattern": _stripped(_NON_NEGATIVE)},
                    {"type": "null"},
                ]
            },
            "fire_on": {"enum": ["crossing", "every"]},
        },
        "anyOf": [
            {"required": ["window_size"], "properties": {"window_size": {"type": "integer"}}},
            {"required": ["alpha"], "properties": {"alpha": {"type": ["number", "string"]}}},
        ],
        "additionalProperties": False,
    },
    ConditionType.rate_limit: {
        "type": "object",
        "properties": {
            "time_window": {"type": "string", "pattern": f"^{DURATION}$"},
            "reset_on_trigger": {"type": "boolean"},
            "scope": _SCOPE,
        },
        "required": ["time_window"],
        "additionalProperties": False,
    },
    ConditionType.absence: {
        "type": ["object", "null"],
        "properties": {"scope": _SCOPE},
        "additionalProperties": False,
    },
}

#: Condition types whose config may be left out (it is then empty).
OPTIONAL_CONFIG: Final = frozenset(
    kind for kind, schema in CONFIG_SCHEMAS.items() if "null" in schema["type"]
)
