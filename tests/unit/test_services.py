"""The engine's credits, keys, members, webhooks and reports services: each access rule once, at the engine.

An API key acts as a `Principal` (held to its scopes, its member's role and its workspace); the CLI
and Dagster act as an `Operator`. The faces only translate, so these are the rules' only tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from batchrouter.access.accounts import SCOPES, Principal
from batchrouter.access.actors import CLI, Operator
from batchrouter.core.config import load_settings
from batchrouter.core.errors import BatchRouterError, RateLimited
from batchrouter.engine import BatchRouter
from batchrouter.output import delivery
from batchrouter.output.delivery import EndpointNotFound

USD = 1_000_000
ALL = list(SCOPES)


@dataclass
class World:
    engine: BatchRouter

    def member(self, email: str, role: str, workspace: str = "acme") -> None:
        self.engine.members.set(email, workspace=workspace, role=role, actor=CLI)

    def principal(self, email: str, scopes: list[str] = ALL, workspace: str = "acme") -> Principal:
        """A key of `email` (a member already), as the API would see it after authentication."""
        issued = self.engine.keys.create(workspace, name=email, scopes=scopes, created_by=email, actor=CLI)
        return self.engine.keys.authenticate(issued.key)

    def key_of(self, email: str, scopes: list[str] = ALL, workspace: str = "acme") -> str:
        return self.engine.keys.create(workspace, name="k", scopes=scopes, created_by=email, actor=CLI).key_id

    def audit(self, workspace: str = "acme") -> list[tuple[str, str | None, str]]:
        return [(e["action"], e["target"], e["actor"]) for e in self.engine.accounts.audit_events(workspace)]


def make_world(root: Path, **overrides: Any) -> World:
    api = {"rate_limit_per_minute": 100_000, "rate_limit_burst": 100_000, **overrides.pop("api", {})}
    settings = load_settings(database=str(root / "batchrouter.duckdb"), storage={"root": str(root / "bucket")},
                             api=api, **overrides)  # fmt: skip
    world = World(BatchRouter(settings))
    for email, role in (("olga@acme.test", "owner"), ("adam@acme.test", "admin"), ("mia@acme.test", "member"),
                        ("vera@acme.test", "viewer")):  # fmt: skip
        world.member(email, role)
    world.member("bob@beta.test", "owner", workspace="beta")
    return world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield make_world(tmp_path, delivery={"allow_private_endpoints": True})


def refused(code: str, call: Any, *args: Any, **kwargs: Any) -> str:
    """The message of the refusal with this stable code that the call raises."""
    with pytest.raises(BatchRouterError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, str(caught.value)
    return str(caught.value)


# -- members: the owner rules ------------------------------------------------------------------------------
def test_an_admin_cannot_make_an_owner_and_an_owner_can(world: World) -> None:
    members = world.engine.members
    refused("forbidden", members.set, "mia@acme.test", workspace="acme", role="owner",
            actor=world.principal("adam@acme.test"))  # fmt: skip
    assert world.engine.accounts.role("acme", "mia@acme.test") == "member"
    after = members.set("mia@acme.test", workspace="acme", role="owner", actor=world.principal("olga@acme.test"))
    assert {m.email: m.role for m in after}["mia@acme.test"] == "owner"


def test_an_admin_cannot_change_an_owners_role(world: World) -> None:
    refused("forbidden", world.engine.members.set, "olga@acme.test", workspace="acme", role="viewer",
            actor=world.principal("adam@acme.test"))  # fmt: skip
    assert world.engine.accounts.role("acme", "olga@acme.test") == "owner"


def test_an_admin_cannot_remove_an_owner_but_removes_a_member(world: World) -> None:
    admin = world.principal("adam@acme.test")
    refused("forbidden", world.engine.members.remove, "olga@acme.test", workspace="acme", actor=admin)
    after = world.engine.members.remove("mia@acme.test", workspace="acme", actor=admin)
    assert [m.email for m in after] == ["adam@acme.test", "olga@acme.test", "vera@acme.test"]


def test_the_operator_may_make_an_owner(world: World) -> None:
    world.engine.members.set("vera@acme.test", workspace="acme", role="owner", actor=Operator("cli:ops"))
    assert world.engine.accounts.role("acme", "vera@acme.test") == "owner"
    assert world.audit()[-1] == ("member.set", "vera@acme.test", "cli:ops")


def test_removing_someone_who_is_not_a_member_is_not_found(world: World) -> None:
    refused("not_found", world.engine.members.remove, "nobody@acme.test", workspace="acme", actor=CLI)


def test_members_are_listed_with_todays_json_keys(world: World) -> None:
    listed = world.engine.members.list("acme", actor=CLI)[0].model_dump(mode="json")
    assert set(listed) == {"email", "role", "added_at"}
    assert listed["added_at"] == world.engine.accounts.members("acme")[0]["added_at"]


# -- the action table: scope and role --------------------------------------------------------------------
def test_a_key_needs_both_the_scope_and_the_roles_action(world: World) -> None:
    keys = world.engine.keys
    # A viewer's role does not allow keys:read, whatever the key holds; an owner's key needs `admin`.
    error = refused("forbidden", keys.list, "acme", actor=world.principal("vera@acme.test"))
    assert "admin" in error and "keys:read" in error and "viewer" in error
    refused("forbidden", keys.list, "acme", actor=world.principal("olga@acme.test", ["batches:read"]))
    assert keys.list("acme", actor=world.principal("mia@acme.test", ["admin"]))


# -- keys: scope subset, outranking ---------------------------------------------------------------------------
def test_a_key_cannot_create_a_key_with_a_scope_it_does_not_hold(world: World) -> None:
    owner = world.principal("olga@acme.test", ["admin", "batches:read"])
    before = len(world.engine.accounts.keys("acme"))
    error = refused("forbidden", world.engine.keys.create, "acme", name="x", scopes=["batches:write"], actor=owner)
    assert "batches:write" in error
    assert len(world.engine.accounts.keys("acme")) == before


def test_a_keys_new_key_has_a_subset_of_its_scopes_and_acts_for_its_member(world: World) -> None:
    member = world.principal("mia@acme.test", ["admin", "batches:read"])
    issued = world.engine.keys.create("acme", name="ci", scopes=["batches:read"], actor=member)
    assert (issued.scopes, issued.created_by) == (["batches:read"], "mia@acme.test")
    assert world.engine.keys.authenticate(issued.key).role == "member"
    assert set(issued.model_dump(mode="json")) == {"key", "note", "key_id", "prefix", "workspace", "name", "scopes",
                                                   "created_by", "created_at", "expires_at", "revoked_at"}  # fmt: skip


def test_a_key_cannot_create_a_key_for_another_member(world: World) -> None:
    refused("forbidden", world.engine.keys.create, "acme", name="x", scopes=["admin"], created_by="olga@acme.test",
            actor=world.principal("mia@acme.test"))  # fmt: skip


def test_the_operator_names_the_member_a_key_acts_for(world: World) -> None:
    refused("invalid_request", world.engine.keys.create, "acme", name="x", scopes=["admin"], actor=CLI)
    refused("not_a_member", world.engine.keys.create, "acme", name="x", scopes=["admin"],
            created_by="stranger@acme.test", actor=CLI)  # fmt: skip


def test_listed_keys_keep_todays_json(world: World) -> None:
    world.key_of("olga@acme.test")
    listed = [k.model_dump(mode="json") for k in world.engine.keys.list("acme", actor=CLI)]
    assert listed == [k.public() for k in world.engine.accounts.keys("acme")]


def test_unknown_scopes_are_refused_by_name(world: World) -> None:
    error = refused("invalid_scope", world.engine.keys.create, "acme", name="x", scopes=["root"],
                    created_by="olga@acme.test", actor=CLI)  # fmt: skip
    assert "root" in error


@pytest.mark.parametrize("verb", ["revoke", "rotate"])
def test_a_member_cannot_manage_an_owners_key(world: World, verb: str) -> None:
    owners = world.key_of("olga@acme.test", ["admin"])
    call = getattr(world.engine.keys, verb)
    error = refused("forbidden", call, owners, workspace="acme", actor=world.principal("mia@acme.test"))
    assert "member mia@acme.test" in error and "owner olga@acme.test" in error
    key = next(k for k in world.engine.accounts.keys("acme") if k.key_id == owners)
    assert (key.revoked_at, key.expires_at) == (None, None)


@pytest.mark.parametrize("verb", ["revoke", "rotate"])
def test_an_admin_cannot_manage_an_owners_key_but_manages_a_members(world: World, verb: str) -> None:
    admin = world.principal("adam@acme.test")
    call = getattr(world.engine.keys, verb)
    refused("forbidden", call, world.key_of("olga@acme.test"), workspace="acme", actor=admin)
    managed = call(world.key_of("mia@acme.test"), workspace="acme", actor=admin)
    assert managed.created_by == "mia@acme.test"


@pytest.mark.parametrize("verb", ["revoke", "rotate"])
def test_a_member_manages_their_own_keys(world: World, verb: str) -> None:
    member = world.principal("mia@acme.test")
    result = getattr(world.engine.keys, verb)(world.key_of("mia@acme.test"), workspace="acme", actor=member)
    assert result.created_by == "mia@acme.test"


def test_a_key_cannot_rotate_a_key_with_a_scope_it_lacks(world: World) -> None:
    own = world.key_of("mia@acme.test", ["admin", "batches:write"])
    narrow = world.principal("mia@acme.test", ["admin"])
    error = refused("forbidden", world.engine.keys.rotate, own, workspace="acme", actor=narrow)
    assert "batches:write" in error


def test_a_rotated_key_is_issued_once_and_the_old_one_retires_after_the_grace(world: World) -> None:
    old = world.engine.keys.create("acme", name="k", scopes=ALL, created_by="olga@acme.test", actor=CLI)
    new = world.engine.keys.rotate(old.key_id, workspace="acme", grace=timedelta(0), actor=CLI)
    assert new.key_id != old.key_id and new.key.startswith("br_")
    refused("key_expired", world.engine.keys.authenticate, old.key)
    assert world.engine.keys.authenticate(new.key).key.key_id == new.key_id


def test_an_unknown_key_id_is_not_found(world: World) -> None:
    for verb in ("revoke", "rotate"):
        refused("not_found", getattr(world.engine.keys, verb), "no-such-key", workspace="acme", actor=CLI)


# -- workspaces are kept apart ---------------------------------------------------------------------------------
def test_a_key_of_another_workspace_is_refused_by_every_service(world: World) -> None:
    e, beta = world.engine, world.principal("bob@beta.test", workspace="beta")
    key_id = world.key_of("olga@acme.test")
    calls = [
        lambda: e.members.list("acme", actor=beta),
        lambda: e.members.set("vera@acme.test", workspace="acme", role="admin", actor=beta),
        lambda: e.members.remove("olga@acme.test", workspace="acme", actor=beta),
        lambda: e.keys.list("acme", actor=beta),
        lambda: e.keys.create("acme", name="x", scopes=["admin"], actor=beta),
        lambda: e.keys.revoke(key_id, workspace="acme", actor=beta),
        lambda: e.keys.rotate(key_id, workspace="acme", actor=beta),
        lambda: e.webhooks.list("acme", actor=beta),
        lambda: e.webhooks.add("http://127.0.0.1:9/hook", workspace="acme", actor=beta),
        lambda: e.credits.balance("acme", actor=beta),
        lambda: e.credits.history("acme", actor=beta),
        lambda: e.credits.checkout("acme", pack="starter", actor=beta),
        lambda: e.reports.links("some-batch", workspace="acme", actor=beta),
        lambda: e.reports.sql("SELECT 1", workspace="acme", actor=beta),
    ]
    for call in calls:
        error = refused("forbidden", call)
        assert "workspace beta" in error and "workspace acme" in error
    assert world.engine.accounts.role("acme", "vera@acme.test") == "viewer"
    assert next(k for k in world.engine.accounts.keys("acme") if k.key_id == key_id).revoked_at is None


def test_a_key_id_of_another_workspace_is_not_found_in_ones_own(world: World) -> None:
    beta = world.principal("bob@beta.test", workspace="beta")
    refused("not_found", world.engine.keys.revoke, world.key_of("olga@acme.test"), workspace="beta", actor=beta)


def test_links_to_another_workspaces_batch_are_not_found(world: World, tmp_path: Path) -> None:
    world.engine.storage.write_json({"batch_id": "acme-1", "workspace": "acme"}, "batches", "acme-1", "batch.json")
    world.engine.storage.write_json({"quote_id": "q"}, "batches", "acme-1", "quote.json")
    beta = world.principal("bob@beta.test", workspace="beta")
    refused("not_found", world.engine.reports.links, "acme-1", workspace="beta", actor=beta)
    links = world.engine.reports.links("acme-1", workspace="acme", actor=world.principal("vera@acme.test"))
    assert list(links.links) == ["quote.json"]


# -- credits -----------------------------------------------------------------------------------------------
def test_a_grant_is_credited_and_audited_once_per_key(world: World) -> None:
    credits = world.engine.credits
    first = credits.grant("acme", micros=5 * USD, key="promo-1", memo="welcome", actor=CLI)
    again = credits.grant("acme", micros=5 * USD, key="promo-1", memo="welcome", actor=CLI)
    assert (first.replayed, again.replayed, again.entry_id) == (False, True, first.entry_id)
    assert credits.balance("acme").available_usd_micros == 5 * USD
    assert [a for a in world.audit() if a[0] == "credits.granted"] == [("credits.granted", first.entry_id,
                                                                        "cli:operator")]  # fmt: skip
    assert [e.op for e in credits.history("acme")] == ["grant"]


def test_only_the_operator_grants_credit(world: World) -> None:
    refused("forbidden", world.engine.credits.grant, "acme", micros=USD, actor=world.principal("olga@acme.test"))
    assert world.engine.credits.balance("acme").credited_usd_micros == 0


def test_balance_and_history_keep_todays_json(world: World) -> None:
    world.engine.credits.grant("acme", micros=USD, key="g", actor=CLI)
    balance = world.engine.credits.balance("acme", actor=world.principal("vera@acme.test"))
    assert balance.model_dump(mode="json") == world.engine.ledger.balance("acme").as_dict()
    row = world.engine.ledger.history("acme")[0]
    entry = world.engine.credits.history("acme")[0].model_dump(mode="json")
    assert entry == {**row, "created_at": str(row["created_at"])}


# -- webhooks ---------------------------------------------------------------------------------------------
def test_adding_and_removing_a_webhook_endpoint_is_audited(world: World) -> None:
    admin = world.principal("adam@acme.test")
    added = world.engine.webhooks.add("http://127.0.0.1:9/hook", workspace="acme", actor=admin)
    assert added.secret.startswith("whsec_")
    listed = world.engine.webhooks.list("acme", actor=admin)
    assert [w.endpoint_id for w in listed] == [added.endpoint_id]
    (endpoint,) = delivery.list_endpoints(world.engine.settings, "acme")
    assert listed[0].model_dump(mode="json") == {**asdict(endpoint), "created_at": endpoint.created_at.isoformat()}
    assert world.engine.webhooks.remove(added.endpoint_id, workspace="acme", actor=admin).removed == added.endpoint_id
    actor = admin.actor
    assert world.audit()[-2:] == [("webhook.added", added.endpoint_id, actor),
                                  ("webhook.removed", added.endpoint_id, actor)]  # fmt: skip
    with pytest.raises(EndpointNotFound):
        world.engine.webhooks.remove(added.endpoint_id, workspace="acme", actor=admin)


def test_a_member_may_list_but_not_add_webhooks(world: World) -> None:
    member = world.principal("mia@acme.test")
    assert world.engine.webhooks.list("acme", actor=member) == []
    refused("forbidden", world.engine.webhooks.add, "http://127.0.0.1:9/hook", workspace="acme", actor=member)


# -- authentication: suspension and the rate limit -----------------------------------------------------------
def test_a_key_of_a_suspended_workspace_is_refused_until_it_resumes(world: World) -> None:
    issued = world.engine.keys.create("acme", name="k", scopes=ALL, created_by="olga@acme.test", actor=CLI)
    other = world.engine.keys.create("beta", name="k", scopes=ALL, created_by="bob@beta.test", actor=CLI)
    world.engine.accounts.set_suspended("acme", True, reason="unpaid invoice", actor="test")
    error = refused("workspace_suspended", world.engine.keys.authenticate, issued.key)
    assert "unpaid invoice" in error
    assert world.engine.keys.authenticate(other.key).workspace == "beta"
    world.engine.accounts.set_suspended("acme", False, reason=None, actor="test")
    assert world.engine.keys.authenticate(issued.key).workspace == "acme"


def test_each_key_gets_its_burst_and_then_a_retry_after(tmp_path: Path) -> None:
    world = make_world(tmp_path, api={"rate_limit_per_minute": 1, "rate_limit_burst": 2})
    first = world.engine.keys.create("acme", name="1", scopes=ALL, created_by="olga@acme.test", actor=CLI).key
    second = world.engine.keys.create("acme", name="2", scopes=ALL, created_by="olga@acme.test", actor=CLI).key
    world.engine.keys.authenticate(first)
    world.engine.keys.authenticate(first)
    with pytest.raises(RateLimited) as caught:
        world.engine.keys.authenticate(first)
    assert (caught.value.code, caught.value.http_status) == ("rate_limited", 429)
    assert 0 < caught.value.retry_after_s <= 60
    assert world.engine.keys.authenticate(second).key.name == "2"  # another key has its own bucket


def test_an_unknown_key_is_refused(world: World) -> None:
    refused("invalid_key", world.engine.keys.authenticate, "br_000000000000_" + "x" * 32)
    refused("unauthenticated", world.engine.keys.authenticate, None)


# -- reports --------------------------------------------------------------------------------------------------
def test_a_keys_sql_sees_only_its_own_workspace(world: World) -> None:
    world.engine.credits.grant("acme", micros=USD, key="a", actor=CLI)
    world.engine.credits.grant("beta", micros=2 * USD, key="b", actor=CLI)
    sql = "SELECT workspace FROM ledger_entries ORDER BY workspace"
    assert world.engine.reports.sql(sql, actor=CLI).rows == [("acme",), ("beta",)]
    assert world.engine.reports.sql(sql, actor=world.principal("vera@acme.test")).records() == [{"workspace": "acme"}]


def test_only_the_operator_writes_the_usage_report(world: World) -> None:
    refused("forbidden", world.engine.reports.usage, "2026-01-01", actor=world.principal("olga@acme.test"))
    report = world.engine.reports.usage("2026-01-01", actor=CLI)
    assert (report.rows, report.items, report.cost_usd_micros) == (0, 0, 0)


# -- Stripe purchases (against the local fake of Stripe's API) --------------------------------------------------
WHSEC = "whsec_test_services_0123456789abcdef"


@pytest.mark.integration
def test_a_checkout_and_the_purchase_it_pays_for_are_audited_and_credited_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakes.stripe_server import event_payload, running_fake_stripe, stripe_signature

    with running_fake_stripe() as fake:
        monkeypatch.setenv("STRIPE_SECRET_KEY", fake.api_key)
        monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WHSEC)
        world = make_world(tmp_path, billing={"api_base": fake.base_url})
        credits = world.engine.credits
        admin = world.principal("adam@acme.test")
        session = credits.checkout("acme", pack="starter", actor=admin)
        refused("forbidden", credits.checkout, "acme", pack="starter", actor=world.principal("mia@acme.test"))
        (event,) = fake.pay(session.session_id)
        body = event_payload(event)
        results = [credits.stripe_webhook(body, signature=stripe_signature(body, WHSEC)) for _ in range(2)]
        assert [r.outcome for r in results] == ["credited", "already_credited"]
        assert credits.reconcile(actor=CLI).credited == 0  # the webhook got there first: nothing twice
    assert credits.balance("acme").available_usd_micros == 10 * USD
    assert [a for a in world.audit() if a[0].startswith("credits.")] == [
        ("credits.checkout_created", session.session_id, admin.actor),
        ("credits.purchased", session.session_id, "stripe"),
    ]


def test_a_key_changes_batches_only_with_batches_write_and_a_role_that_may(world: World) -> None:
    world.member("vic@acme.test", "viewer")
    world.member("olga@acme.test", "owner")
    data = b"item_id,model,prompt\n1,gpt-4o-mini,hello\n"
    reader = world.principal("olga@acme.test", ["batches:read"])
    refused("forbidden", world.engine.batches.create, data, filename="m.csv", workspace="acme", actor=reader)
    viewer = world.principal("vic@acme.test", ["batches:read", "batches:write"])
    refused("forbidden", world.engine.batches.create, data, filename="m.csv", workspace="acme", actor=viewer)
    view = world.engine.batches.submit(data, filename="m.csv", workspace="acme")
    message = refused("forbidden", world.engine.batches.cancel, view.batch_id, actor=reader)
    assert "batches:write" in message
    assert world.engine.batches.status(view.batch_id).state == "submitted"
