"""Serving over real HTTP: the shipped default path against bare Serve with the same batching, batching
vs none at 32 concurrent clients, and our part of a request with batching off.

    python benchmarks/serve_http.py                    # every part; raw results: benchmarks/results/serve_http.json
    python benchmarks/serve_http.py --parts shipped    # the shipped default against bare Serve only
    python benchmarks/serve_http.py --parts batching,overhead --tokens 32 --batch-wait-ms 5,10,20

One local Ray instance; a part's sides are all deployed at once (an idle replica costs no CPU time) and
measured in turn, the order alternating every round, so a noisy neighbour hits them alike; comparisons
are taken within a round. No app sees a prompt twice.

shipped: the completion app built from `serve_apps/completion.yaml`'s args (--shipped-config), changed
only where a one-node benchmark must: `checkpoint` (a fresh one of --size); `market: any` (the Ray
started here has no market labels, so an on-demand selector would place nothing; where a replica runs is
not on the request path); `max_replicas: 1` (the shipped 2 would let the autoscaler add a replica under
load and compare two replicas with one; the predictive policy still runs); `api_keys_file` (a new file
with one tenant's key, made by `elasticml serve keygen --file`, sent with every request). So keys are
checked, the response cache is on at its shipped size (every answer misses and is stored), batching
runs at the shipped max_batch_size and batch_wait_ms. Against it, bare Serve: a plain `__call__`
deployment with the same replica options, Serve limits (max_ongoing_requests, max_queued_requests),
model call (`generate_batch` on the same model, in a thread, as many torch threads) and batching: our
`Batcher` with the same max_batch_size and wait. Not Serve's `@serve.batch`: it forms batches otherwise
(the next one while one runs, from what arrives within the wait; benchmarks/README.md), so the ratio
would compare two batching policies, not what our path adds to a request (ours also counts completions
whose body is still being read as company worth waiting for: that is ours). The policy is measured apart:
in the batching part, and here by a lone request on the shipped app with max_batch_size=1. Each round:
--lone-requests requests per side from one client, one to each side in turn (the order reversed every
other turn: a noisy moment of the shared machine hits every side alike), their p50 per side; then, side
by side, the throughput of --clients threads x --requests each (the max_batch_size=1 app: the lone
requests only).

cost: the shipped app, a second deployment of it, then the same app with one feature off at a time (keys, the
cache, the predictive policy, any autoscaling), and bare Serve with the same batching, measured as in the shipped
part. The second deployment says how far two deployments of identical code differ here: a feature's cost is
told only where it exceeds that.

batching: replicas of --cpus CPUs, int8, cache off, max_batch_size=1 against 32 per --batch-wait-ms:
throughput of --clients threads (ratio to no batching within each round), then 10 requests from one
client per variant per round.

overhead (batching off, no keys, cache off): p50 of a 1-token completion on the no-batching replica minus
p50 of the same request to a bare deployment running the same model call (both pay Serve's proxy,
routing and replica hop, and the model); floors: the same JSON POST and a GET on a bare deployment with
no model, and our GET /healthz.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import record  # benchmarks/record.py: a script's own folder is first on sys.path
import torch

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parent.parent


def shown(s: dict[str, float], unit: str = "", digits: int = 2) -> str:
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f} to {s['max']:.{digits}f})"


def poster(client: httpx.Client, url: str, tokens: int, headers: dict[str, str] | None = None) -> Callable[[str], None]:
    def post(prompt: str) -> None:
        client.post(url, json={"prompt": prompt, "max_tokens": tokens}, headers=headers).raise_for_status()
    return post


def lone(post: Callable[[str], None], tag: str, n: int) -> list[float]:
    """Seconds for each of `n` requests sent one after another by one client: nobody to batch with."""
    took = []
    for j in range(n):
        t = time.perf_counter()
        post(f"lone {tag} request {j:03d}: def f(")
        took.append(time.perf_counter() - t)
    return took


def lone_interleaved(posts: dict[str, Callable[[str], None]], order: list[str], tag: str, n: int) -> dict[str, list[float]]:
    """`lone` for several sides at once, request by request: one request to each side in turn (the order
    reversed every other turn), so that each side's requests see the same moments of a noisy machine."""
    took: dict[str, list[float]] = {side: [] for side in order}
    for j in range(n):
        for side in order if j % 2 == 0 else order[::-1]:
            t = time.perf_counter()
            posts[side](f"lone {side} {tag} request {j:03d}: def f(")
            took[side].append(time.perf_counter() - t)
    return took


