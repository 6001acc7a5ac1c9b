"""What the scheduler places: workload specs and tenant policies, validated on construction.

Priority classes, highest first (the order preemption and reserved capacity follow):

    critical > high > normal > low > preemptible

`critical` never runs on spot. `preemptible` may be stopped at any time for
anything above it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from elasticml.dataconf import from_mapping
from elasticml.errors import ConfigError

Kind = Literal["training", "sweep", "serving", "batch"]
Priority = Literal["critical", "high", "normal", "low", "preemptible"]
PRIORITY_ORDER: tuple[str, ...] = get_args(Priority)  # index 0 = highest


def priority_rank(priority: str) -> int:
    """0 for critical ... 4 for preemptible: smaller is more important."""
    return PRIORITY_ORDER.index(priority)


@dataclass(kw_only=True, frozen=True)
class WorkloadSpec:
    name: str
    """Unique per cluster: a re-submission with the same name replaces the spec."""
    tenant: str
    kind: Kind = "training"
    priority: Priority = "normal"
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_gb_per_worker: float = 0.0
    min_workers: int = 1
    max_workers: int = 1
    expected_hours: float = 1.0
    """Run time on the requested workers without interruptions."""
    deadline_hours: float | None = None
    """Hours from submission by which it must be done; None = no deadline."""
    checkpoint_interval_hours: float | None = None
    """None = not checkpointable: a preemption loses everything so far."""
    restart_overhead_hours: float = 0.1
    regions: tuple[str, ...] = ()
    """Allowed regions (data residency); empty = anywhere."""
    budget: float | None = None
    """Dollars this workload may cost at its expected duration; None = no limit of its own."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"must be a non-empty name of letters, digits, - and _ (got {self.name!r})", field="name")
        if not self.tenant:
            raise ConfigError("must not be empty", field="tenant")
        if self.kind not in get_args(Kind):
            raise ConfigError(f"must be one of {', '.join(get_args(Kind))}, got {self.kind!r}", field="kind")
        if self.priority not in PRIORITY_ORDER:
            raise ConfigError(f"must be one of {' > '.join(PRIORITY_ORDER)}, got {self.priority!r}", field="priority")
        for name in ("cpus_per_worker", "gpus_per_worker", "memory_gb_per_worker", "restart_overhead_hours"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be >= 0, got {getattr(self, name)}", field=name)
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ConfigError("a worker needs at least one CPU or GPU", field="cpus_per_worker")
        if self.min_workers < 1 or self.max_workers < self.min_workers:
            raise ConfigError(
                f"need 1 <= min_workers <= max_workers, got {self.min_workers} and {self.max_workers}", field="min_workers"
            )
        if self.expected_hours <= 0:
            raise ConfigError(f"must be > 0, got {self.expected_hours}", field="expected_hours")
        if self.deadline_hours is not None and self.deadline_hours < self.expected_hours:
            raise ConfigError(
                f"deadline {self.deadline_hours}h is shorter than the expected {self.expected_hours}h of work",
                field="deadline_hours",
            )
        if self.budget is not None and self.budget < 0:
            raise ConfigError(f"must be >= 0 or null, got {self.budget}", field="budget")
        if self.checkpoint_interval_hours is not None and self.checkpoint_interval_hours <= 0:
            raise ConfigError(f"must be > 0 or null, got {self.checkpoint_interval_hours}", field="checkpoint_interval_hours")

    @property
    def checkpointable(self) -> bool:
        # Serving replicas hold no progress: losing one loses no work.
        return self.kind == "serving" or self.checkpoint_interval_hours is not None

    @property
    def rank(self) -> int:
        return priority_rank(self.priority)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regions"] = list(self.regions)
        return d

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "spec") -> WorkloadSpec:
        if isinstance(raw, dict):
            missing = [n for n in ("name", "tenant") if n not in raw]
            if missing:
                raise ConfigError(f"required field(s) missing: {', '.join(missing)}", source=source)
            regions = raw.get("regions", ())
            if isinstance(regions, str) or not isinstance(regions, (list, tuple)):
                raise ConfigError("must be a list of region names", source=source, field="regions")
            raw = {**raw, "regions": tuple(regions)} if "regions" in raw else raw
        return from_mapping(cls, raw, source=source)


@dataclass(kw_only=True, frozen=True)
class TenantPolicy:
    tenant: str
    budget: float | None = None
    """Dollars this tenant may spend in total; None = no limit."""
    max_cpus: float | None = None
    """Quota: CPUs this tenant may hold at once; None = no limit."""

    def __post_init__(self) -> None:
        for name in ("budget", "max_cpus"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"must be >= 0, got {v}", field=name)


@dataclass(kw_only=True, frozen=True)
class Tenants:
    policies: dict[str, TenantPolicy] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantPolicy:
        return self.policies.get(tenant, TenantPolicy(tenant=tenant))
