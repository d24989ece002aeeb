"""Webhook secrets and signing keys are encrypted at rest, with a key from the environment, and rotate."""

from __future__ import annotations

import os
import stat

import duckdb
import pytest
from cryptography.fernet import Fernet

from batchrouter.access import vault
from batchrouter.cli import main
from batchrouter.core.config import Settings
from batchrouter.output.delivery import _secrets, add_endpoint
from batchrouter.output.summary import signing_key


@pytest.fixture(autouse=True)
def _alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_CONTROL", "direct")
    monkeypatch.setenv("BATCHROUTER_DELIVERY__ALLOW_PRIVATE_ENDPOINTS", "true")


def stored(database: str) -> list[str]:
    with duckdb.connect(database, read_only=True) as con:
        return [r[0] for r in con.execute(
            "SELECT secret FROM webhook_endpoints UNION ALL SELECT private_key_pem FROM workspace_signing_keys"
        ).fetchall()]  # fmt: skip


def make_secrets(settings: Settings) -> tuple[str, str]:
    _, secret = add_endpoint(settings, "acme", "http://127.0.0.1:9/hook")
    return secret, signing_key(settings, "acme").private_key_pem


def readable(settings: Settings) -> tuple[str, str]:
    (secret,) = _secrets(settings, "acme")
    return secret, signing_key(settings, "acme").private_key_pem


def test_without_a_key_in_the_environment_a_0600_key_file_beside_the_database_is_used(settings: Settings) -> None:
    secret, pem = make_secrets(settings)
    values = stored(settings.database)
    assert len(values) == 2 and all(v.startswith("fernet:") for v in values)
    assert secret not in "".join(values) and "PRIVATE KEY" not in "".join(values)
    key_file = vault.key_file(settings.database)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert readable(settings) == (secret, pem)


def test_the_environment_key_seals_and_a_wrong_key_is_a_clear_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(vault.ENV, Fernet.generate_key().decode())
    secret, _ = make_secrets(settings)
    assert not vault.key_file(settings.database).exists()
    monkeypatch.setenv(vault.ENV, Fernet.generate_key().decode())
    with pytest.raises(vault.VaultError, match="BATCHROUTER_SECRET_KEY"):
        readable(settings)
    monkeypatch.setenv(vault.ENV, "not-a-key")
    with pytest.raises(vault.VaultError, match="not a Fernet key"):
        vault.seal(settings.database, secret)


def test_rotation_with_the_environment_reseals_every_secret_under_the_new_key(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv(vault.ENV, old)
    plain = make_secrets(settings)
    monkeypatch.setenv(vault.ENV, f"{new},{old}")
    assert main(["secrets", "rotate"]) == 0
    assert "re-encrypted 1 in webhook_endpoints, 1 in workspace_signing_keys" in capsys.readouterr().out
    monkeypatch.setenv(vault.ENV, new)  # the old key is dropped: everything still reads
    assert readable(settings) == plain


def test_rotation_with_the_key_file_replaces_the_key_and_keeps_every_secret(settings: Settings) -> None:
    plain = make_secrets(settings)
    before = vault.key_file(settings.database).read_text()
    assert main(["secrets", "rotate"]) == 0
    after = vault.key_file(settings.database).read_text()
    assert after != before and len(after.split()) == 1
    assert readable(settings) == plain


def test_a_secret_stored_before_encryption_is_still_read_and_rotation_seals_it(settings: Settings) -> None:
    secret, _ = make_secrets(settings)
    with duckdb.connect(settings.database) as con:
        con.execute("UPDATE webhook_endpoints SET secret = ?", [secret])  # as an older version stored it
    assert readable(settings)[0] == secret
    assert main(["secrets", "rotate"]) == 0
    assert all(v.startswith("fernet:") for v in stored(settings.database))
    assert readable(settings)[0] == secret
    assert os.environ.get(vault.ENV) is None
