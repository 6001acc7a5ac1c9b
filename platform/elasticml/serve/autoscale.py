"""The predictive autoscaling policy, as Ray Serve runs it (`autoscaling_config.policy`).

Serve's controller instantiates `PredictivePolicy` once per deployment with the app's forecast
settings (`policy_kwargs`) and calls it every control-loop tick with an `AutoscalingContext`. Each
call feeds the load (by default the requests the replicas serve: of Serve's `total_num_requests`, what
the running replicas' `max_ongoing_requests` slots hold; see elasticml.serve.forecast), the requests waiting, and the
target/running replicas (to measure how long a replica takes to start) to a `LoadForecaster`, whose
answer goes back to Serve, which still applies the deployment's bounds and up/down delays (save
while none of its replicas runs, when the policy holds a scale-down itself: `_hold_while_none_runs`).

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
from dataclasses import replace
from typing import Any

from elasticml.dataconf import from_mapping
from elasticml.serve.forecast import ForecastConfig, LoadForecaster, is_finite_number, serve_delay, signal_load

NAMESPACE = "elasticml_autoscale"
MAX_EVENTS = 500
POLICY_PATH = "elasticml.serve.autoscale:PredictivePolicy"
log = logging.getLogger("elasticml.serve.autoscale")


def forecast_config(raw: dict[str, Any], *, target_per_replica: float,
                    replica_slots: int | None = None) -> ForecastConfig:
    """The app's `forecast:` settings, checked (exact fields and types, bounded numbers); the target and the
    slots come from the deployment's own settings."""
    from elasticml.errors import ConfigError

    for name, source in (("target_per_replica", "the preset's target_ongoing_requests"),
                         ("replica_slots", "max_ongoing_requests")):
        if name in raw:
            raise ConfigError(f"comes from {source}; do not set it here", field=f"forecast.{name}")
    return from_mapping(ForecastConfig, {**raw, "target_per_replica": target_per_replica,
                                         "replica_slots": replica_slots}, source="forecast")


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


READ_S = 0.25
"""How often a burst pool's policy reads the routers' loads (they publish as often)."""
ROUTER_FRESH_S = 5.0
"""A router's in-flight count older than this is not counted (that router replica is gone)."""


def publish_router_load(workload: str, router: str, in_flight: float, now: float) -> None:
    """A PoolRouter replica's requests in flight across every pool of `workload` (see burst mode)."""
    _kv_put(f"router/{workload}/{router}".encode(), {"t": now, "in_flight": in_flight})


def router_load(workload: str, now: float) -> float | None:
    """The whole app's requests in flight, summed over its routers' fresh reports; None without one."""
    from ray.experimental.internal_kv import _internal_kv_list

    total, fresh = 0.0, False
    for key in _internal_kv_list(f"router/{workload}/".encode(), namespace=NAMESPACE)[:64]:
        report = _kv_get(key)
        if isinstance(report, dict) and is_finite_number(report.get("t")) and is_finite_number(report.get("in_flight")) \
                and now - report["t"] <= ROUTER_FRESH_S:
            total, fresh = total + max(0.0, float(report["in_flight"])), True
    return total if fresh else None


def publish_running(workload: str, deployment: str, running: int, now: float) -> None:
    _kv_put(f"pool/{workload}/{deployment}".encode(), {"t": now, "running": running})


def pool_running(workload: str, deployment: str) -> int | None:
    """Running replicas of a burst pool's deployment, as its policy last saw them; None if unknown."""
    report = _kv_get(f"pool/{workload}/{deployment}".encode())
    if isinstance(report, dict) and type(report.get("running")) is int and report["running"] >= 0:
        running: int = report["running"]
        return running
    return None


WARN_EVERY_S = 60.0
"""A warning that would repeat every control-loop tick is logged at most this often."""


def _aggregation(ctx: Any) -> str:
    """How Serve aggregates its counts over the look-back window: under max or min the in-flight count is a
    peak or a trough, of which no served count can be taken (the queue's peak need not fall with it, and a
    peak above the slots is no queue held for the whole window)."""
    aggregation = getattr(getattr(ctx, "config", None), "aggregation_function", "mean")
    return str(getattr(aggregation, "value", aggregation))


def _queued(ctx: Any) -> tuple[float | None, str | None]:
    """The requests waiting at the handles as Serve reports them, or None and why not."""
    try:
        queued = ctx.total_queued_requests
    except Exception as exc:  # a lazy metric that failed to aggregate: follow Serve's in-flight count
        return None, type(exc).__name__
    return (float(queued), None) if is_finite_number(queued) else (None, None)