def throughput(post: Callable[[str], None], tag: str, clients: int, requests: int) -> float:
    """Requests/s of `clients` threads each sending `requests` one after another."""
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda i: [post(f"client {i:02d} {tag} request {j:03d}: def f(") for j in range(requests)],
                      range(clients)))
    return clients * requests / (time.perf_counter() - t0)


def shipped_args(path: Path, folder: Path, key_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped app's args and the overrides applied to them (see the module's docstring)."""
    from elasticml.yamlio import load_yaml

    shipped = load_yaml(path, source=str(path), agree_with_yaml11=True)["applications"][0]["args"]
    overrides = {"checkpoint": str(folder), "market": "any", "max_replicas": 1, "api_keys_file": str(key_file)}
    return {**shipped, **overrides}, overrides


def bare_batched(cfg: Any) -> Any:
    """Bare Serve with our batching: the replica options, Serve limits, model call and `Batcher` of `cfg`."""
    from ray import serve

    from elasticml.serve.batching import Batcher
    from elasticml.serve.completion import replica_options
    from elasticml.serve.generate import Prompt, generate_batch
    from elasticml.serve.precision import prepare
    from elasticml.serve.routing import router_config
    from elasticml.train.checkpoint import load_model

    @serve.deployment(num_replicas=1, ray_actor_options=replica_options(cfg), max_ongoing_requests=cfg.max_ongoing_requests,
                      max_queued_requests=cfg.max_queued_requests,
                      request_router_config=router_config(cfg.router_max_backoff_s))
    class BareBatched:
        def __init__(self) -> None:
            import asyncio

            torch.set_num_threads(max(1, int(cfg.num_cpus)))
            model = prepare(load_model(cfg.checkpoint, allowed_modules=tuple(cfg.allowed_model_modules))[0],
                            device=cfg.device, precision=cfg.resolved_precision)

            async def run(prompts: list[Any]) -> list[bytes]:
                return await asyncio.to_thread(generate_batch, model, prompts)

            self.batcher = Batcher(run, max_batch_size=cfg.max_batch_size, wait_s=cfg.batch_wait_ms / 1000)

        async def __call__(self, request: Any) -> Any:
            body = await request.json()
            out = await self.batcher.submit(Prompt(text=body["prompt"].encode(), max_tokens=body["max_tokens"]))
            return {"completion": out.decode("utf-8", errors="replace"), "tokens": len(out)}

    return BareBatched.bind()


GOALS = {"p50_added_ms": ("<=", 1.0, " ms"), "throughput_ratio": (">=", 1.0, "x"), "batching_added_ms": ("<=", 1.0, " ms")}
"""Issue 30's goals for the shipped path: ms ours adds at 1 client, ours/bare at --clients, ms batching adds."""


def key_headers(raw: dict[str, Any]) -> dict[str, str]:
    """A new tenant's key, made by `elasticml serve keygen` into the shipped app's key file, as request headers."""
    made = subprocess.run([sys.executable, "-m", "elasticml.cli", "serve", "keygen", "bench", "--file",
                           raw["api_keys_file"], "--json"], capture_output=True, text=True, check=True)
    return {"Authorization": f"Bearer {json.loads(made.stdout)['key']}"}


