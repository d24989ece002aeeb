"""The `batchrouter` command.

Exit codes: 0 success (for `quote`: at least one item accepted); 1 nothing usable came out (every
row rejected); 2 the input as a whole is unusable (unreadable manifest, missing column, bad config).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import fsspec

from batchrouter.access import vault
from batchrouter.access.accounts import Accounts
from batchrouter.access.actors import CLI
from batchrouter.api import serve as serve_api
from batchrouter.batches.deletion import delete_workspace_data
from batchrouter.batches.lifecycle import submit
from batchrouter.batches.results import Progress as DispatchProgress
from batchrouter.batches.settlement import approve
from batchrouter.batches.status import batch_status
from batchrouter.core import amounts as money
from batchrouter.core import control
from batchrouter.core.batch_info import batch_id_for, load_batch
from batchrouter.core.catalog import load_catalog
from batchrouter.core.config import Settings, SimulatorConfig, load_settings
from batchrouter.core.errors import AwaitingApproval, BatchRouterError, ConfigError, ManifestError
from batchrouter.core.identity import canonical_email, canonical_workspace
from batchrouter.core.storage import Storage
from batchrouter.engine import BatchRouter
from batchrouter.intake.manifest import read_manifest
from batchrouter.intake.quarantine import quarantine
from batchrouter.intake.sample import sample_manifest
from batchrouter.money.billing import create_checkout, reconcile
from batchrouter.money.ledger import InsufficientCredits, Ledger, usd
from batchrouter.output.delivery import add_endpoint, list_endpoints, remove_endpoint
from batchrouter.output.reporting import query
from batchrouter.output.summary import main_verify
from batchrouter.pricing.quote import build_quote
from batchrouter.simulator import serve

EXIT_OK, EXIT_NOTHING_ACCEPTED, EXIT_UNUSABLE = 0, 1, 2


def _read_input(path: str) -> bytes:
    with fsspec.open(path, "rb") as f:
        return bytes(f.read())


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def render_quote(summary: dict[str, Any]) -> str:
    out = [
        f"Quote {summary['quote_id']}  workspace {summary['workspace']}  catalog {summary['catalog_version']}",
        f"Manifest {summary['source']}: {summary['items']} rows, {summary['accepted']} accepted, "
        f"{summary['rejected']} rejected",
        f"Reserve {usd(summary['reserve_usd_micros'])}   expected {usd(summary['expected_usd_micros'])}",
        "",
    ]
    if summary["by_route"]:
        out.append(
            _table(
                ["ROUTE", "MODEL", "ITEMS", "INPUT TOKENS", "MAX OUTPUT", "RESERVE", "EXPECTED"],
                [
                    [
                        r["route"],
                        r["model"],
                        r["items"],
                        f"{r['input_tokens']:,}",
                        f"{r['max_output_tokens']:,}",
                        usd(r["reserve_usd_micros"]),
                        usd(r["expected_usd_micros"]),
                    ]
                    for r in summary["by_route"]
                ],
            )
        )
    if summary["rejections"]:
        out += ["", f"Rejected rows ({summary['rejected']}):"]
        out.append(
            _table(
                ["ROW", "ITEM", "FIELD", "REASON"],
                [[r["row"], r["item_id"] or "", r["field"], r["reason"]] for r in summary["rejections"]],
            )
        )
    return "\n".join(out)


def cmd_quote(args: argparse.Namespace, settings: Settings) -> int:
    catalog = load_catalog(settings.models)
    data = _read_input(args.manifest)
    try:
        manifest = read_manifest(args.manifest, data, catalog=catalog, limits=settings.limits)
    except ManifestError as exc:
        report = quarantine(
            Storage(settings.storage), workspace=args.workspace, source_name=args.manifest, data=data, error=exc
        )
        print(f"error: {exc}\nA copy of the manifest and this report are kept at {report}", file=sys.stderr)
        return EXIT_UNUSABLE
    quote = build_quote(
        manifest, workspace=args.workspace, catalog=catalog, policy=settings.workspace(args.workspace).policy
    )
    summary = quote.summary()
    print(json.dumps(summary, indent=2) if args.json else render_quote(summary))
    return EXIT_OK if summary["accepted"] > 0 else EXIT_NOTHING_ACCEPTED


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    info = submit(Storage(settings.storage), workspace=args.workspace, source_name=args.manifest,
                  data=_read_input(args.manifest), run_tag=args.run_tag)  # fmt: skip
    print(json.dumps({"batch_id": info.batch_id, "workspace": info.workspace}) if args.json else info.batch_id)
    return EXIT_OK


class Progress:
    """A one-line progress bar on a terminal's stderr; silent otherwise."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, progress: DispatchProgress) -> None:
        succeeded, failed, total = progress.succeeded, progress.failed, progress.total
        now = time.monotonic()
        done = succeeded + failed
        if not self.enabled or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        print(f"\r[{bar}] {done:,}/{total:,}  ok {succeeded:,}  failed {failed:,}", end="", file=sys.stderr)
        if done >= total:
            print(file=sys.stderr)


