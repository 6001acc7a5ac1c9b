"""The training step on one GPU with plain torch: FSDP2 + bf16 + torch.compile, tokens/s and MFU.

    python benchmarks/train_gpu.py --size 125m --batch 16 --seq-len 1024      # on a GPU
    python benchmarks/train_gpu.py --size 1b --batch 4 --seq-len 2048 --activation-checkpointing
    python benchmarks/train_gpu.py --size tiny --device cpu --no-compile      # smoke check

Plain torch on purpose (the Ray wheel is too large for the GPU machines we borrow): the same
model, FSDP2 wrapping (each block, then the root) and MixedPrecisionPolicy as
`elasticml.train.loop`, on a world of one process (NCCL on GPU, gloo on CPU). Side by side in
one run: eager vs torch.compile'd blocks. MFU = model FLOP/s / peak, with model FLOPs per token
= 6 N + 12 L d T (`ModelConfig.flops_per_token`); --peak-tflops defaults to 989 (H100 SXM dense bf16).
Random tokens: the step's speed does not depend on the data. Each variant's rate and MFU go to
benchmarks/results/train_gpu.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F


import record  # benchmarks/record.py: a script's own folder is first on sys.path

from elasticml.models import SIZES, build_model  # noqa: E402


def run(args: argparse.Namespace, *, compiled: bool) -> tuple[float, float]:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    torch.manual_seed(0)
    model = build_model(args.size).to(device)
    if args.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        model.blocks = torch.nn.ModuleList(checkpoint_wrapper(b) for b in model.blocks)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.device == "gpu" \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        if compiled:
            block.compile()
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device == "gpu")
    x = torch.randint(0, 256, (args.batch, args.seq_len + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> None:
        loss = F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    tokens_per_s = args.batch * args.seq_len * args.steps / (time.perf_counter() - t0)
    mfu = tokens_per_s * SIZES[args.size].flops_per_token(args.seq_len) / (args.peak_tflops * 1e12)
    return tokens_per_s, mfu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="125m", choices=list(SIZES))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="eager only (compile on CPU mostly costs time)")
    record.add_arguments(p, __file__)
    args = p.parse_args()
    run_record = record.start(__file__, args)
    if args.seq_len > SIZES[args.size].max_seq_len:
        p.error(f"--seq-len {args.seq_len} exceeds the {args.size} model's context {SIZES[args.size].max_seq_len}")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl" if args.device == "gpu" else "gloo", rank=0, world_size=1)
    if args.device == "gpu":
        torch.cuda.set_device(0)
    name = torch.cuda.get_device_name(0) if args.device == "gpu" else "cpu"
    print(f"{name}: model {args.size} ({SIZES[args.size].num_params() / 1e6:.0f}M params), batch {args.batch} x "
          f"{args.seq_len} tokens, {args.steps} timed steps, peak {args.peak_tflops} TFLOP/s")
    variants = [("eager", False)] + ([] if args.no_compile else [("torch.compile", True)])
    rows = []
    for label, compiled in variants:
        tokens_per_s, mfu = run(args, compiled=compiled)
        print(f"  {label:14s} {tokens_per_s:12.0f} tokens/s   MFU {mfu:.1%}")
        rows.append({"variant": label, "tokens_per_s": tokens_per_s, "mfu": mfu})
    dist.destroy_process_group()
    run_record.write(samples=rows, summary={r["variant"]: r["tokens_per_s"] for r in rows}, device=name,
                     params=SIZES[args.size].num_params())


if __name__ == "__main__":
    main()
