"""A real spot market replayed on the local cluster: the controller steers a real job through it.

The provider refuses spot launches in outages and reclaims spot nodes after a notice; the
market's driver gives the scheduler the notices; the job is paced so that trace hours of
work take seconds. Live and simulated runs of the same policy on the same trace must agree.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def write_trace(path: Path, data: list[int], gap: int = 600) -> Path:
    path.write_text(json.dumps({"metadata": {"gap_seconds": gap}, "data": data}))
    return path


@pytest.mark.slow  # a long replay (benchmarks/spot_replay.py is its full form)
def test_replay_meets_the_deadline_and_matches_the_simulator(tmp_path, corpus):
    from elasticml.scheduler.replay import parse, run

    # Spot for half an hour, an outage of an hour and a half, then spot again (10-minute ticks).
    trace = write_trace(tmp_path / "t.json", [0] * 3 + [1] * 9 + [0] * 30)
    result = run(parse(["--trace", str(trace), "--job-hours", "1", "--deadline-hours", "2.2", "--restart-hours", "0.1",
                        "--price-ratio", "3", "--seconds-per-hour", "20", "--step-seconds", "0.25",
                        "--name", "spot-replay", "--data", str(corpus)]))
    live, sim = result["live"], result["simulated"]
    assert result["finished_by_deadline"] and sim["finished_by_deadline"], result
    assert abs(result["cost_ratio"] - 1) <= 0.15, result
    # It ran on spot before the outage, and the outage cost it a restart, live as simulated.
    assert live["spot_hours"] > 0.2 and live["restarts"] >= 1 and sim["restarts"] >= 1, result
    assert result["steps_lost"] == 0, result


def test_a_pool_the_autoscaler_cannot_fill_is_treated_as_unavailable(tmp_path):
    """No notice comes (the market gives none): spot launches just fail, and the scheduler sees it."""
    import ray

    from elasticml import labels as L
    from elasticml.cluster import LocalCluster, load_cluster_spec
    from elasticml.cluster.spot_market import MarketSettings
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

    cluster = LocalCluster("unfillable")
    trace = write_trace(tmp_path / "down.json", [1] * 200)  # spot never available
    cluster.up(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"),
               market=MarketSettings(trace=str(trace), notices=False))
    try:
        cluster.require_info().connect()
        sched = SchedulerClient.connect()
        sched.place(WorkloadSpec(name="hold", tenant="ops", priority="critical", min_workers=2, max_workers=2))
        placed = sched.place(WorkloadSpec(name="batch", tenant="r", kind="batch", priority="low",
                                          checkpoint_interval_hours=0.2))
        assert placed.market == "spot"  # nothing has said spot is short yet

        @ray.remote(num_cpus=1)
        def where() -> str:
            return ray.get_runtime_context().get_node_labels()[L.NODE_TYPE]

        waiting = where.options(label_selector={L.NODE_TYPE: "cpu_spot"}).remote()  # makes the autoscaler try
        deadline = time.monotonic() + 120
        while sched.placement("batch").market == "spot":
            assert time.monotonic() < deadline, sched.explain("_events")
            time.sleep(1)
        moved = sched.placement("batch")
        assert moved.market == "on-demand" and "could not be launched" in moved.reason
        assert next(p for p in sched.status()["pools"] if p["node_type"] == "cpu_spot")["unfillable"]
        assert ray.get(where.options(**moved.ray_options).remote(), timeout=180) == "cpu_on_demand"
        ray.cancel(waiting, force=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.down()
