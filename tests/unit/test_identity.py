"""Tenancy and identity: one spelling per workspace and email, batch ids that never collide across
workspaces, the same bytes as the same batch (under any file name), and re-runs only on purpose."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from batchrouter.access.accounts import AccessError, Accounts
from batchrouter.api import create_app
from batchrouter.batches.lifecycle import submit
from batchrouter.cli import main
from batchrouter.core.batch_info import BATCH_DIGEST_CHARS, batch_id_for
from batchrouter.core.config import ConfigError, Settings, load_settings
from batchrouter.core.errors import BatchError
from batchrouter.core.identity import WORKSPACE_PATTERN, IdentityError, canonical_email, canonical_workspace
from batchrouter.core.storage import Storage
from batchrouter.engine import BatchRouter
from batchrouter.intake.drops import Dropped, dropped_name

MANIFEST = b"item_id,model,prompt\n1,gpt-4o-mini,hello\n"
SHA = hashlib.sha256(MANIFEST).hexdigest()
ALL_SCOPES = ["batches:read", "batches:write", "credits:read", "credits:write", "admin"]


# -- canonical names ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spelling",
    ["owner@acme.test", "Owner@Acme.TEST", "  owner@acme.test\t", "ｏｗｎｅｒ@ａｃｍｅ.test", "OWNER@acme.test\n"],
)
def test_every_spelling_of_an_email_is_one_canonical_address(spelling: str) -> None:
    assert canonical_email(spelling) == "owner@acme.test"


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a@b@c", "a b@c.d", "a@", "@b", "x\u200b@y.z", "a@b\x00c", 5])
def test_what_is_not_an_email_is_refused(bad: object) -> None:
    with pytest.raises(IdentityError, match="not an email address"):
        canonical_email(bad)


@pytest.mark.parametrize("spelling", ["acme", "ACME", " Acme ", "ａｃｍｅ"])
def test_every_spelling_of_a_workspace_is_one_name(spelling: str) -> None:
    assert canonical_workspace(spelling) == "acme"


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", "-lead", ".hidden", "a" * 65, "a b", "é", None])
def test_what_is_not_a_workspace_name_is_refused(bad: object) -> None:
    with pytest.raises(IdentityError, match="not a valid name"):
        canonical_workspace(bad)


# -- batch ids ------------------------------------------------------------------------------------
WORKSPACES = st.from_regex(WORKSPACE_PATTERN, fullmatch=True)


@seed(9)
@settings(max_examples=300, deadline=None)
@given(WORKSPACES, WORKSPACES, st.sampled_from([None, "r1", "2026-12-01"]))
def test_distinct_workspaces_never_share_a_batch_id(first: str, second: str, tag: str | None) -> None:
    if first == second:
        return
    assert batch_id_for(first, SHA, run_tag=tag) != batch_id_for(second, SHA, run_tag=tag)
    # The id spells out its workspace before a fixed-length digest, so it splits back unambiguously.
    assert batch_id_for(first, SHA)[: -BATCH_DIGEST_CHARS - 1] == first


def test_workspaces_whose_names_once_collided_now_get_different_ids() -> None:
    # Under the old scheme "a-b" + "c.csv" and "a" + "b-c.csv" slugged to the same id for the same bytes.
    assert batch_id_for("a-b", SHA) != batch_id_for("a", SHA)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage(settings.storage)


def test_a_renamed_copy_of_the_same_bytes_is_the_same_batch(storage: Storage) -> None:
    first = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    again = submit(storage, workspace="ACME", source_name="copy of orders.csv", data=MANIFEST)
    assert again == first
    assert storage.list("batches") == [first.batch_id]


def test_a_run_tag_makes_a_new_batch_and_the_same_tag_the_same_one(storage: Storage) -> None:
    base = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST)
    rerun = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST, run_tag="again")
    assert rerun.batch_id != base.batch_id and rerun.run_tag == "again"
    assert submit(storage, workspace="acme", source_name="x.csv", data=MANIFEST, run_tag="again") == rerun


@pytest.mark.parametrize("tag", ["a b", "../x", "x--y", "-x", "x" * 65])
def test_an_invalid_run_tag_is_refused(storage: Storage, tag: str) -> None:
    with pytest.raises(BatchError, match="run tag"):
        submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST, run_tag=tag)


def test_a_dropped_rerun_file_becomes_the_tagged_batch(settings: Settings, storage: Storage) -> None:
    tagged = submit(storage, workspace="acme", source_name="orders.csv", data=MANIFEST, run_tag="t2")
    name = dropped_name(tagged)
    storage.write_bytes(MANIFEST, "manifests", "acme", name)
    accepted = BatchRouter(settings).batches.accept_drop(Dropped(f"manifests/acme/{name}", "acme", name, 0.0))
    assert accepted.batch_id == tagged.batch_id


def test_cli_submit_gives_one_batch_for_a_renamed_copy_and_a_new_one_with_run_tag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, copy = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_bytes(MANIFEST)
    copy.write_bytes(MANIFEST)
    ids = []
    for args in ([str(first)], [str(copy)], [str(copy), "--run-tag", "again"], [str(first), "--run-tag", "again"]):
        assert main(["submit", *args, "--workspace", "Acme", "--json"]) == 0
        ids.append(json.loads(capsys.readouterr().out)["batch_id"])
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
    assert ids[0].startswith("acme-")


# -- accounts, config, CLI and API use the canonical names ------------------------------------------
def test_accounts_store_and_find_members_by_their_canonical_email(settings: Settings) -> None:
    accounts = Accounts(settings.database)
    accounts.set_member("Acme", " Owner@Acme.test ", "owner", actor="test")
    assert accounts.members("acme")[0]["email"] == "owner@acme.test"
    assert accounts.role("ACME", "ｏwner@acme.test") == "owner"
    with pytest.raises(AccessError) as refused:
        accounts.set_member("acme", "not an email", "member", actor="test")
    assert refused.value.status == 422


def test_config_workspace_keys_are_canonical_and_spellings_of_one_name_clash(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[workspaces.Acme]\nauto_approve_max_usd = 5\n")
    settings = load_settings(config)
    assert list(settings.workspaces) == ["acme"]
    assert settings.workspace("ACME").auto_approve_max_usd == 5
    config.write_text("[workspaces.Acme]\nauto_approve_max_usd = 5\n[workspaces.acme]\nauto_approve_max_usd = 6\n")
    with pytest.raises(ConfigError, match="same workspace"):
        load_settings(config)
    config.write_text('[workspaces."../x"]\nauto_approve_max_usd = 5\n')
    with pytest.raises(ConfigError, match="not a valid name"):
        load_settings(config)


def test_cli_refuses_an_invalid_workspace_name_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["credits", "balance", "--workspace", "../etc"]) == 2
    assert "not a valid name" in capsys.readouterr().err


@pytest.fixture
def admin_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Accounts, str]]:
    monkeypatch.setenv("BATCHROUTER_API__RATE_LIMIT_BURST", "1000")
    settings = load_settings()
    accounts = Accounts(settings.database)
    accounts.set_member("acme", "owner@acme.test", "owner", actor="test")
    accounts.set_member("acme", "admin@acme.test", "admin", actor="test")
    key, _ = accounts.create_key("acme", name="a", scopes=ALL_SCOPES, created_by="admin@acme.test", actor="t")
    with TestClient(create_app(settings)) as client:
        yield client, accounts, key


@pytest.mark.parametrize(
    "spelling", ["OWNER@ACME.TEST", " owner@acme.test", "owner@acme.test%20", "ｏwner@acme.test", "Owner@acme.test%0A"]
)
def test_no_spelling_of_an_owners_email_lets_an_admin_change_or_remove_the_owner(
    admin_client: tuple[TestClient, Accounts, str], spelling: str
) -> None:
    client, accounts, key = admin_client
    headers = {"Authorization": f"Bearer {key}"}
    changed = client.put(f"/v1/members/{spelling}", json={"role": "viewer"}, headers=headers)
    removed = client.delete(f"/v1/members/{spelling}", headers=headers)
    assert changed.status_code == removed.status_code == 403, (changed.text, removed.text)
    assert {m["email"]: m["role"] for m in accounts.members("acme")} == {
        "owner@acme.test": "owner", "admin@acme.test": "admin"
    }  # fmt: skip


def test_an_invalid_member_email_answers_422(admin_client: tuple[TestClient, Accounts, str]) -> None:
    client, _, key = admin_client
    answer = client.put("/v1/members/no-at-sign", json={"role": "viewer"}, headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_email"
