"""A worker's node is lost mid-run: Ray Train restarts the workers, resumes from the last checkpoint, finishes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from elasticml import labels as L
from elasticml.train.checkpoint import read_meta

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_losing_a_spot_node_mid_run_resumes_at_the_checkpointed_data_position(local_cluster, corpus, tmp_path):
    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    info = local_cluster.require_info()
    info.connect()
    client = JobSubmissionClient(info.dashboard_url)
    steps, batch = 120, 4
    job = client.submit_job(
        entrypoint=f"python jobs/train.py --data {corpus} --storage-path {tmp_path} --run-name lost "
                   f"--steps {steps} --workers 2 --global-batch {batch} --report-every 5 --checkpoint-every 10 --market spot",
        runtime_env={"working_dir": str(REPO)},
    )
    deadline = time.monotonic() + 300
    while "step 20/" not in client.get_job_logs(job):
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        assert client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job)[-3000:]
        time.sleep(0.5)
    t_lost = time.monotonic()
    spot = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(L.NODE_TYPE) == "cpu_spot"]
    assert len(spot) == 2
    # The node vanishes, as a reclaimed spot instance does: its raylet and every process under it.
    assert local_cluster.kill_node(spot[0])

    resumed_at = None
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline + 300, client.get_job_logs(job)[-3000:]
        if resumed_at is None and "resumed from step" in client.get_job_logs(job):
            resumed_at = time.monotonic()
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    match = re.search(r"resumed from step (\d+) \(next sample (\d+), (\d+) workers\)", logs)
    assert match, logs[-3000:]
    step, next_sample, workers = map(int, match.groups())
    assert step >= 10 and step % 10 == 0          # a checkpoint taken before the loss, not the start
    assert next_sample == step * batch            # the data position is exactly where the checkpoint left it
    after = logs[match.end():]
    # Ray echoes a worker's line more than once, so compare the set of steps reported after the resume.
    trained = sorted({int(s) for s in re.findall(r"step (\d+)/%d" % steps, after)})
    assert trained == list(range(step + 5, steps + 1, 5))  # continues right after the checkpoint, none skipped
    final = [read_meta(m.parent) for m in (tmp_path / "lost").glob("checkpoint_*/meta.json")]
    assert max(m["step"] for m in final) == steps
    print(f"lost a node at step ~20; resumed at step {step} after {resumed_at - t_lost:.1f}s")
