"""Ray Train's overhead against the same FSDP2 loop under plain torch.distributed, on CPU.

    python benchmarks/train_overhead.py [--size small] [--steps 40] [--workers 2] [--rounds 2] [--json OUT]

Both sides run elasticml's training step (FSDP2 over gloo, same model, data,
batch and seed) in `--workers` processes; only the launcher differs: Ray
Train V2's TorchTrainer on a local Ray instance vs torch.multiprocessing with
a hand-made process group. Throughput is measured inside the loop, after
`--warmup` steps, so start-up is excluded; Ray's per-step cost (its context,
its report barrier every `--report-every` steps) is included. Both sides' rates,
round by round, go to benchmarks/results/train_overhead.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


import record  # benchmarks/record.py: a script's own folder is first on sys.path

from elasticml.data.corpus import build_corpus  # noqa: E402
from elasticml.data.loader import TokenBlocks  # noqa: E402
from elasticml.models import build_model  # noqa: E402


def train_steps(rank: int, world: int, args: argparse.Namespace, report) -> float:  # type: ignore[no-untyped-def]
    """The shared loop; returns tokens/s measured on rank 0 after warm-up."""
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(args.size)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = TokenBlocks(args.corpus, seq_len=args.seq_len)
    t0, tokens = 0.0, 0
    for step in range(args.steps):
        if step == args.warmup:
            dist.barrier()
            t0, tokens = time.perf_counter(), 0
        x, y = data.batch(step, global_batch=args.global_batch, rank=rank, world_size=world)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel() * world
        if (step + 1) % args.report_every == 0:
            report({"step": step + 1, "loss": loss.item()})
    dist.barrier()
    return tokens / (time.perf_counter() - t0)


def _plain_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rate = train_steps(rank, world, args, report=lambda m: None)
    if rank == 0:
        out.put(rate)
    dist.destroy_process_group()


def run_plain(args: argparse.Namespace) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_plain_worker, args=(r, args.workers, port, args, out)) for r in range(args.workers)]
    for p in procs:
        p.start()
    rate = out.get(timeout=600)
    for p in procs:
        p.join()
    return rate


def _ray_loop(config: dict) -> None:
    import ray.train

    args = argparse.Namespace(**config)
    ctx = ray.train.get_context()
    rate = train_steps(ctx.get_world_rank(), ctx.get_world_size(), args, report=ray.train.report)
    if ctx.get_world_rank() == 0:
        # Ray Train V2 attaches metrics to checkpoints only; this run keeps none, so the rate goes to a file.
        with open(args.rate_file, "w") as fh:
            fh.write(str(rate))


def run_ray(args: argparse.Namespace) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(num_cpus=args.workers, logging_level="ERROR", log_to_driver=False)
    args.rate_file = tempfile.mktemp(suffix=".rate")
    trainer = TorchTrainer(
        _ray_loop, train_loop_config=vars(args), torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="overhead", storage_path=tempfile.mkdtemp()),
    )
    result = trainer.fit()
    ray.shutdown()
    if result.error is not None:
        raise RuntimeError(f"the Ray Train run failed: {result.error!r}")
    with open(args.rate_file) as fh:
        return float(fh.read())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--report-every", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="alternate plain/Ray this many times")
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    run = record.start(__file__, args, argv)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    args.corpus = tempfile.mkdtemp() + "/c"
    build_corpus(args.corpus, num_shards=2, max_bytes=1_000_000)
    plain, ray_rates = [], []
    for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both sides
        plain.append(run_plain(args))
        ray_rates.append(run_ray(args))
    best_plain, best_ray = max(plain), max(ray_rates)
    print(f"model {args.size}, {args.workers} workers, global batch {args.global_batch} x {args.seq_len} tokens, "
          f"{args.steps - args.warmup} timed steps, report every {args.report_every}")
    print(f"plain torch.distributed: {best_plain:9.0f} tokens/s   (rounds: {', '.join(f'{r:.0f}' for r in plain)})")
    print(f"Ray Train (TorchTrainer): {best_ray:9.0f} tokens/s   (rounds: {', '.join(f'{r:.0f}' for r in ray_rates)})")
    paired = record.spread([1 - b / a for a, b in zip(plain, ray_rates)])  # each round's Ray run against its plain one
    print(f"Ray Train overhead: {100 * (1 - best_ray / best_plain):+.1f}% (best of {args.rounds} each); round by round "
          f"{100 * paired['median']:+.1f}% median ({100 * paired['min']:+.1f}% to {100 * paired['max']:+.1f}%)")
    run.write(samples=[{"round": r, "plain_tokens_per_s": a, "ray_tokens_per_s": b}
                       for r, (a, b) in enumerate(zip(plain, ray_rates))],
              summary={"best_plain_tokens_per_s": best_plain, "best_ray_tokens_per_s": best_ray,
                       "ray_overhead": 1 - best_ray / best_plain, "ray_overhead_by_round": paired})
    return 0


if __name__ == "__main__":
    sys.exit(main())