def render_run(summary: dict[str, Any]) -> str:
    lines = [
        f"Batch {summary['batch_id']}  workspace {summary['workspace']}  status {summary['status']}",
        f"{summary['items']} items: {summary['succeeded']} succeeded, {summary['failed']} failed, "
        f"{summary['rejected']} rejected",
        f"Reserved {usd(summary['reserve_usd_micros'])}   cost {usd(summary['cost_usd_micros'])}   "
        f"retries {summary['retries']}   p50 {summary['latency_p50_ms'] or 0:.0f} ms   "
        f"p95 {summary['latency_p95_ms'] or 0:.0f} ms",
    ]
    if summary["by_route"]:
        lines += [
            "",
            _table(
                ["ROUTE", "ITEMS", "SUCCEEDED", "INPUT TOKENS", "OUTPUT TOKENS", "COST"],
                [
                    [
                        r["route"],
                        r["items"],
                        r["succeeded"],
                        f"{r['input_tokens']:,}",
                        f"{r['output_tokens']:,}",
                        usd(r["cost_usd_micros"]),
                    ]
                    for r in summary["by_route"]
                ],
            ),
        ]
    if summary["failures"]:
        lines += ["", "Failures: " + ", ".join(f"{f['error_code']} x{f['len']}" for f in summary["failures"])]
    lines += ["", f"Outputs:  {summary['outputs']}", f"Receipts: {summary['receipts']}"]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    engine = BatchRouter(settings)
    data = _read_input(args.manifest)
    try:
        view = engine.batches.create(data, filename=args.manifest, workspace=args.workspace, actor=CLI,
                                     run_tag=args.run_tag)  # fmt: skip
        summary = engine.batches.advance(view.batch_id, on_progress=Progress()).to_json()
    except ManifestError as exc:
        where = engine.storage.url("quarantine", args.workspace)
        print(f"error: {exc}\nThe manifest and a report are kept under {where}", file=sys.stderr)
        return EXIT_UNUSABLE
    except AwaitingApproval as exc:
        info = engine.batches.info(view.batch_id)
        status = engine.storage.read_json(*info.folder("status.json"))
        print(json.dumps(status) if args.json else str(exc))
        return EXIT_NOTHING_ACCEPTED
    except InsufficientCredits as exc:
        batch_id = batch_id_for(args.workspace, hashlib.sha256(data).hexdigest(), run_tag=args.run_tag or None)
        if args.json:
            print(json.dumps({"batch_id": batch_id, "status": "insufficient_credits", "message": str(exc),
                              "missing_usd_micros": exc.missing}))  # fmt: skip
        else:
            print(f"error: batch {batch_id} not started: {exc}", file=sys.stderr)
        return EXIT_NOTHING_ACCEPTED
    print(json.dumps(summary, indent=2, default=str) if args.json else render_run(summary))
    nothing_to_do = summary["items"] == summary["rejected"] == 0
    return EXIT_OK if summary["succeeded"] > 0 or nothing_to_do else EXIT_NOTHING_ACCEPTED


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    storage = Storage(settings.storage)
    info = load_batch(storage, args.batch)
    record = approve(storage, info, by=args.by)
    print(f"approved batch {info.batch_id}; the manifest sensor resumes it, or run it again with batchrouter run")
    if args.json:
        print(json.dumps(record))
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    storage = Storage(settings.storage)
    status = batch_status(storage, settings, load_batch(storage, args.batch))
    if args.json:
        print(json.dumps(status, default=str))
        return EXIT_OK
    lines = [f"Batch {status['batch_id']}  workspace {status['workspace']}  status {status['status']}"]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    if "quote" in status:
        q = status["quote"]
        lines.append(f"Quote {q['quote_id']}: {q['accepted']} accepted, {q['rejected']} rejected; reserve "
                     f"{usd(q['reserve_usd_micros'])}, expected {usd(q['expected_usd_micros'])}")  # fmt: skip
    if "items_by_status" in status:
        parts = ", ".join(f"{n} {k}" for k, n in status["items_by_status"].items())
        lines.append(f"Items: {parts}; actual {usd(status['actual_usd_micros'])}")
    for hold in status["holds"]:
        lines.append(f"Hold {hold['hold']}: {hold['status']}, reserved {usd(hold['reserved_usd_micros'])}, "
                     f"captured {usd(hold['captured_usd_micros'])}")  # fmt: skip
    print("\n".join(lines))
    return EXIT_OK


