"""Drop to done under `dagster dev`: seconds from a manifest landing in the bucket to its outputs.parquet.

Starts the real thing (webserver + daemon, `dagster dev -w workspace.yaml`) on a free port with a temp
DAGSTER_HOME holding the project's pipelines/dagster.yaml, waits until the manifest sensor has ticked
once, then drops a 120-item sample manifest (batchrouter.intake.sample) under manifests/<workspace>/ and
polls for the batch's outputs.parquet. Baseline in the same process: `batchrouter run` of the same
manifest (CLI entry point called in-process), against its own bucket and ledger.
Goal (issue 10): outputs within 20 s of the drop on the 2-core machine.

    .venv/bin/python benchmarks/dagster_drop.py [--items 120] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WS = "bench"
SENSOR = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { __typename ... on Sensor { sensorState { ticks(limit: 1) { status } } } }
}
"""
RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
  }
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()).get("data") or {})


def poll(what: str, deadline_s: float, probe: Any, *, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            found = probe()
            if found:
                return found
        time.sleep(every_s)
    raise SystemExit(f"no {what} within {deadline_s:.0f} s")


def write_config(folder: Path, latency_ms: float) -> Path:
    folder.mkdir(parents=True)
    path = folder / "batchrouter.toml"
    path.write_text(
        f'database = "{folder / "ledger.duckdb"}"\n\n[storage]\nroot = "{folder / "bucket"}"\n\n'
        f"[simulator]\nlatency_ms = {latency_ms}\n"
    )
    return path


def use_config(path: Path) -> None:
    """Point this process at `path` (the baseline run and the credit grant read it)."""
    for var in ("BATCHROUTER_STORAGE__ROOT", "BATCHROUTER_DATABASE"):
        os.environ.pop(var, None)
    os.environ["BATCHROUTER_CONFIG"] = str(path)


def grant(usd: int) -> None:
    from batchrouter import cli

    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["credits", "grant", "--workspace", WS, "--usd", str(usd), "--key", "bench-credit"])
    if code != 0:
        raise SystemExit("granting the benchmark's credits failed")


def baseline(data: bytes, root: Path, latency_ms: float) -> float:
    """Seconds for `batchrouter run` of the manifest, in this process, on a bucket of its own."""
    from batchrouter import cli

    use_config(write_config(root / "baseline", latency_ms))
    grant(100)
    path = root / "baseline" / "manifest.csv"
    path.write_bytes(data)
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["run", str(path), "--workspace", WS, "--json"])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"baseline `batchrouter run` failed ({code}): {out.getvalue()[-2000:]}")
    return elapsed


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop dagster dev and everything it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def under_dagster_dev(data: bytes, root: Path, latency_ms: float) -> dict[str, Any]:
    config = write_config(root / "dagster", latency_ms)
    use_config(config)
    grant(100)
    home = root / "dagster" / "home"
    home.mkdir()
    shutil.copy(REPO / "pipelines" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path[1:]]),
        "PYTHONWARNINGS": "ignore:Function `dev_command` is superseded",  # as `make dev` runs it
    }
    log = root / "dagster-dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = time.perf_counter()
        selector = {
            "repositoryLocationName": "pipelines.definitions",
            "repositoryName": "__repository__",
            "sensorName": "manifest_sensor",
        }

        def ticked() -> bool:
            sensor = graphql(port, SENSOR, {"selector": selector}).get("sensorOrError") or {}
            return bool(sensor.get("sensorState", {}).get("ticks"))

        poll("first manifest_sensor tick", 300, ticked, every_s=0.5)
        ready_s = time.perf_counter() - started

        batch_id = batch_id_of(data)
        drop = root / "dagster" / "bucket" / "manifests" / WS / "sample.csv"
        drop.parent.mkdir(parents=True, exist_ok=True)
        staged = drop.with_name(".sample.csv.part")  # hidden while written, then renamed
        staged.write_bytes(data)
        dropped, dropped_at = time.perf_counter(), time.time()
        staged.rename(drop)
        outputs = root / "dagster" / "bucket" / "batches" / batch_id / "outputs.parquet"
        poll(f"outputs.parquet of {batch_id}", 600, outputs.exists, every_s=0.05)
        to_outputs = time.perf_counter() - dropped

        run_filter = {"filter": {"tags": [{"key": "dagster/partition", "value": batch_id}]}}

        def finished() -> dict[str, Any] | None:
            runs = graphql(port, RUNS, run_filter)["runsOrError"]["results"]
            done = [r for r in runs if r["status"] in ("SUCCESS", "FAILURE", "CANCELED")]
            return done[0] if done else None

        run = poll("finished run", 300, finished, every_s=0.1)
        to_run_end = time.perf_counter() - dropped
        tags = {t["key"]: t["value"] for t in run["tags"]}
        return {
            "ready_s": ready_s,
            "drop_to_outputs_s": to_outputs,
            "drop_to_run_end_s": to_run_end,
            "run_status": run["status"],
            # Where the time goes: the sensor noticing the drop, the run starting, the run itself.
            "drop_to_run_created_s": run["creationTime"] - dropped_at,
            "created_to_started_s": run["startTime"] - run["creationTime"],
            "run_s": run["endTime"] - run["startTime"],
            "batch_state": tags.get("batchrouter/state"),
        }
    except BaseException:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        stop(proc)


def batch_id_of(data: bytes) -> str:
    from batchrouter.batches.lifecycle import batch_id_for

    return batch_id_for(WS, hashlib.sha256(data).hexdigest())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--latency-ms", type=float, default=200.0, help="the simulator's per-request latency")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from batchrouter.intake.sample import sample_manifest

    buf = io.BytesIO()
    sample_manifest(args.items).write_csv(buf)
    data = buf.getvalue()
    with tempfile.TemporaryDirectory(prefix="dagster-drop-") as tmp:
        root = Path(tmp)
        base_s = baseline(data, root, args.latency_ms)
        dev = under_dagster_dev(data, root, args.latency_ms)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.items} items, simulator latency {args.latency_ms:.0f} ms, {os.cpu_count()} cores, load {load}")
    print(f"dagster dev ready (first sensor tick) after {dev['ready_s']:.1f} s")
    print(f"drop -> outputs.parquet   {dev['drop_to_outputs_s']:6.1f} s  (goal: 20 s)")
    print(f"drop -> run finished      {dev['drop_to_run_end_s']:6.1f} s  ({dev['run_status']}, {dev['batch_state']})")
    print(
        f"  sensor -> run created {dev['drop_to_run_created_s']:.1f} s, created -> started "
        f"{dev['created_to_started_s']:.1f} s, run {dev['run_s']:.1f} s"
    )
    print(f"baseline `batchrouter run` {base_s:6.1f} s  (same process)")
    print(f"ratio drop->outputs / baseline: {dev['drop_to_outputs_s'] / base_s:.2f}x")


if __name__ == "__main__":
    main()
