"""shared.secrets: Fernet at rest, bound to its row, rotatable."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from shared.secrets import SecretBox, SecretDecryptError, SecretsKeyError

pytestmark = pytest.mark.unit


def test_round_trip_and_ciphertext_hides_the_secret() -> None:
    box = SecretBox(Fernet.generate_key().decode())
    token = box.encrypt("s3cr3t-token", context="agent_mcp_tokens:1:7")
    assert b"s3cr3t" not in token
    assert box.decrypt(token, context="agent_mcp_tokens:1:7") == "s3cr3t-token"
    # Fernet tokens are randomised: the same secret twice gives two ciphertexts.
    assert box.encrypt("s3cr3t-token", context="x") != box.encrypt("s3cr3t-token", context="x")


def test_ciphertext_moved_to_another_row_does_not_decrypt() -> None:
    box = SecretBox(Fernet.generate_key().decode())
    token = box.encrypt("abc", context="trigger_actions:1")
    with pytest.raises(SecretDecryptError, match="another row"):
        box.decrypt(token, context="trigger_actions:2")


def test_wrong_key_and_tampering_are_refused() -> None:
    box = SecretBox(Fernet.generate_key().decode())
    other = SecretBox(Fernet.generate_key().decode())
    token = box.encrypt("abc", context="c")
    with pytest.raises(SecretDecryptError):
        other.decrypt(token, context="c")
    tampered = bytearray(token)
    tampered[20] ^= 1
    with pytest.raises(SecretDecryptError):
        box.decrypt(bytes(tampered), context="c")


def test_rotation_new_key_first_old_still_decrypts() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = SecretBox(old).encrypt("abc", context="c")
    both = SecretBox(f"{new},{old}")
    assert both.decrypt(token, context="c") == "abc"
    rotated = both.rotate(token)
    assert SecretBox(new).decrypt(rotated, context="c") == "abc"
    with pytest.raises(SecretDecryptError):
        SecretBox(old).decrypt(rotated, context="c")


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "empty"), ("not base64!!", "base64"), ("YWJj", "3 bytes")],
)
def test_bad_keys_are_named(key: str, reason: str) -> None:
    with pytest.raises(SecretsKeyError, match=reason):
        SecretBox(key)


def test_dev_key_is_valid() -> None:
    SecretBox("ZGV2LXNlY3JldHMta2V5LTMyLWJ5dGVzLWxvbmctLTE=")
