"""A training job that follows the cluster's scheduler: asks it where to run, runs there, and when it
moves the job (spot lost or back, a deadline policy's choice, cheaper capacity) checkpoints at the next
report point, ends the run and resumes from that checkpoint on the new pool.

The driver side of jobs/train.py --tenant (elasticml.train.job runs it) and of `eml.fit(cfg, tenant=...)`;
admission (residency, credentials, preflight, place, wait, finish) is `elasticml.scheduler.admission`'s,
the placement, the moves and their reasons are the scheduler's: this module only follows them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from elasticml.dataconf import check_number, check_text
from elasticml.scheduler.policies import DEFAULT_POLICY
from elasticml.scheduler.spec import MAX_HOURS, WorkloadSpec
from elasticml.train.config import TrainConfig

if TYPE_CHECKING:
    from ray.train import Result, UserCallback

    from elasticml.scheduler.admission import Admission
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import Placement


@dataclass(kw_only=True, frozen=True)
class Scheduling:
    """How a training run asks the scheduler for its placement (jobs/train.py's flags of the same names)."""

    tenant: str | None = None
    """Whose workload it is; None: not placed by the scheduler (the run goes where its config says)."""
    priority: str = "normal"
    expected_hours: float = 1.0
    """How long the run should take (its cost estimate, and its storage credentials' lifetime)."""
    deadline_hours: float | None = None
    restart_hours: float | None = None
    """What a move costs, in hours; None: min(0.1, expected_hours / 4)."""
    max_wait_s: float = 3600.0
    """Give up when not placed for this long (all waits counted, after moves too)."""
    spot_policy: str = DEFAULT_POLICY
    settle_s: float | None = None
    """After a failed run, how long to wait for the scheduler to move it before restarting where it was;
    None: Ray's time to declare a node dead plus two controller ticks."""

    def __post_init__(self) -> None:
        if self.tenant is not None:
            check_text(self.tenant, field="tenant", max_len=200)
        check_number(self.max_wait_s, field="max_wait_s", lo=0, hi=MAX_HOURS * 3600)
        if self.restart_hours is not None:
            check_number(self.restart_hours, field="restart_hours", lo=0, hi=MAX_HOURS)
        if self.settle_s is not None:
            check_number(self.settle_s, field="settle_s", lo=0, hi=3600)


def settle_seconds(scheduling: Scheduling) -> float:
    """`settle_s` as given, else how long a lost node takes to reach the scheduler: the GCS knows it once
    its health checks have failed (period x threshold), the scheduler at its next tick after that."""
    if scheduling.settle_s is not None:
        return scheduling.settle_s
    import ray

    from elasticml.scheduler.settings import ControllerConfig

    ray_detects_s = ray._config.health_check_period_ms() * ray._config.health_check_failure_threshold() / 1000
    return ray_detects_s + 2 * ControllerConfig.from_env().tick_seconds


def scheduled_spec(cfg: TrainConfig, scheduling: Scheduling) -> WorkloadSpec:
    if scheduling.tenant is None:
        raise ValueError("a scheduled run needs a tenant")
    hours = scheduling.expected_hours
    return WorkloadSpec(
        name=cfg.run_name, tenant=scheduling.tenant, kind="training", priority=scheduling.priority,  # type: ignore[arg-type]  # a str here; WorkloadSpec checks it against its Literal
        cpus_per_worker=cfg.cpus_per_worker, gpus_per_worker=1.0 if cfg.use_gpu else 0.0,
        min_workers=cfg.min_workers or cfg.num_workers, max_workers=cfg.num_workers, expected_hours=hours,
        deadline_hours=scheduling.deadline_hours,
        checkpoint_interval_hours=hours * cfg.checkpoint_every / cfg.steps if cfg.checkpoint_every else hours / 10,
        restart_overhead_hours=scheduling.restart_hours if scheduling.restart_hours is not None else min(0.1, hours / 4),
        spot_policy=scheduling.spot_policy,
    )


class Follower:
    """Watches this job's placement from the driver; raises the stop flag when the scheduler moves it."""

    def __init__(self, sched: SchedulerClient, name: str, epoch: int, flag: Any, period_s: float = 1.0) -> None:
        import threading

        self.sched, self.name, self.epoch, self.flag, self.period_s = sched, name, epoch, flag, period_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="follow-placement")

    def __enter__(self) -> Follower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import ray

        while not self._done.wait(self.period_s):
            try:
                now = self.sched.placement(self.name)
            except Exception as exc:  # the scheduler restarting: keep training, ask again
                print(json.dumps({"event": "scheduler_unreachable", "error": str(exc)[:200]}), flush=True)
                continue
            if now is not None and now.epoch != self.epoch:
                ray.get(self.flag.request.remote(f"{now.state}: {now.reason}"))
                return


