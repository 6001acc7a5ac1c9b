"""The placement policy: pure functions from a snapshot to decisions, testable without Ray.

`place(snapshot, requests, specs, tenants)` places new requests, highest
priority first (then earliest deadline). For each workload, in order:

  1. residency: only pools in the workload's allowed regions; none -> refused;
  2. quota: the tenant's CPUs held plus this request over its max_cpus -> queued;
  3. markets, in the order the workload's class allows:
       critical              reserved -> on-demand            (never spot)
       serving               base (min_workers) on reserved -> on-demand,
                             the rest on spot, over-provisioned against preemptions
       checkpointable work   reserved -> spot (while the deadline's slack allows) -> on-demand
       anything else         reserved -> on-demand (spot only when preemptible)
     reserved first because it is already paid for; it fills by priority, and
     critical or high work preempts lower priority from it when it is full;
  4. budget: the placement's expected cost over the workload's own budget, or
     spend so far plus it over the tenant's budget -> refused, with the numbers;
  5. nothing fits -> queued, with what was full.

`rebalance` moves running work to cheaper capacity when it frees up;
`replace_interrupted` moves work off a spot pool that got an interruption
notice. Every decision carries a reason a person can read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from elasticml import labels as L
from elasticml.scheduler.capacity import Allocation, Pool, Snapshot
from elasticml.scheduler.spec import Tenants, WorkloadSpec

Action = Literal["place", "queue", "refuse", "preempt", "move", "pause"]
OVER_PROVISION = 0.5
"""Extra spot replicas per spot replica a serving workload asks for (SkyServe-style)."""


@dataclass(kw_only=True, frozen=True)
class Decision:
    workload: str
    action: Action
    reason: str
    allocations: tuple[Allocation, ...] = ()
    fallback_node_types: tuple[str, ...] = ()
    """Where Ray may go if the chosen pool cannot take it (never spot for critical work)."""
    voluntary: bool = False
    """A move to save money, not forced by lost capacity: these are bounded per hour."""

    @property
    def hourly_cost(self) -> float:
        return sum(a.hourly_cost for a in self.allocations)

    @property
    def workers(self) -> int:
        return sum(a.workers for a in self.allocations)

    def ray_options(self) -> dict[str, object]:
        """`label_selector` + `fallback_strategy` for tasks, actors and Serve `ray_actor_options`."""
        if not self.allocations:
            return {}
        primary = self.allocations[0].node_type
        opts: dict[str, object] = {"label_selector": {L.NODE_TYPE: primary}}
        rest = [a.node_type for a in self.allocations[1:]] + list(self.fallback_node_types)
        rest = [t for i, t in enumerate(rest) if t != primary and t not in rest[:i]]
        if rest:
            opts["fallback_strategy"] = [{"label_selector": {L.NODE_TYPE: t}} for t in rest]
        return opts

    def scaling_config_kwargs(self) -> dict[str, object]:
        """For Ray Train's `ScalingConfig(**kwargs)`: where the workers go and how many."""
        if not self.allocations:
            return {}
        types = list(dict.fromkeys(a.node_type for a in self.allocations))
        # Workers given to several pools may land on any of them (Ray's `in(...)` selector).
        where = types[0] if len(types) == 1 else f"in({', '.join(types)})"
        return {"num_workers": self.workers, "label_selector": {L.NODE_TYPE: where}}

    def to_dict(self) -> dict[str, object]:
        return {
            "workload": self.workload,
            "action": self.action,
            "reason": self.reason,
            "allocations": [a.__dict__ for a in self.allocations],
            "fallback_node_types": list(self.fallback_node_types),
            "hourly_cost": round(self.hourly_cost, 6),
            "ray_options": self.ray_options(),
            "scaling_config": self.scaling_config_kwargs(),
        }


def place(snapshot: Snapshot, requests: list[WorkloadSpec], specs: dict[str, WorkloadSpec],
          tenants: Tenants | None = None) -> list[Decision]:
    """Decisions for new requests; `specs` holds the specs of everything already running."""
    tenants = tenants or Tenants()
    all_specs = {**specs, **{r.name: r for r in requests}}
    decisions: list[Decision] = []
    snap = snapshot
    for spec in sorted(requests, key=lambda s: (s.rank, s.deadline_hours or math.inf, s.name)):
        new, snap = _place_one(snap, spec, all_specs, tenants)
        decisions += new
    return decisions


