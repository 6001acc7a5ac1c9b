"""Predictive vs reactive autoscaling in simulation: the live benchmark's setting, in seconds instead of an hour.

    python benchmarks/autoscale_sim.py [--rounds 20] [--seed0 5000] [--traces diurnal,ramp,flat]
        [--tuning-shapes] [--forecast JSON] [--compare JSON] [--oracle] [--json OUT | --no-json]

What is simulated is benchmarks/serve_autoscale.py's setting (its constants and its trace
families, `case`): open-loop Poisson arrivals; replicas of `SLOTS` slots, each request holding one
for `SERVICE_S`; one FIFO queue in front of them (Serve's handles queue when every replica is
full); Serve's control loop every 0.1 s, seeing the requests in flight (running + queued) as the
handles pushed them (every `metrics_interval_s`, averaged over `look_back_period_s`), and its
delay logic (a decision must hold `upscale_delay_s` / `downscale_delay_s` before it applies);
replicas that take `STARTUP_S` + `STARTUP_PER_START_S` per replica starting at the same time (the
start-ups compete for the cores: the live runs measured about 6 s for one and 9-10 s for several).
The predictive side drives the same `LoadForecaster` that `PredictivePolicy` does, call for call
(`replicas_seen`, `observe`, `decide`); the reactive side is Serve's rule, ceil(in flight / target).

It is a model: it has no CPU contention beyond the start-up term, no proxy, no routing imbalance.
It is for trying policy settings on many draws quickly; a verdict about the product comes from the
live benchmark only. `--seed0` picks the draws: the live benchmark uses 1000 + round (traces) and
2000 + round (arrivals); tune on other seeds (the default, 5000 up). `--tuning-shapes` replays the
fixed traces the forecaster was first tuned on (serve_autoscale.TUNED_ON: a symmetric day, a linear
ramp, a spike, flat load) instead of the benchmark's families, arrivals seeded from --seed0 + 1000: the
shapes to choose settings on, so that the families stay held out.

Printed per trace: over-SLO requests and replica-seconds of each policy summed over the rounds,
their ratio (predictive / reactive) and the paired differences' bootstrap interval, as the live
benchmark prints them. With --compare, a second forecast setting is run on the same draws too.
With --oracle, so is a clairvoyant policy (`Oracle`): it reads the trace's true rate over the
coming start-up and asks for what that needs at 3/4 of a replica's slots. No policy can see the
future, so its figures bound what forecasting can win in this setting: the requests over the SLO
that it still has are those no policy avoids (a replay that starts at high load on one replica).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import record  # benchmarks/record.py: a script's own folder is first on sys.path
from serve_autoscale import (BOUNDS, DELAYS, DURATIONS, LOAD_S, SERVICE_S, SLO_S, SLOTS, TARGET, Case,  # noqa: E402
                             case, finite, paired, verdict)

STARTUP_S = 5.5
"""A replica's start-up alone (process, Serve's replica, the 3 s load), as measured live."""
STARTUP_PER_START_S = 0.5
"""Added to each start-up per replica starting at the same time."""
STARTUP_JITTER_S = 1.0
ORACLE: dict[str, Any] = {"oracle": True}
"""The settings entry that stands for Oracle (its record shows it as this)."""
TICK_S = 0.1
DT = 0.01


@dataclass
class Replica:
    ready_at: float
    busy: list[float] = field(default_factory=list)
    """End times of the requests it serves."""
    stopping: bool = False


@dataclass
class Run:
    requests: int = 0
    over_slo: int = 0
    replica_s: float = 0.0
    timeline: list[tuple[float, int, int]] = field(default_factory=list)
    """(t, running, target) every second."""


class Reactive:
    def __call__(self, now: float, load: float, running: int, target: int) -> int:
        return math.ceil(load / TARGET - 1e-9)


class Oracle:
    """Knows the trace: asks, `lead_s` ahead, for the replicas the highest true rate over the coming start-up
    needs at `utilisation` of their slots. A bound, not a policy."""

    def __init__(self, rate: Any, lead_s: float = STARTUP_S + 1.0, utilisation: float = 0.75) -> None:
        self.rate, self.lead_s, self.utilisation = rate, lead_s, utilisation

    def __call__(self, now: float, load: float, running: int, target: int) -> int:
        coming = max(self.rate(now + self.lead_s * x / 4) for x in range(5))
        return math.ceil(coming * SERVICE_S / (SLOTS * self.utilisation))


class Predictive:
    """The forecaster as PredictivePolicy drives it (without the GCS persistence)."""

    def __init__(self, settings: dict[str, Any], season_s: float | None) -> None:
        from elasticml.serve.autoscale import forecast_config
        from elasticml.serve.forecast import LoadForecaster

        cfg = forecast_config({"bucket_s": 1.0, "startup_s": LOAD_S + 2.0, "season_s": season_s, **settings},
                              target_per_replica=TARGET)
        self.fc = LoadForecaster(config=cfg)

    def __call__(self, now: float, load: float, running: int, target: int) -> int:
        self.fc.replicas_seen(now, target, running)
        self.fc.observe(now, load)
        return self.fc.decide(running=running, low=BOUNDS["min_replicas"], high=BOUNDS["max_replicas"]).replicas


def simulate(c: Case, policy: Any, arrival_seed: int, startup_seed: int) -> Run:
    rng, jitter = random.Random(arrival_seed), random.Random(startup_seed)
    arrivals: deque[float] = deque()
    t = 0.0
    while True:
        t += rng.expovariate(max(c.rate(t), 1e-3))
        if t >= c.duration_s:
            break
        arrivals.append(t)
    out = Run(requests=len(arrivals))
    queue: deque[float] = deque()
    replicas = [Replica(ready_at=0.0)]
    target = 1
    samples: deque[tuple[float, float]] = deque()  # (t, in flight) the handles record
    pushed: float = 0.0  # the in-flight average the controller last received
    next_push, next_tick, next_sample, next_line = 0.0, 0.0, 0.0, 0.0
    delay_since: float | None = None
    delay_dir = 0
    steps = int(round(c.duration_s / DT))
    for i in range(steps + 1):
        now = i * DT
        while arrivals and arrivals[0] <= now:
            queue.append(arrivals.popleft())
        for r in replicas:
            if r.busy:
                r.busy = [e for e in r.busy if e > now]
        replicas = [r for r in replicas if not (r.stopping and not r.busy)]
        # FIFO to the least-loaded ready replica with a free slot
        ready = [r for r in replicas if r.ready_at <= now and not r.stopping]
        while queue:
            free = [r for r in ready if len(r.busy) < SLOTS]
            if not free:
                break
            r = min(free, key=lambda x: len(x.busy))
            arrived = queue.popleft()
            r.busy.append(now + SERVICE_S)
            if now - arrived + SERVICE_S > SLO_S:
                out.over_slo += 1
        in_flight = len(queue) + sum(len(r.busy) for r in replicas)
        if now >= next_sample:
            samples.append((now, in_flight))
            next_sample += 0.1
        if now >= next_push:
            while samples and samples[0][0] < now - DELAYS["look_back_period_s"]:
                samples.popleft()
            pushed = sum(x for _, x in samples) / len(samples) if samples else 0.0
            next_push += DELAYS["metrics_interval_s"]
        running = len(ready)
        if now >= next_tick:
            next_tick += TICK_S
            desired = max(BOUNDS["min_replicas"], min(BOUNDS["max_replicas"], policy(now, pushed, running, target)))
            direction = (desired > target) - (desired < target)
            if direction == 0:
                delay_since, delay_dir = None, 0
            else:
                if direction != delay_dir:
                    delay_since, delay_dir = now, direction
                wait = DELAYS["upscale_delay_s"] if direction > 0 else DELAYS["downscale_delay_s"]
                if now - delay_since + 1e-6 >= wait:
                    target, delay_since, delay_dir = desired, None, 0
            live = [r for r in replicas if not r.stopping]
            if target > len(live):
                starting = sum(1 for r in live if r.ready_at > now) + target - len(live)
                for _ in range(target - len(live)):
                    took = STARTUP_S + STARTUP_PER_START_S * starting + jitter.uniform(0, STARTUP_JITTER_S)
                    replicas.append(Replica(ready_at=now + took))
            elif target < len(live):
                # Serve stops starting replicas first, then running ones (which finish what they hold)
                for r in sorted(live, key=lambda x: -x.ready_at)[:len(live) - target]:
                    r.stopping = True
                replicas = [r for r in replicas if not (r.stopping and r.ready_at > now)]
        out.replica_s += running * DT
        if now >= next_line:
            out.timeline.append((round(now, 1), running, target))
            next_line += 1.0
    # requests still queued at the end are over the SLO once they have waited past it
    out.over_slo += sum(1 for a in queue if c.duration_s - a + SERVICE_S > SLO_S)
    return out


def tuning_shape(name: str) -> Case:
    """serve_autoscale.TUNED_ON's fixed trace of that name."""
    from elasticml.serve import loadreplay as lr

    shapes = {"diurnal": lambda: Case(name=name, rate=lr.diurnal(60, 1, 28), duration_s=180.0, season_s=60.0),
              "ramp": lambda: Case(name=name, rate=lr.ramp(20, 30, 1, 28), duration_s=80.0),
              "fast_ramp": lambda: Case(name=name, rate=lr.ramp(20, 8, 1, 28), duration_s=60.0),
              "spike": lambda: Case(name=name, rate=lr.spike(30, 15, 2, 24), duration_s=70.0),
              "flat": lambda: Case(name=name, rate=lr.flat(12), duration_s=60.0)}
    if name not in shapes:
        raise ValueError(f"no tuning shape {name!r}; known: {', '.join(shapes)}")
    return shapes[name]()