def progress_callback(sched: SchedulerClient, name: str, steps: int) -> UserCallback:
    """A Ray Train callback (on the run's controller) that tells the scheduler the share of steps done,
    as the job's own principal (`sched` is its SchedulerClient, which travels with the callback)."""
    from ray.train import UserCallback

    class Progress(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            step = metrics[0].get("step") if metrics else None
            if step is not None:
                sched.report_progress_async(name, min(1.0, step / steps))

    return Progress()


def started_hook(sched: SchedulerClient, name: str, epoch: int) -> Callable[[], float]:
    """Called by rank 0 once a run is up: tells the scheduler, and returns how long to wait before training."""

    def started() -> float:
        return float(sched.run_started(name, epoch))

    return started


def run_scheduled(cfg: TrainConfig, scheduling: Scheduling, *,
                  callbacks: list[Any] | None = None) -> tuple[Result, TrainConfig]:
    """Train where the scheduler says, and follow it: a move checkpoints, stops and resumes on the new
    placement. (Ray Train's Result, the config of the last run); `callbacks` go to every run."""
    import ray

    from elasticml.scheduler.admission import admitted
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.train.preflight import preflight
    from elasticml.train.trainer import stop_flag

    spec = scheduled_spec(cfg, scheduling)
    settle_s = settle_seconds(scheduling)
    if not ray.is_initialized():
        ray.init(logging_level=logging.ERROR)
    with admitted(spec, sched=SchedulerClient.connect(), uris=[str(cfg.data), str(cfg.storage_path)],
                  attach=ray.get_runtime_context().get_job_id(), max_wait_s=scheduling.max_wait_s,
                  preflight=lambda: preflight(cfg)) as admission:
        flag = stop_flag()
        try:
            return _follow(cfg, admission, flag, settle_s=settle_s, max_wait_s=scheduling.max_wait_s,
                           callbacks=callbacks or [])
        finally:
            ray.kill(flag)


def _follow(cfg: TrainConfig, admission: Admission[None], flag: object, *, settle_s: float, max_wait_s: float,
            callbacks: list[Any]) -> tuple[Result, TrainConfig]:
    """Run on the admitted placement, and again on each one the scheduler moves the job to."""
    import dataclasses

    import ray
    from ray.train import TrainingFailedError

    from elasticml.errors import SchedulerError
    from elasticml.train.trainer import run_trainer

    # Admitted through SchedulerClient.connect(): the protocol admission takes names only its own calls.
    sched = cast("SchedulerClient", admission.sched)
    placement, waited_s = admission.placement, admission.waited_s
    failures = 0
    while True:
        print(json.dumps({"event": "placement", **placement.to_dict()}), flush=True)
        placement, waited_s = sched.wait_placed(cfg.run_name, placement, max_wait_s=max_wait_s, waited_s=waited_s)
        workers = min(placement.workers, cfg.global_batch)
        run_cfg = dataclasses.replace(cfg, node_type=",".join(placement.node_types), num_workers=workers,
                                      min_workers=min(cfg.min_workers, workers) if cfg.min_workers else None)
        ray.get(flag.clear.remote())  # type: ignore[attr-defined]  # an actor handle: ray.remote gives the class methods .remote
        try:
            with Follower(sched, cfg.run_name, placement.epoch, flag):
                # Ray Train does not retry on its own here: its retry would start on the placement the
                # run had, though the scheduler may have moved it (a lost spot node is an interruption
                # of its pool). This loop restarts the run where the scheduler says.
                result = run_trainer(run_cfg, stop=flag, retries=False,
                                     callbacks=[progress_callback(sched, cfg.run_name, cfg.steps), *callbacks],
                                     started=started_hook(sched, cfg.run_name, placement.epoch))
        except TrainingFailedError as exc:
            failed_on = placement
            placement = await_move(sched, cfg.run_name, failed_on.epoch, settle_s)
            # A run the scheduler moved away (its node lost, its pool interrupted) did not fail on its
            # own: only failures where it stays count against max_failures.
            failures += placement.epoch == failed_on.epoch
            if failures > cfg.max_failures:
                raise
            print(json.dumps({"event": "retry", "failure": failures, "of": cfg.max_failures,
                              "error": str(exc).splitlines()[0][:300], "from": failed_on.node_type,
                              "to": placement.node_type, "state": placement.state, "reason": placement.reason}),
                  flush=True)
            continue
        step = (result.metrics or {}).get("step", 0)
        if result.error is not None or step >= cfg.steps:
            return result, run_cfg
        found = sched.placement(cfg.run_name)
        if found is None:
            raise SchedulerError(f"the scheduler forgot {cfg.run_name}")
        placement = found
        saved = _checkpoint_step(result)
        print(json.dumps({"event": "moved", "at_step": step, "checkpoint_step": saved, "to": placement.node_type,
                          "state": placement.state, "reason": placement.reason}), flush=True)


def await_move(sched: SchedulerClient, name: str, epoch: int, settle_s: float) -> Placement:
    """After a failed run: the placement once the scheduler has moved it (its epoch grew), or the same
    one after `settle_s` (the failure was not one the scheduler acts on, such as a crashed worker).
    The scheduler learns of a lost node at its next tick, so a retry that did not wait for it would
    start where the lost node was."""
    import time

    from elasticml.errors import SchedulerError

    deadline = time.monotonic() + settle_s
    while True:
        placement = sched.placement(name)
        if placement is None:
            raise SchedulerError(f"the scheduler forgot {name}")
        if placement.epoch != epoch or time.monotonic() >= deadline:
            return placement
        time.sleep(0.5)


def _checkpoint_step(result: Result) -> int | None:
    """The step of the run's last checkpoint: where the next run resumes."""
    from elasticml.train.checkpoint import read_meta

    ckpt = getattr(result, "checkpoint", None)
    if ckpt is None:
        return None
    with ckpt.as_directory() as folder:
        return int(read_meta(folder)["step"])
