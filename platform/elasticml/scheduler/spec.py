"""What the scheduler places: workload specs and tenant policies, validated on construction.

Priority classes, highest first (the order preemption and reserved capacity follow):

    critical > high > normal > low > preemptible

`critical` never runs on spot. `preemptible` may be stopped at any time for
anything above it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from elasticml.dataconf import check_number, check_text, from_mapping, shown
from elasticml.errors import ConfigError
from elasticml.scheduler.capacity import Allocation
from elasticml.scheduler.policies import DEFAULT_POLICY

MAX_NAME = 63
"""Workload and tenant names: a DNS label's length, so they fit Ray, Kubernetes and metric labels."""
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"
ATTACH_PATTERN = rf"[0-9a-f]{{1,64}}|serve:({NAME_PATTERN}\.)?{NAME_PATTERN}"
"""What runs a workload: a Ray job's hex id, or a Serve app's replicas: `serve:NAME` (an operator's app,
deployments NAME-pool-*), `serve:TENANT.NAME` (the Serve app TENANT.NAME the API server built)."""
ATTACH_MAX = 2 * MAX_NAME + 7
WORKLOAD_PATTERN = rf"(?:{NAME_PATTERN}/)?{NAME_PATTERN}"
"""A workload's name: `NAME`, or `TENANT/NAME` in its tenant's own namespace (what a tenant's names become)."""
MAX_WORKLOAD = 2 * MAX_NAME + 1
MAX_WORKERS = 10_000
MAX_HOURS = 8760.0
"""A year: the longest run, deadline or interval a spec may name."""
MAX_DOLLARS = 1e9
MAX_REGIONS = 32
REGION_PATTERN = r"[a-z0-9][a-z0-9-]*"


def check_regions(regions: object) -> None:
    """A tuple of at most MAX_REGIONS region names (a workload's, or a tenant's residency)."""
    if not isinstance(regions, tuple) or len(regions) > MAX_REGIONS:
        raise ConfigError(f"must be a list of at most {MAX_REGIONS} region names", field="regions")
    for region in regions:
        check_text(region, field="regions", max_len=32, pattern=REGION_PATTERN)

Kind = Literal["training", "sweep", "serving", "batch"]
Priority = Literal["critical", "high", "normal", "low", "preemptible"]
PRIORITY_ORDER: tuple[str, ...] = get_args(Priority)  # index 0 = highest


def priority_rank(priority: str) -> int:
    """0 for critical ... 4 for preemptible: smaller is more important."""
    return PRIORITY_ORDER.index(priority)


@dataclass(kw_only=True, frozen=True)
class WorkloadSpec:
    name: str
    """Unique per cluster: a re-submission with the same name replaces the spec. A tenant's own calls name
    its workloads in its namespace: the door makes its `nightly` into `TENANT/nightly` (`scoped`), so two
    tenants' names never meet; an admin names them in full."""
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

    spot_policy: str = DEFAULT_POLICY
    """The deadline policy the controller runs for checkpointable work with a deadline (see `policies.NAMES`)."""

    def __post_init__(self) -> None:
        check_text(self.name, field="name", max_len=MAX_WORKLOAD, pattern=WORKLOAD_PATTERN)
        check_text(self.name.rpartition("/")[2], field="name", max_len=MAX_NAME)
        check_text(self.tenant, field="tenant", max_len=MAX_NAME, pattern=NAME_PATTERN)
        if "/" in self.name and not self.name.startswith(f"{self.tenant}/"):
            raise ConfigError(f"a name in a namespace must be in its tenant's, {self.tenant}/...; got "
                              f"{self.name[:80]!r}", field="name")
        if self.kind not in get_args(Kind):
            raise ConfigError(f"must be one of {', '.join(get_args(Kind))}, got {shown(self.kind)}", field="kind")
        if self.priority not in PRIORITY_ORDER:
            raise ConfigError(f"must be one of {' > '.join(PRIORITY_ORDER)}, got {shown(self.priority)}", field="priority")
        check_number(self.cpus_per_worker, field="cpus_per_worker", lo=0, hi=1024)
        check_number(self.gpus_per_worker, field="gpus_per_worker", lo=0, hi=64)
        check_number(self.memory_gb_per_worker, field="memory_gb_per_worker", lo=0, hi=16384)
        check_number(self.restart_overhead_hours, field="restart_overhead_hours", lo=0, hi=MAX_HOURS)
        check_number(self.min_workers, field="min_workers", lo=1, hi=MAX_WORKERS, integer=True)
        check_number(self.max_workers, field="max_workers", lo=1, hi=MAX_WORKERS, integer=True)
        check_number(self.expected_hours, field="expected_hours", lo=0, hi=MAX_HOURS)
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ConfigError("a worker needs at least one CPU or GPU", field="cpus_per_worker")
        if self.max_workers < self.min_workers:
            raise ConfigError(
                f"need 1 <= min_workers <= max_workers, got {self.min_workers} and {self.max_workers}", field="min_workers"
            )
        if self.expected_hours <= 0:
            raise ConfigError(f"must be > 0, got {self.expected_hours}", field="expected_hours")
        if self.deadline_hours is not None:
            check_number(self.deadline_hours, field="deadline_hours", lo=0, hi=MAX_HOURS)
            if self.deadline_hours < self.expected_hours:
                raise ConfigError(
                    f"deadline {self.deadline_hours}h is shorter than the expected {self.expected_hours}h of work",
                    field="deadline_hours",
                )
        if self.budget is not None:
            check_number(self.budget, field="budget", lo=0, hi=MAX_DOLLARS)
        if self.checkpoint_interval_hours is not None:
            check_number(self.checkpoint_interval_hours, field="checkpoint_interval_hours", lo=0, hi=MAX_HOURS)
            if self.checkpoint_interval_hours <= 0:
                raise ConfigError(f"must be > 0 or null, got {self.checkpoint_interval_hours}", field="checkpoint_interval_hours")
        check_regions(self.regions)
        from elasticml.scheduler.policies import POLICIES

        if not isinstance(self.spot_policy, str) or self.spot_policy not in POLICIES:  # a list is unhashable
            raise ConfigError(f"must be one of {', '.join(POLICIES)}, got {shown(self.spot_policy)}", field="spot_policy")

    @property
    def checkpointable(self) -> bool:
        # Serving replicas hold no progress: losing one loses no work.
        return self.kind == "serving" or self.checkpoint_interval_hours is not None

    @property
    def rank(self) -> int:
        return priority_rank(self.priority)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # plain values only: no asdict recursion
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


