"""Serving across capacity pools, as the scheduler placed it: base replicas off spot, extras on spot.

Ray Serve gives one deployment one placement (a label selector, maybe a fallback), and a fallback
is taken whenever the first choice is not free *now*, so base replicas would drift onto spot
(ray-project/ray#58491 asks for per-replica placement). Instead each allocation of the
scheduler's decision becomes its own `ModelBackend` deployment pinned to its pool, with exactly
the replicas the scheduler provisioned (the spot pool over-provisioned), and `PoolRouter`, the
HTTP ingress, spreads requests over the pools by replica count. When a call fails because its
replica went away (a spot node reclaimed), the router sends the same request to another pool:
the client sees no error as long as one pool still serves.

With `autoscaling: predictive`, a spot pool is a burst pool: its deployment autoscales (from none to
what the scheduler gave it) under elasticml.serve.autoscale's policy, which forecasts the whole app's
load from the in-flight counts the routers publish (`PUBLISH_S`) and asks spot for what the
forecast adds above the fixed base pools; the router weighs a burst pool by the replicas it runs.

The router follows the scheduler: every `FOLLOW_S` it reads the workload's placement and
weighs each pool by the replicas the scheduler gives it now, so when the controller moves the
spare spot replicas away (an interruption notice, a lost node, a pool it cannot fill) traffic
leaves spot at once, before the capacity goes; a pool the placement no longer names gets none.
"""

# No `from __future__ import annotations`: FastAPI reads the request models from the annotations.
import asyncio
import logging
import os
import random
import time
from typing import Any

import ray
from fastapi import HTTPException
from ray import serve

from elasticml.errors import ElasticMLError
from elasticml.serve.api import CompletionRequest, ScoreRequest, answer_or_raise
from elasticml.serve.ingress import HEALTHZ, Gate, Ingress, Route
from elasticml.serve.routing import router_config

FOLLOW_S = 2.0
"""How often the router reads its workload's placement from the scheduler."""
PUBLISH_S = 0.25
"""How often a router with burst pools publishes its requests in flight for their policy."""
log = logging.getLogger("elasticml.serve.pools")
FOLLOW_ERRORS = (ray.exceptions.RayError, ElasticMLError, OSError, TimeoutError)
"""What reading the scheduler or the GCS fails with while either restarts; anything else is a bug and ends the loop loudly."""


