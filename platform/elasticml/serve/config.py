"""The completion app's configuration: one keyword-only dataclass, checked on construction.

Filled from the app's `args` in `serve_apps/*.yaml` (or `serve run ... key=value`);
a bad value raises ConfigError naming the field and what would be accepted.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from elasticml.dataconf import check_choice, check_number, from_mapping, shown
from elasticml.errors import ConfigError
from elasticml.serve.routing import BOUNDS as ROUTER_BOUNDS
from elasticml.serve.routing import ROUTER_MAX_BACKOFF_S

Device = Literal["cpu", "gpu"]
Precision = Literal["auto", "fp32", "int8", "bf16", "onnx", "onnx-int8"]
Preset = Literal["fixed", "latency", "batch"]
Market = Literal["any", "spot", "on-demand", "reserved"]

# Autoscaling presets (Serve's AutoscalingConfig fields). Latency-critical traffic scales up after
# a few seconds at 2 requests in flight per replica and gives capacity back slowly; batch traffic
# lets queues grow (bigger batches, fewer replicas) and reacts on a longer horizon. The look-back
# must exceed Serve's 10 s metrics interval (Serve warns now and will refuse later).
PRESETS: dict[str, dict[str, Any]] = {
    "latency": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
                "upscale_delay_s": 3.0, "downscale_delay_s": 30.0, "look_back_period_s": 12.0},
    "batch": {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 16,
              "upscale_delay_s": 10.0, "downscale_delay_s": 120.0, "look_back_period_s": 30.0},
}
# Every number a config may set: finite, within these bounds (an integer where marked), else a
# ConfigError naming the field. None (where allowed) means the preset's or Serve's value.
_NUMBERS: dict[str, tuple[float, float, bool]] = {
    "num_cpus": (0.01, 256, False), "num_replicas": (1, 1000, True),
    "min_replicas": (0, 1000, True), "max_replicas": (0, 1000, True),
    "upscale_delay_s": (0, 86400, False), "downscale_delay_s": (0, 86400, False),
    "metrics_interval_s": (0.1, 60, False), "look_back_period_s": (0.1, 3600, False),
    "max_batch_size": (1, 4096, True), "batch_wait_ms": (0, 10_000, False),
    "max_ongoing_requests": (1, 100_000, True), "max_queued_requests": (1, 1_000_000, True),
    "retry_after_s": (0, 3600, False), "cache_size": (0, 1_000_000, True),
    "max_body_bytes": (1, 1 << 30, True), "request_timeout_s": (0.001, 3600, False),
    "router_max_backoff_s": (*ROUTER_BOUNDS, False),
}
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99}){0,9}")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_POLICY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99}){0,9}:[A-Za-z_][A-Za-z0-9_]{0,99}")


@dataclass(kw_only=True, frozen=True)
class ServeConfig:
    checkpoint: str
    """A checkpoint folder or s3:// URI written by jobs/train.py, or `latest:RUN_DIR`."""
    name: str = "completion"
    """The workload's name for the scheduler and its ledger."""
    device: Device = "cpu"
    precision: Precision = "auto"
    """auto = int8 weights on CPU, bf16 on GPU."""
    num_cpus: float = 1.0
    """CPUs per replica; the replica runs that many torch threads."""
    market: Market = "any"
    """Capacity for the replicas when the scheduler is not asked (no tenant)."""
    tenant: str | None = None
    """Ask the cluster's scheduler for the placement, as this tenant."""
    priority: str = "high"
    preset: Preset = "fixed"
    """Autoscaling preset: latency | batch, or fixed = num_replicas."""
    num_replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    upscale_delay_s: float | None = None
    downscale_delay_s: float | None = None
    """Override the preset's delays (how long load must stay high / low before replicas change)."""
    metrics_interval_s: float | None = None
    """How often replicas push their load to Serve's autoscaler (Serve's default: 10 s). A forecast in
    buckets shorter than this sees steps, not the load; the look-back must be at least as long."""
    look_back_period_s: float | None = None
    """Override the preset's look-back: the window the load is averaged over before a decision."""
    autoscaling: str = "reactive"
    """How a latency/batch preset picks its replica count: reactive (Serve's own policy: the requests in
    flight now), predictive (elasticml.serve.autoscale: replicas asked for one measured start-up ahead
    of the forecast load), or a `package.module:callable` Serve autoscaling policy of your own."""
    forecast: dict[str, Any] = field(default_factory=dict)
    """The predictive policy's settings (elasticml.serve.forecast.ForecastConfig), e.g.
    {season_s: 86400, startup_s: 20}; only with autoscaling: predictive."""
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    """The longest a request waits for company when the model is free, and only where company is
    expected (others queued or on their way in, or the previous batch held several): a request that
    finds nothing else in flight runs at once. Under load it hardly matters: a batch forms from
    everything that queued while the previous one ran (elasticml.serve.batching; measured in
    benchmarks/README.md)."""
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    """Requests waiting at each proxy beyond those in flight; more get 429 with Retry-After."""
    router_max_backoff_s: float = ROUTER_MAX_BACKOFF_S
    """The longest Serve's router waits before it tries a queued request again (Serve's own: 0.5 s); why it is
    short: elasticml.serve.routing."""
    tenant_share: float | None = None
    """The share of a replica's `max_ongoing_requests` one tenant may hold at once; beyond it its requests
    get 429 at once, so one tenant's flood cannot take every slot from the others. None = an equal share
    per tenant with a key (no limit on an app without keys); 1 = no limit."""
    retry_after_s: float = 1.0
    cache_size: int = 1024
    """Responses kept for repeated deterministic requests (greedy or seeded); 0 = no cache."""
    max_body_bytes: int = 65536
    request_timeout_s: float = 30.0
    env_vars: dict[str, str] = field(default_factory=dict)
    """Environment for the replicas, e.g. ELASTICML_S3_ENDPOINT for an S3-compatible store (AWS credentials
    should come from the node's instance role, not from here)."""
    api_keys: dict[str, str] = field(default_factory=dict)
    """tenant -> sha256 hex digest of its key (`elasticml serve keygen TENANT` makes both); empty and no
    `api_keys_file` = open (for a quick local try only: every shipped config names a key file)."""
    allowed_model_modules: list[str] = field(default_factory=list)
    """Python modules a checkpoint's user model factory (`module:factory` in its meta.json) may come from;
    empty = only the reference transformer. Whoever can write a checkpoint must not choose the code a
    replica imports."""
    api_keys_file: str | None = None
    """A JSON file of tenant -> digest on the head (a mounted Secret on KubeRay), read when the app is
    built; `elasticml serve keygen TENANT --file F` adds to it. Its entries join `api_keys`."""

    def __post_init__(self) -> None:
        for name, allowed in (("device", Device), ("precision", Precision), ("preset", Preset), ("market", Market)):
            check_choice(getattr(self, name), get_args(allowed), field=name)
        if self.tenant is not None and self.market != "any":
            raise ConfigError("a tenant's app is placed by the scheduler (its budget, priority and residency); "
                              "`market:` is for an operator's app without a tenant", field="market")
        if self.device == "cpu" and self.precision == "bf16":
            raise ConfigError("bf16 is for GPU replicas; use int8 or fp32 on CPU", field="precision")
        if self.device == "gpu" and self.precision in ("int8", "onnx", "onnx-int8"):
            raise ConfigError(f"{self.precision} is for CPU replicas; use bf16 or fp32 on GPU", field="precision")
        may_be_none = {f.name for f in fields(self) if f.default is None}  # None: the preset's or Serve's value
        for name, (lo, hi, integer) in _NUMBERS.items():
            if getattr(self, name) is not None or name not in may_be_none:
                check_number(getattr(self, name), field=name, lo=lo, hi=hi, integer=integer)
        if self.tenant_share is not None and not (isinstance(self.tenant_share, (int, float))
                                                  and not isinstance(self.tenant_share, bool)
                                                  and 0 < self.tenant_share <= 1):
            raise ConfigError(f"must be a number in (0, 1], got {shown(self.tenant_share)}", field="tenant_share")
        if self.max_ongoing_requests < self.max_batch_size:
            raise ConfigError(f"must be at least max_batch_size={self.max_batch_size} or batches never fill, "
                              f"got {self.max_ongoing_requests}", field="max_ongoing_requests")
        self._check_autoscaling()
        scaling = self.autoscaling_config()
        for name in ("metrics_interval_s", "look_back_period_s"):
            if getattr(self, name) is not None and not scaling:
                raise ConfigError("only an autoscaling preset (latency or batch) reads it", field=name)
        if scaling and scaling["look_back_period_s"] < scaling.get("metrics_interval_s", 10.0):
            raise ConfigError(f"must be at least metrics_interval_s ({scaling.get('metrics_interval_s', 10.0)}; "
                              f"Serve's default is 10), got {scaling['look_back_period_s']}", field="look_back_period_s")
        low = scaling.get("min_replicas", 1)  # the overrides are in it
        high = scaling.get("max_replicas", 1)
        if not 0 <= low <= high:
            raise ConfigError(f"need 0 <= min_replicas <= max_replicas, got {low} and {high}", field="max_replicas")
        if not (isinstance(self.env_vars, dict) and all(isinstance(v, str) for v in self.env_vars.values())):
            raise ConfigError("must map variable names to string values", field="env_vars")
        if self.api_keys_file is not None and not (isinstance(self.api_keys_file, str)
                                                   and 0 < len(self.api_keys_file) <= 4096):
            raise ConfigError("must be a path of at most 4096 characters", field="api_keys_file")
        if not (isinstance(self.allowed_model_modules, list) and len(self.allowed_model_modules) <= 64 and all(
                isinstance(m, str) and _MODULE.fullmatch(m) for m in self.allowed_model_modules)):
            raise ConfigError("must be a list of at most 64 dotted Python module names", field="allowed_model_modules")
        if not isinstance(self.api_keys, dict):
            raise ConfigError("must map tenant -> sha256 hex digest of the key", field="api_keys")
        for tenant, digest in self.api_keys.items():
            if not (isinstance(digest, str) and _SHA256.match(digest)):
                # Never echo the value: it might be a plain key pasted by mistake.
                raise ConfigError(f"the entry for tenant {tenant!r} is not a sha256 hex digest; store the "
                                  "digest of the key (elasticml serve keygen), never the key", field="api_keys")

    def _check_autoscaling(self) -> None:
        if not isinstance(self.autoscaling, str) or not (self.autoscaling in ("reactive", "predictive")
                                                         or _POLICY.fullmatch(self.autoscaling)):
            raise ConfigError(f"must be reactive, predictive or package.module:callable, got "
                              f"{shown(self.autoscaling, 80)}", field="autoscaling")
        if self.autoscaling != "reactive" and self.preset == "fixed":
            raise ConfigError(f"{self.autoscaling} autoscaling needs a preset (latency or batch); a fixed "
                              "preset keeps num_replicas", field="autoscaling")
        if not isinstance(self.forecast, dict):
            raise ConfigError("must be a mapping of the predictive policy's settings", field="forecast")
        if self.forecast and self.autoscaling != "predictive":
            raise ConfigError("only the predictive policy reads it; set autoscaling: predictive", field="forecast")
        # The forecast settings themselves are checked where they are built, in autoscaling_config().

    @property
    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "bf16" if self.device == "gpu" else "int8"

    def autoscaling_config(self) -> dict[str, Any]:
        """Serve's autoscaling_config for the preset, with min/max overrides; {} for a fixed replica count."""
        if self.preset == "fixed":
            return {}
        preset = dict(PRESETS[self.preset])
        if self.min_replicas is not None:
            preset["min_replicas"] = self.min_replicas
        if self.max_replicas is not None:
            preset["max_replicas"] = self.max_replicas
        for name in ("upscale_delay_s", "downscale_delay_s", "metrics_interval_s", "look_back_period_s"):
            if getattr(self, name) is not None:
                preset[name] = getattr(self, name)
        if self.autoscaling == "predictive":
            from elasticml.serve.autoscale import POLICY_PATH, forecast_config

            settings = forecast_config(self.forecast, target_per_replica=preset["target_ongoing_requests"],
                                       replica_slots=self.max_ongoing_requests)
            if settings.signal == "running" and settings.target_per_replica >= self.max_ongoing_requests:
                # The requests served never exceed max_ongoing_requests a replica: at the target they would not
                # ask for a replica more than run (elasticml.serve.forecast).
                raise ConfigError(f"the requests a replica serves cannot exceed max_ongoing_requests "
                                  f"({self.max_ongoing_requests}), which the preset's target "
                                  f"({settings.target_per_replica:g}) reaches; raise max_ongoing_requests above it "
                                  "or set forecast.signal: in_flight", field="forecast.signal")
            preset["policy"] = {"policy_function": POLICY_PATH, "policy_kwargs": asdict(settings)}
        elif self.autoscaling != "reactive":
            preset["policy"] = {"policy_function": self.autoscaling}
        return preset

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "args") -> ServeConfig:
        return from_mapping(cls, raw, source=source)
