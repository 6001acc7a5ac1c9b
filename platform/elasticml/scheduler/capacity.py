"""Capacity as the policy sees it: node pools and a snapshot of what runs where.

A *pool* is one node type of the cluster config: its market, instance type,
region, price and how many nodes it may have. A *snapshot* is everything the
policy needs at one instant, and nothing else: pools, which spot pools are
currently interrupted, the running allocations and each tenant's spend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from elasticml.cluster.config import ClusterSpec
from elasticml.labels import Market
from elasticml.scheduler.catalog import PriceCatalog


@dataclass(kw_only=True, frozen=True)
class Pool:
    node_type: str
    market: Market
    instance_type: str
    region: str
    hourly_price: float
    """Dollars per node-hour."""
    max_nodes: int
    """For reserved pools, the committed size."""
    cpus_per_node: float
    gpus_per_node: float = 0.0
    memory_gb_per_node: float = 0.0
    """0 = not tracked (memory does not limit placement)."""
    interruption_per_hour: float = 0.0
    placement_score: int | None = None
    """Spot: the cloud's 1-10 estimate that a request of the pool's size succeeds (None = unknown)."""

    @property
    def expected_price(self) -> float:
        """The price a placement compares: spot's divided by its chance of success (score / 10)."""
        if self.market == "spot" and self.placement_score is not None:
            return self.hourly_price / (self.placement_score / 10)
        return self.hourly_price

    def workers_per_node(self, cpus: float, gpus: float, memory_gb: float = 0.0) -> int:
        """How many workers of that shape one node holds: the scarcest resource decides."""
        fits = []
        if cpus > 0:
            fits.append(math.floor(self.cpus_per_node / cpus + 1e-9))
        if gpus > 0:
            fits.append(math.floor(self.gpus_per_node / gpus + 1e-9))
        if memory_gb > 0 and self.memory_gb_per_node > 0:
            fits.append(math.floor(self.memory_gb_per_node / memory_gb + 1e-9))
        return max(0, min(fits)) if fits else 0


@dataclass(kw_only=True, frozen=True)
class Allocation:
    """A workload's share of one pool."""

    workload: str
    tenant: str
    priority: str
    node_type: str
    market: Market
    workers: int
    cpus: float
    """CPUs held in total (for quotas)."""
    nodes: int
    hourly_cost: float
    started_at: float


@dataclass(kw_only=True, frozen=True)
class Snapshot:
    now: float
    """Hours on the scheduler's clock."""
    pools: tuple[Pool, ...]
    allocations: tuple[Allocation, ...] = ()
    interrupted_pools: frozenset[str] = frozenset()
    """Spot pools with a live interruption notice: nothing new goes there."""
    tenant_spend: dict[str, float] = field(default_factory=dict)

    def pool(self, node_type: str) -> Pool:
        return next(p for p in self.pools if p.node_type == node_type)

    def used_nodes(self, node_type: str) -> int:
        return sum(a.nodes for a in self.allocations if a.node_type == node_type)

    def free_nodes(self, node_type: str) -> int:
        return self.pool(node_type).max_nodes - self.used_nodes(node_type)

    def without(self, workload: str) -> Snapshot:
        return replace(self, allocations=tuple(a for a in self.allocations if a.workload != workload))

    def with_allocations(self, extra: list[Allocation]) -> Snapshot:
        return replace(self, allocations=self.allocations + tuple(extra))


def pools_from_cluster(spec: ClusterSpec, catalog: PriceCatalog) -> tuple[Pool, ...]:
    """One pool per worker node type, priced from the catalog (instance type from node_config)."""
    region = spec.raw.get("provider", {}).get("region", "us-east-1")
    pools = []
    for t in spec.worker_types.values():
        body = spec.raw["available_node_types"][t.name]
        instance_type = body.get("node_config", {}).get("InstanceType", "m7i.large")
        entry = catalog.entry(instance_type, region)
        pools.append(
            Pool(
                node_type=t.name,
                market=t.market or "on-demand",
                instance_type=instance_type,
                region=region,
                hourly_price=catalog.hourly(instance_type, t.market or "on-demand", region),
                max_nodes=t.max_workers,
                cpus_per_node=float(t.resources.get("CPU", 0)),
                gpus_per_node=float(t.resources.get("GPU", 0)),
                memory_gb_per_node=entry.memory_gib,
                interruption_per_hour=entry.interruption_per_hour if t.market == "spot" else 0.0,
            )
        )
    return tuple(pools)
