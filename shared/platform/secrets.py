"""Secrets at rest: MCP bearer tokens and webhook signing secrets, encrypted with
``SECRETS_KEY`` (Fernet: AES-128-CBC + HMAC-SHA256, authenticated, timestamped).

``SECRETS_KEY`` holds one Fernet key (32 bytes, urlsafe base64) or several,
comma-separated: the first encrypts, all of them decrypt, so a key is rotated by
putting the new one first and re-encrypting (:meth:`SecretBox.rotate`; ``python -m
tools.rotate_secrets`` does it for every stored ciphertext) before the old one is
removed.

Each ciphertext is bound to where it is stored (``context``, e.g.
``"trigger_actions:42"``): a ciphertext copied into another row does not
decrypt there.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr


class SecretsKeyError(ValueError):
    """SECRETS_KEY is missing or not a list of Fernet keys."""


class SecretDecryptError(Exception):
    """A ciphertext does not decrypt with any key, or belongs to another context."""


def _fernet(key: str, position: int) -> Fernet:
    try:
        raw = base64.urlsafe_b64decode(key.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SecretsKeyError(f"SECRETS_KEY item {position}: not urlsafe base64") from None
    if len(raw) != 32:
        raise SecretsKeyError(f"SECRETS_KEY item {position}: {len(raw)} bytes, a Fernet key has 32")
    return Fernet(key.encode("ascii"))


class SecretBox:
    """Encrypts and decrypts small secrets with the keys of ``SECRETS_KEY``."""

    def __init__(self, secrets_key: SecretStr | str) -> None:
        value = (
            secrets_key.get_secret_value() if isinstance(secrets_key, SecretStr) else secrets_key
        )
        keys = [k.strip() for k in value.split(",") if k.strip()]
        if not keys:
            raise SecretsKeyError("SECRETS_KEY is empty")
        fernets = [_fernet(k, i) for i, k in enumerate(keys)]
        self._fernet = MultiFernet(fernets)
        self._newest = MultiFernet(fernets[:1])

    @staticmethod
    def _prefix(context: str) -> bytes:
        if "\0" in context:
            raise ValueError("a secret's context may not contain NUL")
        return context.encode() + b"\0"

    def encrypt(self, plaintext: str, *, context: str) -> bytes:
        """Ciphertext of ``plaintext`` for the row named by ``context``."""
        return self._fernet.encrypt(self._prefix(context) + plaintext.encode())

    def decrypt(self, ciphertext: bytes, *, context: str) -> str:
        """The plaintext; :class:`SecretDecryptError` when it does not decrypt or was
        made for another context (the context is inside the authenticated token)."""
        try:
            data = self._fernet.decrypt(bytes(ciphertext))
        except InvalidToken:
            raise SecretDecryptError(f"secret of {context} does not decrypt") from None
        prefix = self._prefix(context)
        if not hmac.compare_digest(data[: len(prefix)], prefix):
            raise SecretDecryptError(f"secret stored for another row than {context}")
        return data[len(prefix) :].decode()

    def rotate(self, ciphertext: bytes) -> bytes:
        """The same secret encrypted under the first (newest) key."""
        return self._fernet.rotate(bytes(ciphertext))

    def is_newest(self, ciphertext: bytes) -> bool:
        """Whether ``ciphertext`` is under the first (newest) key already (a Fernet
        token names no key: it is, when that key alone decrypts it)."""
        try:
            self._newest.decrypt(bytes(ciphertext))
        except InvalidToken:
            return False
        return True
