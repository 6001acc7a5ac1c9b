"""A Ray Tune sweep (ASHA) over the elasticml trainer: low priority, on spot, best trial reported.

    ray job submit --working-dir . -- python jobs/tune.py --data ~/.elasticml/corpus --samples 8 --steps 60

Each trial is a Ray Train run of `elasticml.train` (FSDP2) placed on spot
capacity by default (`--market`); ASHA stops the trials whose loss lags at
each rung. The last line printed is a JSON summary with the best trial.

With --tenant (always, when run with a tenant's credential) the sweep is the
tenant's workload: the scheduler checks its data and storage buckets against
the tenant's regions before anything is read or written, places the sweep
(kind `sweep`, `--priority` low by default) within its budget and quota, and
the trials run on the pools it gave; a trial that loses its node is run again
(--trial-retries) from its last checkpoint. The sweep is finished when it ends
(elasticml.scheduler.admission owns that sequence).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import click
from elasticml.entrypoint import as_help, default_of, run
from elasticml.errors import ConfigError, ElasticMLError
from elasticml.home import default_storage_path
from elasticml.train.config import TrainConfig


@dataclass(kw_only=True, frozen=True)
class Sweep:
    """The sweep's flags, as they arrive."""

    data: str
    storage_path: str
    name: str = "sweep"
    samples: int = 8
    steps: int = 60
    lr_min: float = 3e-4
    lr_max: float = 1e-2
    lrs: str | None = None
    workers: int = 1
    concurrent: int = 2
    market: str | None = None
    tenant: str | None = None
    priority: str = "low"
    max_wait_s: float = 3600.0
    expected_hours: float = 1.0
    trial_retries: int = 2
    size: str = default_of(TrainConfig, "model_size")


def _default(name: str) -> dict[str, Any]:
    return {"default": default_of(Sweep, name), "show_default": True}


@click.command("tune.py", help=as_help(__doc__))
@click.option("--data", required=True, help="Corpus folder or s3:// prefix (`elasticml data build`).")
@click.option("--storage-path", default=str(default_storage_path()), show_default="$ELASTICML_HOME/runs",
              help="Where the trials' runs and Tune's state go, local or s3://.")
@click.option("--name", **_default("name"), help="The sweep's name (its folder, its workload).")
@click.option("--samples", type=int, **_default("samples"), help="Learning rates drawn between --lr-min and --lr-max.")
@click.option("--steps", type=int, **_default("steps"), help="Steps per trial (ASHA's max_t).")
@click.option("--lr-min", type=float, **_default("lr_min"), help="Smallest learning rate drawn.")
@click.option("--lr-max", type=float, **_default("lr_max"), help="Largest learning rate drawn.")
@click.option("--lrs", help="Comma-separated learning rates to try, in this order (a grid instead of "
              "--samples draws between --lr-min and --lr-max).")
@click.option("--workers", type=int, **_default("workers"), help="Ray Train workers per trial.")
@click.option("--concurrent", type=int, **_default("concurrent"), help="Trials running at once.")
@click.option("--market", help="Without a tenant: where trials run (sweeps are low priority: spot by default).")
@click.option("--tenant", help="Place the sweep through the cluster's scheduler, as this tenant.")
@click.option("--priority", **_default("priority"), help="With --tenant: critical | high | normal | low | preemptible.")
@click.option("--max-wait-s", type=float, **_default("max_wait_s"),
              help="With --tenant: give up if not placed for this long.")
@click.option("--expected-hours", type=float, **_default("expected_hours"),
              help="With --tenant: how long the sweep should take (its cost estimate, and how long its storage "
                   "credentials last).")
