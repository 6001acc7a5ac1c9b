"""Serving across capacity pools, as the scheduler placed it: base replicas off spot, extras on spot.

Ray Serve gives one deployment one placement (a label selector, maybe a fallback), and a fallback
is taken whenever the first choice is not free *now*, so base replicas would drift onto spot
(ray-project/ray#58491 asks for per-replica placement). Instead each allocation of the
scheduler's decision becomes its own `ModelBackend` deployment pinned to its pool, with exactly
the replicas the scheduler provisioned (the spot pool over-provisioned), and `PoolRouter`, the
HTTP ingress, spreads requests over the pools by replica count. When a call fails because its
replica went away (a spot node reclaimed), the router sends the same request to another pool:
the client sees no error as long as one pool still serves.
"""

# No `from __future__ import annotations`: FastAPI reads the request models from the annotations.
import asyncio
import logging
import random
from typing import Any

from fastapi import Header, HTTPException
from ray import serve

from elasticml.serve.api import (
    CompletionRequest,
    CompletionResponse,
    ScoreRequest,
    ScoreResponse,
    answer_or_raise,
    authenticate,
    new_api,
)

pools_api = new_api("elasticml completion (spot-aware pools)")
log = logging.getLogger("elasticml.serve.pools")


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(pools_api)
class PoolRouter:
    def __init__(self, pools: list[dict[str, Any]], handles: list[Any], api_keys: dict[str, str]) -> None:
        from elasticml.serve.auth import KeyRing

        self.pools = [dict(p, handle=h, requests=0, failovers=0) for p, h in zip(pools, handles)]
        self.keys = KeyRing(api_keys)

    def _auth(self, authorization: str | None, x_api_key: str | None) -> str | None:
        return authenticate(self.keys, authorization, x_api_key)

    def _order(self) -> list[dict[str, Any]]:
        """All pools, the first drawn in proportion to its replicas, the others as failovers (base first)."""
        first = random.choices(self.pools, weights=[p["replicas"] for p in self.pools])[0]
        rest = sorted((p for p in self.pools if p is not first), key=lambda p: p["market"] == "spot")
        return [first, *rest]

    async def _call(self, method: str, request: Any, *args: Any) -> Any:
        last: Exception | None = None
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

    @pools_api.post("/v1/completions", response_model=CompletionResponse)
    async def complete(self, request: CompletionRequest, authorization: str | None = Header(None),
                       x_api_key: str | None = Header(None)) -> Any:
        return await self._call("complete", request, self._auth(authorization, x_api_key))

    @pools_api.post("/v1/score", response_model=ScoreResponse)
    async def score(self, request: ScoreRequest, authorization: str | None = Header(None),
                    x_api_key: str | None = Header(None)) -> Any:
        self._auth(authorization, x_api_key)
        return await self._call("score", request)

    @pools_api.get("/v1/pools")
    def status(self, authorization: str | None = Header(None), x_api_key: str | None = Header(None)) -> dict:
        self._auth(authorization, x_api_key)
        return {"pools": [{k: v for k, v in p.items() if k != "handle"} for p in self.pools]}

    @pools_api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}  # open: the pools and their node types are at /v1/pools, behind a key
