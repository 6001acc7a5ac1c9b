"""Canary releases: a new checkpoint takes a share of the traffic, then is promoted or rolled back.

`build_canary_app(args)` deploys three things: the current version and the canary (two `ModelBackend`
deployments, each with its own replicas and batching) and `CanaryRouter`, the HTTP ingress. The
router checks keys, sends each request to the canary with probability `canary_share`, and records
latency per version. After `evaluate_after` canary requests, or on `POST /v1/canary/evaluate`, it
scores held-out text on both versions and asks `canary_policy.judge`: a canary whose held-out loss
or latency is worse than allowed is rolled back (share 0), otherwise promoted (share 1).
`GET /v1/canary` tells the state and why. The verdict is written (atomically) to `verdict_uri`, and a
restarted router takes it up again, so a rolled-back canary stays rolled back.
"""

# No `from __future__ import annotations`: FastAPI reads the request models from the annotations.
import asyncio
import json
import logging
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ray import serve
from ray.serve import Application

from elasticml import labels as L
from elasticml.dataconf import from_mapping
from elasticml.errors import ConfigError
from elasticml.home import home
from elasticml.serve.api import (
    CompletionRequest,
    CompletionResponse,
    ScoreRequest,
    ScoreResponse,
    answer_or_raise,
)
from elasticml.serve.auth import KeyRing
from elasticml.serve.config import ServeConfig
from elasticml.serve.ingress import Gate, Ingress, Route
from elasticml.serve.routing import router_config

log = logging.getLogger("elasticml.serve.canary")


@dataclass(kw_only=True, frozen=True)
class CanaryConfig:
    canary_checkpoint: str
    """The new version; `checkpoint` (the ServeConfig field) is the current one."""
    canary_precision: str | None = None
    """The canary's own precision (a candidate chosen as int8 next to an fp32 current version);
    default: the current version's `precision`."""
    canary_share: float = 0.1
    holdout_texts: list[str] = field(default_factory=list)
    holdout_file: str | None = None
    """A text file (local or s3://) of held-out text; used with or instead of holdout_texts."""
    max_nll_increase: float = 0.01
    """Roll back when the canary's held-out loss is more than this fraction above the current one's."""
    max_latency_ratio: float = 1.5
    min_latency_samples: int = 20
    evaluate_after: int = 50
    """Canary requests before the router judges on its own (0 = only on POST /v1/canary/evaluate)."""
    verdict_uri: str | None = None
    """Where the router keeps its verdict (a JSON file, local or s3://), so that a restarted router
    neither sends traffic to a rolled-back canary again nor forgets a promotion. The verdict names
    both checkpoints: a release of other checkpoints starts afresh. Default:
    `$ELASTICML_HOME/canary/<name>.json` on the router's node; use s3:// on a multi-node cluster."""

    def __post_init__(self) -> None:
        from typing import get_args

        from elasticml.dataconf import check_choice
        from elasticml.serve.config import Precision

        if self.canary_precision is not None:
            check_choice(self.canary_precision, get_args(Precision), field="canary_precision")
        if not 0 <= self.canary_share <= 1:
            raise ConfigError(f"must be between 0 and 1, got {self.canary_share}", field="canary_share")
        if not (self.holdout_texts or self.holdout_file):
            raise ConfigError("the canary is judged on held-out text: give holdout_texts or holdout_file",
                              field="holdout_texts")
        if self.max_nll_increase < 0 or self.max_latency_ratio < 1:
            raise ConfigError("max_nll_increase must be >= 0 and max_latency_ratio >= 1", field="max_nll_increase")
        if self.min_latency_samples < 1 or self.evaluate_after < 0:
            raise ConfigError("min_latency_samples must be >= 1 and evaluate_after >= 0", field="min_latency_samples")

    def holdout(self) -> list[str]:
        texts = list(self.holdout_texts)
        if self.holdout_file:
            from elasticml.storage import read_text

            texts.append(read_text(self.holdout_file))
        return [t for t in texts if t]


def _chunks(text: bytes, size: int) -> list[bytes]:
    return [text[i:i + size] for i in range(0, len(text), size) if len(text[i:i + size]) >= 2]


# The router is never restarted by a redeploy: its code version is fixed here and everything that
# changes (the versions, keys, the canary's settings) comes through `user_config`, applied in place
# by `reconfigure`. Serve's rolling update stops an old replica before its successor is up, so a
# restarted router (or model version) would turn away every request in between. These versions hold
# for `serve.run` (what `elasticml release` uses); `serve deploy` gives every deployment the app's code
# version, a digest of its args, so there any change of args restarts them all.
ROUTER_VERSION = "canary-router-1"


