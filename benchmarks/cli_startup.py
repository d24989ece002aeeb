"""CLI start-up benchmark: `batchrouter --help` against a bare `python -c pass`, in the same run.

Goal (issue 10): `batchrouter --help` in under 0.5 s on the project's 2-core machine. Absolute times
move with the machine's load, so the figure to compare across runs is the ratio to a bare
interpreter start measured alongside (best of N for each, alternating, so both see the same load).
Bytecode is cached as on any installed machine: the children run without PYTHONDONTWRITEBYTECODE,
with their .pyc files under a temporary PYTHONPYCACHEPREFIX (nothing is written into the trees),
after one untimed warm-up run of each command.
Also shown: the floor of any typer app with rich help, a command that does work (`quote` of a
3-row manifest) and which heavy modules `--help` loads (none is the goal).

    .venv/bin/python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("polars", "duckdb", "pyarrow", "httpx", "dagster", "pydantic", "fsspec", "bpe_openai")
# The floor any typer CLI with rich help pays: one command, nothing else imported.
TYPER_FLOOR = (
    "import typer\napp = typer.Typer()\n@app.command()\ndef quote(manifest: str) -> None:\n    pass\n"
    "@app.command()\ndef run(manifest: str) -> None:\n    pass\napp()\n"
)
MANIFEST = b"item_id,model,prompt\n1,gpt-4o-mini,hi\n2,gpt-4o-mini,hello\n3,claude-haiku-4-5,hey\n"


def wall(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def best(commands: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, float]:
    for command in commands.values():
        wall(command, env)  # warm-up: writes the bytecode cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            times[name].append(wall(command, env))
    return {name: min(values) for name, values in times.items()}


def heavy_modules_after_help() -> list[str]:
    probe = (
        "import runpy, sys; sys.argv = ['batchrouter', '--help']\n"
        "try: runpy.run_module('batchrouter.cli', run_name='__main__')\n"
        "except SystemExit: pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return list(json.loads(out.strip().splitlines()[-1].replace("'", '"')))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.csv"
        manifest.write_bytes(MANIFEST)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        cli = [sys.executable, "-m", "batchrouter.cli"]
        results = best(
            {
                "python -c pass": [sys.executable, "-c", "pass"],
                "a 2-command typer app --help": [sys.executable, "-c", TYPER_FLOOR, "--help"],
                "batchrouter --help": [*cli, "--help"],
                "batchrouter quote --help": [*cli, "quote", "--help"],
                "batchrouter quote (3 rows)": [*cli, "quote", str(manifest), "--workspace", "bench", "--json"],
            },
            args.runs,
            env,
        )
    bare = results["python -c pass"]
    print(f"best of {args.runs} runs each, alternating")
    for name, seconds in results.items():
        print(f"  {name:<30} {seconds:6.3f} s   {seconds / bare:6.1f}x python -c pass")
    print(f"  heavy modules loaded by --help: {heavy_modules_after_help() or 'none'}")


if __name__ == "__main__":
    main()