def rebalance(snapshot: Snapshot, specs: dict[str, WorkloadSpec], tenants: Tenants | None = None,
              *, min_saving: float = 0.1) -> list[Decision]:
    """Moves of running work to capacity at least min_saving cheaper that has freed up."""
    tenants = tenants or Tenants()
    decisions = []
    snap = snapshot
    for alloc_name in sorted({a.workload for a in snap.allocations}):
        spec = specs.get(alloc_name)
        current = [a for a in snap.allocations if a.workload == alloc_name]
        if spec is None or not current:
            continue
        cost_now = sum(a.hourly_cost for a in current)
        trial, trial_snap = _place_one(snap.without(alloc_name), spec, specs, tenants, allow_preempt=False)
        final = trial[-1]
        if final.action == "place" and final.hourly_cost <= cost_now * (1 - min_saving):
            where = ", ".join(f"{a.workers}x {a.market}" for a in final.allocations)
            decisions.append(Decision(
                workload=alloc_name, action="move", allocations=final.allocations,
                fallback_node_types=final.fallback_node_types, voluntary=True,
                reason=f"cheaper capacity freed up: ${cost_now:.3f}/h -> ${final.hourly_cost:.3f}/h on {where}",
            ))
            snap = trial_snap
    return decisions


def replace_interrupted(snapshot: Snapshot, node_type: str, specs: dict[str, WorkloadSpec],
                        tenants: Tenants | None = None) -> list[Decision]:
    """Re-place everything on an interrupted spot pool; training checkpoints before it moves."""
    tenants = tenants or Tenants()
    snap = Snapshot(now=snapshot.now, pools=snapshot.pools, allocations=snapshot.allocations,
                    interrupted_pools=snapshot.interrupted_pools | {node_type}, tenant_spend=snapshot.tenant_spend)
    decisions = []
    for name in sorted({a.workload for a in snap.allocations if a.node_type == node_type}):
        spec = specs[name]
        new, snap = _place_one(snap.without(name), spec, specs, tenants)
        final = new[-1]
        note = "checkpoint now, then resume there" if spec.kind in ("training", "sweep") else "replicas move"
        if final.action == "place":
            where = ", ".join(f"{a.workers}x {a.node_type} ({a.market})" for a in final.allocations)
            decisions += new[:-1] + [Decision(
                workload=name, action="move", allocations=final.allocations, fallback_node_types=final.fallback_node_types,
                reason=f"spot pool {node_type} got an interruption notice: {note}; moved to {where}",
            )]
        else:
            decisions += new[:-1] + [Decision(workload=name, action="queue",
                                              reason=f"spot pool {node_type} interrupted and {final.reason}")]
    return decisions


# -- one workload ---------------------------------------------------------------
def place_on(snapshot: Snapshot, spec: WorkloadSpec, specs: dict[str, WorkloadSpec], tenants: Tenants,
             markets: tuple[str, ...], reason: str, *, voluntary: bool = False) -> Decision:
    """A move of running work to one of `markets` (the controller's choice), or a queue decision saying why not."""
    new, _ = _place_one(snapshot.without(spec.name), spec, specs, tenants, allow_preempt=False, markets=markets)
    final = new[0]
    if final.action != "place":
        return Decision(workload=spec.name, action="queue", reason=f"{reason}, but {final.reason}")
    where = ", ".join(f"{a.workers}x {a.node_type} ({a.market})" for a in final.allocations)
    return Decision(workload=spec.name, action="move", allocations=final.allocations, voluntary=voluntary,
                    reason=f"{reason}: moved to {where}")


