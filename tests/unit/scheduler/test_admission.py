"""Admission's sequence (residency, credentials, preflight, place, wait, finish), with a scheduler that
records the calls: which come, in which order, and that a workload placed is always finished."""

from __future__ import annotations

from typing import Any

import pytest
from elasticml.errors import ConfigError, PlacementRefused, SchedulerError
from elasticml.scheduler.admission import (
    MIN_CREDENTIAL_HOURS,
    admit,
    admitted,
    credential_hours,
)
from elasticml.scheduler.spec import Placement, WorkloadSpec
from elasticml.scheduler.tenant_storage import MAX_SESSION_HOURS

SPEC = WorkloadSpec(name="nightly", tenant="research", expected_hours=2.0)
PLACED = Placement(workload="research/nightly", state="placed", reason="reserved is free")
QUEUED = Placement(workload="research/nightly", state="queued", reason="nothing fits yet")


class RecordingScheduler:
    """The calls admission makes, in order; `place_answer` / `wait_answer` say how each one goes."""

    def __init__(self, *, place_answer: Placement | Exception = PLACED,
                 wait_answer: Placement | BaseException = PLACED, residency: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.place_answer, self.wait_answer, self.residency = place_answer, wait_answer, residency

    def check_residency(self, tenant: str, uris: list[str]) -> None:
        self.calls.append(("check_residency", (tenant, list(uris))))
        if self.residency is not None:
            raise self.residency

    def tenant_storage(self, tenant: str, uris: list[str], hours: float) -> list:
        self.calls.append(("tenant_storage", (tenant, list(uris), hours)))
        return ["creds"]

    def place(self, spec: WorkloadSpec, *, attach: str | None = None) -> Placement:
        self.calls.append(("place", (spec.name, attach)))
        if isinstance(self.place_answer, Exception):
            raise self.place_answer
        return self.place_answer

    def wait_placed(self, name: str, placement: Placement, *, max_wait_s: float,
                    waited_s: float = 0.0) -> tuple[Placement, float]:
        self.calls.append(("wait_placed", (name, max_wait_s)))
        if isinstance(self.wait_answer, BaseException):
            raise self.wait_answer
        return self.wait_answer, 7.0

    def finish(self, name: str) -> None:
        self.calls.append(("finish", name))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def preflight_noting(sched: RecordingScheduler, result: Any = "checked", fails: Exception | None = None) -> Any:
    def preflight() -> Any:
        sched.calls.append(("preflight", None))
        if fails is not None:
            raise fails
        return result

    return preflight


def test_the_sequence_and_its_result():
    sched = RecordingScheduler(place_answer=QUEUED)
    admission = admit(SPEC, sched=sched, uris=["s3://b/data", "latest:s3://b/runs/x"], attach="02000000",
                      max_wait_s=60, preflight=preflight_noting(sched, "/ckpt/resolved"))
    assert sched.names() == ["check_residency", "tenant_storage", "preflight", "place", "wait_placed"]
    assert sched.calls[0] == ("check_residency", ("research", ["s3://b/data", "s3://b/runs/x"]))  # latest: stripped
    assert sched.calls[3] == ("place", ("nightly", "02000000"))
    assert sched.calls[4] == ("wait_placed", ("nightly", 60))
    assert admission.placement is PLACED and admission.waited_s == 7.0
    assert admission.credentials == ["creds"] and admission.checked == "/ckpt/resolved"
    assert admission.spec is SPEC and admission.sched is sched


def test_placed_at_once_does_not_wait_and_without_a_preflight_checks_nothing():
    sched = RecordingScheduler()
    admission = admit(SPEC, sched=sched, uris=[], attach=None, max_wait_s=60)
    assert sched.names() == ["check_residency", "tenant_storage", "place"]
    assert admission.checked is None and admission.waited_s == 0.0


def test_the_context_manager_finishes_when_the_job_ends():
    sched = RecordingScheduler()
    with admitted(SPEC, sched=sched, uris=[], attach=None, max_wait_s=60) as admission:
        assert "finish" not in sched.names()
        assert admission.placement.placed
    assert sched.names()[-1] == "finish" and sched.calls[-1] == ("finish", "nightly")
    assert sched.names().count("finish") == 1


@pytest.mark.parametrize("finish", ["on_exit", "on_error"])
def test_the_body_raising_finishes_the_workload_once(finish):
    sched = RecordingScheduler()
    with pytest.raises(RuntimeError, match="the run broke"):
        with admitted(SPEC, sched=sched, uris=[], attach=None, max_wait_s=60, finish=finish):
            raise RuntimeError("the run broke")
    assert sched.names() == ["check_residency", "tenant_storage", "place", "finish"]


def test_an_app_that_outlives_its_build_is_not_finished_when_the_build_succeeds():
    sched = RecordingScheduler()
    with admitted(SPEC, sched=sched, uris=[], attach=None, max_wait_s=None, finish="on_error"):
        pass
    assert "finish" not in sched.names()


def test_waiting_too_long_finishes_the_workload_and_says_why():
    sched = RecordingScheduler(place_answer=QUEUED, wait_answer=SchedulerError("nightly waited 61s to be placed"))
    with pytest.raises(SchedulerError, match="waited 61s"):
        with admitted(SPEC, sched=sched, uris=[], attach=None, max_wait_s=60):
            pytest.fail("the block must not run")
    assert sched.names() == ["check_residency", "tenant_storage", "place", "wait_placed", "finish"]


def test_an_interrupted_wait_finishes_the_workload_too():
    sched = RecordingScheduler(place_answer=QUEUED, wait_answer=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        admit(SPEC, sched=sched, uris=[], attach=None, max_wait_s=60)
    assert sched.names()[-1] == "finish"


def test_a_failing_preflight_takes_no_capacity():
    sched = RecordingScheduler()
    with pytest.raises(ConfigError, match="corpus"):
        with admitted(SPEC, sched=sched, uris=[], attach=None, max_wait_s=60,
                      preflight=preflight_noting(sched, fails=ConfigError("no corpus there", field="data"))):
            pytest.fail("the block must not run")
    assert sched.names() == ["check_residency", "tenant_storage", "preflight"]  # not placed: nothing to finish


def test_residency_refused_stops_before_credentials():
    sched = RecordingScheduler(residency=PlacementRefused("s3://eu/runs", "data residency: ... is in eu-west-1"))
    with pytest.raises(PlacementRefused, match="eu-west-1"):
        admit(SPEC, sched=sched, uris=["s3://eu/runs"], attach=None, max_wait_s=60)
    assert sched.names() == ["check_residency"]


def test_no_finish_when_placing_itself_was_refused():
    sched = RecordingScheduler(place_answer=PlacementRefused("nightly", "over budget"))
    with pytest.raises(PlacementRefused, match="over budget"):
        with admitted(SPEC, sched=sched, uris=[], attach=None, max_wait_s=60):
            pytest.fail("the block must not run")
    assert sched.names() == ["check_residency", "tenant_storage", "place"]


def test_serve_requires_a_placement_at_once_and_finishes_what_it_refuses():
    sched = RecordingScheduler(place_answer=QUEUED)
    with pytest.raises(SchedulerError, match=r"the scheduler has not placed nightly yet \(queued\): nothing fits yet"):
        admit(SPEC, sched=sched, uris=[], attach="serve:nightly", max_wait_s=None)
    assert sched.names() == ["check_residency", "tenant_storage", "place", "finish"]  # never waited


def test_finish_must_be_named():
    with pytest.raises(ValueError, match="on_exit or on_error"):
        with admitted(SPEC, sched=RecordingScheduler(), uris=[], attach=None, max_wait_s=1, finish="never"):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize("expected_hours, max_wait_s, hours", [
    (0.1, 0.0, MIN_CREDENTIAL_HOURS),   # a short job: the floor
    (2.0, 0.0, 4.0),                    # twice the estimate
    (2.0, 3600.0, 5.0),                 # plus the wait it may spend queued
    (24.0, 0.0, MAX_SESSION_HOURS),     # a Serve app: IAM's longest session
    (100.0, 3600.0, MAX_SESSION_HOURS),
])
def test_one_credential_lifetime_rule(expected_hours, max_wait_s, hours):
    assert credential_hours(expected_hours, max_wait_s) == pytest.approx(hours)


def test_the_credentials_asked_for_follow_the_rule():
    sched = RecordingScheduler()
    admit(SPEC, sched=sched, uris=["s3://b/d"], attach=None, max_wait_s=1800)
    assert sched.calls[1] == ("tenant_storage", ("research", ["s3://b/d"], credential_hours(2.0, 1800)))
    sched = RecordingScheduler()
    admit(SPEC, sched=sched, uris=[], attach=None, max_wait_s=None)  # Serve: no wait to cover
    assert sched.calls[1][1][2] == credential_hours(2.0)
