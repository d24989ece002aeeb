"""The control service: one owner per database file, operations served over loopback, failover, replay."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from batchrouter.access.accounts import AccessError, Accounts, ApiKey
from batchrouter.core import control
from batchrouter.money.ledger import Entry, Hold, InsufficientCredits, InvalidAmount, Ledger

pytestmark = pytest.mark.integration

USD = 1_000_000
DEADLINE_S = 90


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.05)


def discovery(database: Path) -> dict[str, Any]:
    return json.loads(control.discovery_path(database).read_text())


def post(info: dict[str, Any], path: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        info["url"] + path, data=json.dumps(body).encode(), method="POST",
        headers={"authorization": f"Bearer {token or info['token']}", "content-type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_results_and_errors_come_back_as_the_same_types(tmp_path: Path) -> None:
    database = tmp_path / "db" / "ledger.duckdb"
    ledger = Ledger(database)
    entry = ledger.grant("acme", 2 * USD, key="g")
    assert isinstance(entry, Entry) and entry.amount_usd_micros == 2 * USD and entry.created_at.tzinfo is not None
    assert control.owner_running(database), "the first operation started an owner process"
    assert discovery(database)["pid"] != os.getpid()
    ledger.reserve("acme", "b1", USD)
    assert ledger.hold("b1") == Hold("b1", "acme", USD, ledger.hold("b1").created_at, "held", 0)  # type: ignore[union-attr]
    with pytest.raises(InsufficientCredits) as refused:
        ledger.reserve("acme", "b2", 5 * USD)
    caught = refused.value
    assert (caught.code, caught.missing, caught.available) == ("insufficient_credits", 4 * USD, USD)
    assert "needs $5.000000 but has $1.000000 available" in str(refused.value)
    with pytest.raises(InvalidAmount, match="negative"):
        ledger.reserve("acme", "b3", -1)
    accounts = Accounts(str(database))
    accounts.set_member("acme", "ana@acme.com", "owner", actor="test")
    full, key = accounts.create_key("acme", name="ci", scopes=["batches:read"], created_by="ana@acme.com",
                                    actor="test", expires_in=timedelta(hours=1))  # fmt: skip
    assert isinstance(key, ApiKey) and key.scopes == ("batches:read",)
    assert accounts.authenticate(full).key == key
    with pytest.raises(AccessError) as denied:
        accounts.authenticate(full + "x")
    assert (denied.value.code, denied.value.status) == ("invalid_key", 401)


def test_the_database_and_the_discovery_file_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    database = tmp_path / "fresh" / "ledger.duckdb"
    Ledger(database).grant("acme", USD, key="g")
    for path in (database, control.discovery_path(database), control.lock_path(database)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700


def test_many_processes_starting_at_once_get_exactly_one_owner(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    script = (
        "import sys; from batchrouter.money.ledger import Ledger; "
        "Ledger(sys.argv[1]).grant('acme', 1000, key='g' + sys.argv[2]); print('ok')"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(database), str(n)], stdout=subprocess.PIPE)
             for n in range(6)]  # fmt: skip
    outputs = [p.communicate(timeout=DEADLINE_S * 2)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6 and all(o.strip() == b"ok" for o in outputs)
    assert Ledger(database).balance("acme").available_usd_micros == 6000
    serving = [line for line in control.log_path(database).read_text().splitlines() if " serving " in line]
    assert len(serving) == 1, serving


def test_a_write_resent_with_the_same_request_id_is_applied_once(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    accounts = Accounts(str(database))
    accounts.record("acme", "test", "first", None)
    info = discovery(database)
    body = {"op": "batchrouter.access.accounts:Accounts.record", "args": ["acme", "test", "resent", None], "kwargs": {},
            "request_id": "req-1", "database": str(database)}  # fmt: skip
    answers = [post(info, "/v1/op", body) for _ in range(3)]  # the answer "was lost" twice
    assert all(status == 200 and reply["ok"] for status, reply in answers)
    assert [e["action"] for e in accounts.audit_events("acme")] == ["first", "resent"]


def test_the_service_refuses_a_wrong_token_another_database_and_unknown_operations(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    Ledger(database).balance("acme")
    info = discovery(database)
    body = {"op": "batchrouter.money.ledger:Ledger.balance", "args": ["acme"], "kwargs": {}, "database": str(database)}
    assert post(info, "/v1/op", body, token="wrong")[0] == 401
    assert post(info, "/v1/op", {**body, "database": "/elsewhere.duckdb"})[0] == 409
    status, reply = post(info, "/v1/op", {**body, "op": "os:system", "args": ["true"]})
    assert status == 200 and not reply["ok"] and "not a BatchRouter name" in reply["error"]["args"][0]
    status, reply = post(info, "/v1/op", {**body, "op": "batchrouter.money.ledger:_replay"})
    assert status == 200 and not reply["ok"] and "not an operation" in reply["error"]["args"][0]


def test_a_killed_owner_is_replaced_and_keeps_every_acknowledged_operation(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    ledger = Ledger(database)
    ledger.grant("acme", 10 * USD, key="g")
    for n in range(5):
        ledger.reserve("acme", f"b{n}", USD)
    first = discovery(database)["pid"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not control.owner_running(database), "the killed owner released its lock")
    assert ledger.void("b0").op == "void"  # the client re-discovers: a new owner, started on demand
    assert discovery(database)["pid"] != first
    assert sorted(h.batch_id for h in ledger.holds(status="held")) == ["b1", "b2", "b3", "b4"]
    assert ledger.verify()["ok"]


def test_sigterm_stops_the_owner_cleanly_and_the_next_call_starts_another(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    ledger = Ledger(database)
    ledger.grant("acme", USD, key="g")
    os.kill(discovery(database)["pid"], signal.SIGTERM)
    wait_until(lambda: not control.owner_running(database), "the owner stopped on SIGTERM")
    assert not control.discovery_path(database).exists()
    assert not Path(f"{database}.wal").exists(), "the owner checkpointed before closing"
    assert ledger.balance("acme").available_usd_micros == USD


def test_an_idle_owner_exits_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHROUTER_CONTROL_IDLE_S", "1")
    database = tmp_path / "ledger.duckdb"
    Ledger(database).grant("acme", USD, key="g")
    assert control.owner_running(database)
    wait_until(lambda: not control.owner_running(database), "the idle owner exited")


def test_sql_reads_the_views_while_a_service_owns_the_file(tmp_path: Path) -> None:
    database = tmp_path / "batchrouter.duckdb"  # the conftest points BATCHROUTER_DATABASE here
    Ledger(database).grant("acme", 3 * USD, key="g")
    assert control.owner_running(database)
    query = "SELECT workspace, available_usd_micros FROM balances"
    out = subprocess.run([sys.executable, "-m", "batchrouter.cli", "sql", query, "--json"], capture_output=True,
                         text=True, timeout=DEADLINE_S * 2)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"workspace": "acme", "available_usd_micros": 3 * USD}]
    assert not list(Path(f"{database}.snapshots").glob("*.duckdb")), "the snapshot was removed after the query"


def test_ledger_serve_runs_in_the_foreground_and_refuses_a_second_owner(tmp_path: Path) -> None:
    database = tmp_path / "batchrouter.duckdb"
    env = {**os.environ, "BATCHROUTER_DATABASE": str(database)}
    serve = subprocess.Popen([sys.executable, "-m", "batchrouter.cli", "ledger", "serve"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_until(lambda: control.discovery_path(database).exists(), "the foreground service wrote its discovery")
        assert discovery(database)["pid"] == serve.pid
        assert Ledger(database).grant("acme", USD, key="g").amount_usd_micros == USD
        second = subprocess.run([sys.executable, "-m", "batchrouter.cli", "ledger", "serve"], env=env,
                                capture_output=True, text=True, timeout=DEADLINE_S * 2)  # fmt: skip
        assert second.returncode == 3 and "already owns" in second.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=DEADLINE_S) == 0
