"""The completion Serve deployment: a checkpoint behind HTTP, for CPU (int8) or GPU (bf16) replicas.

Endpoints (schema at `/openapi.json`):
- `POST /v1/completions` {"prompt", "max_tokens", "temperature", "seed"} -> {"completion", ...}
- `POST /v1/score` {"context", "continuation"} -> log-likelihood of the continuation
- `GET /healthz` (open: `{"status": "ok"}`, all a load balancer needs), `GET /v1/health` (the
  checkpoint, step, device, precision, market, node type, replica: behind a key) and
  `GET /v1/stats` (cache hit rate, batch sizes)

Requests are batched by `elasticml.serve.batching.Batcher` (a batch forms when the
model is free, one request from each tenant in turn; it waits for company only where
some is expected, so a lone request runs at once; prompts of different lengths
share a forward pass, see `elasticml.serve.generate`); repeated deterministic
requests are answered from a per-tenant LRU cache; bodies over `max_body_bytes` get
413; a request over `request_timeout_s` gets 504 and stops generating; with
`api_keys` set, /v1/* need a tenant's key (401 before the body is read). A tenant
holding its share of the replica gets 429 at once; backpressure beyond that
(`max_queued_requests` -> 429 + Retry-After) is Serve's own, configured in `build_app`.
Routes, keys and the body limit are the ingress's (`elasticml.serve.ingress`), as on the routers.

It lives in the package (not in serve_apps/) so that a replica on any node
imports it from the installed package; `serve_apps/completion.py` exposes the
builder for `serve run` / `serve deploy`.
"""

# No `from __future__ import annotations`: FastAPI must see the request models
# as classes, not strings, to read them from the body.
import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from fastapi import HTTPException
from ray import serve
from ray.serve import Application

from elasticml import labels as L
from elasticml.serve.api import (
    CompletionRequest,
    CompletionResponse,
    Refusal,
    ScoreRequest,
    ScoreResponse,
    refusal_for,
)
from elasticml.serve.batching import Batcher
from elasticml.serve.config import ServeConfig
from elasticml.serve.ingress import HEALTHZ, Gate, Ingress, Route
from elasticml.serve.routing import router_config
from elasticml.train.checkpoint import resolve_checkpoint

if TYPE_CHECKING:
    from elasticml.models.transformer import Transformer
    from elasticml.scheduler.capacity import Allocation
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec

log = logging.getLogger("elasticml.serve")

SERVING_HOURS = 24.0
"""What a Serve app tells the scheduler it expects to run for (its cost estimate, its credentials)."""


