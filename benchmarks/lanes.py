"""Lanes benchmark (issue 11): what a mixed workload costs on the cheapest lanes that meet its deadlines.

Workload (fixed seed): `--items` items (default 50,000) over gpt-4o-mini, gpt-5-mini, gpt-4.1-mini and
claude-haiku-4-5, prompts of a few hundred tokens and `max_tokens` 200, in three deadline classes:
24 h (most), 4 h and 30 min, each class split into a few manifests (batches) mixing every model.

Providers: the simulator in its own process, online and batch APIs, on an accelerated clock
(`--scale`, default 60: 30 min = 30 wall s, 24 h = 24 wall minutes) with the long tail and stuck
batches on (log-normal around a 7 minute median, sigma 1.7; 5% of provider batches stuck), and
realistic online limits per route (OpenAI 10,000 RPM / 10M TPM, Anthropic 4,000 RPM / 4M TPM: tier 4).
`LanesConfig.time_scale` equals the simulator's `batch_time_scale`, as in a simulation it must. The
online lane is not accelerated (its rate limits are real requests a second), so above about x100 the
30 min class cannot be met by any lane: its 1,500 items need 9 wall s of OpenAI's rate limit alone,
over 30 provider minutes at x240. Flex (gpt-5-mini) answers 3x slower and refuses 5% of requests.

Each batch is driven as the product drives it: `engine.batches.create(..., deadline=...)` and a first
`advance` (the manifest sensor's run), then, as the provider-batch sensor does, `advance` again for
every batch `engine.batches.waiting_due()` lists, until none is `waiting_on_provider` (a run is a
thread here, a Dagster run a process). Batches are submitted in order, 24 h, 4 h, 30 min, each once the
previous one's first run is done; a deadline counts from the batch's own submission, quoting included.
The predictions table learns during the run, as in the product: later quotes read the provider
batches measured so far (each creation line says how many).

Deadlines are checked two ways on the batch's clock ((t - submitted_at) x time_scale <= deadline):
with t the receipt's `finished_at`, and with t the moment the driver saw the item's receipt final
(what the user sees). Before main's 254792d a batch line's `finished_at` was the provider's clock
(hours ahead in a simulation), so only the second figure was meaningful there; now both agree.

The reference is measured, not assumed: the same manifests run without a deadline (everything online)
in another workspace of the same engine against the same simulator. The same tokens at the online
price (`CatalogEntry.cost_micros`) are printed beside it, so lane savings and token differences
between the runs can be told apart.

Warm-up: none by default (the predictions table starts empty: the first quotes use the prior
`lanes.batch_prior_p95_s`). `--warm-up N` first runs N small 24 h batches, as earlier days would have,
so the quotes use measured provider batch times; the output says which was used.

    PYTHONPATH=. .venv/bin/python benchmarks/lanes.py [--items 50000] [--scale 60] [--warm-up 0] [--skip-online]
                                                    [--online-lane] [--json OUT] [--keep]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from batchrouter.access.actors import CLI
from batchrouter.batches.batch_lane import BatchLane, Sent
from batchrouter.batches.states import BatchState
from batchrouter.core import control
from batchrouter.core.amounts import micros_up
from batchrouter.core.config import LanesConfig, SimulatorConfig, load_settings
from batchrouter.core.errors import StorageError
from batchrouter.engine import BatchRouter
from batchrouter.pricing.predictions import Predictions
from batchrouter.simulator import running_simulator

USD = 1_000_000
SEED = 11
MODELS = ("gpt-4o-mini", "gpt-5-mini", "gpt-4.1-mini", "claude-haiku-4-5")
# Deadline classes: name, duration, share of the items, manifests.
CLASSES: tuple[tuple[str, str, float, float, int], ...] = (
    ("24h", "24h", 86_400.0, 0.85, 10),
    ("4h", "4h", 14_400.0, 0.12, 2),
    ("30m", "30m", 1_800.0, 0.03, 1),
)
MAX_TOKENS = 200
PROMPT_WORDS = (180, 320)  # about 230-420 o200k tokens with the preamble: far from 1,024, so no caching
# `max_concurrency` is a provider's, shared by its routes: three OpenAI models at 10,000 RPM each with
# 0.8 s answers keep about 400 requests in flight.
PROVIDERS = {
    "openai": {"kind": "simulator", "wire": "openai", "rpm": 10_000, "tpm": 10_000_000, "max_concurrency": 512},
    "anthropic": {"kind": "simulator", "wire": "anthropic", "rpm": 4_000, "tpm": 4_000_000, "max_concurrency": 256},
}
LANES_WS, ONLINE_WS = "lanes", "online"
SENSOR_TICK_S = 0.25  # how often the provider-batch sensor looks (15 provider seconds at scale 60)

_WORDS = (
    "invoice refund shipment delay customer account password reset billing charge subscription plan upgrade "
    "downgrade cancel order tracking warehouse courier damaged parcel replacement warranty support ticket "
    "priority escalation manager feedback survey rating review product feature request bug report crash "
    "login error timeout payment card declined bank transfer receipt tax region currency discount coupon "
    "loyalty points balance statement quarter revenue forecast churn retention onboarding tutorial manual "
    "integration webhook latency throughput dashboard export import schedule meeting calendar reminder"
).split()


@dataclass
class Manifest:
    name: str
    cls: str
    deadline: str
    deadline_s: float
    data: bytes
    items: int


@dataclass
class Run:
    """One batch as driven here: its id, when each item was delivered (wall clock), how its advances went."""

    manifest: Manifest
    workspace: str
    batch_id: str = ""
    submitted_wall: float = 0.0
    advances: int = 0
    delivered: dict[str, float] = field(default_factory=dict)  # item_id -> wall time its receipt was final
    final_state: str = ""
    error: str | None = None


# -- the workload ------------------------------------------------------------------------------------


def prompt(rng: random.Random, i: int) -> str:
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(*PROMPT_WORDS)))
    return f"Ticket {i}. Read the customer's message and write a short, polite answer with next steps. Message: {words}"


def workload(items: int, seed: int = SEED) -> list[Manifest]:
    """The manifests, by class then part; each row's model drawn from MODELS, all from one seed."""
    rng = random.Random(seed)
    out: list[Manifest] = []
    start = 0
    for cls, deadline, deadline_s, share, parts in CLASSES:
        n = max(parts, round(items * share))
        for part in range(parts):
            count = n // parts + (1 if part < n % parts else 0)
            rows = []
            for i in range(start, start + count):
                rows.append({"item_id": f"{cls}-{i}", "model": MODELS[rng.randrange(len(MODELS))],
                             "prompt": prompt(rng, i), "max_tokens": MAX_TOKENS})  # fmt: skip
            start += count
            buf = pl.DataFrame(rows).write_csv().encode()
            out.append(Manifest(f"{cls}-{part}.csv", cls, deadline, deadline_s, buf, count))
    return out