def _place_one(snap: Snapshot, spec: WorkloadSpec, specs: dict[str, WorkloadSpec], tenants: Tenants,
               *, allow_preempt: bool = True, markets: tuple[str, ...] | None = None) -> tuple[list[Decision], Snapshot]:
    pools = [p for p in snap.pools if not spec.regions or p.region in spec.regions]
    if not pools:
        regions = sorted({p.region for p in snap.pools})
        return [Decision(workload=spec.name, action="refuse",
                         reason=f"data residency: allowed regions {list(spec.regions)}, but pools are only in {regions}")], snap
    policy = tenants.of(spec.tenant)
    if policy.max_cpus is not None:
        held = sum(a.cpus for a in snap.allocations if a.tenant == spec.tenant)
        need = spec.min_workers * spec.cpus_per_worker
        if held + need > policy.max_cpus:
            return [Decision(workload=spec.name, action="queue",
                             reason=f"quota: tenant {spec.tenant} holds {held:g} of {policy.max_cpus:g} CPUs and this needs {need:g}")], snap

    if spec.kind == "serving":
        plan, why, preempted = _serving_plan(snap, spec, pools, specs, allow_preempt)
    else:
        plan, why, preempted = _batch_plan(snap, spec, pools, specs, allow_preempt, markets)
    if plan is None:
        return [Decision(workload=spec.name, action="queue", reason=why)], snap

    decision = Decision(workload=spec.name, action="place", allocations=tuple(plan),
                        fallback_node_types=_fallbacks(spec, pools, plan), reason=why)
    if spec.budget is not None and decision.hourly_cost * spec.expected_hours > spec.budget + 1e-9:
        return [Decision(workload=spec.name, action="refuse",
                         reason=f"over budget: this placement would cost about "
                                f"${decision.hourly_cost * spec.expected_hours:.2f}, above this workload's ${spec.budget:.2f}")], snap
    if policy.budget is not None:
        spent = snap.tenant_spend.get(spec.tenant, 0.0)
        expected = decision.hourly_cost * spec.expected_hours
        if spent + expected > policy.budget + 1e-9:
            return [Decision(workload=spec.name, action="refuse",
                             reason=f"over budget: tenant {spec.tenant} has spent ${spent:.2f} of ${policy.budget:.2f} "
                                    f"and this placement would cost about ${expected:.2f}")], snap

    decisions: list[Decision] = []
    for victim in preempted:
        snap = snap.without(victim)
    snap = snap.with_allocations(plan)
    for victim in preempted:
        decisions.append(Decision(workload=victim, action="preempt",
                                  reason=f"reserved capacity taken by {spec.name} ({spec.priority} > {specs[victim].priority})"))
        moved, snap = _place_one(snap, specs[victim], specs, tenants, allow_preempt=False)
        decisions += moved
    return [decision, *decisions], snap


def _markets(spec: WorkloadSpec, pools: list[Pool]) -> tuple[list[str], str]:
    if spec.priority == "critical":
        return ["reserved", "on-demand"], "critical work never runs on spot"
    spot_ok, why = _spot_allowed(spec)
    if spot_ok:
        return ["reserved", "spot", "on-demand"], why
    return ["reserved", "on-demand"], why


def _spot_allowed(spec: WorkloadSpec) -> tuple[bool, str]:
    """Whether spot may be used at all. When it is worth it under a deadline is not decided here:
    the deadline policy (`deadline.JobStepper`, the one `simulate` scores) decides that, tick by tick."""
    if not spec.checkpointable and spec.priority != "preemptible":
        return False, "not checkpointable: a preemption would lose all progress, so no spot"
    if spec.deadline_hours is None:
        return True, "checkpointable, no deadline: spot when reserved is full"
    if not spec.checkpointable:
        return False, "a deadline and no checkpoints: a preemption would start it over, so no spot"
    return True, f"its deadline policy ({spec.spot_policy}) picks spot, on-demand or waiting at every tick"


def _batch_plan(snap: Snapshot, spec: WorkloadSpec, pools: list[Pool], specs: dict[str, WorkloadSpec],
                allow_preempt: bool, only: tuple[str, ...] | None = None) -> tuple[list[Allocation] | None, str, list[str]]:
    markets, why = _markets(spec, pools)
    if only is not None:
        markets, why = [m for m in markets if m in only], "the controller's choice"
    full = []
    for market in markets:
        for pool in sorted((p for p in pools if p.market == market), key=lambda p: p.expected_price):
            if market == "spot" and pool.node_type in snap.interrupted_pools:
                full.append(f"{pool.node_type} interrupted")
                continue
            alloc = _fit(snap, spec, pool, spec.min_workers, spec.max_workers)
            if alloc:
                if market == "reserved":
                    return [alloc], "reserved: already paid for, free at the margin", []
                passed = f" ({'; '.join(full)})" if full else ""
                return [alloc], f"{market}: {why}{passed}", []
            if market == "reserved" and allow_preempt and spec.rank <= 1:
                victims = _victims(snap, spec, pool, specs)
                if victims is not None:
                    freed = snap
                    for v in victims:
                        freed = freed.without(v)
                    alloc = _fit(freed, spec, pool, spec.min_workers, spec.max_workers)
                    if alloc:
                        return [alloc], f"reserved: preempted lower priority {', '.join(victims)}", victims
            full.append(f"{pool.node_type} full ({snap.used_nodes(pool.node_type)}/{pool.max_nodes} nodes)")
    return None, "no capacity: " + "; ".join(full) if full else f"no pool offers {' / '.join(markets)}", []