class CompletionService:
    """What a replica does, apart from HTTP: the model, batching, cache, per-tenant shares and stats.

    `Completer` puts it behind the app's HTTP ingress; `ModelBackend` is the same service reachable
    only through deployment handles (the pools and versions behind a router).
    """

    def __init__(self, config: ServeConfig, s3_credentials: list[Any] | None = None, *,
                 arriving: Callable[[], int] | None = None) -> None:
        """`config`: validated once, where the app was built (Ray pickles it to the replica as it is).
        `s3_credentials`: a tenant's, where the cluster confines its checkpoints to its prefix
        (scheduler/tenant_storage.py); they arrive in the replica's constructor arguments.
        `arriving`: completions in the replica that have not reached `complete` yet, the batcher's
        company on the way (`Batcher`'s `arriving`)."""
        import ray
        import torch

        from elasticml.serve.cache import ResponseCache
        from elasticml.serve.metrics import ServeMetrics
        from elasticml.serve.precision import prepare
        from elasticml.storage import use_credentials
        from elasticml.train.checkpoint import load_model

        self.cfg = config
        if s3_credentials:
            use_credentials(s3_credentials)
        torch.set_num_threads(max(1, int(self.cfg.num_cpus)))
        model, self.meta = load_model(self.cfg.checkpoint, allowed_modules=tuple(self.cfg.allowed_model_modules))
        # The reference Transformer, or a model with its interface (allowed_model_modules, ONNX, int8).
        self.context: int = cast("Transformer", model).config.max_seq_len
        self.model = cast("Transformer", prepare(model, device=self.cfg.device, precision=self.cfg.resolved_precision))
        self.cache: ResponseCache[tuple[str, int]] = ResponseCache(self.cfg.cache_size)  # (text, bytes generated)
        share = tenant_share_of(self.cfg)
        self.tenant_slots = max(self.cfg.max_batch_size, int(self.cfg.max_ongoing_requests * share))
        """Requests one tenant may have in this replica at once (never fewer than a full batch)."""
        self.in_flight: dict[str | None, int] = {}
        self.batches = 0
        self.generated_bytes = 0
        self.per_tenant: dict[str | None, dict[str, int]] = {}
        self.cancelled = 0
        self.batched_requests = 0
        self.largest_batch = 0
        self.batch_seconds = 0.0
        self.longest_batch_s = 0.0
        self.batcher = Batcher(self._generate, max_batch_size=self.cfg.max_batch_size,
                               wait_s=self.cfg.batch_wait_ms / 1000, arriving=arriving)
        self._metrics = ServeMetrics()
        self.node_labels = dict(ray.get_runtime_context().get_node_labels())  # a replica never moves

    async def _generate(self, prompts: list[Any]) -> list[bytes]:
        from elasticml.serve.generate import generate_batch

        self.batches += 1
        self.batched_requests += len(prompts)
        self.largest_batch = max(self.largest_batch, len(prompts))
        # Off the event loop: requests keep arriving (and forming the next batch) while this one runs.
        t0 = time.perf_counter()
        outs = await asyncio.to_thread(generate_batch, self.model, prompts)
        took = time.perf_counter() - t0
        self.batch_seconds += took
        self.longest_batch_s = max(self.longest_batch_s, took)
        self.generated_bytes += sum(len(o) for o in outs)
        self.cancelled += sum(p.cancelled for p in prompts)
        self._metrics.batch(len(prompts), took, self.batcher.queued)
        return outs

    async def _run(self, coro: Any, cancel: threading.Event | None = None) -> Any:
        """`coro` within the request's time limit; past it (or when the client goes away) `cancel` is set,
        so that generation stops instead of finishing for nobody."""
        try:
            async with asyncio.timeout(self.cfg.request_timeout_s):  # no task of its own, unlike wait_for
                return await coro
        except TimeoutError:
            if cancel is not None:
                cancel.set()
            raise HTTPException(status_code=504, detail=f"the model did not answer within "
                                f"{self.cfg.request_timeout_s}s; retry, or ask for fewer max_tokens") from None
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            raise

    def health(self) -> dict[str, Any]:
        node_labels = self.node_labels
        return {
            "status": "ok",
            "checkpoint": self.cfg.checkpoint,
            "step": self.meta["step"],
            "device": self.cfg.device,
            "precision": self.cfg.resolved_precision,
            "market": L.market_of(node_labels),  # type: ignore[arg-type]  # Ray annotates label values list[str]; they are str
            "node_type": node_labels.get(L.NODE_TYPE),
            "replica": serve.get_replica_context().replica_id.unique_id,
        }

    def stats(self, tenant: str | None = None) -> dict[str, Any]:
        """This replica's numbers (Prometheus sums them over replicas), and the caller's own tenant's:
        a tenant never sees another's."""
        mine = self.per_tenant.get(tenant, {"requests": 0, "cache_hits": 0})
        return {
            "covers": f"replica {serve.get_replica_context().replica_id.unique_id}; Prometheus "
                      "(ray_elasticml_serve_*) sums every replica",
            "tenant": {"name": tenant, **mine, "in_flight": self.in_flight.get(tenant, 0), "share": self.tenant_slots},
            "in_flight": sum(self.in_flight.values()),
            "cache": {"hits": self.cache.hits, "misses": self.cache.misses, "hit_rate": self.cache.hit_rate,
                      "size": len(self.cache)},
            "batches": self.batches,
            "mean_batch_size": self.batched_requests / self.batches if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "mean_batch_ms": self.batch_seconds / self.batches * 1e3 if self.batches else 0.0,
            "longest_batch_ms": self.longest_batch_s * 1e3,
            "generated_bytes": self.generated_bytes,
            "cancelled": self.cancelled + self.batcher.dropped,
        }

    async def complete(self, request: CompletionRequest, tenant: str | None = None) -> CompletionResponse:
        held = self.in_flight.get(tenant, 0)
        if held >= self.tenant_slots:
            # Refused at once: a flood from one tenant holds at most its share of the replica.
            raise HTTPException(status_code=429, detail=f"this tenant already has {held} requests in flight here "
                                f"(its share is {self.tenant_slots}); retry shortly",
                                headers={"Retry-After": f"{self.cfg.retry_after_s:g}"})
        self.in_flight[tenant] = held + 1
        try:
            return await self._complete(request, tenant)
        finally:
            self.in_flight[tenant] -= 1

    async def _complete(self, request: CompletionRequest, tenant: str | None) -> CompletionResponse:
        from elasticml.serve.generate import Prompt

        if request.max_tokens >= self.context:
            raise HTTPException(status_code=422,
                                detail=f"max_tokens must be below the model's context of {self.context} bytes")
        needed = len(request.prompt.encode("utf-8")) + request.max_tokens
        if needed > self.context:
            # Refused, as /v1/score refuses: cutting the prompt silently would answer another question.
            raise HTTPException(status_code=422, detail=f"prompt bytes + max_tokens is {needed}; the model's context "
                                f"is {self.context} bytes")
        t0 = time.perf_counter()
        deterministic = request.temperature == 0 or request.seed is not None
        # Per tenant: a hit would hand one tenant another's answer, and prove the other sent that prompt.
        key = (tenant, request.prompt, request.max_tokens, request.temperature if request.temperature else 0.0,
               request.seed if request.temperature else None)
        hit = self.cache.get(key) if deterministic else None
        cached = hit is not None
        if hit is None:
            cancel = threading.Event()
            prompt = Prompt(text=request.prompt.encode("utf-8"), max_tokens=request.max_tokens,
                            temperature=request.temperature, seed=request.seed, cancel=cancel)
            out = await self._run(self.batcher.submit(prompt, tenant), cancel)
            # `tokens` counts the bytes generated: re-encoding the text would count each U+FFFD
            # that stands for a broken byte sequence as 3.
            hit = (out.decode("utf-8", errors="replace"), len(out))
            if deterministic:
                self.cache.put(key, hit)
        text, tokens = hit
        counts = self.per_tenant.setdefault(tenant, {"requests": 0, "cache_hits": 0})  # tenants: the keyring's
        counts["requests"] += 1
        counts["cache_hits"] += cached
        self._metrics.record(tenant, cached, self.cache.hit_rate)
        return CompletionResponse(completion=text, tokens=tokens,
                                  latency_ms=(time.perf_counter() - t0) * 1e3, model_step=int(self.meta["step"]),
                                  cached=cached)

    async def score(self, request: ScoreRequest) -> ScoreResponse:
        from elasticml.serve.generate import log_likelihood

        context, continuation = request.context.encode("utf-8"), request.continuation.encode("utf-8")
        if len(context) + len(continuation) > self.context:
            raise HTTPException(status_code=422, detail=f"context + continuation is {len(context) + len(continuation)} "
                                f"bytes; the model's context is {self.context}")
        if not context and len(continuation) < 2:
            raise HTTPException(status_code=422, detail="with an empty context the continuation needs at least 2 "
                                "bytes (the first one has nothing to be predicted from)")
        total, n = await self._run(asyncio.to_thread(log_likelihood, self.model, context, continuation))
        return ScoreResponse(log_likelihood=total, tokens=n, nll_per_byte=-total / n, model_step=int(self.meta["step"]))