def cmd_credits(args: argparse.Namespace, settings: Settings) -> int:
    ledger = Ledger(settings.database)
    if args.action == "grant":
        micros = usd_to_micros(args.usd)
        entry = ledger.grant(args.workspace, micros, key=args.key or f"grant:{uuid.uuid4().hex}", memo=args.memo)
        note = " (this key was used before: nothing new was credited)" if entry.replayed else ""
        if not entry.replayed:
            after = {"usd_micros": entry.amount_usd_micros, "memo": args.memo}
            Accounts(settings.database).record(
                args.workspace, "cli:operator", "credits.granted", entry.entry_id, after=after
            )
        print(f"granted {usd(entry.amount_usd_micros)} to {args.workspace}, entry {entry.entry_id}{note}")
        return EXIT_OK
    if args.action == "balance":
        balance = ledger.balance(args.workspace).as_dict()
        print(json.dumps(balance) if args.json else render_balance(balance))
        return EXIT_OK
    if args.action == "history":
        rows = ledger.history(args.workspace)
        if args.json:
            print(json.dumps(rows, default=str))
        else:
            print(_table(["TIME", "OP", "BATCH", "AMOUNT", "MEMO"],
                         [[str(r["created_at"])[:19], r["op"], r["batch_id"] or "", usd(r["amount_usd_micros"]),
                           r["memo"] or ""] for r in rows]))  # fmt: skip
        return EXIT_OK
    if args.action == "buy":
        session_id, url = create_checkout(settings, workspace=args.workspace, pack=args.pack)
        print(json.dumps({"session_id": session_id, "url": url}) if args.json else f"Pay here: {url}")
        return EXIT_OK
    results = reconcile(settings, ledger)
    credited = [r for r in results if r.outcome == "credited"]
    total = sum(r.credited_usd_micros for r in credited)
    print(f"reconciled {len(results)} checkout events: {len(credited)} newly credited, {usd(total)}")
    return EXIT_OK


