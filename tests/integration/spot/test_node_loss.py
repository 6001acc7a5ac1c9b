"""A spot node that vanishes without notice: the scheduler's node watch re-places its work."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]


def test_a_lost_spot_node_makes_the_scheduler_replace_its_work(local_cluster):
    """No notice at all: the spot node just dies. The actor's node watch notices and re-places."""
    import ray

    from elasticml import labels as L
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

    local_cluster.require_info().connect()
    sched = SchedulerClient.connect()
    sched.place(WorkloadSpec(name="prod", tenant="p", priority="critical", min_workers=2, max_workers=2))
    placed = sched.place(WorkloadSpec(name="sweep", tenant="r", kind="sweep", priority="low",
                                      checkpoint_interval_hours=0.2))
    assert placed.market == "spot"

    @ray.remote(num_cpus=1)
    class Holder:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    holder = Holder.options(**placed.ray_options).remote()
    node_id = ray.get(holder.node.remote(), timeout=180)
    labels = next(n["Labels"] for n in ray.nodes() if n["NodeID"] == node_id)
    assert labels[L.NODE_TYPE] == "cpu_spot"
    # Take the node away, as a reclaimed instance would vanish: its raylet and everything under it.
    assert local_cluster.kill_node(node_id)
    deadline = time.monotonic() + 120
    while True:
        moves = [d for d in sched.explain("sweep") if d["action"] == "move"]
        if moves:
            break
        assert time.monotonic() < deadline, sched.explain("sweep")
        time.sleep(2)
    assert "was lost (unexpected termination)" in moves[-1]["reason"]
    assert moves[-1]["allocations"][0]["market"] == "on-demand"
    assert sched.placement("sweep").node_type == "cpu_on_demand"
    sched.finish("prod")
    sched.finish("sweep")


def test_watcher_process_turns_an_imds_notice_into_a_replacement(local_cluster, fake_imds):
    """The real watcher, as spot nodes run it, against an IMDSv2 server on loopback."""
    import os
    import subprocess
    import sys

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

    server, state = fake_imds
    info = local_cluster.require_info()
    info.connect()
    sched = SchedulerClient.connect()
    sched.clear_interruption("cpu_spot")
    # Reserved capacity is taken, so the cheapest place for the batch job is spot.
    sched.place(WorkloadSpec(name="prod-2", tenant="p", priority="critical", min_workers=2, max_workers=2))
    placed = sched.place(WorkloadSpec(name="batch-2", tenant="r", kind="batch", priority="low",
                                      checkpoint_interval_hours=0.2))
    assert placed.market == "spot"
    state["docs"]["/latest/meta-data/spot/instance-action"] = {"action": "terminate", "time": "2026-11-24T12:02:00Z"}
    env = {**os.environ, **info.client_env(), "RAY_ADDRESS": info.gcs_address, "RAY_NODE_TYPE_NAME": "cpu_spot",
           "ELASTICML_IMDS_URL": f"http://127.0.0.1:{server.server_port}", "ELASTICML_WATCH_INTERVAL_S": "0.5",
           "ELASTICML_CLUSTER_NAME": local_cluster.name}
    proc = subprocess.Popen([sys.executable, "-m", "elasticml.provision.watcher"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while not [d for d in sched.explain("batch-2") if d["action"] == "move"]:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, sched.explain("batch-2")
            time.sleep(1)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "interruption notice for cpu_spot (terminate" in out
    assert sched.placement("batch-2").market == "on-demand"
    assert next(p for p in sched.status()["pools"] if p["node_type"] == "cpu_spot")["interrupted"]
    sched.finish("prod-2")
    sched.finish("batch-2")