def scoped(tenant: str, name: str) -> str:
    """`name` in `tenant`'s namespace: what a tenant's own calls mean by it (a name with a namespace
    is taken as it is, and is the tenant's only if that namespace is)."""
    return name if "/" in name else f"{tenant}/{name}"


@dataclass(kw_only=True, frozen=True)
class TenantPolicy:
    tenant: str
    budget: float | None = None
    """Dollars this tenant may spend in total; None = no limit."""
    max_cpus: float | None = None
    """Quota: CPUs this tenant may hold at once; None = no limit."""
    regions: tuple[str, ...] = ()
    """Where this tenant's work runs and its data and checkpoints are kept (residency, set by an admin);
    empty = anywhere. A spec cannot widen it."""
    max_priority: Priority = "normal"
    """The highest priority the tenant's own calls may place at (an admin may place above it): without
    it a tenant could declare `critical` and preempt other tenants' reserved work."""
    max_workloads: int = 200
    """Workloads the tenant's own calls may hold at once (placed, queued or paused)."""

    def __post_init__(self) -> None:
        check_text(self.tenant, field="tenant", max_len=MAX_NAME, pattern=NAME_PATTERN)
        check_number(self.max_workloads, field="max_workloads", lo=0, hi=100_000, integer=True)
        if self.max_priority not in PRIORITY_ORDER:
            raise ConfigError(f"must be one of {' > '.join(PRIORITY_ORDER)}, got {str(self.max_priority)[:40]!r}",
                              field="max_priority")
        check_regions(self.regions)
        if self.budget is not None:
            check_number(self.budget, field="budget", lo=0, hi=MAX_DOLLARS)
        if self.max_cpus is not None:
            check_number(self.max_cpus, field="max_cpus", lo=0, hi=1e7)


@dataclass(kw_only=True, frozen=True)
class Tenants:
    policies: dict[str, TenantPolicy] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantPolicy:
        return self.policies.get(tenant, TenantPolicy(tenant=tenant))


PlacementState = Literal["placed", "queued", "paused"]


@dataclass(kw_only=True, frozen=True)
class Placement:
    """One workload's own answer from the scheduler: where it runs now, or why it waits.

    `placed`: run `workers` workers on `node_type` (`ray_options` for tasks, actors and
    Serve replicas; `scaling_config` for Ray Train). `queued`: nothing fits yet.
    `paused`: the controller stopped it on purpose (waiting for spot is cheaper and the
    deadline allows it). `epoch` grows with every move, so running work can tell that
    it must follow.
    """

    workload: str
    state: PlacementState
    reason: str
    allocations: tuple[Allocation, ...] = ()
    ray_options: dict[str, Any] = field(default_factory=dict)
    scaling_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0

    @property
    def placed(self) -> bool:
        return self.state == "placed"

    @property
    def node_type(self) -> str | None:
        return self.allocations[0].node_type if self.allocations else None

    @property
    def market(self) -> str | None:
        return self.allocations[0].market if self.allocations else None

    @property
    def node_types(self) -> tuple[str, ...]:
        """Every pool it was given, first (cheapest) first."""
        return tuple(dict.fromkeys(a.node_type for a in self.allocations))

    @property
    def workers(self) -> int:
        return sum(a.workers for a in self.allocations)

    @property
    def hourly_cost(self) -> float:
        return sum(a.hourly_cost for a in self.allocations)

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "state": self.state, "reason": self.reason, "epoch": self.epoch,
                "node_type": self.node_type, "market": self.market, "workers": self.workers,
                "hourly_cost": round(self.hourly_cost, 6), "allocations": [asdict(a) for a in self.allocations],
                "ray_options": self.ray_options, "scaling_config": self.scaling_config}
