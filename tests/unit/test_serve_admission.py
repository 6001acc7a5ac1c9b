"""A tenant's Serve app goes through admission: residency, credentials, the checkpoint resolved, placed
at once or refused (and finished), recorded; with a recording scheduler, no Ray."""

from __future__ import annotations

import pytest
from elasticml.errors import SchedulerError
from elasticml.scheduler.capacity import Allocation
from elasticml.scheduler.spec import Placement

from tests.unit.scheduler.test_admission import RecordingScheduler
from tests.unit.test_checkpoint import save


class AuditingScheduler(RecordingScheduler):
    def record_event(self, action: str, target: str, why: str) -> None:
        self.calls.append(("record_event", (action, target)))


def args(folder) -> dict:
    return {"checkpoint": f"latest:{folder}", "tenant": "shop", "name": "endpoint", "priority": "high"}


def test_a_tenants_app_not_placed_at_once_is_refused_and_finished(tmp_path):
    from elasticml.serve.completion import build_deployment

    save(tmp_path / "runs" / "checkpoint_1", 1)
    sched = AuditingScheduler(place_answer=Placement(workload="shop/endpoint", state="queued", reason="no room"))
    with pytest.raises(SchedulerError, match=r"has not placed endpoint yet \(queued\): no room"):
        build_deployment(args(tmp_path / "runs"), sched=sched)  # type: ignore[arg-type]
    assert sched.names() == ["check_residency", "tenant_storage", "place", "finish"]
    assert sched.calls[0] == ("check_residency", ("shop", [str(tmp_path / "runs")]))
    assert sched.calls[1][1][2] == 12.0  # a Serve app's credentials: IAM's longest session
    assert sched.calls[2] == ("place", ("endpoint", "serve:endpoint"))


def test_a_tenants_app_placed_is_recorded_and_not_finished(tmp_path):
    from elasticml.serve.completion import build_deployment

    save(tmp_path / "runs" / "checkpoint_1", 1)
    alloc = Allocation(workload="shop/endpoint", tenant="shop", priority="high", node_type="cpu_reserved",
                       market="reserved", workers=1, cpus=1.0, nodes=1, hourly_cost=0.1, started_at=0.0)
    sched = AuditingScheduler(place_answer=Placement(workload="shop/endpoint", state="placed", reason="reserved",
                                                     allocations=(alloc,)))
    app = build_deployment(args(tmp_path / "runs"), sched=sched, attach="serve:shop.endpoint")  # type: ignore[arg-type]
    assert app is not None
    assert sched.names() == ["check_residency", "tenant_storage", "place", "record_event"]
    assert sched.calls[2] == ("place", ("endpoint", "serve:shop.endpoint"))


def test_a_failed_build_after_placing_finishes_the_app(tmp_path):
    from elasticml.serve.completion import build_deployment

    save(tmp_path / "runs" / "checkpoint_1", 1)

    class Refusing(AuditingScheduler):
        def record_event(self, action: str, target: str, why: str) -> None:
            raise SchedulerError("the trail is not writable")

    sched = Refusing()
    with pytest.raises(SchedulerError, match="trail"):
        build_deployment(args(tmp_path / "runs"), sched=sched)  # type: ignore[arg-type]
    assert sched.names()[-1] == "finish"
