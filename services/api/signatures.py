"""EIP-191 (``personal_sign``) signatures over the MCP token message.

The owner of an agent signs, with the wallet that owns the agent's token::

    ERC-8004 MCP token
    deployment: <this deployment's signing domain>
    chain_id: <chain id>
    agent_id: <agent id>
    token_sha256: 0x<sha256 of the token's UTF-8 bytes, hex>
    allowed_tools: <tool names, comma-separated, or *>
    allowed_users: <user ids of this service, comma-separated, or *>
    nonce: <8..64 of A-Z a-z 0-9 _ ->
    expires_at: <unix seconds>

(lines joined by a single ``\\n``, no trailing newline). The deployment binds the
signature to one installation of this service (SIGNING_DOMAIN: a signed message is
worthless to another within its hour), the chain and agent to one agent, the hash
to one token (the token itself never goes into a wallet prompt), the scope to what
may use it (``*``: every tool, every user; names and ids in the order given), the
nonce is accepted once and the expiry at most an hour ahead.
"""

from __future__ import annotations

import hashlib
from typing import Final

from eth_hash.auto import keccak
from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError

#: Order of secp256k1: a signature with s above half of it is the malleable twin.
SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def token_sha256(token: str) -> str:
    return "0x" + hashlib.sha256(token.encode()).hexdigest()


def scope_text(names: list[str] | None) -> str:
    """A scope line's value: ``*`` for everyone (None), else the names joined by ','."""
    return "*" if names is None else ",".join(names)


def mcp_token_message(
    *,
    deployment: str,
    chain_id: int,
    agent_id: int,
    token: str,
    allowed_tools: list[str] | None,
    allowed_users: list[str] | None,
    nonce: str,
    expires_at: int,
    registry: str = "",
) -> str:
    return "\n".join(
        (
            "ERC-8004 MCP token",
            f"deployment: {deployment}",
            f"chain_id: {chain_id}",
            *_registry_line(registry),
            f"agent_id: {agent_id}",
            f"token_sha256: {token_sha256(token)}",
            f"allowed_tools: {scope_text(allowed_tools)}",
            f"allowed_users: {scope_text(allowed_users)}",
            f"nonce: {nonce}",
            f"expires_at: {expires_at}",
        )
    )


def _registry_line(registry: str) -> tuple[str, ...]:
    """``registry: <Identity registry>`` when the token names one (else no line)."""
    return (f"registry: {registry}",) if registry else ()


def mcp_token_removal_message(
    *,
    deployment: str,
    chain_id: int,
    agent_id: int,
    nonce: str,
    expires_at: int,
    registry: str = "",
) -> str:
    return "\n".join(
        (
            "ERC-8004 MCP token removal",
            f"deployment: {deployment}",
            f"chain_id: {chain_id}",
            *_registry_line(registry),
            f"agent_id: {agent_id}",
            f"nonce: {nonce}",
            f"expires_at: {expires_at}",
        )
    )


def eip191_digest(message: str) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message)."""
    data = message.encode()
    return bytes(keccak(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data))


def recover_signer(message: str, signature_hex: str) -> str | None:
    """The lower-case address that signed ``message`` (EIP-191), or None when the
    signature is malformed, malleable (high s) or recovers no key."""
    try:
        raw = bytes.fromhex(signature_hex.removeprefix("0x"))
    except ValueError:
        return None
    if len(raw) != 65:
        return None
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1) or not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_N // 2:
        return None
    try:
        public_key = Signature(vrs=(v, r, s)).recover_public_key_from_msg_hash(
            eip191_digest(message)
        )
    except (BadSignature, ValidationError, ValueError):
        return None
    return str(public_key.to_checksum_address()).lower()
