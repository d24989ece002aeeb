"""`make demo`: generate a sample manifest, submit it as a batch and run the batch job on it.

Runs against the embedded default: a local folder as the bucket, the built-in catalog and the
provider simulator. The run is recorded in $DAGSTER_HOME, so `make dev` shows it in the UI.
"""

from __future__ import annotations

import io
import sys

import dagster as dg

from batchrouter.cli import render_balance, render_quote, render_run
from batchrouter.engine import BatchRouter
from batchrouter.intake.sample import sample_manifest
from pipelines.definitions import defs
from pipelines.partitions import batches


def main(items: int = 200) -> int:
    engine = BatchRouter()
    frame = sample_manifest(items)
    # Two deliberately bad rows show what a rejection looks like.
    frame = frame.with_columns(frame["model"].scatter(3, "gpt-9-imaginary"), frame["prompt"].scatter(5, "   "))
    buf = io.BytesIO()
    frame.write_csv(buf)
    view = engine.batches.submit(buf.getvalue(), filename="demo-sample.csv", workspace="demo")
    # Trial credits, granted once: the key makes re-running the demo harmless.
    engine.ledger.grant("demo", 5_000_000, key="demo-trial-credits", memo="trial credits")
    print("Before:", render_balance(engine.ledger.balance("demo").as_dict()))
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(batches.name, [view.batch_id])
    result = defs.resolve_job_def("batch_job").execute_in_process(
        instance=instance,
        partition_key=view.batch_id,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        raise_on_error=False,
    )
    state = instance.get_run_by_id(result.run_id).tags.get("batchrouter/state")  # type: ignore[union-attr]
    if not result.success:
        print(
            f"batch {view.batch_id} is {state}: its run failed (see `make dev`, run {result.run_id})", file=sys.stderr
        )
        return 1
    info = engine.batches.info(view.batch_id)
    print(render_quote(engine.storage.read_json(*info.folder("quote.json"))))
    print()
    print(render_run(engine.batches.results(view.batch_id).to_json()))
    print()
    print("After: ", render_balance(engine.ledger.balance("demo").as_dict()))
    report = engine.ledger.verify()
    print(
        f"Ledger verify: {'OK' if report['ok'] else report['problems']} ({report['entries']} journal entries replayed)"
    )
    where = engine.storage.url("batches", view.batch_id)
    print(f"\nBatch {view.batch_id} is {state}; everything about it is under {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
