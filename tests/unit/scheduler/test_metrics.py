"""The scheduler's gauges the alerts read (observe/alerts.py): how long the queue's oldest workload has
waited, and each tenant's budget beside its cost. Ray's metric objects are swapped for recorders on
the instance: Ray is not started."""

from __future__ import annotations

import math
from pathlib import Path

from elasticml.cluster.config import load_cluster_spec
from elasticml.scheduler.metrics import SchedulerMetrics
from elasticml.scheduler.spec import TenantPolicy, WorkloadSpec

from tests.support.scheduler import Sched

CONFIG = load_cluster_spec(Path(__file__).resolve().parents[3] / "cluster_configs" / "local.yaml")


class Recorder:
    def __init__(self) -> None:
        self.values: dict[tuple, float] = {}

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.values[tuple(sorted((tags or {}).items()))] = value

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = tuple(sorted((tags or {}).items()))
        self.values[key] = self.values.get(key, 0.0) + value


def recorded() -> SchedulerMetrics:
    m = SchedulerMetrics()
    for name, value in list(vars(m).items()):
        if hasattr(value, "set") or hasattr(value, "inc"):
            setattr(m, name, Recorder())
    return m


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_the_oldest_queued_wait_counts_from_when_the_workload_was_first_seen_queued(tmp_path):
    clock = Clock()
    s = Sched(CONFIG, str(tmp_path / "l.sqlite"), clock=clock)
    m = recorded()
    m.update(s.scheduler)
    assert m.oldest_queued.values[()] == 0.0  # nothing queued
    s.place(WorkloadSpec(name="a", tenant="t", priority="critical", max_workers=2))
    s.place(WorkloadSpec(name="b", tenant="t", max_workers=2))
    s.place(WorkloadSpec(name="c", tenant="t", max_workers=1))
    s.interrupt("cpu_spot")
    assert s.queue, "the local cluster's pools are full: something waits"
    m.update(s.scheduler)
    clock.t += 600
    m.update(s.scheduler)
    assert m.oldest_queued.values[()] == 600.0
    for name in list(s.queue):
        s.finish(name)
    m.update(s.scheduler)
    assert m.oldest_queued.values[()] == 0.0


def test_a_budget_is_exported_per_tenant_and_turns_nan_when_removed(tmp_path):
    s = Sched(CONFIG, str(tmp_path / "l.sqlite"))
    m = recorded()
    s.set_tenant(TenantPolicy(tenant="acme", budget=100.0))
    s.set_tenant(TenantPolicy(tenant="free"))
    m.update(s.scheduler)
    assert m.budget.values == {(("tenant", "acme"),): 100.0}
    s.set_tenant(TenantPolicy(tenant="acme"))
    m.update(s.scheduler)
    assert math.isnan(m.budget.values[(("tenant", "acme"),)])  # NaN: no rule compares true on it
