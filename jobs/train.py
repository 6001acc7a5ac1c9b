"""Train the reference transformer on Ray Train: the script behind `ray job submit`.

    eval "$(elasticml cluster env)"
    ray job submit --working-dir . -- python jobs/train.py \
        --data ~/.elasticml/corpus --steps 20 --workers 2 --market spot

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


def parse_args(argv: list[str]) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML file with TrainConfig fields")
    p.add_argument("--data")
    p.add_argument("--storage-path", dest="storage_path")
    p.add_argument("--run-name", dest="run_name")
    p.add_argument("--size", dest="model_size")
    p.add_argument("--steps", type=int)
    p.add_argument("--global-batch", dest="global_batch", type=int)
    p.add_argument("--seq-len", dest="seq_len", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", dest="num_workers", type=int)
    p.add_argument("--cpus-per-worker", dest="cpus_per_worker", type=float)
    p.add_argument("--gpu", dest="use_gpu", action="store_true", default=None)
    p.add_argument("--market", help="any | spot | on-demand | reserved")
    p.add_argument("--report-every", dest="report_every", type=int)
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    args = vars(p.parse_args(argv))
    config_file = args.pop("config")
    known = {f.name for f in fields(TrainConfig)}
    overrides = {k: v for k, v in args.items() if v is not None and k in known}
    if config_file:
        return TrainConfig.from_yaml(config_file, **overrides)
    overrides.setdefault("storage_path", str(default_storage_path()))
    return TrainConfig.from_dict(overrides, source="flags")


def main(argv: list[str]) -> int:
    try:
        cfg = parse_args(argv)
    except ElasticMLError as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    from elasticml.train.launch import fit

    t0 = time.time()
    result = fit(cfg)
    summary = {
        "event": "train_done",
        "run_name": cfg.run_name,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "metrics": result.metrics,
        "error": repr(result.error) if result.error else None,
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(summary, default=str), flush=True)
    return 0 if result.error is None and result.checkpoint is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