def _serve_down_since(ctx: Any) -> float | None:
    """When Serve's delay logic began holding a scale-down for this deployment (its policy state), or None."""
    try:
        from ray.serve._private.constants import (SERVE_AUTOSCALING_DECISION_COUNTERS_KEY,
                                                  SERVE_AUTOSCALING_DECISION_TIMESTAMP_KEY)
    except ImportError:  # another Ray: an answer of 0 then takes Serve's delay as it stands
        return None
    state = getattr(ctx, "policy_state", None)
    if not isinstance(state, dict):
        return None
    counter = state.get(SERVE_AUTOSCALING_DECISION_COUNTERS_KEY)
    since = state.get(SERVE_AUTOSCALING_DECISION_TIMESTAMP_KEY)
    if counter is not None and since is not None and is_finite_number(counter) and counter < 0 \
            and is_finite_number(since):
        return float(since)
    return None


def _downscale_delay(config: Any, *, target: int, wanted: int) -> float:
    """How long Serve holds a decision for fewer replicas (its AutoscalingConfig's rule); 0 where unknown."""
    delay = getattr(config, "downscale_delay_s", None)
    to_zero = getattr(config, "downscale_to_zero_delay_s", None)
    if wanted == 0 and target == 1 and to_zero is not None:
        delay = to_zero
    return float(delay) if delay is not None and is_finite_number(delay) and delay >= 0 else 0.0


