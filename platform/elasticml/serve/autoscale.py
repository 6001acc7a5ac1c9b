"""The predictive autoscaling policy, as Ray Serve runs it (`autoscaling_config.policy`).

Serve's controller instantiates `PredictivePolicy` once per deployment with the app's forecast
settings (`policy_kwargs`) and calls it every control-loop tick with an `AutoscalingContext`. Each
call feeds the requests in flight (Serve's `total_num_requests`) and the target/running replicas
(to measure how long a replica takes to start) to a `LoadForecaster`, whose answer goes back to
Serve, which still applies the deployment's bounds and up/down delays.

What the forecaster has learnt lives in the controller's memory, which a controller restart
loses, so it is also written to Ray's GCS key-value store (namespace `elasticml_autoscale`, a few
KB per deployment, at most once a bucket) and read back when the policy is made again. Beside it
goes a bounded log of the decisions that changed the replica count, each with what the reactive
rule (`ceil(in flight / target)`) would have asked at that moment: `decisions(app, deployment)`
reads it (the benchmark and the tests measure the policy from it).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from elasticml.dataconf import from_mapping
from elasticml.serve.forecast import ForecastConfig, LoadForecaster

NAMESPACE = "elasticml_autoscale"
MAX_EVENTS = 500
POLICY_PATH = "elasticml.serve.autoscale:PredictivePolicy"
log = logging.getLogger("elasticml.serve.autoscale")


def forecast_config(raw: dict[str, Any], *, target_per_replica: float) -> ForecastConfig:
    """The app's `forecast:` settings, checked (exact fields and types, bounded numbers)."""
    if "target_per_replica" in raw:
        from elasticml.errors import ConfigError

        raise ConfigError("comes from the preset's target_ongoing_requests; do not set it here",
                          field="forecast.target_per_replica")
    return from_mapping(ForecastConfig, {**raw, "target_per_replica": target_per_replica}, source="forecast")


def _key(app: str | None, deployment: str, what: str) -> bytes:
    return f"{app or 'default'}/{deployment}/{what}".encode()


def _kv_get(key: bytes) -> Any:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(key, namespace=NAMESPACE)
    if not raw or len(raw) > 1 << 20:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _kv_put(key: bytes, value: Any) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, json.dumps(value, separators=(",", ":")).encode(), overwrite=True, namespace=NAMESPACE)


def decisions(app: str, deployment: str) -> list[dict[str, Any]]:
    """The policy's logged decisions for a deployment, oldest first (from any connected process)."""
    events = _kv_get(_key(app, deployment, "events"))
    return events if isinstance(events, list) else []


def learned_state(app: str, deployment: str) -> dict[str, Any] | None:
    """The forecaster state last persisted for a deployment."""
    state = _kv_get(_key(app, deployment, "state"))
    return state if isinstance(state, dict) else None


class PredictivePolicy:
    def __init__(self, **kwargs: Any) -> None:
        self.config = from_mapping(ForecastConfig, kwargs, source="autoscaling_config.policy.policy_kwargs")
        self.forecaster: LoadForecaster | None = None
        self.events: list[dict[str, Any]] = []
        self.last_replicas: int | None = None
        self.saved_bucket: int | None = None

    def _resume(self, app: str | None, deployment: str, now: float) -> LoadForecaster:
        state = _kv_get(_key(app, deployment, "state"))
        forecaster = LoadForecaster.from_dict(self.config, state)
        events = _kv_get(_key(app, deployment, "events"))
        self.events = events[-MAX_EVENTS:] if isinstance(events, list) else []
        if forecaster.buckets:
            self._event(app, deployment, {"t": now, "event": "resumed", "buckets": forecaster.buckets,
                                          "startup_s": forecaster.startup_s})
        return forecaster

    def _event(self, app: str | None, deployment: str, event: dict[str, Any]) -> None:
        self.events.append(event)
        del self.events[:-MAX_EVENTS]
        try:
            _kv_put(_key(app, deployment, "events"), self.events)
        except Exception as exc:  # the GCS briefly away: the decision stands, the log catches up later
            log.warning("could not log an autoscaling decision: %s", type(exc).__name__)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        now = ctx.current_time if isinstance(ctx.current_time, (int, float)) else time.time()
        app, deployment = ctx.app_name, ctx.deployment_name
        if self.forecaster is None:
            self.forecaster = self._resume(app, deployment, now)
        fc = self.forecaster
        fc.replicas_seen(now, int(ctx.target_num_replicas), int(ctx.current_num_replicas))
        load = float(ctx.total_num_requests or 0.0)
        fc.observe(now, load)
        decision = fc.decide(running=int(ctx.current_num_replicas), low=int(ctx.capacity_adjusted_min_replicas),
                             high=int(ctx.capacity_adjusted_max_replicas))
        if decision.replicas != self.last_replicas:
            reactive = max(int(ctx.capacity_adjusted_min_replicas),
                           min(int(ctx.capacity_adjusted_max_replicas), math.ceil(load / self.config.target_per_replica)))
            self._event(app, deployment, {"t": now, "event": "decision", "replicas": decision.replicas,
                                          "reactive": reactive, "mode": decision.mode, "load": round(load, 3),
                                          "forecast": round(decision.forecast, 3), "lead_s": round(decision.lead_s, 2),
                                          "running": int(ctx.current_num_replicas)})
            self.last_replicas = decision.replicas
        if fc.last_index is not None and fc.last_index != self.saved_bucket:
            self.saved_bucket = fc.last_index
            try:
                _kv_put(_key(app, deployment, "state"), fc.to_dict())
            except Exception as exc:
                log.warning("could not persist the forecast state: %s", type(exc).__name__)
        return decision.replicas, {"elasticml_mode": decision.mode}