@click.option("--trial-retries", type=int, **_default("trial_retries"), help="Times a failed trial is run again.")
@click.option("--size", **_default("size"), help="Reference transformer of every trial: tiny | small | 125m | ...")
def command(**flags: Any) -> int:
    args = Sweep(**flags)
    base = TrainConfig(data=args.data, storage_path=args.storage_path, run_name=args.name, model_size=args.size,
                       steps=args.steps, num_workers=args.workers, global_batch=4 * args.workers,
                       market=args.market or "spot", report_every=max(1, args.steps // 6), max_failures=1)
    if args.samples < 1 or not 0 < args.lr_min <= args.lr_max:
        raise ElasticMLError("need --samples >= 1 and 0 < --lr-min <= --lr-max")
    if args.trial_retries < 0:
        raise ElasticMLError(f"--trial-retries must be >= 0, got {args.trial_retries}")
    try:
        grid = [float(x) for x in args.lrs.split(",")] if args.lrs else None
    except ValueError:
        raise ElasticMLError(f"--lrs must be comma-separated numbers, got {args.lrs!r}") from None
    if grid is not None and not all(lr > 0 for lr in grid):
        raise ElasticMLError(f"--lrs must all be > 0, got {args.lrs!r}")

    import ray

    if not ray.is_initialized():
        ray.init(logging_level="ERROR")
    with ExitStack() as placed:
        try:
            from elasticml.scheduler.client import job_tenant
            from elasticml.train.preflight import preflight

            tenant = job_tenant(args.tenant, args.market)
            if tenant is None:
                preflight(base)  # data and storage, before Tune starts a trial
            else:
                if args.market is not None:
                    raise ConfigError("a sweep with a tenant is placed by the scheduler; --market is without one",
                                      field="market")
                # Finished when the sweep ends, however it ends (and at once if admission fails after placing).
                base = placed.enter_context(placed_sweep(base, args, tenant))
        except ElasticMLError as exc:
            print(json.dumps({"event": "tune_refused", "error": str(exc)[:500]}), flush=True)
            raise
        return sweep(base, args, grid)


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, prog="tune.py")


@contextmanager
def placed_sweep(base: TrainConfig, args: Sweep, tenant: str) -> Iterator[TrainConfig]:
    """The sweep admitted by the scheduler (residency, the tenant's credentials, which the trials take
    along, the base run's preflight, its placement): the trials' config pinned to the pools given."""
    import dataclasses

    import ray
    from elasticml.scheduler.admission import admitted
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec
    from elasticml.train.preflight import preflight

    spec = WorkloadSpec(name=args.name, tenant=tenant, kind="sweep", priority=args.priority,  # type: ignore[arg-type]
                        cpus_per_worker=base.cpus_per_worker, gpus_per_worker=1.0 if base.use_gpu else 0.0,
                        min_workers=args.workers, max_workers=args.workers * args.concurrent,
                        expected_hours=args.expected_hours, checkpoint_interval_hours=0.1)
    with admitted(spec, sched=SchedulerClient.connect(), uris=[str(base.data), str(base.storage_path)],
                  attach=ray.get_runtime_context().get_job_id(), max_wait_s=args.max_wait_s,
                  preflight=lambda: preflight(base)) as admission:
        placement = admission.placement
        print(json.dumps({"event": "placement", **placement.to_dict()}), flush=True)
        yield dataclasses.replace(base, market="any", node_type=",".join(placement.node_types))


def sweep(base: TrainConfig, args: Sweep, grid: list[float] | None) -> int:
    from elasticml.storage import installed_credentials
    from elasticml.train.launch import fit
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler

    s3_credentials = installed_credentials()  # a tenant's, where its prefix is out of the node role's reach

    def trial(config: dict) -> None:
        import dataclasses

        from elasticml.storage import use_credentials

        use_credentials(s3_credentials)
        cfg = dataclasses.replace(base, lr=config["lr"], run_name=f"{args.name}-{tune.get_context().get_trial_id()}")
        fit(cfg, callbacks=[TuneReportCallback()])

    # Ray may garbage-collect the job's unpacked working_dir once the trials that shared it end,
    # which would leave this driver in a deleted cwd: everything is imported, so step out of it.
    os.chdir(os.path.expanduser("~"))
    from elasticml.storage import filesystem_for, is_remote

    # Tune's own state goes through the same filesystem as the trials' checkpoints (and its credentials).
    storage_fs, storage_path = filesystem_for(args.storage_path) if is_remote(args.storage_path) else (None, args.storage_path)
    t0 = time.time()
    tuner = tune.Tuner(
        # The trial itself only drives Ray Train, so it takes a sliver of the head (placement
        # groups refuse all-zero bundles); its Ray Train workers hold the CPUs, on spot nodes.
        tune.with_resources(trial, {"CPU": 0, "node:__internal_head__": 0.01}),
        param_space={"lr": tune.grid_search(grid) if grid else tune.loguniform(args.lr_min, args.lr_max)},
        tune_config=tune.TuneConfig(
            metric="loss", mode="min", num_samples=1 if grid else args.samples, max_concurrent_trials=args.concurrent,
            scheduler=ASHAScheduler(time_attr="step", max_t=args.steps, grace_period=max(1, args.steps // 3),
                                    reduction_factor=2),
        ),
        # A trial on spot can lose its node, or its workers can start into a working_dir that Ray is
        # garbage-collecting (a "No such file or directory" importing torch): run it again, from its
        # last checkpoint, before calling it an error.
        run_config=tune.RunConfig(name=args.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                  failure_config=tune.FailureConfig(max_failures=args.trial_retries)),
    )
    results = tuner.fit()
    best = results.get_best_result()
    summary = {
        "event": "tune_done",
        "trials": len(results),
        "errors": len(results.errors),
        "stopped_early": sum(1 for r in results if r.metrics and r.metrics.get("step", 0) < args.steps),
        "best": {"lr": best.config["lr"], "loss": best.metrics["loss"], "step": best.metrics["step"]},
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
