"""Teacher vs int8 and ONNX Runtime vs students with fewer MLP channels or blocks (distilled from it),
and both, on the CPU.

    python benchmarks/optimize.py [--size small] [--train-steps 600] [--keeps 0.5,0.25] [--layers 0.5] [--threads 2]
        [--distill-steps 200] [--repeats 5] [--json OUT] [--png benchmarks/optimize.png]

Trains a teacher of --size on a corpus of the Python stdlib (plain torch, one process), then runs
`elasticml optimize`'s pipeline on it: every candidate and the fp32 teacher measured in one run on
the same held-out text (the stdlib's email package, never trained on), the same prompts and the
same CPU threads, and judged by the release gate (loss within 1% of the teacher's and a gain).
Prints the table and each candidate's speed-up and loss ratio. Writes the report with every
candidate's bytes/s round by round and the teacher's training losses to
benchmarks/results/optimize.json (benchmarks/record.py), the chart only where --png says, and
nothing else outside a temporary folder (its own ELASTICML_HOME for the checkpoint key).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import sysconfig
import tempfile
import time
from datetime import date
from pathlib import Path


import record  # benchmarks/record.py: a script's own folder is first on sys.path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--keeps", default="0.5,0.25")
    ap.add_argument("--layers", default="0.5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--distill-steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5, help="rounds of the speed measurement")
    record.add_arguments(ap, __file__)
    ap.add_argument("--png", default=None, help="copy the report's chart here (benchmarks/optimize.png)")
    args = ap.parse_args()
    run = record.start(__file__, args)

    work = Path(tempfile.mkdtemp(prefix="elasticml-optimize-"))
    os.environ["ELASTICML_HOME"] = str(work / "home")
    import torch
    import torch.nn.functional as F

    from elasticml.checkpoint_key import KEY_ENV, make_cluster_key
    from elasticml.data.corpus import build_corpus
    from elasticml.data.loader import TokenBlocks
    from elasticml.models import SIZES, build_model
    from elasticml.optimize.distill import DistillConfig
    from elasticml.optimize.pipeline import OptimizeConfig, optimize, table
    from elasticml.train.checkpoint import write_checkpoint

    os.environ[KEY_ENV] = str(make_cluster_key("benchmarks"))  # this run's own key, in its own home

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train_dir, held_dir = work / "train", work / "heldout"
    build_corpus(train_dir, num_shards=4, max_bytes=4_000_000)
    build_corpus(held_dir, num_shards=1, max_bytes=200_000, source_dir=stdlib / "email")
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    teacher = build_model(args.size)
    blocks = TokenBlocks(str(train_dir), seq_len=args.seq_len)
    opt = torch.optim.AdamW(teacher.parameters(), lr=1e-3)
    t0 = time.monotonic()
    losses = []
    for step in range(args.train_steps):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / args.train_steps))
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = blocks.batch(step, global_batch=args.batch)
        loss = F.cross_entropy(teacher(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 5))
        if step % 100 == 0:
            print(f"teacher step {step}: loss {loss.item():.3f}", file=sys.stderr)
    train_s = time.monotonic() - t0
    folder = write_checkpoint(work / "teacher", model_state=teacher.state_dict(), optim_state=None,
                              model_config=SIZES[args.size], step=args.train_steps)
    cfg = OptimizeConfig(checkpoint=str(folder), eval_data=str(held_dir), out=str(work / "out"),
                         train_data=str(train_dir), keeps=tuple(float(k) for k in args.keeps.split(",")),
                         layer_keeps=tuple(float(k) for k in args.layers.split(",") if k),
                         threads=args.threads, seq_len=args.seq_len, repeats=args.repeats,
                         distill=DistillConfig(steps=args.distill_steps, batch=args.batch))
    t1 = time.monotonic()
    report = optimize(cfg, say=lambda m: print(m, file=sys.stderr))
    print(f"benchmarks/optimize.py, {date.today()}: teacher {args.size} trained {args.train_steps} steps of "
          f"{args.batch}x{args.seq_len} bytes ({train_s:.0f} s), {args.distill_steps} distillation steps per "
          f"student, {args.threads} CPU threads for speed, held-out = stdlib email package "
          f"({report['eval_blocks']} blocks); optimize took {time.monotonic() - t1:.0f} s")
    print(table(report))
    print(f"chosen: {report['chosen']}")
    rounds = {"teacher": report["teacher"]["round_tokens_per_s"],
              **{c["name"]: c["round_tokens_per_s"] for c in report["candidates"]}}
    run.write(samples={"bytes_per_s_by_round": rounds, "teacher_train_losses": losses},
              summary={"chosen": report["chosen"], "teacher_train_s": round(train_s, 1),
                       "optimize_s": round(time.monotonic() - t1, 1)}, report=report)
    if args.png:
        Path(args.png).write_bytes((work / "out" / "report.png").read_bytes())


if __name__ == "__main__":
    main()