# -- the engine and the simulator --------------------------------------------------------------------


def simulator_config(scale: float, stuck_rate: float) -> SimulatorConfig:
    return SimulatorConfig(latency_ms=800, latency_shape="lognormal", seed=SEED, batch_time_scale=scale,
                           flex_latency_factor=3.0, flex_unavailable_rate=0.05,
                           batch_median_s=420, batch_sigma=1.7, batch_stuck_rate=stuck_rate)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_for(root: Path, sim: SimulatorConfig, scale: float, url: str) -> BatchRouter:
    """The engine, its providers the simulator at `url`.

    The providers name the simulator's address (`base_url`), as a deployment against `batchrouter
    simulate` would: a simulator provider without one is reached only by a run that passes
    `simulator_url`; before main's 254792d `waiting_due` (the provider-batch sensor) then polled the real
    provider's address and never listed the batch.
    """
    policy = {"allowed_providers": ["openai", "anthropic"]}
    settings = load_settings(
        database=str(root / "batchrouter.duckdb"),
        storage={"root": str(root / "bucket")},
        providers={name: {**config, "base_url": url} for name, config in PROVIDERS.items()},
        simulator=sim.model_dump(),
        lanes=LanesConfig(time_scale=scale).model_dump(),
        workspaces={LANES_WS: {"policy": policy}, ONLINE_WS: {"policy": policy}, "warmup": {"policy": policy}},
        limits={"max_rows": 2_000_000},
    )
    engine = BatchRouter(settings)
    for ws in (LANES_WS, ONLINE_WS, "warmup"):
        engine.ledger.grant(ws, 10_000 * USD, key=f"bench-{ws}")
    return engine