@serve.deployment(max_ongoing_requests=32, request_router_config=router_config())
class ModelBackend:
    """A model version reachable only through handles (keys are checked by whoever holds the handle)."""

    def __init__(self, config: ServeConfig, s3_credentials: list[Any] | None = None) -> None:
        self.service = CompletionService(config, s3_credentials)

    async def complete(self, request: CompletionRequest, tenant: str | None = None) -> "CompletionResponse | Refusal":
        """`tenant`: whom the router in front authenticated (it scopes the response cache)."""
        return await refusal_for(self.service.complete(request, tenant))

    async def score(self, request: ScoreRequest) -> "ScoreResponse | Refusal":
        return await refusal_for(self.service.score(request))


@serve.deployment(max_ongoing_requests=32, request_router_config=router_config())
@serve.ingress()
class Completer:
    """The app's HTTP ingress when it serves one model version itself: the shared routes and its own."""

    ROUTES = (HEALTHZ, Route(method="GET", path="/v1/health", handler="health"),
              Route(method="GET", path="/v1/stats", handler="stats"))

    def __init__(self, config: ServeConfig, s3_credentials: list[Any] | None = None) -> None:
        self.ingress: Ingress | None = None
        self.service = CompletionService(config, s3_credentials, arriving=self._arriving)
        self.gate = Gate.of(config)

    def __serve_build_asgi_app__(self) -> Ingress:
        """Serve calls this once the replica exists."""
        self.ingress = Ingress(self, title="elasticml completion", routes=self.ROUTES)
        return self.ingress

    def _arriving(self) -> int:
        # A completion whose body is still coming from the proxy is company for the batch about to form.
        return self.ingress.reading("complete") if self.ingress is not None else 0

    async def complete(self, request: CompletionRequest, tenant: str | None) -> CompletionResponse:
        return await self.service.complete(request, tenant)

    async def score(self, request: ScoreRequest, tenant: str | None) -> ScoreResponse:
        return await self.service.score(request)

    # async: a sync handler would run on FastAPI's thread pool for a few dictionary lookups
    async def healthz(self, tenant: None) -> dict[str, Any]:
        # Open to anyone who can reach the port: nothing about the model, its storage or its node.
        return {"status": "ok"}

    async def health(self, tenant: str | None) -> dict[str, Any]:
        return self.service.health()

    async def stats(self, tenant: str | None) -> dict[str, Any]:
        return self.service.stats(tenant)


