"""Serving over real HTTP: dynamic batching vs none at 32 concurrent clients, and Serve's per-request overhead.

    python benchmarks/serve_http.py [--size small] [--clients 32] [--requests 6] [--tokens 16]
                                    [--rounds 3] [--batch-wait-ms 5,10,20]

One local Ray instance, one Serve replica per variant, all deployed at once (the shipped CPU
config: int8, threads = its CPUs), distinct prompts and the response cache off, so every request
runs the model:
- throughput: --clients threads each send --requests completions to a replica with
  max_batch_size=1 (no batching) and to one with max_batch_size=32 per --batch-wait-ms (batching),
  --rounds times in rotating order; the ratio to no batching is taken within each round; then the
  p50 latency of a lone request (one client) on each: what waiting for a batch costs without load;
- overhead: p50 latency of a 1-token completion over HTTP (proxy, routing, FastAPI, the replica)
  minus p50 of the same call on the same int8 model in this process; and, as floors, p50 of
  GET /healthz (our app, no model) and of GET and of the same JSON POST on a bare Serve deployment
  (no FastAPI, no model).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-wait-ms", default="5,10,20",
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
    common = {"checkpoint": str(folder), "num_cpus": args.cpus, "cache_size": 0, "max_queued_requests": 1000}
    variants = {
        "no batching (max_batch_size=1)": {"max_batch_size": 1, "batch_wait_ms": 0, "max_ongoing_requests": 64},
        **{f"batching (max 32, wait {w:g} ms)": {"max_batch_size": 32, "batch_wait_ms": w, "max_ongoing_requests": 64}
           for w in map(float, args.batch_wait_ms.split(","))},
    }
    # Every variant is deployed at once (each reserves --cpus; an idle replica costs no CPU time) and
    # the rounds alternate between them in a rotating order, so a noisy neighbour on the machine
    # hits all variants alike; ratios are taken within a round.
    ray.init(num_cpus=int(args.cpus * len(variants)) + 1, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"})
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=args.clients * 2))

    def one(route: str, i: int, j: int, tokens: int) -> None:
        r = client.post(f"{base}{route}/v1/completions",
                        json={"prompt": f"client {i} request {j}: def f(", "max_tokens": tokens})
        r.raise_for_status()

    # Serve's own floor on this machine: a bare deployment (no FastAPI, no model).
    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Bare:
        async def __call__(self, request: Any) -> Any:
            return await request.json() if request.method == "POST" else "ok"

    serve.run(Bare.bind(), name="bare", route_prefix="/bare")
    routes = {}
    for k, (name, extra) in enumerate(variants.items()):
        routes[name] = f"/v{k}"
        serve.run(build_app({**common, **extra}), name=f"v{k}", route_prefix=routes[name])
        one(routes[name], 0, 0, 2)  # warm-up

    names = list(variants)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in names}
    alone: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda i: [one(routes[name], i, j, args.tokens) for j in range(args.requests)],
                              range(args.clients)))
            rates[name].append(args.clients * args.requests / (time.perf_counter() - t0))
            for j in range(10):  # the price of waiting for a batch: one client, nobody to batch with
                t = time.perf_counter()
                one(routes[name], 998, r * 100 + j, args.tokens)
                alone[name].append(time.perf_counter() - t)
        for name in names:
            ratios[name].append(rates[name][-1] / rates[names[0]][-1])

    floors: dict[str, list[float]] = {"completion": [], "healthz": [], "bare GET": [], "bare POST": []}
    calls = {
        "completion": lambda j: one(routes[names[0]], 999, j, 1),
        "healthz": lambda j: client.get(f"{base}{routes[names[0]]}/healthz").raise_for_status(),
        "bare GET": lambda j: client.get(f"{base}/bare").raise_for_status(),
        "bare POST": lambda j: client.post(f"{base}/bare", json={"prompt": f"client 999 request {j}: def f(",
                                                                 "max_tokens": 1}).raise_for_status(),
    }
    for j in range(args.latency_samples):  # interleaved, so each sees the same machine
        for what, call in calls.items():
            t = time.perf_counter()
            call(j)
            floors[what].append(time.perf_counter() - t)
    lat = floors["completion"]
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
          f"replica {args.cpus} CPUs (int8), {args.rounds} rounds")
    for name in names:
        each = ", ".join(f"{x:.2f}x" for x in ratios[name])
        print(f"  {name:34s} {statistics.median(rates[name]):7.1f} requests/s  "
              f"median {statistics.median(ratios[name]):.2f}x ({each})   "
              f"a lone request p50 {statistics.median(alone[name]) * 1e3:6.1f} ms")
    http_p50, direct_p50 = statistics.median(lat) * 1e3, statistics.median(direct) * 1e3
    print(f"1-token completion p50: over HTTP {http_p50:.2f} ms, direct {direct_p50:.2f} ms, "
          f"Serve overhead {http_p50 - direct_p50:.2f} ms (p90 HTTP {statistics.quantiles(lat, n=10)[-1] * 1e3:.2f} ms)")
    print("floors, p50: " + ", ".join(f"{what} {statistics.median(floors[what]) * 1e3:.2f} ms"
                                       for what in ("healthz", "bare GET", "bare POST")))


if __name__ == "__main__":
    main()
