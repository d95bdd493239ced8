"""shared.platform.secrets: Fernet at rest, bound to its row, rotatable."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from shared.platform.secrets import SecretBox, SecretDecryptError, SecretsKeyError

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DEV_OVERLAY = DEPLOY / "k8s" / "overlays" / "dev"


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


def test_is_newest_tells_which_key_a_ciphertext_needs() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    both = SecretBox(f"{new},{old}")
    under_old = SecretBox(old).encrypt("abc", context="c")
    assert not both.is_newest(under_old)
    assert both.is_newest(both.rotate(under_old))
    assert both.is_newest(both.encrypt("abc", context="c"))
    assert not both.is_newest(b"not a token")


@pytest.mark.parametrize(
    ("key", "reason"),
    [("", "empty"), ("not base64!!", "base64"), ("YWJj", "3 bytes")],
)
def test_bad_keys_are_named(key: str, reason: str) -> None:
    with pytest.raises(SecretsKeyError, match=reason):
        SecretBox(key)


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in path.read_text().splitlines())
    return {k.strip(): v.strip() for k, sep, v in pairs if sep and not k.startswith("#")}


def test_dev_key_is_valid() -> None:
    """The SECRETS_KEY of every development setup (the local stack, compose, the k8s
    dev overlay) is one Fernet key: api and dispatcher share it wherever they run
    together, and it encrypts what it alone decrypts. Production never carries it."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    keys = {
        "deploy/local/dev.env": env_file(DEPLOY / "local" / "dev.env")["SECRETS_KEY"],
        "deploy/compose.yaml": compose["x-app"]["environment"]["SECRETS_KEY"],
        "k8s dev overlay": env_file(DEV_OVERLAY / "migrate" / "dev-secrets.env")["SECRETS_KEY"],
    }
    assert len(set(keys.values())) == 1, keys
    (key,) = set(keys.values())
    assert "," not in key  # one key, nothing to rotate from
    assert len(base64.urlsafe_b64decode(key)) == 32

    box = SecretBox(key)
    token = box.encrypt("dev-webhook-secret", context="trigger_actions:1")
    assert b"dev-webhook-secret" not in token
    assert SecretBox(key).decrypt(token, context="trigger_actions:1") == "dev-webhook-secret"
    assert Fernet(key.encode()).decrypt(token).endswith(b"dev-webhook-secret")
    with pytest.raises(SecretDecryptError):
        SecretBox(Fernet.generate_key().decode()).decrypt(token, context="trigger_actions:1")

    carriers = {
        str(path.relative_to(DEPLOY))
        for path in DEPLOY.rglob("*")
        if path.is_file() and key in path.read_text(errors="ignore")
    }
    assert all(
        name in {"local/dev.env", "compose.yaml"} or name.startswith("k8s/overlays/dev/")
        for name in carriers
    ), carriers