def shipped_part(args: argparse.Namespace, raw: dict[str, Any], overrides: dict[str, Any], headers: dict[str, str],
                 client: httpx.Client, base: str) -> dict[str, Any]:
    from ray import serve

    from elasticml.serve.completion import build_app
    from elasticml.serve.config import ServeConfig

    cfg = ServeConfig.from_dict(dict(raw))
    serve.run(build_app(raw), name="shipped", route_prefix="/shipped")
    serve.run(build_app({**raw, "max_batch_size": 1}), name="shipped-unbatched", route_prefix="/shipped-unbatched")
    serve.run(bare_batched(cfg), name="bare-batched", route_prefix="/bare-batched")
    posts = {"ours": poster(client, f"{base}/shipped/v1/completions", args.tokens, headers),
             "bare": poster(client, f"{base}/bare-batched", args.tokens),
             "ours, no batching": poster(client, f"{base}/shipped-unbatched/v1/completions", args.tokens, headers)}
    for side, post in posts.items():
        post(f"warm-up {side}: def f(")
    rounds = []
    for r in range(args.rounds):
        order = list(posts) if r % 2 == 0 else list(posts)[::-1]
        took = lone_interleaved(posts, order, f"r{r:02d}", args.lone_requests)
        row: dict[str, Any] = {"round": r, "order": order, "lone_s": took, "per_s": {},
                               "lone_p50_ms": {side: statistics.median(t) * 1e3 for side, t in took.items()}}
        for side in order:
            if side != "ours, no batching":
                row["per_s"][side] = throughput(posts[side], f"r{r:02d}", args.clients, args.requests)
        p50, rate = row["lone_p50_ms"], row["per_s"]
        row.update(p50_added_ms=p50["ours"] - p50["bare"], p50_ratio=p50["ours"] / p50["bare"],
                   throughput_ratio=rate["ours"] / rate["bare"], batching_added_ms=p50["ours"] - p50["ours, no batching"])
        rounds.append(row)
        print(f"round {r}: 1 client p50 ours {p50['ours']:.2f} ms, bare {p50['bare']:.2f} ms, ours unbatched "
              f"{p50['ours, no batching']:.2f} ms; {args.clients} clients ours {rate['ours']:.1f}/s, "
              f"bare {rate['bare']:.1f}/s", flush=True)
    summary = {k: record.spread([row[k] for row in rounds]) for k in ("p50_added_ms", "p50_ratio", *GOALS)}
    summary.update({f"lone_p50_ms {side}": record.spread([row["lone_p50_ms"][side] for row in rounds]) for side in posts})
    summary.update({f"per_s {side}": record.spread([row["per_s"][side] for row in rounds]) for side in ("ours", "bare")})

    def ok(k: str, x: float) -> bool:
        op, bound, _ = GOALS[k]
        return x <= bound if op == "<=" else x >= bound

    goals = {k: {"goal": f"{op} {bound:g}{unit}", "median_meets": ok(k, summary[k]["median"]),
                 "rounds_meeting": sum(ok(k, row[k]) for row in rounds)} for k, (op, bound, unit) in GOALS.items()}
    stats = client.get(f"{base}/shipped/v1/stats", headers=headers).json()

    def verdict(k: str) -> str:
        g = goals[k]
        return (f"goal {g['goal']}: {'met' if g['median_meets'] else 'NOT met'} by the median, in "
                f"{g['rounds_meeting']} of {len(rounds)} rounds")

    print(f"shipped default ({args.shipped_config.name}: max batch {cfg.max_batch_size}, wait {cfg.batch_wait_ms:g} ms, "
          f"keys on, cache {cfg.cache_size}), {args.tokens} tokens; median (min to max) of {len(rounds)} rounds:\n"
          f"  1 client p50: ours {shown(summary['lone_p50_ms ours'], ' ms')}, bare Serve + the same batching "
          f"{shown(summary['lone_p50_ms bare'], ' ms')}; ours adds {shown(summary['p50_added_ms'], ' ms')}, "
          f"ours/bare {shown(summary['p50_ratio'], 'x', 3)} ({verdict('p50_added_ms')})\n"
          f"  {args.clients} clients: ours {shown(summary['per_s ours'], '/s', 1)}, bare {shown(summary['per_s bare'], '/s', 1)};"
          f" ours/bare {shown(summary['throughput_ratio'], 'x', 3)} ({verdict('throughput_ratio')})\n"
          f"  a lone request on ours, batching on minus off (max_batch_size=1): {shown(summary['batching_added_ms'], ' ms')}"
          f" ({verdict('batching_added_ms')})\n"
          f"  ours after the rounds: cache hits {stats['cache']['hits']}, mean batch {stats['mean_batch_size']:.2f}, "
          f"largest {stats['largest_batch']}")
    return {"args": raw, "overrides": overrides, "rounds": rounds, "summary": summary, "goals": goals, "ours_stats": stats}


