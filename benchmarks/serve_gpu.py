"""GPU replicas: bf16 vs fp32 generation tokens/s, one request and a batch of 32, side by side.

    python benchmarks/serve_gpu.py --size 125m            # on a GPU
    python benchmarks/serve_gpu.py --size tiny --device cpu   # smoke check (fp32 only)

Plain torch (no Ray on the GPU machines we borrow): the replica's own code path,
`elasticml.serve.precision.prepare` then `elasticml.serve.generate.generate_batch`, greedy,
--tokens bytes per request, random weights (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import time

import torch

from elasticml.models import SIZES, build_model
from elasticml.serve.generate import Prompt, generate_batch
from elasticml.serve.precision import prepare


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
    args = p.parse_args()
    cuda = args.device == "gpu"
    precisions = ["fp32", "bf16"] if cuda else ["fp32"]
    print(f"{torch.cuda.get_device_name(0) if cuda else 'cpu'}: model {args.size}, {args.tokens} tokens per request")
    for precision in precisions:
        torch.manual_seed(0)
        model = prepare(build_model(args.size), device=args.device, precision=precision)
        for batch in (1, 32):
            print(f"  {precision:5s} batch {batch:3d}: {rate(model, batch, args.tokens, cuda):10.0f} tokens/s")


if __name__ == "__main__":
    main()
