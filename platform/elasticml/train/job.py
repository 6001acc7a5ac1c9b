"""The training job's flags and run, shared by jobs/train.py and jobs/distill.py (a training job with a
teacher): `train_options` declares the flags, `configure` turns them into a TrainConfig and the
scheduling settings, `execute` trains (through the scheduler with a tenant) and prints the JSON summary.

Flags override a YAML file given with --config; a flag not given leaves the file's value (or
TrainConfig's default) alone, which is why the TrainConfig flags default to None here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import click

from elasticml.entrypoint import default_of
from elasticml.errors import ElasticMLError
from elasticml.home import default_storage_path
from elasticml.scheduler.identity import CREDENTIAL_ENV
from elasticml.scheduler.spec import WorkloadSpec
from elasticml.train.config import TrainConfig
from elasticml.train.follow import Scheduling

SCHEDULING = ("tenant", "priority", "expected_hours", "deadline_hours", "restart_hours", "max_wait_s", "spot_policy",
              "settle_s")
"""The flags that are not TrainConfig fields: how the job asks the scheduler for a placement."""

_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--config", help="YAML file with TrainConfig fields (flags override it)."),
    click.option("--data", help="Corpus folder or s3:// prefix (`elasticml data build`)."),
    click.option("--storage-path", "storage_path", help="Where runs and checkpoints go, local or s3:// "
                 "[default: $ELASTICML_HOME/runs]."),
    click.option("--run-name", "run_name", help="The run's name: its folder under --storage-path."),
    click.option("--size", "model_size", help="Reference transformer: tiny | small | 125m | 350m | 1b."),
    click.option("--model", help="Your own model as package.module:function (see elasticml.models.user)."),
    click.option("--steps", type=int, help="Optimizer steps."),
    click.option("--global-batch", "global_batch", type=int, help="Sequences per step, over all workers."),
    click.option("--seq-len", "seq_len", type=int, help="Tokens (bytes) per sequence."),
    click.option("--lr", type=float, help="Peak learning rate."),
    click.option("--seed", type=int, help="Random seed."),
    click.option("--workers", "num_workers", type=int, help="Ray Train workers."),
    click.option("--cpus-per-worker", "cpus_per_worker", type=float, help="CPUs each worker holds."),
    click.option("--gpu", "use_gpu", is_flag=True, default=None, help="One GPU per worker."),
    click.option("--market", help="any | spot | on-demand | reserved."),
    click.option("--min-workers", "min_workers", type=int, help="Elastic: go on with as few as this."),
    click.option("--peak-tflops", "peak_tflops", type=float, help="Per-worker peak, for MFU (H100 bf16: 989)."),
    click.option("--activation-checkpointing", "activation_checkpointing", is_flag=True, default=None,
                 help="Recompute activations in the backward pass: less memory, more compute."),
    click.option("--compile", "compile", is_flag=True, default=None, help="torch.compile the model."),
    click.option("--async-upload", "async_upload", is_flag=True, default=None,
                 help="Upload checkpoints in the background while training goes on."),
    click.option("--report-every", "report_every", type=int, help="Steps between report points (metrics, moves)."),
    click.option("--checkpoint-every", "checkpoint_every", type=int, help="Steps between checkpoints."),
    click.option("--min-step-seconds", "min_step_seconds", type=float,
                 help="Pace: each step lasts at least this long (replays map work to trace hours by it)."),
    click.option("--teacher", help="Distil from this checkpoint (folder, s3:// or latest:RUN_DIR): see jobs/distill.py."),
    click.option("--temperature", "distill_temperature", type=float,
                 help=f"Distillation temperature [{default_of(TrainConfig, 'distill_temperature'):g}]."),
    click.option("--alpha", "distill_alpha", type=float,
                 help=f"Share of the teacher's term in the loss [{default_of(TrainConfig, 'distill_alpha'):g}]."),
    click.option("--init-from", "init_from",
                 help="Start the model (shape and weights) from this checkpoint, e.g. a pruned student."),
    click.option("--tenant", help="Ask the scheduler for a placement, as this tenant."),
    click.option("--priority", default=default_of(WorkloadSpec, "priority"), show_default=True,
                 help="critical | high | normal | low | preemptible."),
    click.option("--expected-hours", type=float, default=default_of(WorkloadSpec, "expected_hours"), show_default=True,
                 help="How long the job should take."),
    click.option("--deadline-hours", type=float, help="Finish within this many hours."),
    click.option("--restart-hours", type=float, help="What a move costs, in hours [default: min(0.1, expected / 4)]."),
    click.option("--max-wait-s", type=float, default=default_of(Scheduling, "max_wait_s"), show_default=True,
                 help="Give up if not placed for this long."),
    click.option("--spot-policy", default=default_of(WorkloadSpec, "spot_policy"), show_default=True,
                 help="The deadline policy the scheduler runs for this job."),
    click.option("--settle-s", type=float, default=None,
                 help="After a failed run, wait this long for the scheduler to move it before restarting where it "
                      "was [default: Ray's time to declare a node dead plus two controller ticks]."),
]


def train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Every flag of the training job, on `command` (its parameters arrive as keyword arguments)."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def configure(flags: dict[str, Any]) -> tuple[TrainConfig, Scheduling]:
    """The run's TrainConfig (flags over --config's file) and its scheduling settings."""
    args = dict(flags)
    scheduling = Scheduling(**{k: args.pop(k) for k in SCHEDULING})
    config_file = args.pop("config")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
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
    from elasticml.train.checkpoint import resolve_checkpoint

    found: dict[str, Any] = {}
    for name in ("teacher", "init_from"):
        value = getattr(cfg, name)
        if value is not None:
            try:
                found[name] = resolve_checkpoint(value)
            except ElasticMLError as exc:
                raise type(exc)(f"{name}: {exc}") from None
    return dataclasses.replace(cfg, **found) if found else cfg


def execute(cfg: TrainConfig, scheduling: Scheduling) -> int:
    """Train (where the scheduler says, with a tenant) and print the JSON summary as the last line:
    0 when the run finished with a checkpoint, 1 when it did not; an ElasticMLError is re-raised for
    the entry point to report, after a `train_failed` summary."""
    from elasticml.train.launch import fit

    t0 = time.time()
    try:
        if os.environ.get(CREDENTIAL_ENV):
            import ray

            from elasticml.scheduler.client import job_tenant

            if not ray.is_initialized():
                ray.init(logging_level=logging.ERROR)
            scheduling = dataclasses.replace(scheduling, tenant=job_tenant(scheduling.tenant, cfg.market))
        if scheduling.tenant:
            from elasticml.train.follow import run_scheduled

            result, cfg = run_scheduled(cfg, scheduling)
        else:
            result = fit(cfg)
    except ElasticMLError as exc:
        print(json.dumps({"event": "train_failed", "run_name": cfg.run_name, "error": str(exc)[:1000],
                          "wall_s": round(time.time() - t0, 1)}), flush=True)
        raise
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