def receipts(engine: BatchRouter, batch_id: str) -> pl.DataFrame:
    return engine.storage.read_parquet(*engine.batches.info(batch_id).folder("receipts.parquet"))


def quote_items(engine: BatchRouter, batch_id: str) -> pl.DataFrame:
    return engine.storage.read_parquet(*engine.batches.info(batch_id).folder("quote.parquet"))


def provider_batches(engine: BatchRouter, batch_id: str) -> list[Sent]:
    info = engine.batches.info(batch_id)
    return BatchLane(engine.storage, engine.settings, engine.catalog, info, record=lambda r: None).sent()


def create(engine: BatchRouter, run: Run, *, deadline: bool) -> None:
    m = run.manifest
    view = engine.batches.create(m.data, filename=m.name, workspace=run.workspace, actor=CLI,
                                 deadline=m.deadline if deadline else None)  # fmt: skip
    run.batch_id = view.batch_id
    run.submitted_wall = datetime.fromisoformat(engine.batches.info(view.batch_id).submitted_at).timestamp()


def advance_once(engine: BatchRouter, run: Run, url: str) -> None:
    """One run of the batch (a `batch_job` run); notes when each item's receipt became final."""
    try:
        result = engine.batches.advance(run.batch_id, actor=CLI, simulator_url=url)
        now = time.time()
        run.advances += 1
        got = receipts(engine, run.batch_id).filter(pl.col("status").is_in(["succeeded", "failed"]))
        for item_id in got["item_id"].to_list():
            run.delivered.setdefault(item_id, now)
        if result.state != BatchState.WAITING_ON_PROVIDER:
            run.final_state = str(result.state)
    except Exception as exc:  # reported, never hidden: the benchmark prints it with the figures it has
        run.error = f"{type(exc).__name__}: {exc}"


