"""A workload's way in: the one sequence every job and app the scheduler places goes through.

    residency  -> the tenant's storage credentials -> preflight -> place -> wait until placed
    (the caller runs, following moves)                          -> finish on the way out

Used by training jobs (`train/follow.py`: jobs/train.py, jobs/distill.py and `eml.fit` with a
tenant), sweeps (jobs/tune.py) and Serve apps (`serve/completion.py`). The placement, its moves and
their reasons are the scheduler's; this module owns only the order of the calls and one promise:
once `place` has answered, `finish` is called if admission fails after it (preflight is before it,
so a bad path never takes capacity), and, for `admitted`, when the block ends. When `place` itself
refuses (PlacementRefused) the scheduler kept nothing, so there is nothing to finish.

Glossary: *attach*, the Ray job id (or `serve:APP`) whose workers the ledger charges; *preflight*,
the caller's own check of what it will read and write (with the tenant's credentials installed),
whose result comes back as `Admission.checked`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from elasticml.errors import SchedulerError
from elasticml.scheduler.spec import Placement, WorkloadSpec
from elasticml.scheduler.tenant_storage import MAX_SESSION_HOURS

if TYPE_CHECKING:
    from elasticml.storage import S3Credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_CREDENTIAL_HOURS = 1.0
"""The shortest credentials a workload gets: a short job is not cut off by a slow start."""


class Scheduler(Protocol):
    """The scheduler calls admission makes (SchedulerClient has them; tests pass a recording fake)."""

    def check_residency(self, tenant: str, uris: list[str]) -> None: ...

    def tenant_storage(self, tenant: str, uris: list[str], hours: float) -> list[S3Credentials]: ...

    def place(self, spec: WorkloadSpec, *, attach: str | None = None) -> Placement: ...

    def wait_placed(self, name: str, placement: Placement, *, max_wait_s: float,
                    waited_s: float = 0.0) -> tuple[Placement, float]: ...

    def finish(self, name: str) -> None: ...


@dataclass(kw_only=True, frozen=True)
class Admission(Generic[T]):
    """A workload the scheduler has placed, and what admitting it gave the caller."""

    sched: Scheduler
    spec: WorkloadSpec
    placement: Placement
    """Placed (state `placed`): where to run now."""
    credentials: list[S3Credentials]
    """The tenant's storage credentials, installed in this process; hand them to its workers."""
    checked: T
    """What the preflight returned (None without one): e.g. the resolved checkpoint."""
    waited_s: float
    """Seconds waited for the placement, to count against the same max_wait_s after a move."""


def credential_hours(expected_hours: float, max_wait_s: float = 0.0) -> float:
    """How long a workload's storage credentials last: the wait it may spend queued, plus twice its
    expected run time, between MIN_CREDENTIAL_HOURS and IAM's longest session (MAX_SESSION_HOURS).

    Why: they are vended once, before the wait, and cannot be revoked before they expire, so they must
    outlast a run that keeps roughly to its estimate (moves, restarts and queueing stretch it: hence
    twice) and no more, so that a leaked one dies soon. A Serve app (24 h expected) gets the longest:
    a replica that starts after they expire needs a redeploy; a longer training run's checkpoint writes
    fail past them (resubmit it: it resumes)."""
    return min(MAX_SESSION_HOURS, max(MIN_CREDENTIAL_HOURS, max_wait_s / 3600 + 2 * expected_hours))


def storage_for(sched: Scheduler, tenant: str, uris: list[str], *, hours: float) -> list[S3Credentials]:
    """Residency first (nothing is read from or written to a bucket outside the tenant's regions), then
    the credentials that reach the tenant's prefixes where the cluster confines tenants to them
    (installed in this process, and returned for the workers). `latest:RUN_DIR` counts as RUN_DIR."""
    where = [str(u).removeprefix("latest:") for u in uris]
    sched.check_residency(tenant, where)
    return sched.tenant_storage(tenant, where, hours=hours)


def admit(spec: WorkloadSpec, *, sched: Scheduler, uris: list[str], attach: str | None,
          max_wait_s: float | None, preflight: Callable[[], T] | None = None) -> Admission[T]:
    """Admit `spec`: residency and credentials for `uris` (data, storage, checkpoints), `preflight`,
    place (attached to `attach`), then wait up to `max_wait_s` seconds for it to be placed, or with
    `max_wait_s=None` require it placed at once (a Serve build does not wait: SchedulerError).

    Raises what the step that failed raised; a failure after `place` answered finishes the workload
    first, so a job that never runs holds no capacity."""
    credentials = storage_for(sched, spec.tenant, uris, hours=credential_hours(spec.expected_hours, max_wait_s or 0.0))
    checked: Any = preflight() if preflight is not None else None  # a bad path fails before it takes capacity
    placement = sched.place(spec, attach=attach)
    try:
        waited_s = 0.0
        if max_wait_s is None:
            if not placement.placed:
                raise SchedulerError(f"the scheduler has not placed {spec.name} yet ({placement.state}): "
                                     f"{placement.reason}")
        elif not placement.placed:
            log.info("%s is %s (%s); waiting up to %.0fs to be placed", spec.name, placement.state,
                     placement.reason, max_wait_s)
            placement, waited_s = sched.wait_placed(spec.name, placement, max_wait_s=max_wait_s)
    except BaseException:
        sched.finish(spec.name)
        raise
    return Admission(sched=sched, spec=spec, placement=placement, credentials=credentials, checked=checked,
                     waited_s=waited_s)


@contextmanager
def admitted(spec: WorkloadSpec, *, sched: Scheduler, uris: list[str], attach: str | None,
             max_wait_s: float | None, preflight: Callable[[], T] | None = None,
             finish: Literal["on_exit", "on_error"] = "on_exit") -> Iterator[Admission[T]]:
    """`admit`, then the block, then `finish`: `on_exit` (a job: it is done when the block ends, however
    it ends) or `on_error` (a Serve app, which outlives its build: finished only if the build fails)."""
    if finish not in ("on_exit", "on_error"):
        raise ValueError(f"finish must be on_exit or on_error, got {finish!r}")
    admission = admit(spec, sched=sched, uris=uris, attach=attach, max_wait_s=max_wait_s, preflight=preflight)
    try:
        yield admission
    except BaseException:
        sched.finish(spec.name)
        raise
    if finish == "on_exit":
        sched.finish(spec.name)