def run(traces: list[str], rounds: int, seed0: int, settings: dict[str, dict[str, Any]],
        tuning_shapes: bool = False) -> dict[str, Any]:
    """Every trace's rounds under the reactive rule and each named forecast setting, on the same draws."""
    results: dict[str, Any] = {}
    for name in traces:
        rows = []
        for k in range(rounds):
            # case() seeds traces by 1000 + its round
            c = tuning_shape(name) if tuning_shapes else case(name, seed0 - 1000 + k)
            arrival_seed = seed0 + 1000 + k
            row: dict[str, Any] = {"round": k}
            sides: dict[str, Any] = {"reactive": Reactive()}
            sides.update({label: Oracle(c.rate) if s is ORACLE else Predictive(s, c.season_s)
                          for label, s in settings.items()})
            for label, pol in sides.items():
                r = simulate(c, pol, arrival_seed, startup_seed=arrival_seed)
                row[label] = {"requests": r.requests, "over_slo": r.over_slo, "replica_s": round(r.replica_s, 1)}
            rows.append(row)
        results[name] = rows
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default="diurnal,ramp,flat")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed0", type=int, default=5000, help="draws: traces from this, arrivals from it + 1000")
    ap.add_argument("--tuning-shapes", action="store_true", help="the fixed traces of TUNED_ON, not the families")
    ap.add_argument("--forecast", default="{}", help="ForecastConfig settings for the predictive side, as JSON")
    ap.add_argument("--compare", default=None, help="a second ForecastConfig setting to run beside it, as JSON")
    ap.add_argument("--oracle", action="store_true", help="also a clairvoyant policy: the bound on what forecasting wins")
    record.add_arguments(ap, __file__)
    args = ap.parse_args(argv)
    if not 1 <= args.rounds <= 1000:
        ap.error("--rounds in 1..1000")
    rec = record.start(__file__, args, argv)

    def setting(flag: str, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as exc:
            ap.error(f"{flag}: not JSON ({exc})")
        if not isinstance(value, dict) or "oracle" in value:
            ap.error(f"{flag}: a JSON object of ForecastConfig settings, like '{{\"alpha\": 0.5}}'")
        return value

    settings = {"predictive": setting("--forecast", args.forecast)}
    if args.compare is not None:
        settings["compare"] = setting("--compare", args.compare)
    if args.oracle:
        settings["oracle"] = ORACLE
    traces = args.traces.split(",")
    known = ("diurnal", "ramp", "fast_ramp", "spike", "flat") if args.tuning_shapes else tuple(DURATIONS)
    if unknown := [t for t in traces if t not in known]:
        ap.error(f"--traces from {','.join(known)} (unknown: {','.join(unknown)})")
    results = run(traces, args.rounds, args.seed0, settings, args.tuning_shapes)
    summary: dict[str, Any] = {}
    for name, rows in results.items():
        summary[name] = {}
        for label in settings:
            s = {metric: paired([row[label][metric] for row in rows], [row["reactive"][metric] for row in rows],
                                resamples=2000) for metric in ("over_slo", "replica_s")}
            s["verdict"] = verdict(name, s["over_slo"], s["replica_s"])[1]
            summary[name][label] = s
            o, c = s["over_slo"], s["replica_s"]
            print(f"{name:8s} {label:10s} over SLO {o['reactive']:6.0f} -> {o['predictive']:6.0f} (x{o['ratio']:.2f}, "
                  f"diff CI [{o['ci'][0]:+.1f}, {o['ci'][1]:+.1f}])  replica-s {c['reactive']:6.0f} -> "
                  f"{c['predictive']:6.0f} (x{c['ratio']:.2f})  {s['verdict'][:9]}", flush=True)
    rec.write(samples=results, summary=finite(summary),
              model={"startup_s": STARTUP_S, "startup_per_start_s": STARTUP_PER_START_S,
                     "startup_jitter_s": STARTUP_JITTER_S, "tick_s": TICK_S, "dt": DT, "settings": settings,
                     "bounds": BOUNDS, "delays": DELAYS, "slots": SLOTS, "service_s": SERVICE_S,
                     "target": TARGET, "slo_s": SLO_S})
    return 0


if __name__ == "__main__":
    sys.exit(main())
