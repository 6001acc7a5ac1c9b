"""A spot interruption notice reaches a running training job, which checkpoints at once.

The chain: scheduler.interrupt(pool) -> Ray drains the pool's nodes as
PREEMPTION -> ray.train.get_preemption_info() on the workers -> a checkpoint
at that step, before the capacity goes away.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from elasticml.train.checkpoint import read_meta

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]
REPO = Path(__file__).resolve().parents[3]


def test_interruption_notice_makes_training_checkpoint_now(local_cluster, corpus, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from elasticml.scheduler.client import SchedulerClient

    info = local_cluster.require_info()
    info.connect()
    sched = SchedulerClient.connect()
    sched.clear_interruption("cpu_spot")  # a spot loss of an earlier test is over
    client = JobSubmissionClient(info.dashboard_url)
    # Ray Train looks for a drained node every 5 s unless told otherwise: here every second, so that the
    # notice lands well before the end (about 20 s of steps are left after step 20 here) and the rest of
    # the run proves it goes on after it.
    steps = 200
    job = client.submit_job(
        entrypoint=f"python jobs/train.py --data {corpus} --storage-path {tmp_path} --run-name pre "
                   f"--steps {steps} --workers 2 --global-batch 4 --report-every 10 --market spot",
        runtime_env={"working_dir": str(REPO), "env_vars": {"RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1"}},
    )
    deadline = time.monotonic() + 240
    while "step 20/" not in client.get_job_logs(job):
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        assert client.get_job_status(job) not in (JobStatus.FAILED, JobStatus.STOPPED), client.get_job_logs(job)[-3000:]
        time.sleep(1)
    out = sched.interrupt("cpu_spot")
    assert len(out["drained_nodes"]) == 2  # both training workers' spot nodes
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline + 240
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    assert "preemption notice at step" in logs
    steps_saved = sorted(read_meta(m.parent)["step"] for m in (tmp_path / "pre").glob("checkpoint_*/meta.json"))
    # Only the final checkpoint was scheduled (checkpoint_every=0): anything earlier is the preemption's.
    assert steps_saved[-1] == steps and len(steps_saved) == 2 and steps_saved[0] < steps, steps_saved
    sched.clear_interruption("cpu_spot")



def _worker_node_types(job_id: str) -> list[str]:
    """Node types of the Ray job's live Ray Train workers, as Ray reports them."""
    import ray
    from ray._private import state

    from elasticml import labels as L

    nodes = {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes() if n["Alive"]}
    return sorted(nodes.get(a["Address"]["NodeID"], {}).get(L.NODE_TYPE, "?")
                  for a in state.actors(job_id=ray.JobID.from_hex(job_id), actor_state_name="ALIVE").values()
                  if "RayTrainWorker" in a["ActorClassName"])


@pytest.mark.slow  # three pools in one long run; a move followed on a lost node is in test_train_node_loss
def test_the_controller_moves_a_running_job_spot_on_demand_spot_and_the_ledger_follows(local_cluster, corpus, tmp_path):
    """Spot lost: the job is moved to on-demand; spot back: moved back. Each move is carried out (checkpoint,
    stop, resume on the new pool) and the ledger's intervals are where Ray ran the workers."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

    info = local_cluster.require_info()
    info.connect()
    sched = SchedulerClient.connect()
    sched.clear_interruption("cpu_spot")
    # Reserved capacity is taken, so the cheapest place for the job is spot.
    sched.place(WorkloadSpec(name="hold", tenant="ops", priority="critical", min_workers=2, max_workers=2))
    client = JobSubmissionClient(info.dashboard_url)
    job = client.submit_job(
        entrypoint=f"python jobs/train.py --data {corpus} --storage-path {tmp_path} --run-name mover --steps 1500 "
                   f"--workers 1 --global-batch 2 --report-every 5 --tenant research --priority low",
        runtime_env={"working_dir": str(REPO)},
    )
    job_id = None
    deadline = time.monotonic() + 420

    def wait_until(pred, what: str) -> None:  # type: ignore[no-untyped-def]
        while not pred():
            logs = client.get_job_logs(job)
            assert client.get_job_status(job) not in (JobStatus.FAILED, JobStatus.STOPPED), logs[-3000:]
            assert time.monotonic() < deadline, f"waiting for {what}: {logs[-3000:]}"
            time.sleep(1)

    def open_interval() -> str | None:
        rows = [i for i in sched.intervals("mover") if i["end"] is None]
        return rows[0]["node_type"] if len(rows) == 1 else None

    agree: list[tuple[str, str]] = []

    def running_on(node_type: str) -> bool:
        nonlocal job_id
        job_id = job_id or client.get_job_info(job).job_id
        on = _worker_node_types(job_id) if job_id else []
        charged = open_interval()
        if on == [node_type] and charged == node_type:
            agree.append((on[0], charged))
            return True
        return False

    wait_until(lambda: running_on("cpu_spot"), "training on spot")
    sched.interrupt("cpu_spot")
    wait_until(lambda: running_on("cpu_on_demand"), "training moved to on-demand")
    sched.clear_interruption("cpu_spot")
    wait_until(lambda: running_on("cpu_spot"), "training moved back to spot")
    wait_until(lambda: client.get_job_status(job) == JobStatus.SUCCEEDED, "the job to finish")
    logs = client.get_job_logs(job)
    # The driver prints one "moved" event per move it followed (worker log lines may be repeated by Ray).
    moved = [json.loads(l) for l in logs.splitlines() if l.startswith('{"event": "moved"')]
    assert [m["to"] for m in moved] == ["cpu_on_demand", "cpu_spot"], moved
    assert all(m["checkpoint_step"] == m["at_step"] for m in moved), moved  # nothing lost: checkpointed at the stop
    assert "resumed from step" in logs
    assert agree == [("cpu_spot",) * 2, ("cpu_on_demand",) * 2, ("cpu_spot",) * 2]
    # Interval by interval, the ledger charged spot, then on-demand, then spot again, and closed at the end.
    charged = [i for i in sched.intervals("mover")]
    kinds = [i["node_type"] for i in charged]
    assert [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k] == ["cpu_spot", "cpu_on_demand", "cpu_spot"]
    assert all(i["end"] is not None for i in charged) and all(i["workers"] == 1 for i in charged)
    reasons = [d["reason"] for d in sched.explain("mover") if d["action"] == "move"]
    assert "interruption notice" in reasons[0] and "cheaper capacity" in reasons[1]
    sched.finish("hold")