def run_phase(engine: BatchRouter, manifests: list[Manifest], url: str, *, workspace: str, deadline: bool,
              limit_s: float, log: Any) -> list[Run]:  # fmt: skip
    """Create the batches in order, each run at once (the manifest sensor's run); meanwhile, as the
    provider-batch sensor does, run again every batch `engine.batches.waiting_due()` lists, until none waits.

    A run is a thread here (a Dagster run is a process); a batch never has two runs at once.
    """
    runs: list[Run] = []
    running: dict[str, threading.Thread] = {}
    lock = threading.Lock()
    created = threading.Event()

    def start(run: Run) -> threading.Thread:
        thread = threading.Thread(target=advance_once, args=(engine, run, url), daemon=True)
        with lock:
            running[run.batch_id] = thread
        thread.start()
        return thread

    def sensor() -> None:
        stop = time.monotonic() + limit_s
        while time.monotonic() < stop:
            with lock:
                for batch_id in [b for b, t in running.items() if not t.is_alive()]:
                    del running[batch_id]
                by_id = {run.batch_id: run for run in runs}
                idle = not running
            if created.is_set() and idle and all(run.final_state or run.error for run in by_id.values()):
                return
            try:
                due = engine.batches.waiting_due()
            except StorageError as exc:
                # A run ended (its marker removed) while the sensor read the markers: raised before main's
                # 254792d (tests/unit/test_batch_lane_waiting.py). The sensor looks again at its next tick.
                log(f"  sensor: {exc}; looking again")
                due = []
            for batch_id in due:
                run = by_id.get(batch_id)
                with lock:
                    busy = batch_id in running
                if run is not None and not busy and not run.final_state and not run.error:
                    start(run)
            time.sleep(SENSOR_TICK_S)  # the sensor's tick, bounded by `stop`

    watcher = threading.Thread(target=sensor, daemon=True)
    watcher.start()
    for m in manifests:
        run = Run(m, workspace)
        t0 = time.monotonic()
        create(engine, run, deadline=deadline)
        made_s = time.monotonic() - t0
        seen = len(Predictions(engine.settings.database).observations(lane="batch"))
        lanes = sorted({r["lane"] for r in _by_lane(engine, run.batch_id)})
        with lock:
            runs.append(run)
        first = start(run)
        if deadline:  # the first run (quote done, provider batches submitted) goes before the next batch arrives
            first.join(timeout=300)
        log(f"  {workspace}: {m.name} ({m.items:,} items, deadline {m.deadline if deadline else 'none'}): created "
            f"in {made_s:.1f} s, lanes quoted {'/'.join(lanes)} (provider batch runs measured by then: {seen}); "
            f"first run {time.monotonic() - t0 - made_s:.1f} s")  # fmt: skip
    created.set()
    watcher.join()
    for run in runs:
        if not run.final_state and not run.error:
            run.error = f"still waiting after {limit_s:.0f} s"
    with lock:
        left = list(running.values())
    for thread in left:
        thread.join(timeout=60)
    return runs


def _by_lane(engine: BatchRouter, batch_id: str) -> list[dict[str, Any]]:
    quote = engine.storage.read_json(*engine.batches.info(batch_id).folder("quote.json"))
    return list(quote.get("by_lane") or [{"lane": "online"}])


def warm_up(engine: BatchRouter, url: str, batches: int, log: Any) -> None:
    """Small 24 h batches run before the workload, so its quotes read measured provider batch times."""
    rng = random.Random(SEED + 1)
    manifests = []
    for b in range(batches):
        rows = [{"item_id": f"w{b}-{i}", "model": MODELS[i % len(MODELS)], "prompt": prompt(rng, i),
                 "max_tokens": MAX_TOKENS} for i in range(8)]  # fmt: skip
        manifests.append(Manifest(f"warm-{b}.csv", "warm", "24h", 86_400.0, pl.DataFrame(rows).write_csv().encode(), 8))
    run_phase(engine, manifests, url, workspace="warmup", deadline=True, limit_s=3600, log=log)


# -- the figures -------------------------------------------------------------------------------------


