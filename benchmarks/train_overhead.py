"""Ray Train's overhead against the same FSDP2 loop under plain torch.distributed, on CPU.

    python benchmarks/train_overhead.py [--size small] [--steps 160] [--workers 2] [--rounds 5] [--json OUT]

Both sides run elasticml's training step (FSDP2 over gloo, same model, data,
batch and seed) in `--workers` processes; only the launcher differs: Ray
Train V2's TorchTrainer on a local Ray instance vs torch.multiprocessing with
a hand-made process group. Throughput is measured inside the loop, after
`--warmup` steps, so start-up is excluded; Ray's per-step cost (its context,
its report barrier every `--report-every` steps) is included. The verdict is the median of the
rounds' paired overheads (each Ray run against the plain run just before it). Each side's rate over
the first and the second half of the timed steps is printed too: Ray's own processes (dashboard,
agents) are still busy for seconds after `ray.init`, and a gap that closes in the second half is
that start-up, not a per-step cost. To tell where a gap comes from, each side also counts, over the
timed steps, the CPU seconds of its worker processes (every thread: the loop, gloo's, Ray's own in
the worker) and of the whole machine: more CPU per token on the Ray side is work Ray adds to each
step; more CPU used by everything but the workers is Ray's other processes taking cores the workers
wait for, which a machine with cores to spare would not see. Both sides' figures, round by round,
go to benchmarks/results/train_overhead.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


import record  # benchmarks/record.py: a script's own folder is first on sys.path

from elasticml.data.corpus import build_corpus  # noqa: E402
from elasticml.data.loader import TokenBlocks  # noqa: E402
from elasticml.models import build_model  # noqa: E402


def train_steps(rank: int, world: int, args: argparse.Namespace, report) -> Rates:  # type: ignore[no-untyped-def]
    """The shared loop; its rates and CPU use over the timed steps (after warm-up)."""
    import psutil
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(args.size)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = TokenBlocks(args.corpus, seq_len=args.seq_len)
    t0, tokens, half = 0.0, 0, (args.warmup + args.steps) // 2
    t_half, tokens_half = 0.0, 0
    for step in range(args.steps):
        if step == args.warmup:
            dist.barrier()
            t0, tokens = time.perf_counter(), 0
            cpu0, machine0, procs0 = time.process_time(), psutil.cpu_times(), _process_cpu() if rank == 0 else {}
        if step == half:
            t_half, tokens_half = time.perf_counter(), tokens
        x, y = data.batch(step, global_batch=args.global_batch, rank=rank, world_size=world)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel() * world
        if (step + 1) % args.report_every == 0:
            report({"step": step + 1, "loss": loss.item()})
    dist.barrier()
    end = time.perf_counter()
    machine1, procs1 = psutil.cpu_times(), _process_cpu() if rank == 0 else {}
    workers_cpu = torch.tensor([time.process_time() - cpu0], dtype=torch.float64)
    dist.all_reduce(workers_cpu)  # every thread of every worker process: the loop, gloo's, Ray's own
    busy = _busy(machine1) - _busy(machine0)
    return {"tokens_per_s": tokens / (end - t0), "first_half": tokens_half / (t_half - t0),
            "second_half": (tokens - tokens_half) / (end - t_half), "wall_s": end - t0,
            "workers_cpu_s": float(workers_cpu.item()), "machine_busy_cpu_s": busy,
            "others_cpu_s_by_name": _by_name(procs0, procs1, skip={os.getpid(), *_peer_pids()})}


def _process_cpu() -> dict[int, tuple[str, float]]:
    """Every process's (name, CPU seconds so far), by pid."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:
            continue
        cmd = proc.info["cmdline"] or []
        name = proc.info["name"] or "?"
        if cmd and cmd[0].startswith("ray::"):  # a Ray worker names itself by what it runs
            name = cmd[0].split()[0]
        elif name.startswith("python"):  # by its script or module
            name = next((c.rsplit("/", 1)[-1] for c in cmd[1:] if c.endswith(".py") or not c.startswith("-")), name)
        found[proc.pid] = (name[:60], times.user + times.system)
    return found


def _by_name(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
             skip: set[int]) -> dict[str, float]:
    """CPU seconds each process name used between the two looks (the workers left out)."""
    used: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid in skip:
            continue
        used[name] = used.get(name, 0.0) + cpu - (before[pid][1] if pid in before else 0.0)
    return {name: round(cpu, 3) for name, cpu in sorted(used.items(), key=lambda kv: -kv[1]) if cpu >= 0.01}


def _peer_pids() -> list[int]:
    """The pids of every worker of this run (gathered from all ranks)."""
    pids: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(pids, os.getpid())
    return [int(p) for p in pids]  # type: ignore[call-overload]


def _busy(t) -> float:  # type: ignore[no-untyped-def]
    """CPU seconds this machine's processes ran (psutil.cpu_times(): guest time is already in user)."""
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _worker_share(r: Rates, workers: int) -> float:
    """The share of the timed wall time the workers ran on a CPU."""
    return r["workers_cpu_s"] / (workers * r["wall_s"])


