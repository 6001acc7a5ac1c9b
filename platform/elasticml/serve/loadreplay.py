"""Replaying request-rate traces against real Serve apps, to compare autoscaling policies.

`SyntheticModel` is a Serve deployment whose cost is time, not CPU: each request holds one of its
`max_ongoing_requests` slots for `service_s`, and a new replica spends `load_s` loading before it
serves (as a model load does). On a laptop's few cores that is what lets replica count, not CPU
contention, decide latency, which is what an autoscaling policy is judged on. Serve's router feeds it
as it feeds the platform's own apps (elasticml.serve.routing).

`replay` sends open-loop Poisson arrivals at a trace's rate (requests per second as a function of
time) to one URL on 127.0.0.1 and records every request's latency and status; `ReplicaSampler`
records each app's running replicas from `serve.status()`. `benchmarks/serve_autoscale.py` and the
tests drive them.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from elasticml.serve.routing import router_config

Trace = Callable[[float], float]
MAX_IN_FLIGHT = 2000
"""Requests the replayer keeps open at once; arrivals beyond it count as failed (status 0)."""


@serve.deployment(max_ongoing_requests=2, ray_actor_options={"num_cpus": 0},
                  request_router_config=router_config())
class SyntheticModel:
    def __init__(self, service_s: float = 0.25, load_s: float = 3.0) -> None:
        time.sleep(load_s)  # the model load a new replica waits for before it serves
        self.service_s = service_s

    async def __call__(self, request: Any) -> dict[str, str]:
        await asyncio.sleep(self.service_s)
        return {"ok": "1"}


# -- traces (requests per second at time t, t from 0) ------------------------------------------
def diurnal(period_s: float, low: float, high: float) -> Trace:
    """A day compressed into period_s: a trough at t=0, the peak half a period later."""
    return lambda t: low + (high - low) * 0.5 * (1 - math.cos(2 * math.pi * t / period_s))


def day(period_s: float, low: float, high: float, *, rise: float = 0.5, phase: float = 0.0) -> Trace:
    """A day compressed into period_s that climbs from trough to peak over `rise` of it and falls back
    over the rest; `phase` (a share of the period) is where in that day t=0 falls. rise 0.5 and phase
    0 is `diurnal`."""
    if not 0.0 < rise < 1.0:
        raise ValueError(f"rise must be a share of the period in (0, 1), got {rise!r}")

    def rate(t: float) -> float:
        u = (t / period_s + phase) % 1.0
        if u < rise:
            return low + (high - low) * 0.5 * (1 - math.cos(math.pi * u / rise))
        return low + (high - low) * 0.5 * (1 + math.cos(math.pi * (u - rise) / (1 - rise)))

    return rate


def ramp(start_s: float, length_s: float, low: float, high: float) -> Trace:
    return lambda t: low if t < start_s else min(high, low + (high - low) * (t - start_s) / length_s)


def eased_ramp(start_s: float, length_s: float, low: float, high: float) -> Trace:
    """low until start_s, then an S-shaped climb to high over length_s (slow, fastest halfway, slow), held."""
    def rate(t: float) -> float:
        x = min(1.0, max(0.0, (t - start_s) / length_s))
        return low + (high - low) * 0.5 * (1 - math.cos(math.pi * x))

    return rate


def spike(at_s: float, length_s: float, low: float, high: float) -> Trace:
    return lambda t: high if at_s <= t < at_s + length_s else low


def flat(rate: float) -> Trace:
    return lambda t: rate


def noisy(base: Trace, sd: float, seed: int = 7, step_s: float = 2.0) -> Trace:
    """base with seeded noise, constant over steps of step_s (the same for every policy replayed)."""
    rng = random.Random(seed)
    steps: dict[int, float] = {}

    def rate(t: float) -> float:
        k = int(t // step_s)
        if k not in steps:
            steps[k] = rng.gauss(0, sd)
        return max(0.0, base(t) + steps[k])

    return rate


# -- the replay ------------------------------------------------------------------------------------
@dataclass
class Outcome:
    sent_at: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)

    def summary(self, slo_s: float) -> dict[str, Any]:
        n = len(self.status)
        ok = [lat for lat, code in zip(self.latency_s, self.status) if code == 200]
        ok_sorted = sorted(ok)
        p99 = ok_sorted[min(len(ok_sorted) - 1, int(0.99 * len(ok_sorted)))] if ok_sorted else float("nan")
        return {"requests": n, "over_slo": sum(1 for lat, code in zip(self.latency_s, self.status)
                                                 if code != 200 or lat > slo_s),
                "rejected": sum(1 for c in self.status if c == 429 or c == 503),
                "errors": sum(1 for c in self.status if c != 200 and c not in (429, 503)),
                "p99_s": round(p99, 3)}


async def replay(url: str, trace: Trace, duration_s: float, *, seed: int = 1, timeout_s: float = 30.0,
                 headers: dict[str, str] | None = None) -> Outcome:
    """Open-loop Poisson arrivals at trace(t) per second for duration_s, to `url` (127.0.0.1 only)."""
    import httpx

    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError(f"the replayer only sends to 127.0.0.1, not {url[:80]!r}")
    rng = random.Random(seed)
    out = Outcome()
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        async def one(t_sent: float) -> None:
            started = time.monotonic()
            try:
                code = (await client.post(url, json={})).status_code
            except httpx.HTTPError:
                code = 0
            out.sent_at.append(t_sent)
            out.latency_s.append(time.monotonic() - started)
            out.status.append(code)

        t0 = time.monotonic()
        t = 0.0
        while True:
            rate = max(trace(t), 1e-3)
            t += rng.expovariate(rate)
            if t >= duration_s:
                break
            delay = t0 + t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= MAX_IN_FLIGHT:
                out.sent_at.append(t)
                out.latency_s.append(0.0)
                out.status.append(0)
                continue
            task = asyncio.create_task(one(t))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return out


class ReplicaSampler:
    """Running and starting replicas of each (app, deployment), sampled every `every_s` from serve.status(): the
    starting ones time each start-up for a policy that logs no decisions (Serve's own), as for one that does."""

    def __init__(self, targets: dict[str, tuple[str, str]], every_s: float = 0.5) -> None:
        self.targets = targets
        self.every_s = every_s
        self.samples: dict[str, list[tuple[float, int]]] = {k: [] for k in targets}
        """(seconds from the start, replicas running)"""
        self.starting: dict[str, list[tuple[float, int]]] = {k: [] for k in targets}
        """(seconds from the start, replicas starting), at the same moments"""
        self._stop = asyncio.Event()
        self.started_at: float | None = None
        """Wall time (time.time()) of the first sample, to line samples up with the policy's events."""

    def _read(self) -> dict[str, tuple[int, int]]:
        status = serve.status()
        counts = {}
        for key, (app, deployment) in self.targets.items():
            try:
                states = status.applications[app].deployments[deployment].replica_states
                running = int(states.get("RUNNING", 0))  # type: ignore[call-overload]  # keys: a str enum
                starting = int(states.get("STARTING", 0))  # type: ignore[call-overload]  # keys: a str enum
                counts[key] = (running, starting)
            except KeyError:
                counts[key] = (0, 0)
        return counts

    async def run(self) -> None:
        t0 = time.monotonic()
        self.started_at = time.time()
        while not self._stop.is_set():
            counts = await asyncio.to_thread(self._read)
            now = time.monotonic() - t0
            for key, (running, starting) in counts.items():
                self.samples[key].append((now, running))
                self.starting[key].append((now, starting))
            try:
                await asyncio.wait_for(self._stop.wait(), self.every_s)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    def replica_seconds(self, key: str) -> float:
        s = self.samples[key]
        return sum((b[0] - a[0]) * a[1] for a, b in zip(s, s[1:]))

    def first_reaching(self, key: str, replicas: int, after_s: float = 0.0) -> float | None:
        """When `key` first ran at least `replicas`, at or after `after_s` (seconds from the start)."""
        return next((t for t, n in self.samples[key] if t >= after_s and n >= replicas), None)
