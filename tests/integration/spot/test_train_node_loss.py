"""A worker's node is lost mid-run: Ray Train restarts the workers, resumes from the last checkpoint, finishes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from elasticml import labels as L
from elasticml.train.checkpoint import newest_complete

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]
REPO = Path(__file__).resolve().parents[3]


def wait_for_log(client, job: str, words: str, deadline: float) -> None:
    """Until the job's logs say `words`; fails if it ends or the deadline passes first."""
    from ray.job_submission import JobStatus

    while words not in client.get_job_logs(job):
        assert time.monotonic() < deadline, client.get_job_logs(job)[-3000:]
        assert client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job)[-3000:]
        time.sleep(0.5)


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
    wait_for_log(client, job, "step 20/", deadline)
    t_lost = time.monotonic()
    spot = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(L.NODE_TYPE) == "cpu_spot"]
    assert len(spot) == 2
    # The node vanishes, as a reclaimed spot instance does: its raylet and every process under it.
    assert local_cluster.kill_node(spot[0])
    newest = newest_complete(tmp_path / "lost")  # complete in storage at the loss, registered by Ray Train or not
    at_loss = newest[0] if newest is not None else 0

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
    assert step >= at_loss, (step, at_loss)       # the newest complete one, not only the newest Ray Train took in
    assert next_sample == step * batch            # the data position is exactly where the checkpoint left it
    after = logs[match.end():]
    # Ray echoes a worker's line more than once, so compare the set of steps reported after the resume.
    trained = sorted({int(s) for s in re.findall(r"step (\d+)/%d" % steps, after)})
    assert trained == list(range(step + 5, steps + 1, 5))  # continues right after the checkpoint, none skipped
    # The kill can land while the step-20 checkpoint is uploading: that folder stays incomplete (its manifest
    # names a shard the lost node never finished) and is never loaded; the run's newest complete one is its last.
    assert newest_complete(tmp_path / "lost")[0] == steps
    print(f"lost a node at step ~20; resumed at step {step} after {resumed_at - t_lost:.1f}s")


