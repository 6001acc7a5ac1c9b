"""Placement requests per second through the scheduler actor, and their latency.

    python benchmarks/scheduler_actor.py [--requests 300]

Side by side in one run: the same place/finish sequence through the named
actor (a Ray round trip, policy, SQLite commit with fsync) and called
in-process on SchedulerState (policy + SQLite, no Ray), so the ratio is Ray's
share of the cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import ray

from elasticml.cluster.config import load_cluster_spec
from elasticml.errors import PlacementRefused
from elasticml.repo import CLUSTER_CONFIGS
from elasticml.scheduler.state import SchedulerState
from elasticml.scheduler.client import SchedulerClient
from elasticml.scheduler.spec import WorkloadSpec


def workload(i: int) -> WorkloadSpec:
    kinds = ["training", "batch", "serving", "sweep"]
    prios = ["critical", "high", "normal", "low", "preemptible"]
    return WorkloadSpec(name=f"w{i}", tenant=f"t{i % 3}", kind=kinds[i % 4], priority=prios[i % 5],  # type: ignore[arg-type]
                        min_workers=1, max_workers=1 + i % 2, checkpoint_interval_hours=0.5 if i % 2 else None)


def place(fn):  # type: ignore[no-untyped-def]
    """A refusal or a queue is an answer too: the benchmark times the round trip, not the verdict."""
    def call(spec: WorkloadSpec) -> None:
        try:
            fn(spec)
        except PlacementRefused:
            pass
    return call


def drive(submit, finish, n: int) -> list[float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        submit(workload(i))
        lat.append(time.perf_counter() - t)
        if i >= 3:
            finish(f"w{i - 3}")  # keep a few running so the policy has work to do
    return lat


def summary(name: str, lat: list[float]) -> dict[str, float]:
    q = statistics.quantiles(lat, n=100)
    row = {"req_per_s": len(lat) / sum(lat), "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}
    print(f"{name:<22} {row['req_per_s']:>8.0f} req/s   p50 {row['p50_ms']:6.2f} ms   p99 {row['p99_ms']:6.2f} ms")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args(argv)
    config = load_cluster_spec(CLUSTER_CONFIGS / "local.yaml")
    tmp = tempfile.mkdtemp()
    ray.init(num_cpus=1, logging_level="ERROR", log_to_driver=False)
    client = SchedulerClient.start(config, ledger_path=os.path.join(tmp, "actor.sqlite"))
    drive(place(client.place), client.finish, 20)  # warm-up
    actor = summary("through the actor", drive(place(client.place), client.finish, args.requests))
    state = SchedulerState(config, os.path.join(tmp, "direct.sqlite"))
    drive(place(state.place), state.finish, 20)
    direct = summary("in-process (no Ray)", drive(place(state.place), state.finish, args.requests))
    print(f"actor / in-process p50 latency: {actor['p50_ms'] / direct['p50_ms']:.2f}x")
    client.kill(no_restart=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