def _serving_plan(snap: Snapshot, spec: WorkloadSpec, pools: list[Pool], specs: dict[str, WorkloadSpec],
                  allow_preempt: bool) -> tuple[list[Allocation] | None, str, list[str]]:
    base_spec = WorkloadSpec(**{**spec.to_dict(), "regions": spec.regions, "kind": "batch", "priority": "critical"
                                if spec.priority == "critical" else spec.priority, "checkpoint_interval_hours": None,
                                "max_workers": spec.min_workers})
    base, why, victims = _batch_plan(snap, base_spec, pools, specs, allow_preempt)
    if base is None:
        return None, f"serving base of {spec.min_workers} replica(s): {why}", []
    plan = list(base)
    extra = spec.max_workers - spec.min_workers
    if extra == 0:
        return plan, f"serving base on {base[0].market}", victims
    after = snap.with_allocations(plan)
    spot_pools = [p for p in pools if p.market == "spot" and p.node_type not in snap.interrupted_pools]
    want = extra + math.ceil(extra * OVER_PROVISION)
    for pool in sorted(spot_pools, key=lambda p: p.expected_price):
        alloc = _fit(after, spec, pool, 1, want)
        if alloc:
            plan.append(alloc)
            return plan, (f"serving: base {spec.min_workers} on {base[0].market}, {alloc.workers} on spot "
                          f"({extra} asked + {alloc.workers - extra} spare against preemptions)"), victims
    od = [p for p in pools if p.market == "on-demand"]
    for pool in sorted(od, key=lambda p: p.expected_price):
        alloc = _fit(after, spec, pool, 1, extra)
        if alloc:
            plan.append(alloc)
            return plan, f"serving: base on {base[0].market}, overflow {alloc.workers} on on-demand (no spot capacity)", victims
    return plan, f"serving: base on {base[0].market}; no capacity for the {extra} overflow replica(s) yet", victims


def _fit(snap: Snapshot, spec: WorkloadSpec, pool: Pool, lo: int, hi: int) -> Allocation | None:
    per_node = pool.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker)
    if per_node == 0:
        return None
    workers = min(hi, snap.free_nodes(pool.node_type) * per_node)
    if workers < lo:
        return None
    nodes = math.ceil(workers / per_node)
    return Allocation(workload=spec.name, tenant=spec.tenant, priority=spec.priority, node_type=pool.node_type,
                      market=pool.market, workers=workers, cpus=workers * spec.cpus_per_worker, nodes=nodes,
                      hourly_cost=nodes * pool.hourly_price, started_at=snap.now)


def _victims(snap: Snapshot, spec: WorkloadSpec, pool: Pool, specs: dict[str, WorkloadSpec]) -> list[str] | None:
    """Lowest-priority workloads on the pool whose removal makes room; None if not enough."""
    per_node = pool.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker)
    need_nodes = math.ceil(spec.min_workers / per_node) if per_node else math.inf
    free = snap.free_nodes(pool.node_type)
    lower = sorted((a for a in snap.allocations if a.node_type == pool.node_type and specs.get(a.workload)
                    and specs[a.workload].rank > spec.rank), key=lambda a: (-specs[a.workload].rank, -a.started_at))
    victims: list[str] = []
    for a in lower:
        if free >= need_nodes:
            break
        victims.append(a.workload)
        free += a.nodes
    return victims if free >= need_nodes and victims else None


def _fallbacks(spec: WorkloadSpec, pools: list[Pool], plan: list[Allocation]) -> tuple[str, ...]:
    markets, _ = _markets(spec, pools)
    chosen = plan[0].market
    later = markets[markets.index(chosen) + 1:] if chosen in markets else []
    if spec.kind == "serving":
        later = [m for m in later if m != "spot"] if spec.priority == "critical" else later
    return tuple(p.node_type for m in later for p in sorted(pools, key=lambda p: p.expected_price) if p.market == m)