def _others_cores(r: Rates) -> float:
    """Cores used by every process but the workers over the timed steps (Ray's own, the driver, the rest)."""
    return (r["machine_busy_cpu_s"] - r["workers_cpu_s"]) / r["wall_s"]


def _cpu_per_token(r: Rates) -> float:
    return r["workers_cpu_s"] / (r["tokens_per_s"] * r["wall_s"])


Rates = dict[str, Any]
"""Over the timed steps: tokens/s over all of them, their first half and their second; their wall time;
the CPU seconds the worker processes used (all their threads); the CPU seconds the whole machine was busy;
the CPU seconds of every other process, by name (`_by_name`)."""


def _plain_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rate = train_steps(rank, world, args, report=lambda m: None)
    if rank == 0:
        out.put(rate)
    dist.destroy_process_group()


def run_plain(args: argparse.Namespace) -> Rates:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_plain_worker, args=(r, args.workers, port, args, out)) for r in range(args.workers)]
    for p in procs:
        p.start()
    rate: Rates = out.get(timeout=600)
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
            json.dump(rate, fh)


def run_ray(args: argparse.Namespace) -> Rates:
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
        return json.load(fh)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--report-every", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5, help="alternate plain/Ray this many times")
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    if not (1 <= args.rounds <= 100 and 0 <= args.warmup and args.warmup + 4 <= args.steps <= 100_000):
        p.error("--rounds in 1..100, --warmup >= 0 and --steps >= --warmup + 4")
    run = record.start(__file__, args, argv)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    args.corpus = tempfile.mkdtemp() + "/c"
    build_corpus(args.corpus, num_shards=2, max_bytes=1_000_000)
    plain: list[Rates] = []
    ray_rates: list[Rates] = []
    for _ in range(args.rounds):  # alternate, so drift on a shared machine hits both sides
        plain.append(run_plain(args))
        ray_rates.append(run_ray(args))
    print(f"model {args.size}, {args.workers} workers, global batch {args.global_batch} x {args.seq_len} tokens, "
          f"{args.steps - args.warmup} timed steps after {args.warmup}, report every {args.report_every}")
    keys = ("tokens_per_s", "first_half", "second_half")
    for name, rates in (("plain torch.distributed", plain), ("Ray Train (TorchTrainer)", ray_rates)):
        print(f"{name:25s} tokens/s by round: {', '.join(f'{r[keys[0]]:.0f}' for r in rates)}   "
              f"first half / second half: {', '.join(f'{r[keys[1]]:.0f}/{r[keys[2]]:.0f}' for r in rates)}")
        print(f"{'':25s} workers had a CPU {', '.join(f'{_worker_share(r, args.workers):.0%}' for r in rates)} "
              f"of the time; everything else used {', '.join(f'{_others_cores(r):.2f}' for r in rates)} cores")
        names = {n for r in rates for n in r["others_cpu_s_by_name"]}
        cores = {n: record.spread([r["others_cpu_s_by_name"].get(n, 0.0) / r["wall_s"] for r in rates])["median"]
                 for n in names}
        top = sorted(cores.items(), key=lambda kv: -kv[1])[:8]
        print(f"{'':25s} of it, by process (median cores): {', '.join(f'{n} {c:.3f}' for n, c in top)}")
    # each round's Ray run against its plain one: over all timed steps, then over each half
    paired = [record.spread([1 - b[k] / a[k] for a, b in zip(plain, ray_rates)]) for k in keys]
    # Where a gap comes from: work Ray adds inside the workers (CPU per token), or CPU its other
    # processes take from the workers (cores used by everything but the workers).
    work = record.spread([_cpu_per_token(b) / _cpu_per_token(a) - 1 for a, b in zip(plain, ray_rates)])
    others = record.spread([_others_cores(b) - _others_cores(a) for a, b in zip(plain, ray_rates)])
    print(f"Ray Train overhead, median of {args.rounds} paired rounds: {100 * paired[0]['median']:+.1f}% "
          f"({100 * paired[0]['min']:+.1f}% to {100 * paired[0]['max']:+.1f}%); first half "
          f"{100 * paired[1]['median']:+.1f}%, second half {100 * paired[2]['median']:+.1f}%   goal <= 2%: "
          f"{'met' if paired[0]['median'] <= 0.02 else 'NOT met'}")
    print(f"  the workers' CPU per token, Ray against plain: {100 * work['median']:+.1f}% "
          f"({100 * work['min']:+.1f}% to {100 * work['max']:+.1f}%); the other processes' use, Ray minus plain: "
          f"{others['median']:+.2f} cores ({others['min']:+.2f} to {others['max']:+.2f}) of {os.cpu_count()}")
    run.write(samples=[{"round": r, "plain": a, "ray": b} for r, (a, b) in enumerate(zip(plain, ray_rates))],
              summary={"ray_overhead_by_round": paired[0], "first_half": paired[1], "second_half": paired[2],
                       "workers_cpu_per_token_ray_vs_plain": work, "other_processes_cores_ray_minus_plain": others,
                       "best_plain_tokens_per_s": max(r["tokens_per_s"] for r in plain),
                       "best_ray_tokens_per_s": max(r["tokens_per_s"] for r in ray_rates)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
