"""GPU replicas: bf16 vs fp32 generation tokens/s, one request and a batch of 32, side by side.

    python benchmarks/serve_gpu.py --size 125m            # on a GPU
    python benchmarks/serve_gpu.py --size tiny --device cpu   # smoke check (fp32 only)

Plain torch (no Ray on the GPU machines we borrow): the replica's own code path,
`elasticml.serve.precision.prepare` then `elasticml.serve.generate.generate_batch`, greedy,
--tokens bytes per request, random weights (speed does not depend on the values). Each precision
and batch is timed --rounds times, the rounds interleaved; every round's rate goes to
benchmarks/results/serve_gpu.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


import record  # benchmarks/record.py: a script's own folder is first on sys.path

from elasticml.models import SIZES, build_model  # noqa: E402
from elasticml.serve.generate import Prompt, generate_batch  # noqa: E402
from elasticml.serve.precision import prepare  # noqa: E402


def rate(model: torch.nn.Module, batch: int, tokens: int, cuda: bool) -> float:
    prompts = [Prompt(text=f"request {i}: def main(".encode(), max_tokens=tokens) for i in range(batch)]
    generate_batch(model, prompts[:1])
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    generate_batch(model, prompts)
    if cuda:
        torch.cuda.synchronize()
    return batch * tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="125m", choices=list(SIZES))
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    p.add_argument("--rounds", type=int, default=3, help="times each precision and batch is timed, interleaved")
    record.add_arguments(p, __file__)
    args = p.parse_args()
    run = record.start(__file__, args)
    cuda = args.device == "gpu"
    precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    device = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"{device}: model {args.size}, {args.tokens} tokens per request")
    models = {}
    for precision in precisions:
        torch.manual_seed(0)
        models[precision] = prepare(build_model(args.size), device=args.device, precision=precision)
    rates: dict[str, list[float]] = {f"{precision} batch {batch}": [] for precision in precisions for batch in (1, 32)}
    for _ in range(args.rounds):
        for precision, model in models.items():
            for batch in (1, 32):
                rates[f"{precision} batch {batch}"].append(rate(model, batch, args.tokens, cuda))
    for name, values in rates.items():
        print(f"  {name:14s}: {statistics.median(values):10.0f} tokens/s (median; {min(values):.0f}-{max(values):.0f})")
    run.write(samples=rates, summary={name: statistics.median(v) for name, v in rates.items()}, device=device)


if __name__ == "__main__":
    main()