def render_balance(balance: dict[str, Any]) -> str:
    return (
        f"Workspace {balance['workspace']}: available {usd(balance['available_usd_micros'])}, "
        f"held {usd(balance['held_usd_micros'])}, spent {usd(balance['spent_usd_micros'])}, "
        f"credited {usd(balance['credited_usd_micros'])}"
        + ("  (credited = available + held + spent)" if balance["balanced"] else "  (NOT BALANCED)")
    )


def usd_to_micros(text: str) -> int:
    return money.usd_to_micros(text, field="--usd")


def cmd_ledger(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "serve":
        return control.serve(settings.database, idle_s=args.idle_s or None, foreground=True)
    if args.action == "stop":
        stopped = control.stop(settings.database)
        print(f"control service of {settings.database}: {'stopped' if stopped else 'none was running'}")
        return EXIT_OK
    report = Ledger(settings.database).verify()
    if args.json:
        print(json.dumps(report))
    else:
        verdict = "OK" if report["ok"] else "PROBLEMS FOUND"
        print(f"ledger {settings.database}: {report['entries']} entries, {report['workspaces']} workspaces: {verdict}")
        for problem in report["problems"]:
            print(f"  - {problem}")
    return EXIT_OK if report["ok"] else EXIT_NOTHING_ACCEPTED


def cmd_secrets(args: argparse.Namespace, settings: Settings) -> int:
    counts = vault.rotate(settings.database)
    print("re-encrypted " + ", ".join(f"{n} in {table}" for table, n in counts.items()))
    return EXIT_OK


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    columns, rows = query(settings, args.query, workspace=args.workspace)
    if args.json:
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        print(_table(columns, [list(r) for r in rows]))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    serve_api(settings, host=args.host or settings.api.host, port=args.port or settings.api.port)
    return EXIT_OK


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    accounts = Accounts(settings.database)
    actor = f"cli:{args.by}"
    if args.action == "create":
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        expires = timedelta(days=args.expires_days) if args.expires_days else None
        full, key = accounts.create_key(args.workspace, name=args.name, scopes=scopes, created_by=args.by,
                                        actor=actor, expires_in=expires)  # fmt: skip
        print(json.dumps({"key": full, **key.public()}) if args.json else
              f"{full}\n(key {key.key_id}: store it now, it is never shown again)")  # fmt: skip
    elif args.action == "list":
        keys = [k.public() for k in accounts.keys(args.workspace)]
        if args.json:
            print(json.dumps(keys))
        else:
            print(_table(["KEY", "PREFIX", "NAME", "SCOPES", "CREATED BY", "EXPIRES", "REVOKED"],
                         [[k["key_id"], k["prefix"], k["name"], ",".join(k["scopes"]), k["created_by"],
                           k["expires_at"] or "", k["revoked_at"] or ""] for k in keys]))  # fmt: skip
    elif args.action == "revoke":
        accounts.revoke_key(args.workspace, args.key_id, actor=actor)
        print(f"revoked {args.key_id}")
    else:
        full, key = accounts.rotate_key(args.workspace, args.key_id, actor=actor,
                                        grace=timedelta(hours=args.grace_hours))  # fmt: skip
        print(json.dumps({"key": full, **key.public()}) if args.json else
              f"{full}\n(new key {key.key_id}; {args.key_id} keeps working for {args.grace_hours:g} h)")  # fmt: skip
    return EXIT_OK


def cmd_members(args: argparse.Namespace, settings: Settings) -> int:
    accounts = Accounts(settings.database)
    if args.action == "add":
        accounts.set_member(args.workspace, args.email, args.role, actor=f"cli:{args.by}")
    elif args.action == "remove":
        if not accounts.remove_member(args.workspace, args.email, actor=f"cli:{args.by}"):
            print(f"{args.email} is not a member of {args.workspace}", file=sys.stderr)
            return EXIT_NOTHING_ACCEPTED
    members = accounts.members(args.workspace)
    rows = [[m["email"], m["role"], m["added_at"]] for m in members]
    print(json.dumps(members) if args.json else _table(["EMAIL", "ROLE", "ADDED"], rows))
    return EXIT_OK


def cmd_workspace(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "delete-data":
        report = delete_workspace_data(Storage(settings.storage), settings, args.workspace, actor=f"cli:{args.by}")
        if args.json:
            print(json.dumps(report))
        else:
            print(f"deleted {len(report['deleted'])} folders of {args.workspace}")
            for item in report["deleted"]:
                print(f"  - {item}")
            print("kept:")
            for item in report["kept"]:
                print(f"  - {item['what']}: {item['why']}")
        return EXIT_OK
    Accounts(settings.database).set_suspended(args.workspace, args.action == "suspend", reason=args.reason,
                                              actor=f"cli:{args.by}")  # fmt: skip
    print(f"workspace {args.workspace} {'suspended' if args.action == 'suspend' else 'resumed'}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    return main_verify(args.rest)


def cmd_webhooks(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "add":
        endpoint_id, secret = add_endpoint(settings, args.workspace, args.url)
        Accounts(settings.database).record(args.workspace, "cli:operator", "webhook.added", endpoint_id,
                                           after={"url": args.url})  # fmt: skip
        print(json.dumps({"endpoint_id": endpoint_id, "secret": secret}) if args.json else
              f"endpoint {endpoint_id}; signing secret (shown once): {secret}")  # fmt: skip
    elif args.action == "remove":
        remove_endpoint(settings, args.workspace, args.endpoint_id)
        Accounts(settings.database).record(args.workspace, "cli:operator", "webhook.removed", args.endpoint_id)
        print(f"removed {args.endpoint_id}")
    else:
        rows = list_endpoints(settings, args.workspace)
        cells = [[e.endpoint_id, e.url, e.enabled, e.disabled_reason or "", e.failures] for e in rows]
        print(_table(["ENDPOINT", "URL", "ENABLED", "DISABLED BECAUSE", "FAILURES"], cells))
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    config = settings.simulator
    if args.config_json:
        config = SimulatorConfig.model_validate_json(args.config_json)
    overrides = {k: getattr(args, k) for k in SimulatorConfig.model_fields if getattr(args, k, None) is not None}
    config = config.model_copy(update=overrides)
    print(f"provider simulator on http://{args.host}:{args.port}/v1 ({config.model_dump_json()})", flush=True)
    serve(config, host=args.host, port=args.port)
    return EXIT_OK


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    frame = sample_manifest(args.items, seed=args.seed)
    out = Path(args.out)
    if out.suffix == ".csv":
        frame.write_csv(out)
    else:
        frame.write_parquet(out)
    print(out)
    return EXIT_OK


RUN_TAG_HELP = "run the same bytes again on purpose: a new tag is a new batch (the same tag, the same batch)"


def _canonical_args(args: argparse.Namespace) -> None:
    """Workspace names and emails in their one canonical spelling (batchrouter.core.identity)."""
    if getattr(args, "workspace", None) is not None:
        args.workspace = canonical_workspace(args.workspace)
    if getattr(args, "email", None) is not None:
        args.email = canonical_email(args.email)
    if getattr(args, "command", None) == "keys" and getattr(args, "action", None) == "create":
        args.by = canonical_email(args.by)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batchrouter", description="Route and run large batches of LLM requests.")
    parser.add_argument("--config", help="TOML config file (default: $BATCHROUTER_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", dest="sub_config", help="TOML config file")

    q = sub.add_parser("quote", help="validate and price a manifest without running it")
    q.add_argument("manifest", help="path or URL of a .parquet, .csv or .jsonl manifest")
    q.add_argument("--workspace", required=True)
    q.add_argument("--json", action="store_true", help="print one JSON object")
    common(q)
    q.set_defaults(func=cmd_quote)

    s = sub.add_parser("submit", help="register a manifest as a batch under the storage root")
    s.add_argument("manifest")
    s.add_argument("--workspace", required=True)
    s.add_argument("--json", action="store_true")
    s.add_argument("--run-tag", help=RUN_TAG_HELP)
    common(s)
    s.set_defaults(func=cmd_submit)

    r = sub.add_parser("run", help="quote, route, dispatch and write outputs and receipts, in this process")
    r.add_argument("manifest")
    r.add_argument("--workspace", required=True)
    r.add_argument("--json", action="store_true", help="print one JSON summary")
    r.add_argument("--run-tag", help=RUN_TAG_HELP)
    r.add_argument("--settings-stdin", action="store_true", help=argparse.SUPPRESS)  # the API's inline executor
    common(r)
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("simulate", help="serve the provider simulator (OpenAI and Anthropic wire formats)")
    m.add_argument("--port", type=int, default=8900)
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--config-json", help=argparse.SUPPRESS)
    for name, fld in SimulatorConfig.model_fields.items():
        kind = {int: int, float: float}.get(type(fld.default), str) if fld.default is not None else float
        m.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=fld.description)
    common(m)
    m.set_defaults(func=cmd_simulate)

    ap = sub.add_parser("approve", help="approve a batch waiting at the approval gate")
    ap.add_argument("batch")
    ap.add_argument("--by", default="cli", help="who approves (recorded)")
    ap.add_argument("--json", action="store_true")
    common(ap)
    ap.set_defaults(func=cmd_approve)

    st = sub.add_parser("status", help="show a batch's state")
    st.add_argument("batch")
    st.add_argument("--json", action="store_true")
    common(st)
    st.set_defaults(func=cmd_status)

    c = sub.add_parser("credits", help="prepaid credits: grant, balance, history, buy, reconcile")
    csub = c.add_subparsers(dest="action", required=True)
    cg = csub.add_parser("grant", help="grant promotional credit")
    cg.add_argument("--workspace", required=True)
    cg.add_argument("--usd", required=True, help="amount in USD, e.g. 25 or 0.50")
    cg.add_argument("--key", help="idempotency key: the same key never credits twice")
    cg.add_argument("--memo")
    for name in ("balance", "history"):
        cp = csub.add_parser(name)
        cp.add_argument("--workspace", required=True)
        cp.add_argument("--json", action="store_true")
    cb = csub.add_parser("buy", help="create a Stripe Checkout Session for a credit pack and print its URL")
    cb.add_argument("--workspace", required=True)
    cb.add_argument("--pack", required=True)
    cb.add_argument("--json", action="store_true")
    csub.add_parser("reconcile", help="credit paid Checkout Sessions the webhook missed")
    common(c)
    c.set_defaults(func=cmd_credits)

    lg = sub.add_parser("ledger", help="ledger maintenance")
    lsub = lg.add_subparsers(dest="action", required=True)
    lv = lsub.add_parser("verify", help="replay the journal and prove balances, holds and conservation")
    lv.add_argument("--json", action="store_true")
    ls = lsub.add_parser("serve", help="own the database and serve it to other processes, in the foreground")
    ls.add_argument("--idle-s", type=float, default=0.0, help="stop after this many idle seconds (default 0: never)")
    lsub.add_parser("stop", help="stop the control service of the database (it restarts when next needed)")
    common(lg)
    lg.set_defaults(func=cmd_ledger)

    sc = sub.add_parser("secrets", help="secrets at rest: rotate re-encrypts them with the first key")
    ssub = sc.add_subparsers(dest="action", required=True)
    ssub.add_parser("rotate", help="re-encrypt webhook secrets and signing keys (see BATCHROUTER_SECRET_KEY)")
    common(sc)
    sc.set_defaults(func=cmd_secrets)

    q2 = sub.add_parser("sql", help="run a read-only SQL query over usage and ledger views")
    q2.add_argument("query")
    q2.add_argument("--workspace", help="restrict every view to this workspace")
    fmt = q2.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    common(q2)
    q2.set_defaults(func=cmd_sql)

    sv = sub.add_parser("serve", help="serve the HTTP API (Stripe webhook, ...)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    common(sv)
    sv.set_defaults(func=cmd_serve)

    k = sub.add_parser("keys", help="API keys: create, list, revoke, rotate")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", help="create a key; it is printed once")
    kc.add_argument("--name", required=True)
    kc.add_argument("--scopes", required=True, help="comma-separated: batches:read,batches:write,credits:read,...")
    kc.add_argument("--by", required=True, help="the member (email) the key acts for")
    kc.add_argument("--expires-days", type=int)
    kl = ksub.add_parser("list")
    kr = ksub.add_parser("revoke")
    kt = ksub.add_parser("rotate", help="a new key; the old one keeps working for the grace period")
    kt.add_argument("--grace-hours", type=float, default=24.0)
    for kp in (kr, kt):
        kp.add_argument("key_id")
    for kp in (kc, kl, kr, kt):
        kp.add_argument("--workspace", required=True)
        kp.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys, by="operator")
    common(k)

    mb = sub.add_parser("members", help="workspace members and roles: add, list, remove")
    msub = mb.add_subparsers(dest="action", required=True)
    ma = msub.add_parser("add", help="add a member or change their role")
    ma.add_argument("--role", required=True, choices=["owner", "admin", "member", "viewer"])
    mr = msub.add_parser("remove")
    ml = msub.add_parser("list")
    for mp in (ma, mr):
        mp.add_argument("--email", required=True)
    for mp in (ma, mr, ml):
        mp.add_argument("--workspace", required=True)
        mp.add_argument("--json", action="store_true")
    mb.set_defaults(func=cmd_members, by="operator")
    common(mb)

    ws = sub.add_parser("workspace", help="suspend, resume, or delete a workspace's data")
    wsub = ws.add_subparsers(dest="action", required=True)
    for name in ("suspend", "resume", "delete-data"):
        wp = wsub.add_parser(name)
        wp.add_argument("workspace")
        wp.add_argument("--reason")
        wp.add_argument("--json", action="store_true")
    ws.set_defaults(func=cmd_workspace, by="operator")
    common(ws)

    vf = sub.add_parser("verify", help="check a downloaded batch folder against its signed summary.json",
                        add_help=False)  # fmt: skip
    vf.add_argument("rest", nargs=argparse.REMAINDER, help="BATCH_DIR [--public-key PEM_FILE] [--json]")
    vf.set_defaults(func=cmd_verify)

    wh = sub.add_parser("webhooks", help="a workspace's webhook endpoints: add, list, remove")
    whs = wh.add_subparsers(dest="action", required=True)
    wa = whs.add_parser("add")
    wa.add_argument("url")
    wr = whs.add_parser("remove")
    wr.add_argument("endpoint_id")
    wl = whs.add_parser("list")
    for wp in (wa, wr, wl):
        wp.add_argument("--workspace", required=True)
        wp.add_argument("--json", action="store_true")
    common(wh)
    wh.set_defaults(func=cmd_webhooks)

    g = sub.add_parser("sample", help="write a sample manifest (.parquet or .csv)")
    g.add_argument("out")
    g.add_argument("--items", type=int, default=100)
    g.add_argument("--seed", type=int, default=7)
    common(g)
    g.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _canonical_args(args)
        if getattr(args, "settings_stdin", False):
            settings = Settings.model_validate_json(sys.stdin.read())
        else:
            settings = load_settings(getattr(args, "sub_config", None) or args.config)
        return int(args.func(args, settings))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except FileNotFoundError as exc:
        print(f"error: {exc.filename or exc} does not exist; check the path", file=sys.stderr)
        return EXIT_UNUSABLE
    except BatchRouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE


if __name__ == "__main__":
    sys.exit(main())
