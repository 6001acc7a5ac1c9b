"""Predictive vs reactive Serve autoscaling, replaying request-rate traces side by side.

    python benchmarks/serve_autoscale.py [--traces diurnal,ramp,fast_ramp,spike,flat,noisy] [--rounds 1]
        [--scale 1.0] [--json OUT] [--png out.png]

One local Ray instance, two Serve apps with the same `SyntheticModel` deployment (each request
holds one of a replica's 2 slots for 0.25 s; a new replica loads for 3 s before it serves:
elasticml/serve/loadreplay.py) and the same autoscaling bounds and delays; they differ only in
the policy: Serve's default (reactive: requests in flight now / target) and
elasticml.serve.autoscale:PredictivePolicy (the forecast one measured start-up ahead). For each
trace both apps are deployed afresh (the predictive one with nothing learnt) and the same trace,
with the same seeded arrivals (other seeds in each of --rounds), is replayed against one app and
then the other (so that neither starts replicas on cores the other's are starting on): open-loop
Poisson requests to 127.0.0.1. Serve's load metrics are pushed every 0.5 s (`metrics_interval_s`,
instead of 10) so that a trace compressed into minutes is seen at all; both policies get the same
signal.

Printed per trace and policy: requests, those over the latency SLO (or failed), 429/503, p99,
replica-seconds (the cost), and on the ramp the time from its start until the replicas its top
needs were running; then the predictive/reactive ratios. Every trace's rounds, policy by policy,
go to benchmarks/results/serve_autoscale.json (benchmarks/record.py). --png draws the diurnal
trace's replicas (both policies) and the predictive policy's forecast over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import warnings
from datetime import date


import record  # benchmarks/record.py: a script's own folder is first on sys.path

warnings.filterwarnings("ignore")

SERVICE_S = 0.25
SLOTS = 4
LOAD_S = 3.0
SLO_S = 1.0
TARGET = 3.0
BOUNDS = {"min_replicas": 1, "max_replicas": 8}
DELAYS = {"upscale_delay_s": 0.5, "downscale_delay_s": 8.0, "look_back_period_s": 1.0, "metrics_interval_s": 0.5}


def traces(scale: float) -> dict[str, tuple[object, float, dict]]:
    """name -> (trace, duration_s, facts); `scale` stretches every duration (and the season)."""
    from elasticml.serve import loadreplay as lr

    period = 60.0 * scale
    return {
        "diurnal": (lr.diurnal(period, 1.0, 28.0), 3 * period, {"season_s": period}),
        "ramp": (lr.ramp(20 * scale, 30 * scale, 1.0, 28.0), 80 * scale, {"ramp": (20 * scale, 28.0)}),
        # The same climb in 8 s: faster than a replica starts and Serve sees the load, as a launch or a
        # news spike is; the slow ramp above gives a reactive policy time to keep up.
        "fast_ramp": (lr.ramp(20 * scale, 8 * scale, 1.0, 28.0), 60 * scale, {"ramp": (20 * scale, 28.0)}),
        "spike": (lr.spike(30 * scale, 15 * scale, 2.0, 24.0), 70 * scale, {}),
        "flat": (lr.flat(12.0), 60 * scale, {}),
        "noisy": (lr.noisy(lr.diurnal(period, 2.0, 24.0), 4.0), 2 * period, {"season_s": period}),
    }


FORECAST: dict = {}
"""Extra ForecastConfig settings from --forecast (JSON), for trying them; none = the defaults."""


def autoscaling(policy: str, season_s: float | None) -> dict:
    from dataclasses import asdict

    from elasticml.serve.autoscale import POLICY_PATH, forecast_config

    config = {**BOUNDS, **DELAYS, "target_ongoing_requests": TARGET}
    if policy == "predictive":
        settings = forecast_config({"bucket_s": 1.0, "startup_s": LOAD_S + 2.0, "season_s": season_s, **FORECAST},
                                   target_per_replica=TARGET)
        config["policy"] = {"policy_function": POLICY_PATH, "policy_kwargs": asdict(settings)}
    return config


def deploy(port: int, season_s: float | None) -> dict[str, str]:
    from ray import serve
    from ray.experimental.internal_kv import _internal_kv_del

    from elasticml.serve.autoscale import NAMESPACE
    from elasticml.serve.loadreplay import SyntheticModel

    urls = {}
    for policy in ("reactive", "predictive"):
        serve.delete(policy)
        for what in ("state", "events"):
            _internal_kv_del(f"{policy}/SyntheticModel/{what}".encode(), namespace=NAMESPACE)
        app = SyntheticModel.options(autoscaling_config=autoscaling(policy, season_s),
                                     max_ongoing_requests=SLOTS).bind(SERVICE_S, LOAD_S)
        serve.run(app, name=policy, route_prefix=f"/{policy}")
        urls[policy] = f"http://127.0.0.1:{port}/{policy}"
    return urls


async def run_trace(urls: dict[str, str], trace, duration_s: float, seed: int) -> tuple[dict, dict]:
    """The trace against each app in turn (the same seeded arrivals), each with the machine to itself."""
    from elasticml.serve.loadreplay import ReplicaSampler, replay

    outcomes, samplers = {}, {}
    for policy, url in urls.items():
        sampler = ReplicaSampler({policy: (policy, "SyntheticModel")})
        sampling = asyncio.create_task(sampler.run())
        outcomes[policy] = await replay(url, trace, duration_s, seed=seed)
        sampler.stop()
        await sampling
        samplers[policy] = sampler
    return outcomes, samplers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="diurnal,ramp,fast_ramp,spike,flat,noisy")
    ap.add_argument("--rounds", type=int, default=1, help="replay each trace this many times (other arrivals each)")
    ap.add_argument("--scale", type=float, default=1.0, help="stretch every trace (and its season) by this")
    record.add_arguments(ap, __file__)
    ap.add_argument("--png", default=None)
    ap.add_argument("--forecast", default="{}", help="ForecastConfig settings to try, as JSON")
    ap.add_argument("--verbose", action="store_true", help="print each policy's replicas over time")
    args = ap.parse_args()
    run = record.start(__file__, args)
    FORECAST.update(json.loads(args.forecast))

    import ray
    from ray import serve

    from elasticml.cluster.local import free_port
    from elasticml.serve.autoscale import decisions

    chosen = {k: v for k, v in traces(args.scale).items() if k in args.traces.split(",")}
    ray.init(num_cpus=4, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "ERROR"})
    results: dict[str, dict] = {}
    picture = None
    t_start = time.monotonic()
    runs = [(name, k) for name in chosen for k in range(args.rounds)]
    for name, k in runs:
        trace, duration_s, facts = chosen[name]
        urls = deploy(port, facts.get("season_s"))
        outcomes, samplers = asyncio.run(run_trace(urls, trace, duration_s, seed=11 + k))
        row = {}
        for policy, outcome in outcomes.items():
            sampler = samplers[policy]
            r = outcome.summary(SLO_S)
            r["replica_s"] = round(sampler.replica_seconds(policy), 1)
            if "ramp" in facts:
                start, top = facts["ramp"]
                need = math.ceil(top * SERVICE_S / TARGET)
                reached = sampler.first_reaching(policy, need, after_s=start)
                r["ramp_to_enough_s"] = round(reached - start, 1) if reached is not None else None
            # Every request and replica count, so that any other statistic can be computed from the record.
            r["raw"] = {"sent_at_s": [round(t, 3) for t in outcome.sent_at],
                        "latency_s": [round(t, 4) for t in outcome.latency_s], "status": outcome.status,
                        "replicas": [(round(t, 2), n) for t, n in sampler.samples[policy]]}
            row[policy] = r
        results.setdefault(name, []).append(row)
        print(f"{name} round {k + 1}: done ({duration_s:.0f} s)", file=sys.stderr)
        if args.verbose:
            for policy, sampler in samplers.items():
                series = [n for _, n in sampler.samples[policy]][::10]
                print(f"  {policy} replicas every 5 s: {series}", file=sys.stderr)
        if name == "diurnal" and k == 0:
            picture = ({p: samplers[p].samples[p] for p in samplers}, samplers["predictive"].started_at,
                       decisions("predictive", "SyntheticModel"), trace, duration_s)
    serve.shutdown()
    ray.shutdown()

    print(f"benchmarks/serve_autoscale.py, {date.today()}: service {SERVICE_S}s x {SLOTS} slots a replica, "
          f"{LOAD_S}s model load, SLO {SLO_S}s, target {TARGET} in flight a replica, "
          f"replicas {BOUNDS['min_replicas']}..{BOUNDS['max_replicas']}, scale {args.scale:g}, "
          f"forecast settings {FORECAST or 'default'}, {args.rounds} round(s) of each trace; "
          f"{time.monotonic() - t_start:.0f} s in all")
    print("| trace | round | policy | requests | over SLO | 429/503 | p99 s | replica-s | ramp to enough s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for k, row in enumerate(rows, 1):
            for policy, r in row.items():
                print(f"| {name} | {k} | {policy} | {r['requests']} | {r['over_slo']} | {r['rejected']} | {r['p99_s']} | "
                      f"{r['replica_s']} | {r.get('ramp_to_enough_s', '')} |")
    print("| trace | over SLO predictive vs reactive, summed over rounds | ratio | replica-s ratio per round |")
    print("|---|---|---|---|")
    summary = {}
    for name, rows in results.items():
        p = sum(row["predictive"]["over_slo"] for row in rows)
        r = sum(row["reactive"]["over_slo"] for row in rows)
        costs = [row["predictive"]["replica_s"] / row["reactive"]["replica_s"] for row in rows]
        print(f"| {name} | {p} vs {r} | {f'{p / r:.2f}' if r else '-'} | {', '.join(f'{c:.2f}' for c in costs)} |")
        summary[name] = {"over_slo_predictive": p, "over_slo_reactive": r, "replica_s_ratio_by_round": costs}
    run.write(samples=results, summary=summary,
              setting={"service_s": SERVICE_S, "slots": SLOTS, "load_s": LOAD_S, "slo_s": SLO_S, "target": TARGET,
                       **BOUNDS, **DELAYS, "forecast": FORECAST})
    if args.png and picture is not None:
        draw(picture, args.png)


def draw(picture, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, started_at, events, trace, duration_s = picture
    fig, ax = plt.subplots(figsize=(9, 4))
    xs = [i * 0.5 for i in range(int(duration_s * 2))]
    ax.plot(xs, [trace(x) * SERVICE_S / TARGET for x in xs], color="0.6", lw=1, label="replicas the load needs")
    for policy, style in (("reactive", "tab:orange"), ("predictive", "tab:blue")):
        ax.step([t for t, _ in samples[policy]], [n for _, n in samples[policy]], where="post", color=style,
                label=f"{policy}: running replicas")
    decided = [e for e in events if e.get("event") == "decision" and 0 <= e["t"] - started_at <= duration_s]
    if decided:
        ax.plot([e["t"] - started_at for e in decided], [e["forecast"] / TARGET for e in decided], ".", color="tab:blue",
                ms=3, alpha=0.6, label="predictive: forecast (replicas' worth)")
    ax.set_xlim(0, duration_s)
    ax.set_xlabel("seconds (a compressed day is 60 s)")
    ax.set_ylabel("replicas")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
