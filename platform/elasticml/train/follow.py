"""A training job that follows the cluster's scheduler: asks it where to run, runs there, and when it
moves the job (spot lost or back, a deadline policy's choice, cheaper capacity) checkpoints at the next
report point, ends the run and resumes from that checkpoint on the new pool.

The driver side of jobs/train.py --tenant (elasticml.train.job runs it); the placement, the moves and
their reasons are the scheduler's, this module only follows them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from elasticml.train.config import TrainConfig

if TYPE_CHECKING:
    from ray.train import Result, UserCallback

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import Placement, WorkloadSpec


def scheduled_spec(cfg: TrainConfig, scheduling: dict[str, Any]) -> WorkloadSpec:
    from elasticml.scheduler.spec import WorkloadSpec

    hours = scheduling["expected_hours"]
    return WorkloadSpec(
        name=cfg.run_name, tenant=scheduling["tenant"], kind="training", priority=scheduling["priority"],
        cpus_per_worker=cfg.cpus_per_worker, gpus_per_worker=1.0 if cfg.use_gpu else 0.0,
        min_workers=cfg.min_workers or cfg.num_workers, max_workers=cfg.num_workers, expected_hours=hours, deadline_hours=scheduling["deadline_hours"],
        checkpoint_interval_hours=hours * cfg.checkpoint_every / cfg.steps if cfg.checkpoint_every else hours / 10,
        restart_overhead_hours=scheduling["restart_hours"] if scheduling["restart_hours"] is not None else min(0.1, hours / 4),
        spot_policy=scheduling["spot_policy"],
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


def run_scheduled(cfg: TrainConfig, scheduling: dict[str, Any]) -> tuple[Result, TrainConfig]:
    """Train where the scheduler says, and follow it: a move checkpoints, stops and resumes on the new placement."""
    import dataclasses

    import ray
    from ray.train import TrainingFailedError

    from elasticml.errors import SchedulerError
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.train.launch import fit, stop_flag

    spec = scheduled_spec(cfg, scheduling)
    if not ray.is_initialized():
        ray.init(logging_level=logging.ERROR)
    sched = SchedulerClient.connect()
    # Residency first: nothing is read from or written to a bucket outside the tenant's regions.
    sched.check_residency(spec.tenant, [str(cfg.data), str(cfg.storage_path)])
    # Where the cluster confines tenants to their bucket prefixes, only these credentials reach them.
    sched.tenant_storage(spec.tenant, [str(cfg.data), str(cfg.storage_path)], hours=min(12.0, max(1.0, 2 * spec.expected_hours)))
    from elasticml.train.preflight import preflight

    preflight(cfg)  # a bad path fails before the job takes capacity
    placement = sched.place(spec, attach=ray.get_runtime_context().get_job_id())
    flag = stop_flag()
    waited_s, result, run_cfg, failures = 0.0, None, cfg, 0
    try:
        while True:
            print(json.dumps({"event": "placement", **placement.to_dict()}), flush=True)
            placement, waited_s = sched.wait_placed(cfg.run_name, placement, max_wait_s=scheduling["max_wait_s"],
                                                    waited_s=waited_s)
            workers = min(placement.workers, cfg.global_batch)
            run_cfg = dataclasses.replace(cfg, node_type=",".join(placement.node_types), num_workers=workers,
                                          min_workers=min(cfg.min_workers, workers) if cfg.min_workers else None)
            ray.get(flag.clear.remote())
            try:
                with Follower(sched, cfg.run_name, placement.epoch, flag):
                    # Ray Train does not retry on its own here: its retry would start on the placement the
                    # run had, though the scheduler may have moved it (a lost spot node is an interruption
                    # of its pool). This loop restarts the run where the scheduler says.
                    result = fit(run_cfg, stop=flag, callbacks=[progress_callback(sched, cfg.run_name, cfg.steps)],
                                 started=started_hook(sched, cfg.run_name, placement.epoch), retries=False)
            except TrainingFailedError as exc:
                failed_on = placement
                placement = await_move(sched, cfg.run_name, failed_on.epoch, scheduling["settle_s"])
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
    finally:
        sched.finish(cfg.run_name)
        ray.kill(flag)


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
