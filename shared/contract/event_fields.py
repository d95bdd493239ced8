"""The field types an event is validated with: their limits, the checks and
normalisations of addresses, hashes, hex bytes, texts and tags (bytes32 tags of
older layouts decoded), integers and timestamps."""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Annotated, Final

from pydantic import AfterValidator, Field, Strict
from pydantic_core import PydanticCustomError

from shared.contract.patterns import ADDRESS_RE, HASH_RE

INT32_MAX: Final = 2**31 - 1
INT63_MAX: Final = 2**63 - 1
ETHEREUM_GENESIS: Final = 1438269973
MAX_FUTURE_SECONDS: Final = 86400
MAX_ABS_VALUE: Final = 10**38
MAX_VALUE_DECIMALS: Final = 18
#: Longest text field (URIs, endpoints, tags, metadata keys) and metadata value, in
#: characters. The chain bounds nothing but the block's gas: at the usual block gas
#: limits a log carries at most a few MiB, and one ingest request is at most 5 MiB,
#: so these only keep a single field within what one request can carry. Every
#: message built from an event fits the topics' max.message.bytes (8 MiB).
MAX_TEXT: Final = 4 * 1024 * 1024
MAX_METADATA_HEX: Final = 2 * MAX_TEXT + 2
#: What a NUL character of a text is stored as (PostgreSQL text cannot hold one):
#: U+2400 SYMBOL FOR NULL.
NUL_STAND_IN: Final = "\u2400"

_HEX_BYTES = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_INTEGER = re.compile(r"[+-]?[0-9]{1,40}")


def _address(v: str) -> str:
    if ADDRESS_RE.fullmatch(v) is None:
        raise PydanticCustomError("address", "must be 0x followed by 40 hex digits")
    return v.lower()


def _hash(v: str) -> str:
    if HASH_RE.fullmatch(v) is None:
        raise PydanticCustomError("hash", "must be 0x followed by 64 hex digits")
    return v.lower()


def _hex_bytes(v: str) -> str:
    if len(v) > MAX_METADATA_HEX or _HEX_BYTES.fullmatch(v) is None:
        raise PydanticCustomError(
            "hex_bytes", "must be 0x followed by an even number of hex digits (at most 4 MiB)"
        )
    return v.lower()


def _text(v: str) -> str:
    """The chain's text as it is, but for NUL characters (stored as U+2400)."""
    return v.replace("\x00", NUL_STAND_IN)


def _tag(v: str) -> str:
    # bytes32 tags of older layouts arrive zero-padded: the padding is not part of the tag
    v = v.rstrip("\x00")
    if HASH_RE.fullmatch(v) is not None:
        return bytes32_text(v)
    return _text(v)


def bytes32_text(v: str) -> str:
    """A bytes32 tag posted as 0x + 64 hex: its text when it holds one (UTF-8, trailing
    NUL padding removed, no control characters left), else the hex in lower case."""
    raw = bytes.fromhex(v[2:]).rstrip(b"\x00")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return v.lower()
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        return v.lower()
    return text


def as_integer(v: object) -> int | None:
    """An int, an integer string or an integral Decimal as int; None for anything else."""
    if type(v) is int:
        return v
    if type(v) is str:
        return int(v) if _INTEGER.fullmatch(v) is not None else None
    if isinstance(v, Decimal) and v.is_finite() and abs(v) <= MAX_ABS_VALUE:
        return int(v) if v == v.to_integral_value() else None
    return None


def _not_future(v: int) -> int:
    if v > time.time() + MAX_FUTURE_SECONDS:
        raise PydanticCustomError("timestamp_future", "must not be more than one day in the future")
    return v


StrictStr = Annotated[str, Strict()]
# The formats the validators check, also written into the JSON Schema (``pattern``) so
# that the documents promise what is enforced.
Address = Annotated[
    str,
    Strict(),
    AfterValidator(_address),
    Field(json_schema_extra={"pattern": f"^{ADDRESS_RE.pattern}$"}),
]
Hash = Annotated[
    str,
    Strict(),
    AfterValidator(_hash),
    Field(json_schema_extra={"pattern": f"^{HASH_RE.pattern}$"}),
]
HexBytes = Annotated[
    str,
    Strict(),
    AfterValidator(_hex_bytes),
    Field(json_schema_extra={"pattern": f"^{_HEX_BYTES.pattern}$", "maxLength": MAX_METADATA_HEX}),
]
Uri = Annotated[str, Strict(), Field(max_length=MAX_TEXT), AfterValidator(_text)]
Tag = Annotated[str, Strict(), Field(max_length=MAX_TEXT), AfterValidator(_tag)]
Key = Annotated[str, Strict(), Field(max_length=MAX_TEXT), AfterValidator(_text)]
ChainId = Annotated[int, Strict(), Field(ge=1, le=INT32_MAX)]
Uint63 = Annotated[int, Strict(), Field(ge=0, le=INT63_MAX)]
Uint31 = Annotated[int, Strict(), Field(ge=0, le=INT32_MAX)]
Percent = Annotated[int, Strict(), Field(ge=0, le=100)]
Timestamp = Annotated[int, Strict(), Field(ge=ETHEREUM_GENESIS), AfterValidator(_not_future)]
ValueDecimals = Annotated[int, Strict(), Field(ge=0, le=MAX_VALUE_DECIMALS)]


def scaled(value: Decimal | int, decimals: int) -> Decimal:
    """value / 10**decimals, exactly (no context rounding)."""
    sign, digits, exponent = Decimal(value).as_tuple()
    return Decimal((sign, digits, int(exponent) - decimals))