def replica_options(cfg: ServeConfig) -> dict[str, Any]:
    """ray_actor_options for the replicas: where an app without a tenant runs is its `market`; a tenant's
    app is pinned to the scheduler's pools instead (`build_app` gives each allocation its own deployment,
    elasticml.serve.pools)."""
    options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "runtime_env": {"env_vars": dict(cfg.env_vars)}}
    if cfg.device == "gpu":
        options["num_gpus"] = 1
    if cfg.tenant is None and cfg.market != "any":
        options["label_selector"] = L.selector_for(cfg.market)
    return options


def serving_spec(cfg: ServeConfig, *, scaling: dict[str, Any]) -> "WorkloadSpec":
    """A tenant's app as the scheduler's workload (`scaling`: `cfg.autoscaling_config()`): base replicas
    on reserved or on-demand capacity, extra ones on spot, over-provisioned (see the policy)."""
    from elasticml.scheduler.spec import WorkloadSpec

    if cfg.tenant is None:
        raise ValueError("an app without a tenant is not the scheduler's workload")
    return WorkloadSpec(name=cfg.name, tenant=cfg.tenant, kind="serving", priority=cfg.priority,  # type: ignore[arg-type]  # WorkloadSpec checks it
                        cpus_per_worker=cfg.num_cpus, gpus_per_worker=1.0 if cfg.device == "gpu" else 0.0,
                        min_workers=scaling.get("min_replicas", cfg.num_replicas) or 1,
                        max_workers=scaling.get("max_replicas", cfg.num_replicas), expected_hours=SERVING_HOURS)


def tenant_share_of(cfg: ServeConfig) -> float:
    """A tenant's share of a replica: as configured, else equal among the tenants with keys."""
    if cfg.tenant_share is not None:
        return cfg.tenant_share
    return 1.0 / len(cfg.api_keys) if cfg.api_keys else 1.0


