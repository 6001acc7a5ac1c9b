"""The scheduler actor on a real multi-node labelled cluster: placements become Ray's own options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elasticml import labels as L
from elasticml.errors import ConfigError

pytestmark = pytest.mark.integration
ELASTICML = str(Path(sys.executable).with_name("elasticml"))


@pytest.fixture(scope="module")
def sched(local_cluster):
    import ray

    from elasticml.scheduler.client import SchedulerClient

    local_cluster.require_info().connect()
    client = SchedulerClient.connect(cluster_name=local_cluster.name)
    yield client
    client.kill(no_restart=True)


def run_where(decision: dict) -> dict[str, str]:
    """Run a 1-CPU task with the decision's Ray options; the labels of the node it ran on."""
    import ray

    @ray.remote(num_cpus=1)
    def where() -> dict[str, str]:
        return dict(ray.get_runtime_context().get_node_labels())

    return ray.get(where.options(**decision["ray_options"]).remote(), timeout=180)


def last(decisions: list[dict], workload: str) -> dict:
    return [d for d in decisions if d["workload"] == workload][-1]


def test_critical_on_reserved_low_on_spot_and_preemption(sched):
    low = sched.submit({"name": "nightly", "tenant": "research", "priority": "low", "kind": "training",
                        "checkpoint_interval_hours": 0.5, "min_workers": 1, "max_workers": 2})
    assert last(low, "nightly")["allocations"][0]["market"] == "reserved"  # reserved was free: already paid for

    crit = sched.submit({"name": "fraud-model", "tenant": "payments", "priority": "critical", "max_workers": 2})
    assert [(d["workload"], d["action"]) for d in crit] == [("fraud-model", "place"), ("nightly", "preempt"), ("nightly", "place")]
    placed = crit[0]
    assert placed["allocations"][0]["market"] == "reserved"
    assert run_where(placed)[L.NODE_TYPE] == "cpu_reserved"

    moved = last(crit, "nightly")
    assert moved["allocations"][0]["market"] == "spot"
    labels = run_where(moved)
    assert labels[L.NODE_TYPE] == "cpu_spot" and labels[L.MARKET_TYPE] == "spot"
    assert "critical > low" in sched.explain("nightly")[-2]["reason"]


def test_spot_interruption_replaces_the_work_off_spot(sched):
    import ray

    spot_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n.get("Labels", {}).get(L.NODE_TYPE) == "cpu_spot"}
    out = sched.interrupt("cpu_spot")
    moved = last(out["decisions"], "nightly")
    # Ray was told too: the spot nodes are draining as preempted (what Ray Train's get_preemption_info sees).
    assert set(out["drained_nodes"]) == spot_nodes
    assert moved["action"] == "move" and "checkpoint now" in moved["reason"]
    assert moved["allocations"][0]["market"] == "on-demand"
    assert run_where(moved)[L.NODE_TYPE] == "cpu_on_demand"
    assert next(p for p in sched.status()["pools"] if p["node_type"] == "cpu_spot")["interrupted"]
    sched.clear_interruption("cpu_spot")


def test_residency_budget_and_bad_specs(sched):
    eu = sched.submit({"name": "gdpr-job", "tenant": "eu-team", "regions": ["eu-west-1"]})
    assert eu[-1]["action"] == "refuse" and "residency" in eu[-1]["reason"]
    sched.set_tenant("broke", budget=0.0)
    poor = sched.submit({"name": "too-pricey", "tenant": "broke", "expected_hours": 5})
    assert poor[-1]["action"] == "refuse" and "over budget" in poor[-1]["reason"]
    with pytest.raises(ConfigError, match="priority"):
        sched.submit({"name": "x", "tenant": "t", "priority": "yesterday"})


def test_actor_killed_and_restarted_loses_nothing(sched):
    import time

    import ray

    before_status, before_report = sched.status(), sched.cost_report()
    sched.kill(no_restart=False)  # Ray restarts it (max_restarts=-1); state comes back from the ledger
    deadline = time.monotonic() + 60
    while True:
        try:
            after_status = sched.status()
            break
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert after_status == before_status
    after_report = sched.cost_report()
    assert after_report["intervals"] == before_report["intervals"] > 0
    assert after_report["total"]["cost"] >= before_report["total"]["cost"]


def test_cli_status_explain_and_cost_report(sched, local_cluster):
    env = {**__import__("os").environ}
    name = local_cluster.name
    status = subprocess.run([ELASTICML, "scheduler", "status", "--name", name, "--json"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert status.returncode == 0, status.stderr
    assert "fraud-model" in json.loads(status.stdout)["running"]
    explain = subprocess.run([ELASTICML, "scheduler", "explain", "fraud-model", "--name", name],
                             capture_output=True, text=True, timeout=120, env=env)
    assert "why: reserved" in explain.stdout
    report = subprocess.run([ELASTICML, "cost", "report", "--name", name, "--json"],
                            capture_output=True, text=True, timeout=120, env=env)
    data = json.loads(report.stdout)
    assert {r["key"] for r in data["tenant"]} >= {"payments", "research"}
    assert {r["key"] for r in data["market"]} >= {"reserved", "spot", "on-demand"}
    assert data["total"]["on_demand_cost"] >= data["total"]["cost"] > 0


def test_cli_refuses_a_malformed_spec_file_without_touching_the_cluster(tmp_path, local_cluster):
    bad = tmp_path / "w.yaml"
    bad.write_text("name: x\ntenant: t\nmin_workers: 0\n")
    proc = subprocess.run([ELASTICML, "scheduler", "submit", str(bad), "--name", local_cluster.name],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("elasticml: error: ") and "min_workers" in proc.stderr
