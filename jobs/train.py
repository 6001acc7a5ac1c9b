"""Train the reference transformer on Ray Train: the script behind `ray job submit`.

    eval "$(elasticml cluster env)"
    ray job submit --working-dir . -- python jobs/train.py \
        --data ~/.elasticml/corpus --steps 20 --workers 2 --market spot

With --tenant (and --priority, --deadline-hours), the job asks the cluster's
cost-aware scheduler where to run and then follows it: its placement sets the
pool and the number of workers; when the scheduler moves the job (spot lost or
back, a deadline policy's choice, cheaper capacity), the workers checkpoint at
their next report point, the run ends, and a new run resumes from that
checkpoint on the new pool. It reports its progress and, at the end, that it
finished.

Flags override a YAML file given with --config. The last line printed is a
JSON summary (`{"event": "train_done", "checkpoint": ..., ...}`) that tools
can parse from the job's logs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields

from elasticml.errors import ElasticMLError
from elasticml.home import default_storage_path
from elasticml.scheduler.identity import CREDENTIAL_ENV
from elasticml.train.config import TrainConfig


def parse_args(argv: list[str]) -> tuple[TrainConfig, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML file with TrainConfig fields")
    p.add_argument("--data")
    p.add_argument("--storage-path", dest="storage_path")
    p.add_argument("--run-name", dest="run_name")
    p.add_argument("--size", dest="model_size", help="reference transformer: tiny | small | 125m | 350m | 1b")
    p.add_argument("--model", help="your own model as package.module:function (see elasticml.models.user)")
    p.add_argument("--steps", type=int)
    p.add_argument("--global-batch", dest="global_batch", type=int)
    p.add_argument("--seq-len", dest="seq_len", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", dest="num_workers", type=int)
    p.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=float)
    p.add_argument("--gpu", dest="use_gpu", action="store_true", default=None)
    p.add_argument("--market", help="any | spot | on-demand | reserved")
    p.add_argument("--min-workers", dest="min_workers", type=int, help="elastic: go on with as few as this")
    p.add_argument("--peak-tflops", dest="peak_tflops", type=float, help="per-worker peak, for MFU (H100 bf16: 989)")
    p.add_argument("--activation-checkpointing", dest="activation_checkpointing", action="store_true", default=None)
    p.add_argument("--compile", dest="compile", action="store_true", default=None)
    p.add_argument("--async-upload", dest="async_upload", action="store_true", default=None)
    p.add_argument("--report-every", dest="report_every", type=int)
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    p.add_argument("--min-step-seconds", dest="min_step_seconds", type=float,
                   help="pace: each step lasts at least this long (replays map work to trace hours by it)")
    p.add_argument("--teacher", help="distil from this checkpoint (folder, s3:// or latest:RUN_DIR): see jobs/distill.py")
    p.add_argument("--temperature", dest="distill_temperature", type=float, help="distillation temperature [2]")
    p.add_argument("--alpha", dest="distill_alpha", type=float, help="share of the teacher's term in the loss [0.5]")
    p.add_argument("--init-from", dest="init_from",
                   help="start the model (shape and weights) from this checkpoint, e.g. a pruned student")
    p.add_argument("--tenant", help="ask the scheduler for a placement, as this tenant")
    p.add_argument("--priority", default="normal", help="critical | high | normal | low | preemptible")
    p.add_argument("--expected-hours", type=float, default=1.0)
    p.add_argument("--deadline-hours", type=float)
    p.add_argument("--restart-hours", type=float, help="what a move costs, in hours [default: min(0.1, expected / 4)]")
    p.add_argument("--max-wait-s", type=float, default=3600.0, help="give up if not placed for this long")
    p.add_argument("--spot-policy", default="stochastic-dp", help="the deadline policy the scheduler runs for this job")
    p.add_argument("--settle-s", type=float, default=None,
                   help="after a failed run, wait this long for the scheduler to move it before restarting where it "
                        "was [default: Ray's time to declare a node dead plus two controller ticks]")
    args = vars(p.parse_args(argv))
    scheduling = {k: args.pop(k) for k in ("tenant", "priority", "expected_hours", "deadline_hours", "restart_hours",
                                           "max_wait_s", "spot_policy", "settle_s")}
    if scheduling["settle_s"] is None:
        import ray

        from elasticml.scheduler.settings import ControllerConfig

        # A lost node is known to the GCS once its health checks have failed (period x threshold),
        # and to the scheduler at its next tick after that.
        ray_detects_s = ray._config.health_check_period_ms() * ray._config.health_check_failure_threshold() / 1000
        scheduling["settle_s"] = ray_detects_s + 2 * ControllerConfig.from_env().tick_seconds
    from elasticml.dataconf import check_number

    check_number(scheduling["settle_s"], field="settle_s", lo=0, hi=3600)
    config_file = args.pop("config")
    known = {f.name for f in fields(TrainConfig)}
    overrides = {k: v for k, v in args.items() if v is not None and k in known}
    if config_file:
        cfg = TrainConfig.from_yaml(config_file, **overrides)
    else:
        overrides.setdefault("storage_path", str(default_storage_path()))
        cfg = TrainConfig.from_dict(overrides, source="flags")
    return with_checkpoints_resolved(cfg), scheduling


def with_checkpoints_resolved(cfg: TrainConfig) -> TrainConfig:
    """`latest:RUN_DIR` in teacher / init_from becomes that run's newest checkpoint, once, here: every
    worker, and every resumed run, must load the same one."""
    import dataclasses

    from elasticml.train.checkpoint import resolve_checkpoint

    found = {}
    for name in ("teacher", "init_from"):
        value = getattr(cfg, name)
        if value is not None:
            try:
                found[name] = resolve_checkpoint(value)
            except ElasticMLError as exc:
                raise type(exc)(f"{name}: {exc}") from None
    return dataclasses.replace(cfg, **found) if found else cfg


def scheduled_spec(cfg: TrainConfig, scheduling: dict) -> object:
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

    def __init__(self, sched: object, name: str, epoch: int, flag: object, period_s: float = 1.0) -> None:
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


def progress_callback(sched: object, name: str, steps: int) -> object:
    """A Ray Train callback (on the run's controller) that tells the scheduler the share of steps done,
    as the job's own principal (`sched` is its SchedulerClient, which travels with the callback)."""
    from ray.train import UserCallback

    class Progress(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):  # type: ignore[no-untyped-def]
            step = metrics[0].get("step") if metrics else None
            if step is not None:
                sched.report_progress_async(name, min(1.0, step / steps))  # type: ignore[attr-defined]

    return Progress()


def started_hook(sched: object, name: str, epoch: int) -> object:
    """Called by rank 0 once a run is up: tells the scheduler, and returns how long to wait before training."""

    def started() -> float:
        return float(sched.run_started(name, epoch))  # type: ignore[attr-defined]

    return started


def run_scheduled(cfg: TrainConfig, scheduling: dict) -> tuple[object, TrainConfig]:
    """Train where the scheduler says, and follow it: a move checkpoints, stops and resumes on the new placement."""
    import dataclasses

    import ray

    from ray.train import TrainingFailedError

    from elasticml.errors import SchedulerError
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.train.launch import fit, stop_flag

    spec = scheduled_spec(cfg, scheduling)
    if not ray.is_initialized():
        ray.init(logging_level="ERROR")
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
            placement = sched.placement(cfg.run_name)
            if placement is None:
                raise SchedulerError(f"the scheduler forgot {cfg.run_name}")
            saved = _checkpoint_step(result)
            print(json.dumps({"event": "moved", "at_step": step, "checkpoint_step": saved, "to": placement.node_type,
                              "state": placement.state, "reason": placement.reason}), flush=True)
    finally:
        sched.finish(cfg.run_name)
        ray.kill(flag)


def await_move(sched: object, name: str, epoch: int, settle_s: float) -> object:
    """After a failed run: the placement once the scheduler has moved it (its epoch grew), or the same
    one after `settle_s` (the failure was not one the scheduler acts on, such as a crashed worker).
    The scheduler learns of a lost node at its next tick, so a retry that did not wait for it would
    start where the lost node was."""
    import time

    from elasticml.errors import SchedulerError

    deadline = time.monotonic() + settle_s
    while True:
        placement = sched.placement(name)  # type: ignore[attr-defined]
        if placement is None:
            raise SchedulerError(f"the scheduler forgot {name}")
        if placement.epoch != epoch or time.monotonic() >= deadline:
            return placement
        time.sleep(0.5)


def _checkpoint_step(result: object) -> int | None:
    """The step of the run's last checkpoint: where the next run resumes."""
    from elasticml.train.checkpoint import read_meta

    ckpt = getattr(result, "checkpoint", None)
    if ckpt is None:
        return None
    with ckpt.as_directory() as folder:
        return int(read_meta(folder)["step"])


def main(argv: list[str]) -> int:
    try:
        cfg, scheduling = parse_args(argv)
    except ElasticMLError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    from elasticml.train.launch import fit

    t0 = time.time()
    try:
        if os.environ.get(CREDENTIAL_ENV):
            import ray

            from elasticml.scheduler.client import job_tenant

            if not ray.is_initialized():
                ray.init(logging_level="ERROR")
            scheduling["tenant"] = job_tenant(scheduling["tenant"], cfg.market)
        if scheduling["tenant"]:
            result, cfg = run_scheduled(cfg, scheduling)
        else:
            result = fit(cfg)
    except ElasticMLError as exc:
        print(json.dumps({"event": "train_failed", "run_name": cfg.run_name, "error": str(exc)[:1000],
                          "wall_s": round(time.time() - t0, 1)}), flush=True)
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    summary = {
        "event": "train_done",
        "run_name": cfg.run_name,
        "node_type": cfg.node_type,
        "num_workers": cfg.num_workers,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "metrics": result.metrics,
        "error": repr(result.error) if result.error else None,
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary, default=str), flush=True)
    return 0 if result.error is None and result.checkpoint is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
