"""A batch run whose worker died is marked failed (so the instance's run retries run it again); no other run is."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import dagster as dg
import pytest

from assets.batch import WORKER_TAG, worker_name
from pipelines.sensors import dead_run_sensor

pytestmark = pytest.mark.dagster


def gone_pid() -> int:
    """The pid of a process of this host that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def add_run(instance: dg.DagsterInstance, worker: str | None, *, job: str = "batch_job",
            status: dg.DagsterRunStatus = dg.DagsterRunStatus.STARTED, run_id: str | None = None) -> str:  # fmt: skip
    run_id = run_id or str(uuid.uuid4())
    tags = {} if worker is None else {WORKER_TAG: worker.format(run_id=run_id)}
    instance.add_run(dg.DagsterRun(job_name=job, run_id=run_id, status=status, tags=tags))
    return run_id


def test_only_a_started_batch_run_whose_own_worker_on_this_host_is_gone_is_marked_failed() -> None:
    host, dead = socket.gethostname(), gone_pid()
    with dg.DagsterInstance.ephemeral() as instance:
        killed = add_run(instance, f"dagster run {{run_id}} on {host} pid {dead} (0badc0de)")
        alive = add_run(instance, None)
        instance.add_run_tags(alive, {WORKER_TAG: worker_name(alive)})  # this very process
        runs = {
            "alive": alive,
            "not named yet": add_run(instance, None),
            # a retry copies its parent's tags: until its step names it, the tag names the parent
            "parent's tag": add_run(instance, f"dagster run {killed} on {host} pid {dead} (0badc0de)"),
            "other host": add_run(instance, f"dagster run {{run_id}} on elsewhere.example pid {dead} (0badc0de)"),
            "ended": add_run(instance, f"dagster run {{run_id}} on {host} pid {dead} (0badc0de)",
                             status=dg.DagsterRunStatus.SUCCESS),
            "other job": add_run(instance, f"dagster run {{run_id}} on {host} pid {dead} (0badc0de)",
                                 job="usage_report_job"),
        }  # fmt: skip

        with dg.build_sensor_context(instance=instance) as context:
            result = dead_run_sensor(context)

        assert isinstance(result, dg.SkipReason) and "1 dead batch run" in str(result.skip_message)
        assert instance.get_run_by_id(killed).status == dg.DagsterRunStatus.FAILURE  # type: ignore[union-attr]
        (failure,) = [r for r in instance.all_logs(killed) if r.dagster_event and r.dagster_event.is_run_failure]
        assert f"pid {dead}" in failure.dagster_event.message  # type: ignore[union-attr,operator]
        for name, run_id in runs.items():
            expected = dg.DagsterRunStatus.SUCCESS if name == "ended" else dg.DagsterRunStatus.STARTED
            assert instance.get_run_by_id(run_id).status == expected, name  # type: ignore[union-attr]

        with dg.build_sensor_context(instance=instance) as context:
            again = dead_run_sensor(context)
        assert isinstance(again, dg.SkipReason) and "no batch run" in str(again.skip_message)