@serve.deployment(max_ongoing_requests=256, request_router_config=router_config())
@serve.ingress()
class CanaryRouter:
    """The ingress of a released app: `stable` and, during a release, `canary` are model versions
    (ModelBackend deployments of this app, named by what they serve), found by name."""

    ROUTES = (Route(method="GET", path="/v1/canary", handler="status"),
              Route(method="POST", path="/v1/canary/evaluate", handler="evaluate"))

    def __init__(self, *versions: Any) -> None:
        # `versions` are bound only so that Serve deploys them; a reconfigured replica outlives them.
        del versions
        # Replaced by the first `reconfigure`, which Serve runs before the replica takes any request.
        self.gate = Gate(keys=KeyRing({}))
        self.release: dict[str, Any] = {}
        self.handles: dict[str, Any] = {}
        self._judging = asyncio.Lock()
        self.canary_cfg: CanaryConfig | None = None

    def reconfigure(self, config: dict[str, Any]) -> None:
        # Checked again here, unlike a model replica's typed config: Serve carries `user_config` as JSON,
        # and a deploy file may override it.
        self.cfg = ServeConfig.from_dict(config["serve_config"])
        self.canary_cfg = CanaryConfig(**config["canary_config"]) if config["canary_config"] else None
        app = serve.get_replica_context().app_name
        names = {"stable": config["stable"], **({"canary": config["canary"]} if self.canary_cfg else {})}
        self.handles = {v: serve.get_deployment_handle(n, app_name=app) for v, n in names.items()}
        self.gate = Gate.of(self.cfg)  # whole, so that no request sees new keys with the old limit
        release = {"stable": self.cfg.checkpoint}
        if self.canary_cfg is not None:
            release["canary"] = self.canary_cfg.canary_checkpoint
            if self.canary_cfg.canary_precision:  # the same checkpoint in another precision is another release
                release["canary_precision"] = self.canary_cfg.canary_precision
        if release == self.release:
            return  # the same release (keys or limits changed): keep its traffic and its verdict
        self.release = release
        self.latency: dict[str, deque[float]] = {v: deque(maxlen=500) for v in ("stable", "canary")}
        self.requests = {v: 0 for v in ("stable", "canary")}
        self.last_scores: dict[str, float] = {}
        if self.canary_cfg is None:
            self.share, self.state, self.reason = 0.0, "stable", "no canary: every request goes to the stable version"
            self.verdict_uri = None
            return
        self.share = self.canary_cfg.canary_share
        self.state, self.reason = "running", "waiting for traffic"
        self.verdict_uri = self.canary_cfg.verdict_uri or str(home() / "canary" / f"{self.cfg.name}.json")
        self._restore_verdict()

    def _restore_verdict(self) -> None:
        """Take up a verdict an earlier router of this release reached (this replica may be its restart)."""
        from elasticml.storage import exists, read_text

        if not exists(self.verdict_uri):  # type: ignore[arg-type]  # set whenever a canary runs (the only caller)
            return
        try:
            saved = json.loads(read_text(self.verdict_uri))  # type: ignore[arg-type]  # as above
        except (OSError, ValueError) as exc:  # written atomically, so this is someone else's file
            log.warning("ignoring unreadable canary verdict %s: %s", self.verdict_uri, exc)
            return
        if saved.get("release") != self.release:
            return  # a verdict on other checkpoints: this release starts afresh
        self.state, self.reason, self.share = saved["state"], saved["reason"], float(saved["canary_share"])
        self.last_scores = saved.get("held_out_nll_per_byte", {})
        log.warning("canary %s (restored from %s): %s", self.state, self.verdict_uri, self.reason)

    def _save_verdict(self) -> None:
        from elasticml.storage import write_text_atomic

        write_text_atomic(self.verdict_uri, json.dumps({  # type: ignore[arg-type]  # set whenever a canary runs
            "release": self.release, "state": self.state, "reason": self.reason, "canary_share": self.share,
            "held_out_nll_per_byte": self.last_scores, "decided_at": time.time()}, indent=2))

    def __serve_build_asgi_app__(self) -> Ingress:
        """Serve calls this once the replica exists."""
        return Ingress(self, title="elasticml completion (canary release)", routes=self.ROUTES)

    def _pick(self) -> str:
        return "canary" if random.random() < self.share else "stable"

    async def _call(self, version: str, method: str, request: Any, *args: Any) -> Any:
        """A backend's answer; its refusal (a 4xx, a 504) goes to the client with the same status."""
        return answer_or_raise(await getattr(self.handles[version], method).remote(request, *args))

    async def complete(self, request: CompletionRequest, tenant: str | None) -> CompletionResponse:
        version = self._pick()
        t0 = time.perf_counter()
        reply: CompletionResponse = await self._call(version, "complete", request, tenant)
        if not reply.cached:
            self.latency[version].append((time.perf_counter() - t0) * 1e3 / max(1, reply.tokens))
        self.requests[version] += 1
        after = self.canary_cfg.evaluate_after if self.canary_cfg else 0
        if version == "canary" and self.state == "running" and after and self.requests["canary"] % after == 0:
            asyncio.get_running_loop().create_task(self.evaluate_now())
        return reply.model_copy(update={"model_version": version})

    async def score(self, request: ScoreRequest, tenant: str | None) -> ScoreResponse:
        reply: ScoreResponse = await self._call(self._pick(), "score", request)
        return reply

    def status(self, tenant: str | None) -> dict[str, Any]:
        return {**self.verdict(), "verdict_uri": self.verdict_uri}

    def verdict(self) -> dict[str, Any]:
        """The release's state for a driver holding a deployment handle (`elasticml release`): no key,
        because only a process already admitted to the cluster gets a handle."""
        stable = {"checkpoint": self.cfg.checkpoint, "precision": self.cfg.resolved_precision}
        sides = {"stable": stable}
        if self.canary_cfg is not None:
            sides["canary"] = {"checkpoint": self.canary_cfg.canary_checkpoint,
                               "precision": self.canary_cfg.canary_precision or stable["precision"]}
        return {"state": self.state, "reason": self.reason, "canary_share": self.share, "versions": sides,
                "requests": dict(self.requests), "held_out_nll_per_byte": dict(self.last_scores),
                "p50_ms_per_token": {v: (sorted(l)[len(l) // 2] if l else None) for v, l in self.latency.items()}}

    async def judge_now(self) -> dict[str, Any]:
        """Judge now on what was seen so far (a handle call, like `verdict`)."""
        await self.evaluate_now()
        return self.verdict()

    async def evaluate(self, tenant: str | None) -> dict[str, Any]:
        await self.evaluate_now()
        return self.status(tenant)

    async def _held_out_nll(self, version: str, texts: list[str]) -> float:
        total, n = 0.0, 0
        for text in texts:
            for chunk in _chunks(text.encode("utf-8"), 128):
                piece = chunk.decode("utf-8", errors="ignore")  # a chunk edge may split a character
                if len(piece.encode("utf-8")) < 2:
                    continue
                reply = await self._call(version, "score", ScoreRequest(context="", continuation=piece))
                total -= reply.log_likelihood
                n += reply.tokens
        return total / max(1, n)

    async def evaluate_now(self) -> None:
        from elasticml.serve.canary_policy import VersionStats, judge

        async with self._judging:
            if self.state != "running" or self.canary_cfg is None:
                return
            judged, texts = self.release, await asyncio.to_thread(self.canary_cfg.holdout)
            scores = {v: await self._held_out_nll(v, texts) for v in self.handles}
            if self.release is not judged:  # reconfigured to another release while scoring: not this one's verdict
                return
            self.last_scores = scores
            verdict = judge(
                VersionStats(nll_per_byte=scores["stable"], ms_per_token=list(self.latency["stable"])),
                VersionStats(nll_per_byte=scores["canary"], ms_per_token=list(self.latency["canary"])),
                max_nll_increase=self.canary_cfg.max_nll_increase, max_latency_ratio=self.canary_cfg.max_latency_ratio,
                min_latency_samples=self.canary_cfg.min_latency_samples,
            )
            self.reason = verdict.reason
            if verdict.action == "rollback":
                self.state, self.share = "rolled_back", 0.0
            elif verdict.action == "promote":
                self.state, self.share = "promoted", 1.0
            if self.state != "running":
                await asyncio.to_thread(self._save_verdict)
                await asyncio.to_thread(self._audit_verdict)
            log.warning("canary %s: %s", self.state, verdict.reason)

    def _audit_verdict(self) -> None:
        """Into the cluster's audit trail, when the cluster has a scheduler (the verdict file stands alone)."""
        from elasticml.scheduler.client import SchedulerClient

        try:
            SchedulerClient.connect().record_event(
                f"canary {self.state.replace('_', ' ')}", self.cfg.name,
                f"{self.reason} (stable {self.release['stable']}, canary {self.release['canary']})"[:2000])
        except Exception as exc:  # no scheduler, or this node has no credential: say so, keep serving
            log.warning("canary verdict not audited: %s: %s", type(exc).__name__, str(exc)[:200])


def version_name(backend_args: dict[str, Any]) -> str:
    """A model version's deployment name: a digest of what it serves and how, so the same version
    keeps its name (and its running replicas) from canary to stable across redeploys. The router's retry
    cap is not part of it: Serve changes that on running replicas."""
    import hashlib

    blob = json.dumps({k: v for k, v in backend_args.items() if k not in ("name", "router_max_backoff_s")},
                      sort_keys=True, default=str)
    return "v-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_release_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run` / `serve deploy`: ServeConfig fields, plus CanaryConfig fields during a
    release. Without `canary_checkpoint` the app is its stable version alone behind the router, the
    shape `elasticml release` keeps an app in between releases."""
    from elasticml.serve.audit import scheduler_or_none
    from elasticml.serve.completion import (
        build_deployment,
        tenant_share_of,
        tenant_storage,
    )
    from elasticml.train.checkpoint import resolve_checkpoint

    canary_keys = set(CanaryConfig.__dataclass_fields__)
    canary_args = {k: v for k, v in args.items() if k in canary_keys}
    canary_cfg = from_mapping(CanaryConfig, canary_args, source="canary args") if canary_args else None
    tenant = args.get("tenant") if isinstance(args.get("tenant"), str) else None
    # A tenant's versions: residency and its prefix's credentials before `latest:` lists anything.
    tenant_storage(tenant, ([canary_cfg.canary_checkpoint] if canary_cfg else []) + [str(args.get("checkpoint", ""))],
                   scheduler_or_none() if tenant else None)
    # Resolved here, once: `latest:RUN_DIR` must name the same checkpoint in the versions and in the
    # verdict the router keeps.
    if canary_cfg is not None:
        canary_cfg = replace(canary_cfg, canary_checkpoint=resolve_checkpoint(canary_cfg.canary_checkpoint))
    serve_args = {k: v for k, v in args.items() if k not in canary_keys}
    if "checkpoint" in serve_args:
        serve_args["checkpoint"] = resolve_checkpoint(serve_args["checkpoint"])
    serve_cfg = ServeConfig.from_dict(serve_args, source="canary app args")
    if serve_cfg.api_keys_file is not None:  # read here, on the head: the router gets the digests
        from elasticml.serve.auth import read_key_file

        serve_cfg = replace(serve_cfg, api_keys={**read_key_file(serve_cfg.api_keys_file), **serve_cfg.api_keys},
                            api_keys_file=None)
    # Reachable only through the router, which checks keys.
    backend_args = {**serve_args, "api_keys": {}, "api_keys_file": None, "tenant_share": tenant_share_of(serve_cfg)}
    sides = {"stable": backend_args}
    if canary_cfg is not None:
        precision = {"precision": canary_cfg.canary_precision} if canary_cfg.canary_precision else {}
        sides["canary"] = {**backend_args, "checkpoint": canary_cfg.canary_checkpoint, **precision}
    names = {side: version_name(a) for side, a in sides.items()}
    # A canary that serves exactly what the stable version does is that deployment, bound once.
    built = {names[side]: a for side, a in sides.items()}
    versions = [build_deployment({**a, "name": f"{serve_cfg.name}-{n}"}, deployment_name=n, backend=True, version=n)
                for n, a in built.items()]
    router_options: dict[str, Any] = {"num_cpus": 0}
    if serve_cfg.market != "any":  # the router goes where the versions go (never spot unless asked)
        router_options["label_selector"] = L.selector_for(serve_cfg.market)
    config = {"serve_config": serve_cfg.to_dict(), "canary_config": asdict(canary_cfg) if canary_cfg else None,
              "stable": names["stable"], "canary": names.get("canary")}
    return CanaryRouter.options(ray_actor_options=router_options, user_config=config,  # type: ignore[attr-defined, no-any-return]  # mypy keeps a decorated class's own type; Serve made it a Deployment
                                request_router_config=router_config(serve_cfg.router_max_backoff_s),
                                version=ROUTER_VERSION, _internal=True).bind(*versions)


def build_canary_app(args: dict[str, Any]) -> Application:
    """Builder for `serve run` / `serve deploy` of a canary release: ServeConfig plus CanaryConfig fields."""
    if "canary_checkpoint" not in args:
        raise ConfigError("a canary release needs the new version's checkpoint", field="canary_checkpoint")
    return build_release_app(args)


__all__ = ["CanaryConfig", "CanaryRouter", "build_canary_app", "build_release_app", "version_name"]