def collect(engine: BatchRouter, runs: list[Run], scale: float) -> pl.DataFrame:
    """One row per item of the runs: class, quoted lane, answering lane, cost, online price, deadline checks."""
    frames = []
    for run in runs:
        if not run.batch_id:
            continue
        got = receipts(engine, run.batch_id)
        quoted = quote_items(engine, run.batch_id).select("item_id", pl.col("lane").alias("quoted_lane"))
        online = [engine.catalog.entry(r).cost_pico(int(i), int(o), cached=int(c or 0)) if r else 0
                  for r, i, o, c in got.select("route", "input_tokens", "output_tokens",
                                               "cached_tokens").iter_rows()]  # fmt: skip
        delivered = pl.DataFrame({"item_id": list(run.delivered), "delivered_wall": list(run.delivered.values())},
                                 schema={"item_id": pl.String, "delivered_wall": pl.Float64})  # fmt: skip
        frame = (
            got.with_columns(pl.Series("online_price_usd_pico", online, pl.Int64))
            .join(quoted, on="item_id", how="left")
            .join(delivered, on="item_id", how="left")
            .with_columns(
                pl.lit(run.manifest.cls).alias("cls"),
                # The lane that answered: the receipt's, except that a flex answer's receipt says "online"
                # before main's 254792d; an item quoted flex and billed below the online price was flex.
                pl.when(
                    (pl.col("quoted_lane") == "flex")
                    & (pl.col("lane") == "online")
                    & (pl.col("cost_usd_micros") * 10**6 < pl.col("online_price_usd_pico") * 3 // 4)
                )
                .then(pl.lit("flex"))
                .otherwise(pl.col("lane"))
                .alias("answered_lane"),
                pl.lit(run.manifest.deadline_s).alias("deadline_s"),
                pl.lit(run.batch_id).alias("batch"),
                # The lead's rule on the receipt: (finished_at - submitted_at) x time_scale.
                ((pl.col("finished_at").dt.epoch("us") / 1e6 - run.submitted_wall) * scale).alias("finished_batch_s"),
                # When the engine had the answer in the batch's receipts (this driver saw it final).
                ((pl.col("delivered_wall") - run.submitted_wall) * scale).alias("delivered_batch_s"),
            )
        )
        # The same answers at the lanes quoted, exact: the floor the lanes allow.
        at_quoted = [engine.catalog.entry(r).cost_pico(int(i), int(o), cached=int(c or 0),
                                                         tier=None if lane in (None, "online") else lane) if r else 0
                     for r, i, o, c, lane in frame.select("route", "input_tokens", "output_tokens", "cached_tokens",
                                                          "quoted_lane").iter_rows()]  # fmt: skip
        frames.append(frame.with_columns(pl.Series("quoted_price_usd_pico", at_quoted, pl.Int64)))
    return pl.concat(frames, how="vertical_relaxed")


def charged_once(engine: BatchRouter, runs: list[Run], items: pl.DataFrame) -> dict[str, Any]:
    """Receipts unique per item, ledger captured == sum of receipts per batch, the ledger's own verify."""
    mismatches = []
    captured = 0
    for run in runs:
        holds = engine.ledger.batch_holds(run.batch_id)
        cap = sum(h.captured_usd_micros for h in holds)
        captured += cap
        total = int(receipts(engine, run.batch_id)["cost_usd_micros"].sum())
        if cap != total or any(h.status != "settled" for h in holds):
            mismatches.append({"batch": run.batch_id, "captured": cap, "receipts": total,
                               "holds": [str(h.status) for h in holds]})  # fmt: skip
    return {
        "items": items.height,
        "unique_item_ids": items["item_id"].n_unique(),
        "captured_usd_micros": captured,
        "receipts_usd_micros": int(items["cost_usd_micros"].sum()),
        "mismatches": mismatches,
        "verify_ok": bool(engine.ledger.verify()["ok"]),
    }


def usd(micros: float) -> str:
    return f"${micros / USD:,.2f}"


def report_lanes(items: pl.DataFrame, log: Any) -> None:
    by = (
        items.with_columns(
            pl.when(pl.col("answered_lane") == pl.col("quoted_lane"))
            .then(pl.lit("as quoted"))
            .otherwise(pl.lit("hedged"))
            .alias("how")
        )  # fmt: skip
        .group_by("cls", "quoted_lane", "answered_lane", "how")
        .agg(
            pl.len().alias("items"),
            pl.col("cost_usd_micros").sum().alias("cost"),
            (pl.col("online_price_usd_pico").sum() / 10**6).alias("online"),
        )
        .sort("cls", "quoted_lane", "answered_lane")
    )
    total = items["cost_usd_micros"].sum()
    log(f"  {'class':5s} {'quoted':7s} {'answered':8s} {'items':>7s} {'cost':>10s} {'online price':>13s} "
        f"{'ratio':>6s} {'share of cost':>13s}")  # fmt: skip
    for cls, quoted, lane, _how, n, cost, online in by.iter_rows():
        log(f"  {cls:5s} {quoted or '-':7s} {lane or '-':8s} {n:7,d} {usd(cost):>10s} {usd(online):>13s} "
            f"{cost / online if online else 0:6.3f} {cost / total if total else 0:13.1%}")  # fmt: skip


def report_deadlines(items: pl.DataFrame, log: Any) -> None:
    log("  class   items  met (receipt finished_at)  met (delivered)  worst delivered / deadline")
    for cls in [c[0] for c in CLASSES]:
        part = items.filter(pl.col("cls") == cls)
        if not part.height:
            continue
        ok = part.filter(pl.col("status") == "succeeded")
        met_f = int((ok["finished_batch_s"] <= ok["deadline_s"]).sum())
        met_d = int((ok["delivered_batch_s"] <= ok["deadline_s"]).sum())
        worst = ok["delivered_batch_s"].max()
        deadline = part["deadline_s"][0]
        log(f"  {cls:5s} {part.height:7,d}  {met_f:7,d} ({met_f / part.height:6.1%})        "
            f"{met_d:7,d} ({met_d / part.height:6.1%})  {worst / 60 if worst is not None else float('nan'):7.1f} min"
            f" / {deadline / 60:.0f} min")  # fmt: skip


def report_provider_batches(engine: BatchRouter, runs: list[Run], scale: float, log: Any) -> None:
    rows = []
    for run in runs:
        for s in provider_batches(engine, run.batch_id):
            duration = (s.ended_at - s.created_at) if s.ended_at and s.created_at else None
            state = "resubmitted" if s.resubmit else s.state  # cancelled stuck, its lines in a fresh batch
            rows.append({"cls": run.manifest.cls, "provider": s.provider, "lines": s.lines, "state": state,
                         "last": s.history[-1] if s.history else s.status, "duration_min":
                         duration / 60 if duration is not None else None, "hedge_at_min":
                         s.hedge_at_s / 60 if s.hedge_at_s is not None else None})  # fmt: skip
    if not rows:
        log("  (no provider batches)")
        return
    frame = pl.DataFrame(rows)
    summary = (
        frame.group_by("cls", "provider", "state", "last")
        .agg(pl.len().alias("batches"), pl.col("lines").sum(), pl.col("duration_min").max().alias("max_min"))
        .sort("cls", "provider", "state")
    )
    for cls, provider, state, last, n, lines, longest in summary.iter_rows():
        longest_s = f"{longest:7.1f} min" if longest is not None else "      -    "
        log(f"  {cls:5s} {provider:10s} {state:11s} last status {last:11s} {n:3d} batches {lines:7,d} lines  "
            f"longest {longest_s}")  # fmt: skip


def online_lane_figures(log: Any) -> None:
    """The online lane's figures (share of the 1,000 req/s ceiling, CPU per request against a raw aiohttp
    baseline, in the same run) come from `benchmarks/online_lane.py`, written apart; called when present."""
    here = Path(__file__).resolve().parent
    if not (here / "online_lane.py").exists():
        log("  benchmarks/online_lane.py is not in this checkout: no online-lane figures here (none are made up).")
        log("  They come from that benchmark: fraction of the 1,000 req/s ceiling and CPU per request of the")
        log("  dispatcher against a raw aiohttp loop, measured in one run.")
        return
    sys.path.insert(0, str(here))
    import online_lane  # type: ignore[import-not-found]  # noqa: PLC0415

    entry = getattr(online_lane, "main", None)
    if entry is None:
        log("  benchmarks/online_lane.py has no main(): run it on its own for the online-lane figures.")
        return
    saved = sys.argv
    sys.argv = [str(here / "online_lane.py")]
    try:
        entry()
    finally:
        sys.argv = saved


# -- the run -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--scale", type=float, default=60.0, help="provider clock speed-up (both sides)")
    parser.add_argument("--stuck-rate", type=float, default=0.05)
    parser.add_argument("--warm-up", type=int, default=0, help="small 24h batches run first (0: the prior)")
    parser.add_argument("--skip-online", action="store_true", help="no measured all-online run")
    parser.add_argument("--online-lane", action="store_true", help="also run benchmarks/online_lane.py")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep", action="store_true", help="keep the temporary storage and database")
    args = parser.parse_args()
    started = time.monotonic()

    def log(line: str) -> None:
        print(line, flush=True)

    root = Path(tempfile.mkdtemp(prefix="bench-lanes-"))
    sim = simulator_config(args.scale, args.stuck_rate)
    port = free_port()
    engine = engine_for(root, sim, args.scale, f"http://127.0.0.1:{port}/v1")
    manifests = workload(args.items)
    lanes = engine.settings.lanes
    figures: dict[str, Any] = {"items": sum(m.items for m in manifests), "scale": args.scale, "seed": SEED}
    log(f"lanes benchmark: {figures['items']:,} items, models {', '.join(MODELS)}; seed {SEED}")
    log("  classes: " + ", ".join(f"{c} {sum(m.items for m in manifests if m.cls == c):,} items in "
        f"{sum(1 for m in manifests if m.cls == c)} batches" for c, *_ in CLASSES))  # fmt: skip
    log(f"  clock: x{args.scale:g} (24 h = {86_400 / args.scale / 60:.1f} wall min, 30 min = "
        f"{1800 / args.scale:.1f} wall s); provider batches log-normal median {sim.batch_median_s / 60:.0f} min, "
        f"sigma {sim.batch_sigma}, stuck {sim.batch_stuck_rate:.0%}; online latency {sim.latency_ms:.0f} ms "
        f"{sim.latency_shape}")  # fmt: skip
    log(f"  limits per route: openai {PROVIDERS['openai']['rpm']:,} RPM, anthropic {PROVIDERS['anthropic']['rpm']:,}"
        f" RPM; lanes: percentile {lanes.percentile}, margin {lanes.margin_s:.0f} s, prior p95 "
        f"{lanes.batch_prior_p95_s:.0f} s, min_observations {lanes.min_observations}")  # fmt: skip
    try:
        with running_simulator(sim, port=port) as url:
            if args.warm_up:
                log(f"warm-up: {args.warm_up} small 24 h batches, measured as earlier days would have been")
                warm_up(engine, url, args.warm_up, log)
            observed = Predictions(engine.settings.database).observations(lane="batch")
            figures["warm_up"] = {"batches": args.warm_up, "observations": len(observed)}
            used = "the prior" if len(observed) < lanes.min_observations else "measured times"
            log(
                f"predictions at the first quote: {len(observed)} measured provider batch runs ({used} used; "
                f"prior p95 {lanes.batch_prior_p95_s:.0f} s)"
            )
            t0 = time.monotonic()
            log("lanes run (deadlines):")
            runs = run_phase(engine, manifests, url, workspace=LANES_WS, deadline=True,
                             limit_s=3 * 86_400 / args.scale + 600, log=log)  # fmt: skip
            figures["lanes_wall_s"] = time.monotonic() - t0
            log(f"  done in {figures['lanes_wall_s']:.0f} wall s")
            base: list[Run] = []
            if not args.skip_online:
                t0 = time.monotonic()
                log("reference run (same manifests, no deadline: all online):")
                base = run_phase(engine, manifests, url, workspace=ONLINE_WS, deadline=False, limit_s=3600, log=log)
                figures["online_wall_s"] = time.monotonic() - t0
                log(f"  done in {figures['online_wall_s']:.0f} wall s")
        errors = [f"{r.manifest.name} ({r.workspace}): {r.error}" for r in runs + base if r.error]
        for error in errors:
            log(f"ERROR {error}")
        items = collect(engine, runs, args.scale)
        cost = int(items["cost_usd_micros"].sum())
        same_tokens = micros_up(int(items["online_price_usd_pico"].sum()))
        log("")
        log("cost")
        log(f"  lanes, settled (sum of receipts):             {usd(cost)}")
        log(f"  the same tokens at the online price, exact:   {usd(same_tokens)}   ratio {cost / same_tokens:.5f}")
        figures.update(cost_usd_micros=cost, same_tokens_online_usd_micros=same_tokens,
                       ratio_same_tokens=cost / same_tokens)  # fmt: skip
        if base:
            online_items = collect(engine, base, args.scale)
            measured = int(online_items["cost_usd_micros"].sum())
            log(f"  all online, measured (same manifests):        {usd(measured)}   ratio {cost / measured:.5f}  "
                f"(goal <= 0.50)")  # fmt: skip
            log(f"    its lanes: {dict(online_items.group_by('lane').len().iter_rows())}; tokens in/out "
                f"{online_items['input_tokens'].sum():,}/{online_items['output_tokens'].sum():,} against the lanes "
                f"run's {items['input_tokens'].sum():,}/{items['output_tokens'].sum():,}")  # fmt: skip
            figures.update(online_measured_usd_micros=measured, ratio=cost / measured)
        # What the quotes alone allow: each answer at its quoted lane's price (no hedge), exact.
        floor = micros_up(int(items["quoted_price_usd_pico"].sum()))
        log(f"  the same answers at the lanes quoted, exact:  {usd(floor)}   ratio {floor / same_tokens:.5f}; "
            f"settled above it: {cost - floor:,} micro-dollars ({cost / floor - 1:+.4%}), over "
            f"{items.height:,} lines")  # fmt: skip
        figures.update(floor_usd_micros=floor, ratio_floor=floor / same_tokens)
        # Each line rounded up on its own, as charged before a chunk was rounded once.
        per_line = sum(micros_up(int(p or 0)) for p in items["cost_usd_pico"])
        log(f"  these lines each rounded up, as before:       {usd(per_line)}   ratio {per_line / same_tokens:.5f}")
        figures.update(per_line_usd_micros=per_line)
        log("by class and lane (quoted -> answered):")
        report_lanes(items, log)
        hedged = items.filter((pl.col("quoted_lane") != "online") & (pl.col("answered_lane") == "online"))
        log(
            f"items hedged (quoted batch/flex, answered online at the online price): {hedged.height:,} "
            f"({usd(hedged['cost_usd_micros'].sum())}, {hedged['cost_usd_micros'].sum() / cost:.1%} of the cost)"
        )
        figures["hedged"] = hedged.height
        log("deadlines met (on the batch's clock):")
        report_deadlines(items, log)
        log("provider batches:")
        report_provider_batches(engine, runs, args.scale, log)
        checks = charged_once(engine, runs, items)
        figures["charged_once"] = checks
        log("charged once:")
        log(
            f"  receipts {checks['items']:,}, unique item ids {checks['unique_item_ids']:,}; ledger captured "
            f"{usd(checks['captured_usd_micros'])} vs receipts {usd(checks['receipts_usd_micros'])}; "
            f"mismatched batches {len(checks['mismatches'])}; ledger verify "
            f"{'OK' if checks['verify_ok'] else 'FAILED'}"
        )
        for mismatch in checks["mismatches"]:
            log(f"  MISMATCH {mismatch}")
        summary = Predictions(engine.settings.database).summary()
        log("measured provider batch runs (predictions table):")
        for s in summary:
            p95 = f"{s.p95_s / 60:.0f} min" if s.p95_s is not None and s.p95_s != float("inf") else str(s.p95_s)
            log(f"  {s.provider:10s} {s.lane:6s} {s.bucket:6s} runs {s.count:3d} censored {s.censored:2d} p95 {p95}")
        log("online lane:")
        if args.online_lane:
            online_lane_figures(log)
        else:
            log("  not run (--online-lane runs benchmarks/online_lane.py when present)")
        figures["wall_s"] = time.monotonic() - started
        log(f"total wall time {figures['wall_s']:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2, default=str))
    finally:
        control.stop(engine.settings.database)
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