# Slow: Ray Train replacing its own killed controller is a rarer loss than a node's, and only this test has it;
# resuming from the newest complete checkpoint is checked in the default run by the node-loss tests here.
@pytest.mark.slow
def test_losing_the_runs_controller_starts_a_new_one_from_the_last_checkpoint(local_cluster, corpus, tmp_path):
    """The controller's process dies mid-run (SIGKILL, as a crash would): the run goes on under a new
    controller, from the last checkpoint, and finishes."""
    import os
    import signal
    import threading

    import ray
    from ray.train import UserCallback
    from ray.util.state import list_actors

    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit

    local_cluster.require_info().connect()
    seen = tmp_path / "steps.txt"

    class Steps(UserCallback):  # runs in the controller, on this machine: each reported step, "c" if checkpointed
        def after_report(self, run_context, metrics, checkpoint):  # type: ignore[no-untyped-def]
            with open(seen, "a") as f:
                f.write(f"{metrics[0]['step']}{'c' if checkpoint else ''}\n")

    steps = 80
    cfg = TrainConfig(data=str(corpus), storage_path=str(tmp_path), run_name="ctl", steps=steps, global_batch=2,
                      seq_len=32, num_workers=1, report_every=5, checkpoint_every=10)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(r=fit(cfg, callbacks=[Steps()])), daemon=True)
    runner.start()

    def checkpointed() -> list[int]:  # checkpoints the controller has registered, not only written
        return [int(s[:-1]) for s in (seen.read_text().split() if seen.exists() else []) if s.endswith("c")]

    deadline = time.monotonic() + 180
    while max(checkpointed(), default=0) < 20:
        assert runner.is_alive() and time.monotonic() < deadline, result
        time.sleep(0.2)
    job = ray.get_runtime_context().get_job_id()
    controllers = [a for a in list_actors(filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")])
                   if a.job_id == job]
    assert len(controllers) == 1, controllers
    os.kill(controllers[0].pid, signal.SIGKILL)
    with open(seen, "a") as f:  # the old controller is gone: what follows is the new one's
        f.write("killed\n")

    runner.join(timeout=240)
    assert not runner.is_alive()
    assert result["r"].error is None and result["r"].metrics["step"] == steps
    before, after = (part.split() for part in seen.read_text().split("killed\n"))
    registered = [int(s[:-1]) for s in before if s.endswith("c")]
    after = [int(s.rstrip("c")) for s in after]
    resumed_from = after[0] - 5
    # The new controller's run starts right after a checkpoint, not from 0: the last one registered before the
    # kill, or a newer one the workers completed after it (they trained on until Ray ended them; the controller
    # that would have registered it was gone), which saves those steps.
    assert resumed_from >= 20 and resumed_from >= registered[-1] and resumed_from % 10 == 0, (before, after)
    assert after == list(range(resumed_from + 5, steps + 1, 5))
    assert newest_complete(tmp_path / "ctl")[0] == steps


def test_a_scheduled_run_that_loses_its_spot_node_restarts_once_where_the_scheduler_moved_it(local_cluster, corpus,
                                                                                            tmp_path):
    """A move wins over a retry: the scheduler moves the job off the lost node's pool, and the job's one
    restart runs there. Ray Train's own retry would have asked for spot again (its workers on a new spot
    node, then a second restart when the move came)."""
    import json

    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

    info = local_cluster.require_info()
    info.connect()
    sched = SchedulerClient.connect()
    # The tests before this one lost spot nodes: the pool is tried again now, not in two minutes.
    if any(p["interrupted"] for p in sched.status()["pools"] if p["node_type"] == "cpu_spot"):
        sched.clear_interruption("cpu_spot")
    sched.place(WorkloadSpec(name="hold", tenant="p", priority="critical", min_workers=2, max_workers=2))  # reserved
    client = JobSubmissionClient(info.dashboard_url)
    steps = 60
    job = client.submit_job(
        entrypoint=f"python jobs/train.py --data {corpus} --storage-path {tmp_path} --run-name follows "
                   f"--steps {steps} --workers 2 --global-batch 4 --report-every 5 --checkpoint-every 10 "
                   f"--tenant research --expected-hours 0.2",
        runtime_env={"working_dir": str(REPO)},
    )
    deadline = time.monotonic() + 300
    wait_for_log(client, job, "step 20/", deadline)
    assert sched.placement("follows").market == "spot"
    spot_before = {n["NodeID"] for n in ray.nodes() if n["Labels"].get(L.NODE_TYPE) == "cpu_spot"}
    victim = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(L.NODE_TYPE) == "cpu_spot")
    assert local_cluster.kill_node(victim)
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline + 300, client.get_job_logs(job)[-3000:]
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    events = [json.loads(line) for line in logs.splitlines() if line.startswith('{"event"')]
    retries = [e for e in events if e["event"] == "retry"]
    assert len(retries) == 1, events  # one restart, not Ray Train's and then the move's
    assert retries[0]["from"] == "cpu_spot" and retries[0]["to"] == "cpu_on_demand", retries
    assert not [e for e in events if e["event"] == "moved"], events
    # Where the run's workers were: spot before the loss, on-demand after, none on a spot node launched since.
    # Such a node may come up: Ray reschedules the lost node's placement-group bundle (spot) at its death,
    # before Ray Train removes the group, and the autoscaler can act on that; it then idles out.
    node_type = {n["NodeID"]: n["Labels"].get(L.NODE_TYPE) for n in ray.nodes()}  # dead nodes too
    job_id = client.get_job_info(job).job_id
    workers = [a.node_id for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], limit=10_000)
               if a.job_id == job_id]
    assert {node_type[n] for n in workers} == {"cpu_spot", "cpu_on_demand"}, workers
    on_spot = {n for n in workers if node_type[n] == "cpu_spot"}
    assert on_spot <= spot_before, ("a worker ran on a spot node launched after the loss", on_spot - spot_before)
    sched.finish("hold")
