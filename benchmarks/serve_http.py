"""Serving over real HTTP: dynamic batching vs none at 32 concurrent clients, and Serve's per-request overhead.

    python benchmarks/serve_http.py [--size small] [--clients 32] [--requests 6] [--tokens 16]

One local Ray instance, one Serve replica per variant (the shipped CPU config: int8, threads = its
CPUs), distinct prompts and the response cache off, so every request runs the model:
- throughput: --clients threads each send --requests completions, once to a replica with
  max_batch_size=1 (no batching) and once to one with max_batch_size=32 and each --batch-wait-ms (batching), side by side,
  and the p50 latency of a lone request (one client) on each: what waiting for a batch costs when there is no load;
- overhead: p50 latency of a 1-token completion over HTTP (proxy, routing, FastAPI, the replica)
  minus p50 of the same call on the same int8 model in this process; and, as the floor, p50 of
  GET /healthz, which runs no model.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import torch

warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=6)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--cpus", type=float, default=2)
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--batch-wait-ms", default="5,20",
                   help="comma-separated batch waits; one batching variant each")
    args = p.parse_args()

    import ray
    from ray import serve

    from elasticml.cluster.local import free_port
    from elasticml.models import SIZES, build_model
    from elasticml.serve.completion import build_app
    from elasticml.serve.generate import Prompt, generate_batch
    from elasticml.serve.precision import prepare
    from elasticml.train.checkpoint import load_model, write_checkpoint

    folder = Path(tempfile.mkdtemp()) / "ckpt"
    torch.manual_seed(0)
    write_checkpoint(folder, model_state=build_model(args.size).state_dict(), optim_state=None,
                     model_config=SIZES[args.size], step=1)
    ray.init(num_cpus=int(args.cpus) + 1, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"})
    common = {"checkpoint": str(folder), "num_cpus": args.cpus, "cache_size": 0, "max_queued_requests": 1000}
    variants = {
        "no batching (max_batch_size=1)": {"max_batch_size": 1, "batch_wait_ms": 0, "max_ongoing_requests": 64},
        **{f"batching (max 32, wait {w:g} ms)": {"max_batch_size": 32, "batch_wait_ms": w, "max_ongoing_requests": 64}
           for w in map(float, args.batch_wait_ms.split(","))},
    }
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=args.clients * 2))

    def one(route: str, i: int, j: int, tokens: int) -> None:
        r = client.post(f"{base}{route}/v1/completions",
                        json={"prompt": f"client {i} request {j}: def f(", "max_tokens": tokens})
        r.raise_for_status()

    rates: dict[str, float] = {}
    alone: dict[str, list[float]] = {}
    for k, (name, extra) in enumerate(variants.items()):
        route = f"/v{k}"
        serve.run(build_app({**common, **extra}), name=f"v{k}", route_prefix=route)
        one(route, 0, 0, 2)  # warm-up
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda i: [one(route, i, j, args.tokens) for j in range(args.requests)],
                          range(args.clients)))
        rates[name] = args.clients * args.requests / (time.perf_counter() - t0)
        alone[name] = []  # the price of waiting for a batch: one client, nobody to batch with
        for j in range(20):
            t = time.perf_counter()
            one(route, 998, j, args.tokens)
            alone[name].append(time.perf_counter() - t)
        if k == 0:
            lat, health = [], []
            for j in range(args.latency_samples):
                t = time.perf_counter()
                one(route, 999, j, 1)
                lat.append(time.perf_counter() - t)
                t = time.perf_counter()
                client.get(f"{base}{route}/healthz").raise_for_status()
                health.append(time.perf_counter() - t)
        serve.delete(f"v{k}")
    model = prepare(load_model(folder)[0], device="cpu", precision="int8")
    torch.set_num_threads(int(args.cpus))
    direct = []
    for j in range(args.latency_samples):
        t = time.perf_counter()
        generate_batch(model, [Prompt(text=f"client 999 request {j}: def f(".encode(), max_tokens=1)])
        direct.append(time.perf_counter() - t)
    serve.shutdown()
    ray.shutdown()

    print(f"model {args.size}, {args.clients} clients x {args.requests} requests, {args.tokens} tokens each, "
          f"replica {args.cpus} CPUs (int8)")
    first = next(iter(rates.values()))
    for name, rate in rates.items():
        print(f"  {name:34s} {rate:7.1f} requests/s  {rate * args.tokens:8.0f} tokens/s  {rate / first:.2f}x"
              f"   a lone request p50 {statistics.median(alone[name]) * 1e3:6.1f} ms")
    http_p50, direct_p50 = statistics.median(lat) * 1e3, statistics.median(direct) * 1e3
    print(f"1-token completion p50: over HTTP {http_p50:.2f} ms, direct {direct_p50:.2f} ms, "
          f"Serve overhead {http_p50 - direct_p50:.2f} ms (p90 HTTP {statistics.quantiles(lat, n=10)[-1] * 1e3:.2f} ms)")
    print(f"floor: GET /healthz (no model) p50 {statistics.median(health) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
