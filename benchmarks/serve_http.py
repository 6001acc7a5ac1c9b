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
- overhead (what is ours on the request path): p50 latency of a 1-token completion on the
  no-batching replica minus p50 of the same request to a bare Serve deployment that runs the same
  model call (`generate_batch` on the same int8 model, in a thread, threads = its CPUs) and
  returns the same JSON: Serve's proxy, routing and replica hop and the model are in both, so the
  difference is our ingress, validation, keys, cache, stats and response. The model's time in a
  replica is not its time in a tight loop in this process (idle intra-op threads are woken per
  request there), so the floor is measured in a replica, not here. Floors too: p50 of the same
  JSON POST and of a GET on a bare deployment with no model, and of GET /healthz.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
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
    p.add_argument("--parts", default="batching,overhead", help="which measurements: batching, overhead or both")
    args = p.parse_args()

    import ray
    from ray import serve

    from elasticml.checkpoint_key import KEY_ENV, make_cluster_key
    from elasticml.cluster.local import free_port
    from elasticml.models import SIZES, build_model
    from elasticml.serve.completion import build_app
    from elasticml.serve.generate import Prompt, generate_batch
    from elasticml.serve.precision import prepare
    from elasticml.train.checkpoint import load_model, write_checkpoint

    # The Ray that ray.init starts below is this run's cluster: its key (unless the shell names one),
    # which its replicas inherit with this process's environment.
    os.environ.setdefault(KEY_ENV, str(make_cluster_key("benchmarks")))

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
    ray.init(num_cpus=int(args.cpus * (len(variants) + 1)) + 1, logging_level="ERROR", log_to_driver=False)
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

    @serve.deployment(ray_actor_options={"num_cpus": args.cpus})
    class BareModel:
        """The least a Serve program can do for a completion: the same model call, no checks."""

        def __init__(self) -> None:
            import asyncio

            torch.set_num_threads(int(args.cpus))
            self.model = prepare(load_model(folder)[0], device="cpu", precision="int8")
            self.to_thread = asyncio.to_thread

        async def __call__(self, request: Any) -> Any:
            body = await request.json()
            out = await self.to_thread(generate_batch, self.model, [Prompt(text=body["prompt"].encode(),
                                                                             max_tokens=body["max_tokens"])])
            return {"completion": out[0].decode("utf-8", errors="replace"), "tokens": len(out[0])}

    serve.run(Bare.bind(), name="bare", route_prefix="/bare")
    serve.run(BareModel.bind(), name="bare-model", route_prefix="/bare-model")
    routes = {}
    for k, (name, extra) in enumerate(variants.items()):
        routes[name] = f"/v{k}"
        serve.run(build_app({**common, **extra}), name=f"v{k}", route_prefix=routes[name])
        one(routes[name], 0, 0, 2)  # warm-up

    names = list(variants)
    ratios: dict[str, list[float]] = {name: [] for name in names}
    rates: dict[str, list[float]] = {name: [] for name in names}
    alone: dict[str, list[float]] = {name: [] for name in names}
    parts = set(args.parts.split(","))
    for r in range(args.rounds if "batching" in parts else 0):
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

    floors: dict[str, list[float]] = {"completion": [], "bare + model": [], "healthz": [], "bare GET": [],
                                      "bare POST": []}

    def body(j: int) -> dict:
        return {"prompt": f"client 999 request {j}: def f(", "max_tokens": 1}

    calls = {
        "completion": lambda j: one(routes[names[0]], 999, j, 1),
        "bare + model": lambda j: client.post(f"{base}/bare-model", json=body(j)).raise_for_status(),
        "healthz": lambda j: client.get(f"{base}{routes[names[0]]}/healthz").raise_for_status(),
        "bare GET": lambda j: client.get(f"{base}/bare").raise_for_status(),
        "bare POST": lambda j: client.post(f"{base}/bare", json=body(j)).raise_for_status(),
    }
    for j in range(args.latency_samples if "overhead" in parts else 0):  # interleaved, so each sees the same machine
        for what, call in calls.items():
            t = time.perf_counter()
            call(j)
            floors[what].append(time.perf_counter() - t)
    serve.shutdown()
    ray.shutdown()

    print(f"model {args.size}, {args.clients} clients x {args.requests} requests, {args.tokens} tokens each, "
          f"replica {args.cpus} CPUs (int8), {args.rounds} rounds")
    for name in names if "batching" in parts else []:
        each = ", ".join(f"{x:.2f}x" for x in ratios[name])
        print(f"  {name:34s} {statistics.median(rates[name]):7.1f} requests/s  "
              f"median {statistics.median(ratios[name]):.2f}x ({each})   "
              f"a lone request p50 {statistics.median(alone[name]) * 1e3:6.1f} ms")
    p50 = {what: statistics.median(v) * 1e3 for what, v in floors.items() if v}
    if "overhead" in parts:
        print(f"1-token completion p50 over HTTP: ours {p50['completion']:.2f} ms, bare Serve + the same model call "
              f"{p50['bare + model']:.2f} ms: ours adds {p50['completion'] - p50['bare + model']:.2f} ms "
              f"(p90 ours {statistics.quantiles(floors['completion'], n=10)[-1] * 1e3:.2f} ms, "
              f"bare + model {statistics.quantiles(floors['bare + model'], n=10)[-1] * 1e3:.2f} ms)")
        print("floors, p50: " + ", ".join(f"{what} {p50[what]:.2f} ms" for what in ("healthz", "bare GET", "bare POST")))

if __name__ == "__main__":
    main()
