"""Serve's router under a queue: its default retry sleep against the one elasticml ships, side by side.

    python benchmarks/serve_router.py [--rounds 5] [--replicas 2] [--loads 1.25,0.75] [--seconds 15]
        [--backoffs 0.5,0.05] [--json OUT | --no-json]

Why: Serve's router tries a queued request again after a wait that doubles up to `max_backoff_s`
(Serve's default 0.5 s), and a slot that frees meanwhile waits for it; elasticml ships a shorter cap
(elasticml/serve/routing.py says why and what it costs). This measures both side by side.

Setting. One local Ray instance; a `SyntheticModel` deployment (elasticml/serve/loadreplay.py: each
request holds one of a replica's 4 slots for 0.25 s and takes no CPU, so the router, not the cores,
decides how full the slots are) with --replicas fixed replicas, so a replica serves at most 16
requests/s. Each load is a multiple of that capacity: open-loop Poisson arrivals for --seconds to
Serve's HTTP proxy on 127.0.0.1. At 1.25 a queue forms and grows; at 0.75 it comes and goes with
the arrivals' bursts. A request unanswered 20 s after it was sent counts as failed (status 0).

Method. Every round, for each load, each cap in --backoffs (the first is Serve's default unless told
otherwise) gets its own app, deployed fresh just before its replay and deleted after, with the same
arrivals as the others; the order rotates every round, so each cap goes first as often when --rounds
is a multiple of the number of caps (otherwise the first caps go first once more). Measured per replay: the
requests answered per second per replica from 5 s (a queue has formed by then under overload) to the
end of the arrivals; the latency p50 and p99 of every request; the CPU seconds (user + system) that
the HTTP proxy and the replicas took over the replay, per answered request. Each cap's ratio to the
first cap is taken within the round; printed as the median (min to max) over the rounds. A request
still unanswered after 20 s is cut off, so a cap that loses requests has its p50 and p99 cut at 20 s
(lower bounds) and its CPU per answered request inflated by the ones that timed out.

Runtime: about (loads x caps) replays of --seconds plus the drain and a deploy (~5 s) each, per round;
the defaults take about 9 minutes on 2 cores. One proxy and at most 4 routing tasks here: the probes
that many proxies and replicas would send while every replica is full are not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import record  # benchmarks/record.py: a script's own folder is first on sys.path

SLOTS, SERVICE_S, LOAD_S = 4, 0.25, 0.5
WINDOW_FROM_S = 5.0
REQUEST_TIMEOUT_S = 20.0


def floats(text: str, name: str, lo: float, hi: float) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{name}: comma-separated numbers, got {text!r}") from None
    if not values or len(values) > 8 or not all(lo <= v <= hi for v in values):
        raise SystemExit(f"{name}: 1 to 8 numbers in [{lo}, {hi}], got {text!r}")
    if len(set(values)) != len(values):
        raise SystemExit(f"{name}: each value once, got {text!r}")
    return values


def _cpu(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _pids(app: str) -> tuple[list[int], list[int]]:
    """The HTTP proxy's and the app's replicas' process ids."""
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    proxy = [a.pid for a in alive if a.class_name == "ProxyActor"]
    replicas = [a.pid for a in alive if a.class_name == f"ServeReplica:{app}:SyntheticModel"]
    return proxy, replicas


