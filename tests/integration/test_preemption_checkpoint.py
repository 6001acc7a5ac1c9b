"""A spot interruption notice reaches a running training job, which checkpoints at once.

The chain: scheduler.interrupt(pool) -> Ray drains the pool's nodes as
PREEMPTION -> ray.train.get_preemption_info() on the workers -> a checkpoint
at that step, before the capacity goes away.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from elasticml.train.checkpoint import read_meta

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_interruption_notice_makes_training_checkpoint_now(local_cluster, corpus, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from elasticml.scheduler.client import SchedulerClient

    info = local_cluster.require_info()
    info.connect()
    sched = SchedulerClient.connect(cluster_name=local_cluster.name)
    client = JobSubmissionClient(info.dashboard_url)
    steps = 600
    job = client.submit_job(
        entrypoint=f"python jobs/train.py --data {corpus} --storage-path {tmp_path} --run-name pre "
                   f"--steps {steps} --workers 2 --global-batch 4 --report-every 10 --market spot",
        runtime_env={"working_dir": str(REPO)},
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
    sched.kill(no_restart=True)