@serve.deployment(max_ongoing_requests=256, request_router_config=router_config())
@serve.ingress()
class PoolRouter:
    """The app's HTTP ingress in front of its pools: the shared routes, and the pools' state."""

    ROUTES = (HEALTHZ, Route(method="GET", path="/v1/pools", handler="status"))

    def __init__(self, pools: list[dict[str, Any]], handles: list[Any], gate: Gate, workload: str | None = None) -> None:
        self.pools = [dict(p, handle=h, requests=0, failovers=0, weight=p["replicas"]) for p, h in zip(pools, handles)]
        self.gate = gate
        self.workload = workload
        self.followed: dict[str, Any] = {"epoch": None, "reason": None}
        self._follower: asyncio.Task[None] | None = None  # started on the replica's loop by the first request
        self._publisher: asyncio.Task[None] | None = None
        self.in_flight = 0
        # Requests in flight integrated over time since the last publish: the burst policy gets the mean
        # over the interval, not whichever 0..N a single instant happened to show.
        self._area, self._since = 0.0, time.monotonic()
        self._changed = self._since
        self.router_id = f"{os.getpid()}-{random.getrandbits(32):08x}"
        self.given: dict[str, int] = {p["node_type"]: p["replicas"] for p in self.pools}
        for p in self.pools:
            if p.get("burst"):
                p["weight"] = 0  # until its policy says replicas run

    async def _follow(self) -> None:
        """Weigh the pools by the scheduler's placement of this workload, as it changes."""
        from elasticml.scheduler.client import SchedulerClient

        sched: SchedulerClient | None = None  # looked up once (actor, cluster name, credential file), again after a failure
        while True:
            try:
                if sched is None:
                    sched = await asyncio.to_thread(SchedulerClient.connect)
                placed = await asyncio.to_thread(sched.placement, self.workload)  # type: ignore[arg-type]  # followed only when it has a workload
            except FOLLOW_ERRORS as exc:  # the scheduler restarting: keep the last weights
                log.warning("could not read the placement of %s: %s", self.workload, type(exc).__name__)
                sched, placed = None, None
            if placed is not None and placed.epoch != self.followed["epoch"]:
                given = {t: sum(a.workers for a in placed.allocations if a.node_type == t) for t in placed.node_types}
                if any(given.get(p["node_type"], 0) for p in self.pools):  # never weigh every pool to nothing
                    self.given = {p["node_type"]: given.get(p["node_type"], 0) for p in self.pools}
                self.followed = {"epoch": placed.epoch, "reason": placed.reason}
            await self._weigh()
            await asyncio.sleep(FOLLOW_S)

    async def _weigh(self) -> None:
        """Each pool's weight: what the scheduler gives it, and for a burst pool no more than it runs."""
        from elasticml.serve.autoscale import pool_running

        for p in self.pools:
            weight = self.given.get(p["node_type"], 0)
            if p.get("burst"):
                try:
                    running = await asyncio.to_thread(pool_running, self.workload, p["deployment"])  # type: ignore[arg-type]  # followed only when it has a workload
                except FOLLOW_ERRORS:  # the GCS briefly away: keep the last weight
                    continue
                weight = min(weight, running or 0)
            p["weight"] = weight
        if not any(p["weight"] for p in self.pools):
            for p in self.pools:
                p["weight"] = 0 if p.get("burst") else max(1, self.given.get(p["node_type"], 0))

    async def _publish(self) -> None:
        """This router's requests in flight, for the burst pools' policy (the whole app's load)."""
        from elasticml.serve.autoscale import publish_router_load

        while True:
            try:
                await asyncio.to_thread(publish_router_load, self.workload, self.router_id, self._mean_in_flight(),  # type: ignore[arg-type]  # published only when it has a workload
                                        time.time())
            except FOLLOW_ERRORS as exc:  # the GCS briefly away: publish again next time
                log.warning("could not publish the load of %s: %s", self.workload, type(exc).__name__)
            await asyncio.sleep(PUBLISH_S)

    def __serve_build_asgi_app__(self) -> Ingress:
        """Serve calls this once the replica exists."""
        return Ingress(self, title="elasticml completion (spot-aware pools)", routes=self.ROUTES)

    async def complete(self, request: CompletionRequest, tenant: str | None) -> Any:
        return await self._call("complete", request, tenant)

    async def score(self, request: ScoreRequest, tenant: str | None) -> Any:
        return await self._call("score", request)

    def status(self, tenant: str | None) -> dict[str, Any]:
        return {"pools": [{k: v for k, v in p.items() if k != "handle"} for p in self.pools],
                "followed": self.followed, "in_flight": self.in_flight}

    async def healthz(self, tenant: None) -> dict[str, Any]:
        return {"status": "ok"}  # open: the pools and their node types are at /v1/pools, behind a key

    def _order(self) -> list[dict[str, Any]]:
        """All pools, the first drawn in proportion to its weight, the others as failovers (base first)."""
        first = random.choices(self.pools, weights=[p["weight"] for p in self.pools])[0]
        rest = sorted((p for p in self.pools if p is not first), key=lambda p: p["market"] == "spot")
        return [first, *rest]

    async def _call(self, method: str, request: Any, *args: Any) -> Any:
        if self.workload is not None and self._follower is None:
            self._follower = asyncio.create_task(self._follow())
            if any(p.get("burst") for p in self.pools):
                self._publisher = asyncio.create_task(self._publish())
        self._count(+1)
        try:
            return await self._call_pools(method, request, *args)
        finally:
            self._count(-1)

    def _count(self, delta: int) -> None:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._changed)
        self._changed = now
        self.in_flight += delta

    def _mean_in_flight(self) -> float:
        """Mean requests in flight since the last call (time-weighted), and start a new interval."""
        now = time.monotonic()
        area, span = self._area + self.in_flight * (now - self._changed), now - self._since
        self._area, self._since, self._changed = 0.0, now, now
        return area / span if span > 0 else float(self.in_flight)

    async def _call_pools(self, method: str, request: Any, *args: Any) -> Any:
        last: BaseException | None = None
        for i, pool in enumerate(self._order()):
            pool["requests"] += 1
            try:
                reply = await getattr(pool["handle"], method).remote(request, *args)
            except (Exception, asyncio.CancelledError) as exc:  # the replica or its node is gone: next pool
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                    raise  # the client went away: this request itself is cancelled
                pool["failovers"] += 1
                log.warning("pool %s failed (%s); trying the next pool", pool["node_type"], type(exc).__name__)
                last = exc
                continue
            return answer_or_raise(reply)
        raise HTTPException(status_code=503, detail=f"no pool could serve the request ({type(last).__name__}); "
                            "retry shortly", headers={"Retry-After": "1"})