def replay_one(app: str, max_backoff_s: float, load: float, replicas: int, seconds: float, seed: int,
               port: int) -> dict[str, Any]:
    from ray import serve

    from elasticml.serve.loadreplay import SyntheticModel, flat, replay
    from elasticml.serve.routing import router_config

    deployment = SyntheticModel.options(num_replicas=replicas, max_ongoing_requests=SLOTS,
                                        request_router_config=router_config(max_backoff_s))
    serve.run(deployment.bind(SERVICE_S, LOAD_S), name=app, route_prefix=f"/{app}")
    try:
        proxy, reps = _pids(app)
        cpu0 = (_cpu(proxy), _cpu(reps))
        t0 = time.monotonic()
        capacity = replicas * SLOTS / SERVICE_S
        out = asyncio.run(replay(f"http://127.0.0.1:{port}/{app}", flat(load * capacity), seconds, seed=seed,
                                 timeout_s=REQUEST_TIMEOUT_S))
        wall = time.monotonic() - t0
        cpu = (_cpu(proxy) - cpu0[0], _cpu(reps) - cpu0[1])
    finally:
        serve.delete(app)
    answered = [s + lat for s, lat, code in zip(out.sent_at, out.latency_s, out.status) if code == 200]
    in_window = sum(1 for t in answered if WINDOW_FROM_S <= t < seconds)
    lat = sorted(out.latency_s)
    n_ok = len(answered)
    return {"max_backoff_s": max_backoff_s, "load": load, "requests": len(out.status), "answered": n_ok,
            "failed": len(out.status) - n_ok, "wall_s": round(wall, 2),
            "served_per_replica_s": round(in_window / (seconds - WINDOW_FROM_S) / replicas, 3),
            "p50_s": round(lat[len(lat) // 2], 4), "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 4),
            "proxy_cpu_ms_per_request": round(1e3 * cpu[0] / max(n_ok, 1), 3),
            "replica_cpu_ms_per_request": round(1e3 * cpu[1] / max(n_ok, 1), 3),
            "proxies": len(proxy), "replicas_seen": len(reps)}


def summarise(rows: list[dict[str, Any]], loads: list[float], backoffs: list[float]) -> list[dict[str, Any]]:
    out = []
    base = backoffs[0]
    for load in loads:
        for b in backoffs:
            mine = [r for r in rows if r["load"] == load and r["max_backoff_s"] == b]
            if not mine:
                continue
            ratios = []
            for r in mine:
                ref = next((x for x in rows if x["round"] == r["round"] and x["load"] == load
                            and x["max_backoff_s"] == base), None)
                if ref and ref["served_per_replica_s"] > 0:
                    ratios.append(r["served_per_replica_s"] / ref["served_per_replica_s"])
            out.append({"load": load, "max_backoff_s": b, "rounds": len(mine),
                        "served_per_replica_s": record.spread([r["served_per_replica_s"] for r in mine]),
                        "served_vs_first": record.spread(ratios) if ratios else None,
                        "p50_s": record.spread([r["p50_s"] for r in mine]),
                        "p99_s": record.spread([r["p99_s"] for r in mine]),
                        "failed": sum(r["failed"] for r in mine),
                        "proxy_cpu_ms_per_request": record.spread([r["proxy_cpu_ms_per_request"] for r in mine]),
                        "replica_cpu_ms_per_request": record.spread([r["replica_cpu_ms_per_request"] for r in mine])})
    return out


def _fmt(s: dict[str, float] | None, digits: int = 2) -> str:
    if s is None:
        return "-"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f} to {s['max']:.{digits}f})"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0, help="how long each replay's arrivals last")
    ap.add_argument("--loads", default="1.25,0.75", help="arrival rates as multiples of the replicas' capacity")
    ap.add_argument("--backoffs", default=None,
                    help="max_backoff_s caps to compare, the first the reference (default: Serve's, then ours)")
    record.add_arguments(ap, __file__)
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 50:
        ap.error("--rounds in 1..50")
    if not 1 <= args.replicas <= 8:
        ap.error("--replicas in 1..8")
    if not WINDOW_FROM_S + 5 <= args.seconds <= 600:
        ap.error(f"--seconds in {WINDOW_FROM_S + 5:g}..600")
    loads = floats(args.loads, "--loads", 0.1, 4.0)

    from ray.serve.config import RequestRouterConfig

    from elasticml.serve.routing import BOUNDS, ROUTER_MAX_BACKOFF_S

    serve_default = RequestRouterConfig().max_backoff_s
    backoffs = floats(args.backoffs, "--backoffs", *BOUNDS) if args.backoffs else [serve_default, ROUTER_MAX_BACKOFF_S]
    run = record.start(__file__, args, argv)

    import ray
    from ray import serve

    from elasticml.cluster.local import free_port

    ray.init(num_cpus=4, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"})
    rows: list[dict[str, Any]] = []
    try:
        for r in range(args.rounds):
            for load in loads:
                order = backoffs[r % len(backoffs):] + backoffs[:r % len(backoffs)]
                for b in order:
                    row = {"round": r, **replay_one(f"cap{backoffs.index(b)}", b, load, args.replicas, args.seconds,
                                                    seed=100 + r, port=port)}
                    rows.append(row)
                    print(f"round {r} load {load:g} max_backoff_s {b:g}: "
                          f"{row['served_per_replica_s']:.2f}/s a replica, "
                          f"p50 {row['p50_s']:.2f} s, p99 {row['p99_s']:.2f} s, failed {row['failed']}, "
                          f"proxy {row['proxy_cpu_ms_per_request']:.1f} ms CPU a request", file=sys.stderr, flush=True)
                    run.write(samples=rows, summary=None)
    finally:
        serve.shutdown()
        ray.shutdown()

    summary = summarise(rows, loads, backoffs)
    nominal = SLOTS / SERVICE_S
    print(f"{args.replicas} replicas of {SLOTS} slots x {SERVICE_S:g} s (at most {nominal:g} requests/s a replica), "
          f"{args.seconds:g} s of arrivals a replay, {args.rounds} rounds; median (min to max) over rounds")
    print("| load | max_backoff_s | answered/s a replica | vs the first | p50 s | p99 s | failed | "
          "proxy CPU ms a request | replicas' CPU ms a request |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['load']:g} | {s['max_backoff_s']:g} | {_fmt(s['served_per_replica_s'])} | "
              f"{_fmt(s['served_vs_first'])} | {_fmt(s['p50_s'])} | {_fmt(s['p99_s'])} | {s['failed']} | "
              f"{_fmt(s['proxy_cpu_ms_per_request'])} | {_fmt(s['replica_cpu_ms_per_request'])} |")
    run.write(samples=rows, summary=summary)


if __name__ == "__main__":
    main()
