"""Train the reference transformer on Ray Train: the script behind `ray job submit`.

    eval "$(elasticml cluster env)"
    ray job submit --working-dir . -- python jobs/train.py \
        --data ~/.elasticml/corpus --steps 20 --workers 2 --market spot

With --tenant (and --priority, --deadline-hours), the job asks the cluster's
cost-aware scheduler where to run: its placement sets the pool and the number
of workers, and the job reports itself finished at the end.

Flags override a YAML file given with --config. The last line printed is a
JSON summary (`{"event": "train_done", "checkpoint": ..., ...}`) that tools
can parse from the job's logs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields

from elasticml.errors import ElasticMLError
from elasticml.home import default_storage_path
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
    p.add_argument("--tenant", help="ask the scheduler for a placement, as this tenant")
    p.add_argument("--priority", default="normal", help="critical | high | normal | low | preemptible")
    p.add_argument("--expected-hours", type=float, default=1.0)
    p.add_argument("--deadline-hours", type=float)
    args = vars(p.parse_args(argv))
    scheduling = {k: args.pop(k) for k in ("tenant", "priority", "expected_hours", "deadline_hours")}
    config_file = args.pop("config")
    known = {f.name for f in fields(TrainConfig)}
    overrides = {k: v for k, v in args.items() if v is not None and k in known}
    if config_file:
        return TrainConfig.from_yaml(config_file, **overrides), scheduling
    overrides.setdefault("storage_path", str(default_storage_path()))
    return TrainConfig.from_dict(overrides, source="flags"), scheduling


def ask_scheduler(cfg: TrainConfig, scheduling: dict) -> tuple[TrainConfig, object]:
    """Submit this run to the scheduler; the config with its placement, and the client."""
    import dataclasses

    import ray

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

    spec = WorkloadSpec(
        name=cfg.run_name, tenant=scheduling["tenant"], kind="training", priority=scheduling["priority"],
        cpus_per_worker=cfg.cpus_per_worker, gpus_per_worker=1.0 if cfg.use_gpu else 0.0,
        min_workers=1, max_workers=cfg.num_workers, expected_hours=scheduling["expected_hours"],
        deadline_hours=scheduling["deadline_hours"], checkpoint_interval_hours=scheduling["expected_hours"] / 10,
    )
    ray.init(logging_level="ERROR")
    sched = SchedulerClient.connect()
    decision = sched.submit(spec.to_dict())[0]
    print(json.dumps({"event": "placement", "action": decision["action"], "reason": decision["reason"],
                      "scaling_config": decision["scaling_config"]}), flush=True)
    if decision["action"] != "place":
        raise ElasticMLError(f"the scheduler did not place {cfg.run_name}: {decision['action']}: {decision['reason']}")
    sc = decision["scaling_config"]
    workers = min(sc["num_workers"], cfg.global_batch)
    placed = dataclasses.replace(cfg, node_type=sc["label_selector"]["elasticml.io/node-type"], num_workers=workers,
                                 min_workers=min(cfg.min_workers, workers) if cfg.min_workers else None)
    return placed, sched


def main(argv: list[str]) -> int:
    try:
        cfg, scheduling = parse_args(argv)
        sched = None
        if scheduling["tenant"]:
            cfg, sched = ask_scheduler(cfg, scheduling)
    except ElasticMLError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    from elasticml.train.launch import fit

    t0 = time.time()
    try:
        result = fit(cfg)
    finally:
        if sched is not None:
            sched.finish(cfg.run_name)
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