COSTS = {"ours": {}, "ours again": {}, "keys off": {"api_keys_file": None}, "cache off": {"cache_size": 0},
         "reactive autoscaling": {"autoscaling": "reactive", "forecast": None},
         "no autoscaling": {"preset": "fixed", "num_replicas": 1, "autoscaling": "reactive", "forecast": None,
                            "max_replicas": None}}
"""The cost part's variants: the shipped app, a second deployment of it (how far two deployments of the same code
differ on this machine: the resolution of every other row), then each with one of its features off (overrides of
its args; None drops an arg)."""


def cost_part(args: argparse.Namespace, raw: dict[str, Any], headers: dict[str, str], client: httpx.Client,
              base: str) -> dict[str, Any]:
    """What each feature of the shipped path costs: p50 at 1 client and throughput at --clients of the shipped
    app, of the same app with one feature off, and of bare Serve with the same batching, interleaved."""
    from ray import serve

    from elasticml.serve.completion import build_app
    from elasticml.serve.config import ServeConfig

    posts = {}
    for k, (name, off) in enumerate(COSTS.items()):
        cfg = {key: value for key, value in {**raw, **off}.items() if value is not None}
        serve.run(build_app(cfg), name=f"cost{k}", route_prefix=f"/cost{k}")
        posts[name] = poster(client, f"{base}/cost{k}/v1/completions", args.tokens,
                             headers if cfg.get("api_keys_file") else None)
    serve.run(bare_batched(ServeConfig.from_dict(dict(raw))), name="cost-bare", route_prefix="/cost-bare")
    posts["bare"] = poster(client, f"{base}/cost-bare", args.tokens)
    for side, post in posts.items():
        post(f"warm-up cost {side}: def f(")
    names, rounds = list(posts), []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        took = lone_interleaved(posts, order, f"c{r:02d}", args.lone_requests)
        row: dict[str, Any] = {"round": r, "order": order, "per_s": {},
                               "lone_p50_ms": {side: statistics.median(t) * 1e3 for side, t in took.items()}}
        for side in order:
            row["per_s"][side] = throughput(posts[side], f"c{r:02d}", args.clients, args.requests)
        rounds.append(row)
        print(f"cost round {r}: " + ", ".join(f"{side} {row['lone_p50_ms'][side]:.2f} ms {row['per_s'][side]:.1f}/s"
                                                for side in names), flush=True)
    summary = {side: {"p50_over_bare_ms": record.spread([row["lone_p50_ms"][side] - row["lone_p50_ms"]["bare"]
                                                         for row in rounds]),
                      "throughput_over_bare": record.spread([row["per_s"][side] / row["per_s"]["bare"] for row in rounds])}
               for side in names if side != "bare"}
    print(f"cost of each feature of the shipped path, {args.tokens} tokens, median (min to max) of {len(rounds)} "
          f"rounds against bare Serve with the same batching:")
    for side, s in summary.items():
        print(f"  {side:22s} p50 {shown(s['p50_over_bare_ms'], ' ms')} over bare; throughput "
              f"{shown(s['throughput_over_bare'], 'x', 3)} of bare")
    return {"variants": COSTS, "rounds": rounds, "summary": summary}


