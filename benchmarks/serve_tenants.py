"""Fair share over real HTTP: one tenant floods at 10x another's rate; what does the other see?

    python benchmarks/serve_tenants.py [--rate 6] [--flood 10] [--seconds 20] [--rounds 2] [--tokens 32] [--json OUT]

One local Ray instance and two apps on the same checkpoint and replica settings (the shipped CPU
config: int8, batches of up to 16 with a 5 ms wait, 32 requests in flight a replica, 64 queued):
- "fair": keys for tenants A and B and the default share (each may hold half the replica's
  in-flight requests; beyond it its own requests get 429 at once),
- "no share": the same keys with `tenant_share: 1` (no per-tenant limit; Serve's own queue and
  backpressure only).
Open-loop load to 127.0.0.1 (a request every 1/rate s whatever the answers do): tenant B at
--rate requests/s, in three phases per round on each app: B alone, then B while A sends --flood
times B's rate. Rounds alternate the apps' order. Printed: B's p50 and p99 latency, B's 429s and
errors, A's answered and refused requests, and B's p99 under the flood relative to B alone on the
same app in the same round. Every request's status and latency, phase by phase, goes to
benchmarks/results/serve_tenants.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import torch


import record  # benchmarks/record.py: a script's own folder is first on sys.path

warnings.filterwarnings("ignore")


async def open_loop(client: httpx.AsyncClient, url: str, key: str, rate: float, seconds: float, tag: str,
                    tokens: int) -> list[tuple[int, float]]:
    """(status, seconds) of each request sent at `rate` per second for `seconds`."""
    results: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        t = time.perf_counter()
        try:
            r = await client.post(url, json={"prompt": f"{tag} request {i}: def f(", "max_tokens": tokens},
                                  headers={"X-API-Key": key})
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        results.append((status, time.perf_counter() - t))

    tasks, start, i = [], time.perf_counter(), 0
    while (now := time.perf_counter()) - start < seconds:
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i / rate - now))
    await asyncio.gather(*tasks)
    return results


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="small")
    ap.add_argument("--rate", type=float, default=6.0, help="tenant B's requests per second")
    ap.add_argument("--flood", type=float, default=10.0, help="tenant A's rate as a multiple of B's")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--cpus", type=float, default=2)
    record.add_arguments(ap, __file__)
    args = ap.parse_args()
    run = record.start(__file__, args)

    import ray
    from ray import serve

    from elasticml.checkpoint_key import KEY_ENV, make_cluster_key
    from elasticml.cluster.local import free_port
    from elasticml.models import SIZES, build_model
    from elasticml.serve.auth import new_key
    from elasticml.serve.completion import build_app
    from elasticml.train.checkpoint import write_checkpoint

    # The Ray that ray.init starts below is this run's cluster: its key (unless the shell names one),
    # which its replicas inherit with this process's environment.
    os.environ.setdefault(KEY_ENV, str(make_cluster_key("benchmarks")))

    folder = Path(tempfile.mkdtemp()) / "ckpt"
    torch.manual_seed(0)
    write_checkpoint(folder, model_state=build_model(args.size).state_dict(), optim_state=None,
                     model_config=SIZES[args.size], step=1)
    (key_a, digest_a), (key_b, digest_b) = new_key(), new_key()
    common = {"checkpoint": str(folder), "num_cpus": args.cpus, "cache_size": 0,
              "api_keys": {"A": digest_a, "B": digest_b}}
    apps = {"fair": common, "no share": {**common, "tenant_share": 1}}
    ray.init(num_cpus=int(args.cpus * len(apps)) + 1, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"})
    urls = {}
    for k, (name, cfg) in enumerate(apps.items()):
        serve.run(build_app(cfg), name=f"t{k}", route_prefix=f"/t{k}")
        urls[name] = f"http://127.0.0.1:{port}/t{k}/v1/completions"

    async def measure(url: str, r: int) -> dict:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            await open_loop(client, url, key_b, 2, 2, f"warm {r}", args.tokens)
            alone = await open_loop(client, url, key_b, args.rate, args.seconds, f"B alone {r}", args.tokens)
            b, a = await asyncio.gather(
                open_loop(client, url, key_b, args.rate, args.seconds, f"B flood {r}", args.tokens),
                open_loop(client, url, key_a, args.rate * args.flood, args.seconds, f"A flood {r}", args.tokens))
        return {"alone": alone, "flooded": b, "A": a}

    rows: dict[str, list[dict]] = {name: [] for name in apps}
    names = list(apps)
    for r in range(args.rounds):
        for name in names[r % 2:] + names[:r % 2]:
            rows[name].append(asyncio.run(measure(urls[name], r)))
    stats = httpx.get(urls["fair"].replace("/v1/completions", "/v1/stats"), headers={"X-API-Key": key_b}).json()
    serve.shutdown()
    ray.shutdown()

    print(f"model {args.size}, {args.tokens} tokens a request, B at {args.rate:g}/s, A at {args.rate * args.flood:g}/s "
          f"during the flood, {args.seconds:g} s a phase, {args.rounds} rounds")
    print("| app | round | B alone p50 / p99 ms | B flooded p50 / p99 ms | B p99 flooded / alone | "
          "B 429 / errors | A answered / 429 / errors |")
    print("|---|---|---|---|---|---|---|")
    table: list[dict] = []
    for name in names:
        for r, row in enumerate(rows[name]):
            def ok(results: list[tuple[int, float]]) -> list[float]:
                return [s * 1e3 for status, s in results if status == 200]

            alone, flooded = ok(row["alone"]), ok(row["flooded"])
            b429 = sum(status == 429 for status, _ in row["alone"] + row["flooded"])
            berr = sum(status not in (200, 429) for status, _ in row["alone"] + row["flooded"])
            a = [status for status, _ in row["A"]]
            ratio = p(flooded, 99) / p(alone, 99) if flooded and alone else float("nan")
            print(f"| {name} | {r} | {p(alone, 50):.0f} / {p(alone, 99):.0f} | "
                  f"{p(flooded, 50) if flooded else float('nan'):.0f} / {p(flooded, 99) if flooded else float('nan'):.0f} | "
                  f"{ratio:.2f}x | {b429} / {berr} | {a.count(200)} / {a.count(429)} / "
                  f"{sum(s not in (200, 429) for s in a)} |")
            table.append({"app": name, "round": r, "b_alone_p50_ms": p(alone, 50), "b_alone_p99_ms": p(alone, 99),
                          "b_flooded_p50_ms": p(flooded, 50) if flooded else None,
                          "b_flooded_p99_ms": p(flooded, 99) if flooded else None,
                          "b_p99_flooded_over_alone": ratio, "b_429": b429, "b_errors": berr,
                          "a_answered": a.count(200), "a_429": a.count(429),
                          "a_errors": sum(s not in (200, 429) for s in a)})
    # B is under its share, so the next batch always has room for it: it waits at most for the batch
    # running when it arrives, then runs in the next one.
    from elasticml.serve.config import ServeConfig

    wait_ms = ServeConfig.__dataclass_fields__["batch_wait_ms"].default
    bound = 2 * stats["longest_batch_ms"] + wait_ms
    worst = max(p([s * 1e3 for status, s in row["flooded"] if status == 200], 99) for row in rows["fair"])
    print(f"fair app: {stats['batches']} batches, mean size {stats['mean_batch_size']:.1f}, mean "
          f"{stats['mean_batch_ms']:.0f} ms, longest {stats['longest_batch_ms']:.0f} ms; the bound for a tenant under "
          f"its share, 2 x the longest batch + the {wait_ms:g} ms wait = {bound:.0f} ms; B's worst p99 flooded {worst:.0f} ms "
          f"({'within' if worst <= bound else 'OVER'} the bound)")
    # (status, seconds) of every request, in the order they were answered, phase by phase.
    raw = {name: [{phase: [(status, round(s, 4)) for status, s in got] for phase, got in row.items()}
                  for row in rows[name]] for name in names}
    run.write(samples=raw, summary={"rows": table, "fair_stats": stats, "bound_ms": bound, "worst_b_p99_flooded_ms": worst,
                                    "within_bound": worst <= bound})


if __name__ == "__main__":
    main()
