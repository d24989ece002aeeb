"""`make demo`: generate a sample manifest, submit it as a batch and run the main job on it.

Runs against the embedded default: a local folder as the bucket, the built-in catalog and the
provider simulator. The run is recorded in $DAGSTER_HOME, so `make dev` shows it in the UI.
"""

from __future__ import annotations

import io
import sys

import dagster as dg

from batchrouter.batches.lifecycle import submit, write_results
from batchrouter.cli import render_balance, render_quote, render_run
from batchrouter.core.batch_info import load_batch
from batchrouter.core.config import load_settings
from batchrouter.core.storage import Storage
from batchrouter.intake.sample import sample_manifest
from batchrouter.money.ledger import Ledger
from pipelines.definitions import defs
from pipelines.partitions import batches


def main(items: int = 200) -> int:
    settings = load_settings()
    storage = Storage(settings.storage)
    frame = sample_manifest(items)
    # Two deliberately bad rows show what a rejection looks like.
    frame = frame.with_columns(frame["model"].scatter(3, "gpt-9-imaginary"), frame["prompt"].scatter(5, "   "))
    buf = io.BytesIO()
    frame.write_csv(buf)
    info = submit(storage, workspace="demo", source_name="demo-sample.csv", data=buf.getvalue())
    ledger = Ledger(settings.database)
    # Trial credits, granted once: the key makes re-running the demo harmless.
    ledger.grant("demo", 5_000_000, key="demo-trial-credits", memo="trial credits")
    print("Before:", render_balance(ledger.balance("demo").as_dict()))
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(batches.name, [info.batch_id])
    result = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance,
        partition_key=info.batch_id,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    if not result.success:
        print(f"batch {info.batch_id} failed", file=sys.stderr)
        return 1
    batch = load_batch(storage, info.batch_id)
    print(render_quote(storage.read_json(*batch.folder("quote.json"))))
    print()
    print(render_run(write_results(storage, batch)))
    print()
    print("After: ", render_balance(ledger.balance("demo").as_dict()))
    report = ledger.verify()
    print(
        f"Ledger verify: {'OK' if report['ok'] else report['problems']} ({report['entries']} journal entries replayed)"
    )
    print(f"\nEverything about batch {info.batch_id} is under {storage.url('batches', info.batch_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