class PredictivePolicy:
    """Serve's policy for one deployment. With `burst` ({"workload": W, "base_replicas": B}) it sizes the
    spot pool of a tenant's app (elasticml.serve.pools): the load is the whole app's, as its routers
    report it, the forecast is for the whole app, and the B base replicas off spot (fixed, placed by
    the scheduler) come off the answer, so only what the forecast adds above them goes to spot. The
    routers count what they have in flight, waiting or not, so a burst pool follows that count
    (`signal` in_flight, whatever the app's settings say)."""

    def __init__(self, **kwargs: Any) -> None:
        burst = kwargs.pop("burst", None)
        if burst is not None and not (isinstance(burst, dict) and set(burst) == {"workload", "base_replicas"}
                                      and isinstance(burst["workload"], str) and 0 < len(burst["workload"]) <= 200
                                      and type(burst["base_replicas"]) is int and 0 <= burst["base_replicas"] <= 1000):
            from elasticml.errors import ConfigError

            raise ConfigError("must be {workload: NAME, base_replicas: N}", field="policy_kwargs.burst")
        self.burst: dict[str, Any] | None = burst
        self.config = from_mapping(ForecastConfig, kwargs, source="autoscaling_config.policy.policy_kwargs")
        if burst is not None:  # its load is what the app's routers have in flight, waiting or not
            self.config = replace(self.config, signal="in_flight")
        self._warned = -math.inf
        self.forecaster: LoadForecaster | None = None
        self.events: list[dict[str, Any]] = []
        self.last_replicas: int | None = None
        self.saved_bucket: int | None = None
        # Serve calls the policy every control loop (~10 Hz); the routers publish 4 times a second.
        self._read: tuple[float, float | None] = (-math.inf, None)
        self._published: tuple[float, int] = (-math.inf, -1)
        self._fewer_since: float | None = None
        self._fewer_most = 0

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

    def _hold_while_none_runs(self, wanted: int, *, target: int, running: int, now: float, config: Any,
                              serve_down_since: float | None = None) -> tuple[int, float | None]:
        """Fewer replicas than Serve's target, while none of the deployment's replicas runs, only once fewer has
        been wanted for the downscale delay, and then the most wanted over it. Returns the answer and, where
        this call let a held step down through, how long fewer had been wanted (for the decision log).

        Serve applies a positive answer at once while none runs (its cold start path, down as well as up),
        skipping its delay and leaving the delay's timer as it was: an answer just below the target would stop
        a replica still starting (a burst pool's, waiting for a spot node), and the next one above it would
        start another from scratch, round after round under steady load. An answer of 0 takes Serve's own
        delay, so it is passed on at once unless Serve's timer for it (`serve_down_since`) is older than this
        wish for fewer (the path above leaves it as it was), which would stop them at once: held, it would
        wait both delays. A wish for 0 passed on and one for more, below the target, that follows it are one
        wish for fewer: its delay counts from the first."""
        if running > 0 or wanted >= target:
            self._fewer_since = None
            return wanted, None
        if self._fewer_since is None:
            self._fewer_since, self._fewer_most = now, wanted
        self._fewer_most = max(self._fewer_most, wanted)
        if self._fewer_most == 0 and (serve_down_since is None or serve_down_since >= self._fewer_since):
            return 0, None
        if now - self._fewer_since < _downscale_delay(config, target=target, wanted=self._fewer_most):
            return target, None
        # Down to the most wanted over the delay, not the last answer (a dip at its end would stop what the rest
        # of it wanted); the next step down waits the whole delay again, as Serve's does.
        held_for, self._fewer_since = now - self._fewer_since, None
        return self._fewer_most, held_for

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        now = ctx.current_time if isinstance(ctx.current_time, (int, float)) else time.time()
        app, deployment = ctx.app_name, ctx.deployment_name
        if self.forecaster is None:
            self.forecaster = self._resume(app, deployment, now)
        fc = self.forecaster
        base = self.burst["base_replicas"] if self.burst else 0
        running, target = int(ctx.current_num_replicas), int(ctx.target_num_replicas)
        low, high = base + int(ctx.capacity_adjusted_min_replicas), base + int(ctx.capacity_adjusted_max_replicas)
        fc.replicas_seen(now, target, running)  # start-up is this deployment's, base or not
        # a burst pool's load is its routers' fresh counts, not a mean over Serve's window
        fc.serve_delay_s = serve_delay(self.config, getattr(ctx, "config", None), windowed=self.burst is None)
        in_flight = float(ctx.total_num_requests or 0.0)
        reported: float | None = None
        slots_over: int | None = None  # the running replicas whose slots bound the requests served
        if self.config.signal == "running":
            why: str | None = None
            aggregation = _aggregation(ctx)
            if aggregation != "mean":
                why = f"aggregation_function {aggregation}"
            elif self.config.replica_slots is not None:
                slots_over = running
            else:
                reported, why = _queued(ctx)
            if why and now - self._warned >= WARN_EVERY_S:
                self._warned = now
                log.warning("following the requests in flight: the served ones cannot be read (%s)", why)
        load, queued = signal_load(self.config, in_flight=in_flight, queued=reported, running=slots_over)
        known = slots_over is not None or reported is not None
        if self.burst:
            try:
                if running != self._published[1] or now - self._published[0] >= 1.0:
                    publish_running(self.burst["workload"], deployment, running, now)
                    self._published = (now, running)
                if now - self._read[0] >= READ_S:
                    self._read = (now, router_load(self.burst["workload"], now))
                whole = self._read[1]
            except Exception as exc:  # the GCS briefly away: this deployment's own load, plus the base's share
                log.warning("could not read the routers' load: %s", type(exc).__name__)
                whole = None
            load = in_flight = whole if whole is not None else in_flight + base * self.config.target_per_replica
        fc.observe(now, load, queued)
        decision = fc.decide(running=base + running, low=low, high=high, queued=queued, target=base + target)
        decision.replicas, fewer_for_s = self._hold_while_none_runs(
            decision.replicas - base, target=target, running=running, now=now, config=getattr(ctx, "config", None),
            serve_down_since=_serve_down_since(ctx))
        if decision.replicas != self.last_replicas:
            # `reactive`: what Serve's own rule would ask, on the requests in flight
            reactive = max(low, min(high, math.ceil(in_flight / self.config.target_per_replica))) - base
            self._event(app, deployment, {"t": now, "event": "decision", "replicas": decision.replicas,
                                          "reactive": reactive, "mode": decision.mode, "load": round(load, 3),
                                          "in_flight": round(in_flight, 3),
                                          "queued": round(queued, 3) if known else None,
                                          "forecast": round(decision.forecast, 3),
                                          "predicted": round(decision.predicted, 3), "noise": round(decision.noise, 3),
                                          "lead_s": round(decision.lead_s, 2),
                                          "running": int(ctx.current_num_replicas), "target": target,
                                          "fewer_for_s": None if fewer_for_s is None else round(fewer_for_s, 2)})
            self.last_replicas = decision.replicas
        if fc.last_index is not None and fc.last_index != self.saved_bucket:
            self.saved_bucket = fc.last_index
            try:
                _kv_put(_key(app, deployment, "state"), fc.to_dict())
            except Exception as exc:
                log.warning("could not persist the forecast state: %s", type(exc).__name__)
        return decision.replicas, {"elasticml_mode": decision.mode}
