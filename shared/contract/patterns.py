"""The text formats the contract checks in more than one place, each defined once as a
compiled pattern (match with ``fullmatch``): Ethereum addresses, 32-byte hashes,
decimal numbers and unsigned integers written in digits."""

from __future__ import annotations

import re
from typing import Final

#: An Ethereum address: 0x and 40 hex digits, in either case (normalized to lower case
#: by whoever stores or compares it).
ADDRESS_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")
#: A 32-byte value: 0x and 64 hex digits (block, transaction, file, request and
#: response hashes; legacy bytes32 tags).
HASH_RE: Final = re.compile(r"0x[0-9a-fA-F]{64}")
#: A decimal number as text: an optional sign, digits with an optional fraction (or a
#: bare fraction), and an optional exponent of at most three digits. Callers bound the
#: length and the size of the exponent on top.
DECIMAL_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
#: An unsigned integer in 1 to 19 decimal digits (agent ids, counts); a range check
#: such as <= INT63_MAX comes on top.
UINT_RE: Final = re.compile(r"[0-9]{1,19}")
