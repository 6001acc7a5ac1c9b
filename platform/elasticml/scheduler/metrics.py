"""The scheduler's numbers as Prometheus metrics, exported by Ray's metrics agent on the head
(Ray prefixes them `ray_`): what is being spent, what it saves, what the scheduler decided, and
the pools it decides over. Set from the store at every controller tick. The alerting rules
(observe/alerts.py) read them: tenants' budgets beside their spend, pools out of work, how long the
oldest queued workload has waited.

Labels are bounded: tenant (one per principal), market (3), node type (the cluster's pools),
action (the policy's few). Cost per workload stays in `elasticml cost report` (workload names
are unbounded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from elasticml.scheduler.core import Scheduler

ACTIONS = ("place", "move", "preempt", "queue", "pause", "refuse", "done")
MARKETS = ("spot", "on-demand", "reserved")


class SchedulerMetrics:
    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self.cost = Gauge("elasticml_scheduler_cost_dollars", description="what has been spent, cumulative",
                          tag_keys=("tenant", "market"))
        self.on_demand_cost = Gauge("elasticml_scheduler_on_demand_cost_dollars",
                                    description="what the same work would have cost on on-demand capacity",
                                    tag_keys=("tenant",))
        self.savings = Gauge("elasticml_scheduler_savings_dollars",
                             description="on-demand cost minus cost, cumulative", tag_keys=("tenant",))
        self.spend_rate = Gauge("elasticml_scheduler_spend_rate_dollars_per_hour",
                                description="what what runs now costs per hour", tag_keys=("tenant", "market"))
        self.workers = Gauge("elasticml_scheduler_allocated_workers", description="workers allocated now",
                             tag_keys=("market",))
        self.decisions = Counter("elasticml_scheduler_decisions_total", description="decisions by action",
                                 tag_keys=("action",))
        self.available = Gauge("elasticml_scheduler_pool_available",
                               description="1 while a pool takes work, 0 while interrupted or unfillable",
                               tag_keys=("node_type", "market"))
        self.price = Gauge("elasticml_scheduler_pool_price_dollars_per_hour", description="a pool's node-hour price",
                           tag_keys=("node_type", "market"))
        self.queued = Gauge("elasticml_scheduler_queued_workloads", description="workloads waiting for capacity")
        self.oldest_queued = Gauge("elasticml_scheduler_oldest_queued_seconds",
                                   description="how long the longest-waiting queued workload has waited; 0 = none")
        self.budget = Gauge("elasticml_scheduler_budget_dollars",
                            description="a tenant's budget, which its cost is held to; NaN once it has none",
                            tag_keys=("tenant",))
        # When each queued workload was first seen queued, by this process: a workload's `submitted`
        # is when it first came, and one queued again after a preemption would look hours late.
        self._queued_since: dict[str, float] = {}
        self._budgeted: set[str] = set()

    def update(self, state: Scheduler) -> None:
        now = state.clock()
        by_tenant = state.store.ledger.costs_by("tenant", now=now)
        for row in by_tenant:
            self.on_demand_cost.set(row.on_demand_cost, tags={"tenant": row.key})
            self.savings.set(row.on_demand_cost - row.cost, tags={"tenant": row.key})
        for (tenant, market), cost in state.store.ledger.cost_by_tenant_and_market(now=now).items():
            self.cost.set(cost, tags={"tenant": tenant, "market": market})
        rate: dict[tuple[str, str], float] = {}
        workers = dict.fromkeys(MARKETS, 0)
        for allocations in state.allocations.values():
            for a in allocations:
                rate[(a.tenant, a.market)] = rate.get((a.tenant, a.market), 0.0) + a.hourly_cost
                workers[a.market] = workers.get(a.market, 0) + a.workers
        for tenant in {r.key for r in by_tenant} | {t for t, _ in rate}:
            for market in MARKETS:
                self.spend_rate.set(rate.get((tenant, market), 0.0), tags={"tenant": tenant, "market": market})
        for market, n in workers.items():
            self.workers.set(n, tags={"market": market})
        unavailable = state.interrupted | state.unfillable
        for p in state.pools:
            tags = {"node_type": p.node_type, "market": p.market}
            self.available.set(0.0 if p.node_type in unavailable else 1.0, tags=tags)
            self.price.set(p.hourly_price, tags=tags)
        self.queued.set(len(state.queue))
        self._queued_since = {n: self._queued_since.get(n, now) for n in state.queue}
        self.oldest_queued.set(now - min(self._queued_since.values(), default=now))
        budgets = {t: p.budget for t, p in state.store.tenants.items() if p.budget is not None}
        for tenant in self._budgeted - budgets.keys():  # a gauge cannot be dropped: NaN compares false in every rule
            self.budget.set(float("nan"), tags={"tenant": tenant})
        for tenant, budget in budgets.items():
            self.budget.set(budget, tags={"tenant": tenant})
        self._budgeted = set(budgets)

    def count(self, record: dict[str, Any]) -> None:
        action = record.get("action")
        if action in ACTIONS:
            self.decisions.inc(1.0, tags={"action": action})