def batching_part(args: argparse.Namespace, post: Callable[[str, int], Callable[[str], None]],
                  names: list[str]) -> dict[str, Any]:
    rates: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    alone: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(throughput(post(name, args.tokens), f"b{r:02d}", args.clients, args.requests))
            alone[name] += lone(post(name, args.tokens), f"b{r:02d}", 10)
        for name in names:
            ratios[name].append(rates[name][-1] / rates[names[0]][-1])
    print(f"batching: model {args.size}, {args.clients} clients x {args.requests} requests, {args.tokens} tokens, "
          f"replica {args.cpus} CPUs (int8), {args.rounds} rounds")
    for name in names:
        each = ", ".join(f"{x:.2f}x" for x in ratios[name])
        print(f"  {name:34s} {statistics.median(rates[name]):7.1f} requests/s  median {statistics.median(ratios[name]):.2f}x "
              f"({each})   a lone request p50 {statistics.median(alone[name]) * 1e3:6.1f} ms")
    return {"per_s": rates, "ratio_to_none": ratios, "lone_s": alone}


def overhead_part(args: argparse.Namespace, calls: dict[str, Callable[[int], None]]) -> dict[str, Any]:
    floors: dict[str, list[float]] = {what: [] for what in calls}
    for j in range(args.latency_samples):  # interleaved, so each sees the same machine
        for what, call in calls.items():
            t = time.perf_counter()
            call(j)
            floors[what].append(time.perf_counter() - t)
    p50 = {what: statistics.median(v) * 1e3 for what, v in floors.items()}
    p90 = {what: statistics.quantiles(v, n=10)[-1] * 1e3 for what, v in floors.items()}
    print(f"overhead: 1-token completion p50 over HTTP: ours {p50['completion']:.2f} ms, bare Serve + the same model "
          f"call {p50['bare + model']:.2f} ms: ours adds {p50['completion'] - p50['bare + model']:.2f} ms (p90 ours "
          f"{p90['completion']:.2f} ms, bare + model {p90['bare + model']:.2f} ms)")
    print("floors, p50: " + ", ".join(f"{what} {p50[what]:.2f} ms" for what in ("healthz", "bare GET", "bare POST")))
    return {"samples_s": floors, "p50_ms": p50, "p90_ms": p90}


def variants_of(args: argparse.Namespace, parts: set[str]) -> dict[str, dict[str, Any]]:
    """The batching part's replicas (cache off, as many in flight as a batch needs); the first serves the overhead part."""
    none = {"no batching (max_batch_size=1)": {"max_batch_size": 1, "batch_wait_ms": 0, "max_ongoing_requests": 64}}
    return {**none, **{f"batching (max 32, wait {w:g} ms)": {"max_batch_size": 32, "batch_wait_ms": w, "max_ongoing_requests": 64}
                       for w in map(float, args.batch_wait_ms.split(",")) if "batching" in parts}}