def build_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run` / `serve deploy`: args are ServeConfig fields (checkpoint is required).

    With a tenant, the scheduler's allocations become one pinned deployment each behind a PoolRouter.
    (Serve insists that a builder takes exactly one parameter.)
    """
    return build_deployment(args)


def build_deployment(args: dict[str, Any], *, deployment_name: str = "Completer", backend: bool = False,
                     version: str | None = None, sched: "SchedulerClient | None" = None,
                     attach: str | None = None) -> Application:
    """build_app's work; with backend=True a handle-only ModelBackend (for a router in front of it).

    `version`: Serve's code version for the replicas. A redeploy with the same one keeps them running;
    without one, Serve draws a new version at every deploy and restarts them all. `sched`: the scheduler
    as whoever builds it (the API server passes the tenant's); default: this process's principal.
    A tenant's app is admitted by the scheduler (elasticml.scheduler.admission) and must be placed at
    once: a build does not wait."""
    from elasticml.serve.audit import record_deployment, scheduler_or_none
    from elasticml.train.checkpoint import read_meta

    cfg = ServeConfig.from_dict(dict(args), source="completion app args")
    if cfg.autoscaling not in ("reactive", "predictive"):
        check_policy(cfg.autoscaling)
    if cfg.api_keys_file is not None:  # read here, on the head: replicas get the digests, not the file
        from elasticml.serve.auth import read_key_file

        cfg = dataclasses.replace(cfg, api_keys={**read_key_file(cfg.api_keys_file), **cfg.api_keys}, api_keys_file=None)
    scaling = cfg.autoscaling_config()
    if cfg.tenant is None:
        # A checkpoint that does not verify is refused before the cluster is asked anything.
        cfg = dataclasses.replace(cfg, checkpoint=resolve_checkpoint(cfg.checkpoint))
        sched = sched or scheduler_or_none()
        record_deployment(cfg, [], read_meta(cfg.checkpoint), sched)  # before any replica starts
        return _bind(cfg, scaling=scaling, creds=[], allocations=[], workload=cfg.name,
                     deployment_name=deployment_name, backend=backend, version=version)
    sched = sched or scheduler_or_none()
    if sched is None:
        import ray

        from elasticml.errors import SchedulerNotRunning

        raise SchedulerNotRunning(ray.get_runtime_context().gcs_address)
    from elasticml.scheduler.admission import admitted
    from elasticml.scheduler.ray_view import serve_attachment

    # The app outlives its build: finished here only if the build fails after placing it.
    with admitted(serving_spec(cfg, scaling=scaling), sched=sched, uris=[cfg.checkpoint],
                  attach=attach or serve_attachment(cfg.name), max_wait_s=None,
                  preflight=lambda: resolve_checkpoint(cfg.checkpoint), finish="on_error") as admission:
        cfg = dataclasses.replace(cfg, checkpoint=admission.checked)
        allocations = list(admission.placement.allocations)
        record_deployment(cfg, allocations, read_meta(cfg.checkpoint), sched)  # before any replica starts
        return _bind(cfg, scaling=scaling, creds=admission.credentials, allocations=allocations,
                     workload=admission.placement.workload, deployment_name=deployment_name, backend=backend,
                     version=version)


def _bind(cfg: ServeConfig, *, scaling: dict[str, Any], creds: list[Any], allocations: list["Allocation"], workload: str,
          deployment_name: str, backend: bool, version: str | None) -> Application:
    """The app's deployments: one per allocation behind a PoolRouter (a tenant's), else one of its own."""
    from ray.serve.config import BackpressureConfig

    options = replica_options(cfg)
    common: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "max_queued_requests": cfg.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=cfg.retry_after_s),
        "request_router_config": router_config(cfg.router_max_backoff_s),
    }
    if allocations:
        from elasticml.serve.pools import PoolRouter

        # Keys are checked by the router; the backends keep each tenant to its share of the router's tenants.
        backend_cfg = dataclasses.replace(cfg, api_keys={}, tenant_share=tenant_share_of(cfg))
        pools, handles = [], []
        base = sum(a.workers for a in allocations if a.market != "spot")
        for alloc in allocations:
            pinned = {**options, "label_selector": {L.NODE_TYPE: alloc.node_type}}  # no fallback: stay put
            # Named <workload>-pool-<type>: the scheduler charges (and finishes) the app by these replicas.
            name = f"{cfg.name}-pool-{alloc.node_type}"
            burst = cfg.autoscaling == "predictive" and alloc.market == "spot" and base > 0
            scale: dict[str, Any] = {"autoscaling_config": burst_autoscaling(scaling, alloc.workers, base, workload)} if burst \
                else {"num_replicas": alloc.workers}
            handles.append(ModelBackend.options(name=name, ray_actor_options=pinned, **scale, **common)  # type: ignore[attr-defined]  # mypy keeps a decorated class's own type; Serve made it a Deployment
                           .bind(backend_cfg, creds))
            pools.append({"node_type": alloc.node_type, "market": alloc.market, "replicas": alloc.workers,
                          "deployment": name, "burst": burst})
        # The router must not sit on spot either: pinned to the first (base) pool, taking no CPU.
        base_pool = next((a for a in allocations if a.market != "spot"), allocations[0])
        router = {"num_cpus": 0, "runtime_env": options["runtime_env"],
                  "label_selector": {L.NODE_TYPE: base_pool.node_type}}
        # The router follows the workload by the name the scheduler knows it by.
        return PoolRouter.options(ray_actor_options=router, request_router_config=common["request_router_config"]).bind(pools, handles, Gate.of(cfg), workload)  # type: ignore[attr-defined, no-any-return]  # mypy keeps a decorated class's own type; Serve made it a Deployment
    deployment: dict[str, Any] = {"name": deployment_name, "ray_actor_options": options, **common}
    if version is not None:  # Serve takes a version only as an internal option
        deployment.update(version=version, _internal=True)
    if scaling:
        deployment["autoscaling_config"] = scaling
    else:
        deployment["num_replicas"] = cfg.num_replicas
    return (ModelBackend if backend else Completer).options(**deployment).bind(cfg, creds)  # type: ignore[union-attr, no-any-return]  # mypy keeps a decorated class's own type; Serve made it a Deployment


def burst_autoscaling(scaling: dict[str, Any], most: int, base: int, workload: str) -> dict[str, Any]:
    """A spot pool's autoscaling under the predictive policy (`scaling`: the app's autoscaling_config):
    none to `most` replicas (what the scheduler gave the pool), for what the whole app's forecast needs
    above its `base` replicas off spot."""
    policy = scaling["policy"]
    kwargs = {**policy["policy_kwargs"], "burst": {"workload": workload, "base_replicas": base}}
    return {**scaling, "min_replicas": 0, "max_replicas": most, "policy": {**policy, "policy_kwargs": kwargs}}


def check_policy(path: str) -> None:
    """An autoscaling policy Serve can import and call, or ConfigError naming `autoscaling` (at build
    time, not when Serve's controller first calls it)."""
    from ray._common.utils import import_attr

    from elasticml.errors import ConfigError

    try:
        policy = import_attr(path)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"cannot import {path!r}: {type(exc).__name__}: {str(exc)[:200]}", field="autoscaling") from None
    if not callable(policy):
        raise ConfigError(f"{path!r} is not a callable autoscaling policy", field="autoscaling")


def tenant_storage(tenant: str | None, checkpoints: list[str], sched: "SchedulerClient | None") -> list[Any]:
    """For a tenant's app: its checkpoints' buckets checked against its regions before anything is read,
    and, where the cluster confines tenants to their prefixes, the credentials that reach them
    (installed here for `latest:` and the manifest check), for as long as admission gives a Serve app."""
    if tenant is None or sched is None:
        return []
    from elasticml.scheduler.admission import credential_hours, storage_for

    return storage_for(sched, tenant, checkpoints, hours=credential_hours(SERVING_HOURS))
