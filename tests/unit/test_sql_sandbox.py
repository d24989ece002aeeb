"""`batchrouter sql` reads only the product's views: every escape to a file, another database, an
extension, a secret or a setting is refused, and `--workspace W` shows one workspace's rows only."""

from __future__ import annotations

import hashlib
import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from batchrouter.access.accounts import Accounts
from batchrouter.cli import main
from batchrouter.core.config import load_settings
from batchrouter.output.delivery import add_endpoint
from batchrouter.output.reporting import PRODUCT_VIEWS

USD = 1_000_000
# "acme-b" starts with "acme-": a prefix match on batch ids would leak its rows into acme's.
WORKSPACES = ("acme", "acme-b")
MANIFEST = b"item_id,model,prompt,max_tokens\n1,gpt-4o-mini,Say hello.,20\n2,gpt-4o-mini,Say bye.,20\n"


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two workspaces that each ran a batch, an API key and a webhook endpoint with its secret."""
    root = tmp_path_factory.mktemp("sandbox")
    env = {
        "BATCHROUTER_STORAGE__ROOT": str(root / "bucket"),
        "BATCHROUTER_DATABASE": str(root / "batchrouter.duckdb"),
        "BATCHROUTER_SIMULATOR__LATENCY_MS": "0",
        "BATCHROUTER_DELIVERY__ALLOW_PRIVATE_ENDPOINTS": "true",
    }
    (root / "orders.csv").write_bytes(MANIFEST)
    (root / "private.csv").write_text("secret,value\nroot-password,hunter2\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("BATCHROUTER_CONFIG", raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        settings = load_settings()
        for workspace in WORKSPACES:
            assert main(["credits", "grant", "--workspace", workspace, "--usd", "1", "--key", workspace]) == 0
            with redirect_stdout(io.StringIO()):
                assert main(["run", str(root / "orders.csv"), "--workspace", workspace, "--json"]) == 0
        accounts = Accounts(settings.database)
        accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
        key, _ = accounts.create_key("acme", name="k", scopes=["admin"], created_by="owner@acme.test", actor="t")
        _, webhook_secret = add_endpoint(settings, "acme", "http://127.0.0.1:9/hook")
    return {"root": root, "env": env, "key": key, "webhook_secret": webhook_secret}


@pytest.fixture
def env(installation: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name, value in installation["env"].items():
        monkeypatch.setenv(name, value)
    return installation


def sql(capsys: pytest.CaptureFixture[str], query: str, *flags: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["sql", query, *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(capsys: pytest.CaptureFixture[str], query: str, *flags: str) -> list[dict[str, Any]]:
    code, out, err = sql(capsys, query, "--json", *flags)
    assert code == 0, err
    result: list[dict[str, Any]] = json.loads(out)
    return result


ESCAPES = {
    "read_csv": "SELECT * FROM read_csv('{root}/private.csv')",
    "read_csv_auto": "SELECT * FROM read_csv_auto('{root}/private.csv')",
    "replacement scan": "SELECT * FROM '{root}/private.csv'",
    "read_text": "SELECT * FROM read_text('/etc/passwd')",
    "read_blob": "SELECT * FROM read_blob('/etc/hostname')",
    "read_json": "SELECT * FROM read_json_auto('{root}/private.csv')",
    "glob": "SELECT * FROM glob('{root}/*')",
    "read_parquet of the bucket": "SELECT * FROM read_parquet('{root}/bucket/batches/*/receipts.parquet')",
    "parquet_metadata": "SELECT * FROM parquet_metadata('{root}/bucket/batches/*/receipts.parquet')",
    "sniff_csv": "SELECT * FROM sniff_csv('{root}/private.csv')",
    "the ledger's own tables": "SELECT * FROM ledger.api_keys",
    "the ledger's journal": "SELECT * FROM ledger.main.journal",
    "webhook secrets": "SELECT secret FROM ledger.webhook_endpoints",
    "attach": "ATTACH '{root}/batchrouter.duckdb' AS stolen",
    "attach in a select": "SELECT 1; ATTACH '{root}/batchrouter.duckdb' AS stolen",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "set": "SET enable_external_access = true",
    "reset": "RESET lock_configuration",
    "pragma": "PRAGMA enable_external_access",
    "copy out": "COPY (SELECT * FROM balances) TO '{root}/out.csv'",
    "copy in": "COPY balances FROM '{root}/private.csv'",
    "export": "EXPORT DATABASE '{root}/exported'",
    "secrets": "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "duckdb_secrets": "SELECT * FROM duckdb_secrets()",
    "a new view": "CREATE VIEW v AS SELECT * FROM read_csv('{root}/private.csv')",
}


@pytest.mark.parametrize("query", list(ESCAPES.values()), ids=list(ESCAPES))
def test_every_escape_from_the_views_is_refused_with_exit_2(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], query: str
) -> None:
    root: Path = env["root"]
    code, out, err = sql(capsys, query.format(root=root))
    assert code == 2, out
    assert out == "" and "Traceback" not in err
    assert "hunter2" not in err and env["webhook_secret"] not in err
    assert not (root / "out.csv").exists() and not (root / "exported").exists()


def test_the_session_cannot_see_other_databases_and_its_settings_are_locked(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    databases = {r["database_name"] for r in rows(capsys, "SELECT database_name FROM duckdb_databases()")}
    assert databases <= {"memory", "system", "temp"}
    wanted = "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', 'lock_configuration')"
    settings = {r["name"]: r["value"] for r in rows(capsys, wanted)}
    assert settings == {"enable_external_access": "false", "lock_configuration": "true"}
    tables = {r["table_name"] for r in rows(capsys, "SELECT table_name FROM duckdb_tables()")}
    assert tables == set(PRODUCT_VIEWS)


def test_no_view_holds_a_key_hash_or_a_webhook_secret(env: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    key_secret = env["key"].split("_", 2)[2]
    key_hash = hashlib.sha256(key_secret.encode()).hexdigest()
    for view in PRODUCT_VIEWS:
        dump = json.dumps(rows(capsys, f"SELECT * FROM {view}"), default=str)
        for secret in (key_hash, key_secret, env["webhook_secret"]):
            assert secret not in dump, view


@pytest.mark.parametrize("workspace", WORKSPACES)
def test_workspace_restricts_every_view_to_that_workspace(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str], workspace: str
) -> None:
    other = next(w for w in WORKSPACES if w != workspace)
    for view in PRODUCT_VIEWS:
        if view == "platform_revenue":
            code, _, err = sql(capsys, f"SELECT * FROM {view}", "--workspace", workspace)
            assert code == 2 and "platform_revenue" in err  # platform-wide: not in a workspace's session
            continue
        found = rows(capsys, f"SELECT * FROM {view}", "--workspace", workspace)
        everything = rows(capsys, f"SELECT * FROM {view}")
        if view not in ("audit_events",):
            assert found, f"{view} has rows for {workspace}"
        assert len(found) < len(everything) or not everything, view
        dump = json.dumps(found, default=str)
        assert f'"{other}"' not in dump, view
        assert not re.search(re.escape(other) + r"-[0-9a-f]{24}", dump), f"{view} shows a batch of {other}"


def test_workspace_spelling_is_canonical_and_an_invalid_name_exits_2(
    env: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert rows(capsys, "SELECT workspace FROM balances", "--workspace", "ACME") == [{"workspace": "acme"}]
    code, _, err = sql(capsys, "SELECT 1", "--workspace", "x' OR 1=1 --")
    assert code == 2 and "not a valid name" in err