def batching_and_overhead(args: argparse.Namespace, parts: set[str], folder: Path, client: httpx.Client,
                          base: str) -> dict[str, Any]:
    """The batching and overhead parts (see the module's docstring), on replicas of --cpus CPUs."""
    from ray import serve

    from elasticml.serve.completion import build_app
    from elasticml.serve.generate import Prompt, generate_batch
    from elasticml.serve.precision import prepare
    from elasticml.train.checkpoint import load_model

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Bare:  # Serve's own floor on this machine: no FastAPI, no model
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
    variants = variants_of(args, parts)
    common = {"checkpoint": str(folder), "num_cpus": args.cpus, "cache_size": 0, "max_queued_requests": 1000}
    routes = {name: f"/v{k}" for k, name in enumerate(variants)}
    for name, extra in variants.items():
        serve.run(build_app({**common, **extra}), name=routes[name][1:], route_prefix=routes[name])
        client.post(f"{base}{routes[name]}/v1/completions", json={"prompt": "warm-up", "max_tokens": 2}).raise_for_status()

    def post(name: str, tokens: int) -> Callable[[str], None]:
        return poster(client, f"{base}{routes[name]}/v1/completions", tokens)

    names, results = list(variants), {}
    if "batching" in parts:
        results["batching"] = batching_part(args, post, names)
    if "overhead" in parts:
        def body(j: int) -> dict[str, Any]:
            return {"prompt": f"client 999 request {j}: def f(", "max_tokens": 1}

        ours = post(names[0], 1)
        results["overhead"] = overhead_part(args, {
            "completion": lambda j: ours(f"client 999 request {j}: def f("),
            "bare + model": lambda j: client.post(f"{base}/bare-model", json=body(j)).raise_for_status(),
            "healthz": lambda j: client.get(f"{base}{routes[names[0]]}/healthz").raise_for_status(),
            "bare GET": lambda j: client.get(f"{base}/bare").raise_for_status(),
            "bare POST": lambda j: client.post(f"{base}/bare", json=body(j)).raise_for_status()})
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--parts", default="shipped,batching,overhead",
                   help="comma-separated: shipped, batching, overhead, cost (the shipped path with each feature off)")
    p.add_argument("--size", default="small")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=6, help="per client, per side and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lone-requests", type=int, default=40, help="shipped, cost: one client's requests per side and round")
    p.add_argument("--shipped-config", type=Path, default=REPO / "serve_apps" / "completion.yaml")
    p.add_argument("--cpus", type=float, default=2, help="batching and overhead: CPUs per replica")
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument("--batch-wait-ms", default="5,10,20", help="batching: comma-separated waits, one variant each")
    record.add_arguments(p, __file__)
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {"shipped", "batching", "overhead", "cost"} or args.rounds < 1:
        p.error("--parts takes shipped, batching, overhead and cost; --rounds at least 1")
    run = record.start(__file__, args)

    import ray
    from ray import serve

    from elasticml.checkpoint_key import KEY_ENV, make_cluster_key
    from elasticml.cluster.local import free_port
    from elasticml.models import SIZES, build_model
    from elasticml.train.checkpoint import write_checkpoint

    # The Ray that ray.init starts below is this run's cluster: its key (unless the shell names one),
    # which its replicas inherit with this process's environment.
    os.environ.setdefault(KEY_ENV, str(make_cluster_key("benchmarks")))
    scratch = Path(tempfile.mkdtemp())
    folder = scratch / "ckpt"
    torch.manual_seed(0)
    write_checkpoint(folder, model_state=build_model(args.size).state_dict(), optim_state=None,
                     model_config=SIZES[args.size], step=1)
    raw, overrides = shipped_args(args.shipped_config, folder, scratch / "api_keys.json")
    # Logical CPUs for every replica deployed at once (three of the shipped app's, the variants and the bare model).
    cpus = (3 * ("shipped" in parts) + (len(COSTS) + 1) * ("cost" in parts)) * float(raw.get("num_cpus", 1)) + \
        (len(variants_of(args, parts)) + 1) * args.cpus * bool(parts & {"batching", "overhead"})
    ray.init(num_cpus=int(cpus) + 1, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"})
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=300, limits=httpx.Limits(max_connections=args.clients * 2))
    results: dict[str, Any] = {}
    headers = key_headers(raw)
    if "shipped" in parts:
        results["shipped"] = shipped_part(args, raw, overrides, headers, client, base)
    if "cost" in parts:
        results["cost"] = cost_part(args, raw, headers, client, base)
    if parts & {"batching", "overhead"}:
        results.update(batching_and_overhead(args, parts, folder, client, base))
    serve.shutdown()
    ray.shutdown()
    run.write(samples=results, summary={part: r.get("summary") for part, r in results.items() if isinstance(r, dict)})


if __name__ == "__main__":
    main()
