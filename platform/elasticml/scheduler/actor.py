"""The scheduler actor: one named, detached Ray actor per cluster that owns placement and steers running work.

Who owns what: the actor owns the workload specs, their allocations, the
queue, the interrupted-pool set and one `JobStepper` per deadline job, all
persisted in the ledger's SQLite file on every change; the policies
(`policy.py` for placement, `deadline.py`/`planner.py` for spot vs on-demand
under a deadline) own every decision and are pure. The actor takes a
snapshot, asks them, applies what they say and writes it down. Ray restarts
the actor if it dies (`max_restarts=-1`); a new incarnation reloads
everything from the ledger.

The controller (`controller_tick`, every `ControllerConfig.tick_seconds`)
keeps steering: each deadline job's stepper decides spot, on-demand or wait
at every tick of its policy, as in `simulate`; other checkpointable work
moves to capacity at least 10% cheaper when it frees up; a move is bounded
per hour. Running work follows its `Placement` (its `epoch` grows with every
move). For work attached to a Ray job, the ledger charges what Ray says runs
(which node types its workers are on), not what was decided.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import ray

from elasticml import labels as L
from elasticml.cluster.config import ClusterSpec
from elasticml.dataconf import check_number, check_text
from elasticml.errors import ConfigError, PlacementRefused
from elasticml.cluster.spot_market import SpotMarket
from elasticml.scheduler.capacity import Allocation, Pool, Snapshot, pools_from_cluster
from elasticml.scheduler.catalog import PriceCatalog
from elasticml.scheduler.deadline import NONE, OD, SPOT, Instance, JobParams, JobStepper
from elasticml.scheduler.ledger import Ledger
from elasticml.scheduler.policies import POLICIES
from elasticml.scheduler.policy import Decision, place, place_on, rebalance, replace_interrupted
from elasticml.scheduler.spec import MAX_NAME, NAME_PATTERN, Placement, TenantPolicy, Tenants, WorkloadSpec

ACTOR_NAME = "elasticml-scheduler"
NAMESPACE = "elasticml"
MAX_POOL_HISTORY = 20_000
"""Availability bits kept per spot pool (the policies' model of the pool)."""
MAX_EXPLANATIONS = 200
SERVE_GONE_S = 20.0
"""A scheduler-placed Serve app whose replicas have been gone this long (clock seconds) was deleted."""
SERVE_NEVER_S = 900.0
"""... or whose replicas never came up in this long."""

Observer = Callable[[str], Mapping[str, tuple[int, int]]]
"""Ray job id -> {node type: (workers, nodes)} of that job's training workers, as Ray sees them."""


@dataclass(kw_only=True, frozen=True)
class ControllerConfig:
    tick_seconds: float = 10.0
    """How often the controller looks at every running workload."""
    seconds_per_hour: float = 3600.0
    """Wall seconds per scheduler hour: 3600 live; less when a spot market is replayed time-compressed."""
    max_moves_per_hour: float = 6.0
    """Voluntary moves (to cheaper capacity, back to spot) per workload per scheduler hour."""
    max_policy_ticks: int = 400
    """A deadline job's policy ticks at deadline / this, or the controller's tick if longer."""
    unfillable_seconds: float = 15.0
    """A pool whose launches have failed this long is treated as unavailable."""
    live_prices_seconds: float | None = None
    """Refresh spot prices and placement scores from EC2 this often (`scheduler start --live-prices`); None = off."""
    market: str | None = None
    """A replayed spot market's file (`cluster up --spot-trace`): the clock, the pace, spot prices,
    the pool's history and the policy's tick then come from it."""

    def __post_init__(self) -> None:
        check_number(self.tick_seconds, field="tick_seconds", lo=0.05, hi=3600)
        check_number(self.seconds_per_hour, field="seconds_per_hour", lo=0.01, hi=3600)
        check_number(self.max_moves_per_hour, field="max_moves_per_hour", lo=0, hi=3600)
        check_number(self.max_policy_ticks, field="max_policy_ticks", lo=10, hi=5000, integer=True)
        check_number(self.unfillable_seconds, field="unfillable_seconds", lo=0, hi=86400)
        if self.live_prices_seconds is not None:
            check_number(self.live_prices_seconds, field="live_prices_seconds", lo=10, hi=86400)

    @classmethod
    def from_env(cls) -> ControllerConfig:
        env = {"tick_seconds": "ELASTICML_CONTROLLER_TICK_S", "seconds_per_hour": "ELASTICML_SECONDS_PER_HOUR"}
        kwargs: dict[str, Any] = {}
        for key, var in env.items():
            if var in os.environ:
                try:
                    kwargs[key] = float(os.environ[var])
                except ValueError:
                    raise ConfigError(f"must be a number, got {os.environ[var][:40]!r}", field=var) from None
        return cls(**kwargs)


def _priced_by_market(pools: tuple[Pool, ...], price_ratio: float) -> tuple[Pool, ...]:
    """Spot pools priced at the replayed market's ratio to on-demand for the same instance."""
    od = {(p.instance_type, p.region): p.hourly_price for p in pools if p.market == "on-demand"}
    return tuple(replace(p, hourly_price=od.get((p.instance_type, p.region), p.hourly_price * price_ratio) / price_ratio)
                 if p.market == "spot" else p for p in pools)


def _instance(market: str | None) -> Instance:
    return NONE if market is None else SPOT if market == "spot" else OD


class SchedulerState:
    """The actor's logic without Ray, so it can be tested and reasoned about on its own."""

    def __init__(self, cluster: ClusterSpec, ledger_path: str, *, controller: ControllerConfig | None = None,
                 clock: Callable[[], float] = time.time, observer: Observer | None = None) -> None:
        self.cluster = cluster
        self.controller = controller or ControllerConfig()
        self.observer = observer
        self.catalog = PriceCatalog.load()
        self.pools = pools_from_cluster(cluster, self.catalog)
        self.market: SpotMarket | None = None
        self.clock = clock
        self.seconds_per_hour = self.controller.seconds_per_hour
        if self.controller.market is not None:
            self.market = SpotMarket.load(self.controller.market)
            self.clock = self._market_now
            self.seconds_per_hour = self.market.settings.seconds_per_hour
            self.pools = _priced_by_market(self.pools, self.market.settings.price_ratio)
        self.ledger = Ledger(ledger_path)
        self.specs = {k.removeprefix("spec:"): WorkloadSpec.from_dict(json.loads(v))
                      for k, v in self.ledger.state_items("spec:").items()}
        self.allocations = {k.removeprefix("alloc:"): [Allocation(**a) for a in json.loads(v)]
                            for k, v in self.ledger.state_items("alloc:").items()}
        self.queue: list[str] = json.loads(self.ledger.get_state("queue") or "[]")
        self.interrupted: set[str] = set(json.loads(self.ledger.get_state("interrupted") or "[]"))
        """Spot pools with a live interruption notice."""
        self.unfillable: set[str] = set(json.loads(self.ledger.get_state("unfillable") or "[]"))
        """Pools whose launches have been failing (the autoscaler's view): unavailable too."""
        live = json.loads(self.ledger.get_state("live_prices") or "{}")
        self.pools = tuple(replace(p, hourly_price=live[p.node_type][0], placement_score=live[p.node_type][1])
                           if p.node_type in live else p for p in self.pools)
        self.tenants = Tenants(policies={k.removeprefix("tenant:"): TenantPolicy(**json.loads(v))
                                         for k, v in self.ledger.state_items("tenant:").items()})
        self.explanations: dict[str, list[dict[str, Any]]] = {
            k.removeprefix("why:"): json.loads(v) for k, v in self.ledger.state_items("why:").items()
        }
        self.meta: dict[str, dict[str, Any]] = {k.removeprefix("meta:"): json.loads(v)
                                                for k, v in self.ledger.state_items("meta:").items()}
        """Per workload: epoch, state (placed/queued/paused), attached Ray job, progress, move times."""
        self.pool_history: dict[str, list[bool]] = {
            k.removeprefix("history:"): json.loads(v) for k, v in self.ledger.state_items("history:").items()
        }
        self.steppers: dict[str, JobStepper] = {}
        for name, raw in self.ledger.state_items("steer:").items():
            self.steppers[name.removeprefix("steer:")] = self._stepper_from(json.loads(raw))
        self._last_tick = self.clock()
        self._holder: str | None = None
        """The workload whose move holds the replayed market's clock."""

    def _market_now(self) -> float:
        assert self.market is not None
        self.market.reload_clock()
        return self.market.now()

    # -- snapshot --------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        now = self.clock()
        spend = {r.key: r.cost for r in self.ledger.costs_by("tenant", now=now)}
        allocs = tuple(a for lst in self.allocations.values() for a in lst)
        return Snapshot(now=now / 3600, pools=self.pools, allocations=allocs,
                        interrupted_pools=frozenset(self._unavailable()), tenant_spend=spend)

    # -- the door ----------------------------------------------------------------
    def place(self, spec: WorkloadSpec, attach: str | None = None) -> Placement:
        """Place a workload; its own Placement, or PlacementRefused with the reason.

        `attach`: the Ray job (hex id) whose Ray Train workers run it; the ledger then
        charges where Ray says they run.
        """
        if not isinstance(spec, WorkloadSpec):
            raise ConfigError(f"expected a WorkloadSpec, got {type(spec).__name__}", field="spec")
        if attach is not None:
            check_text(attach, field="attach", max_len=MAX_NAME + 6, pattern=rf"[0-9a-f]+|serve:{NAME_PATTERN}")
        if spec.name in self.allocations:
            self._release(spec.name)
        self.specs[spec.name] = spec
        self.ledger.put_state(f"spec:{spec.name}", json.dumps(spec.to_dict()))
        meta = {"epoch": self.meta.get(spec.name, {}).get("epoch", 0), "state": "queued", "attach": attach,
                "progress": None, "moves": [], "submitted": self.clock()}
        self._put_meta(spec.name, meta)
        self.steppers.pop(spec.name, None)
        self.ledger.delete_state(f"steer:{spec.name}")
        running = {n: s for n, s in self.specs.items() if n in self.allocations}
        if self._steered(spec):
            try:
                decisions = self._admit_steered(spec, running)
            except ConfigError as exc:
                self._forget(spec.name)
                raise PlacementRefused(spec.name, str(exc)) from None
        else:
            decisions = place(self.snapshot(), [spec], running, self.tenants)
        self._apply(decisions)
        own = next(d for d in decisions if d.workload == spec.name)
        if own.action == "refuse":
            self._forget(spec.name)
            raise PlacementRefused(spec.name, own.reason)
        return self.placement(spec.name)  # type: ignore[return-value]

    def placement(self, name: str) -> Placement | None:
        """The workload's placement now, or None if the scheduler does not know it."""
        if name not in self.specs:
            return None
        meta = self.meta.get(name, {})
        last = next((d for d in reversed(self.explanations.get(name, []))
                     if d["action"] in ("place", "move", "queue", "pause")), None)
        reason = last["reason"] if last else ""
        if name in self.allocations:
            allocs = tuple(self.allocations[name])
            d = Decision(workload=name, action="place", reason=reason, allocations=allocs,
                         fallback_node_types=tuple(last.get("fallback_node_types", ())) if last else ())
            return Placement(workload=name, state="placed", reason=reason, allocations=allocs,
                             ray_options=d.ray_options(), scaling_config=d.scaling_config_kwargs(),
                             epoch=meta.get("epoch", 0))
        return Placement(workload=name, state="paused" if meta.get("state") == "paused" else "queued",
                         reason=reason, epoch=meta.get("epoch", 0))

    def report_progress(self, name: str, fraction: float) -> None:
        """The workload's share of its work done (0..1), as it measures it (steps done / steps)."""
        check_number(fraction, field="fraction", lo=0, hi=1)
        if name in self.meta:
            self._put_meta(name, {**self.meta[name], "progress": float(fraction)})

    def run_started(self, name: str, epoch: int) -> float:
        """The workload's run for placement `epoch` is up (its checkpoint restored).

        On a replayed market this ends the move: the held clock runs again, and the
        answer is how long to wait before training (the job's restart hours, in
        wall seconds) so that the restart costs what the simulator charges. 0 otherwise.
        """
        self._check_name(name)
        check_number(epoch, field="epoch", lo=0, hi=2**31, integer=True)
        meta = self.meta.get(name)
        if self.market is None or meta is None or meta.get("epoch") != epoch or self._holder != name:
            return 0.0
        self._release_clock()
        return self.specs[name].restart_overhead_hours * self.seconds_per_hour

    # -- commands --------------------------------------------------------------
    def set_tenant(self, policy: TenantPolicy) -> None:
        if not isinstance(policy, TenantPolicy):
            raise ConfigError(f"expected a TenantPolicy, got {type(policy).__name__}", field="policy")
        self.tenants = Tenants(policies={**self.tenants.policies, policy.tenant: policy})
        self.ledger.put_state(f"tenant:{policy.tenant}", json.dumps(asdict(policy)))

    def finish(self, name: str) -> None:
        """The workload is done: close its intervals, then give its room to the queue and to cheaper moves."""
        self._check_name(name)
        self._release(name)
        self._forget(name)
        self._retry_queue()
        self._rebalance()

    def interrupt(self, node_type: str) -> dict[str, Any]:
        """A spot pool got an interruption notice: its work is re-placed (deadline jobs wait for their policy).

        {"decisions": what changed, "drained_nodes": Ray node ids drained as preempted}.
        """
        self._check_pool(node_type, spot=True)
        self.interrupted.add(node_type)
        self.ledger.put_state("interrupted", json.dumps(sorted(self.interrupted)))
        return {"decisions": self._vacate(node_type, f"spot pool {node_type} got an interruption notice"),
                "drained_nodes": []}

    def clear_interruption(self, node_type: str) -> list[dict[str, Any]]:
        self._check_pool(node_type, spot=True)
        self.interrupted.discard(node_type)
        self.ledger.put_state("interrupted", json.dumps(sorted(self.interrupted)))
        return self._retry_queue() + self._rebalance()

    def set_unfillable(self, failing_s: Mapping[str, float]) -> list[dict[str, Any]]:
        """Pools whose launches have failed for `failing_s[node_type]` seconds, as the autoscaler reports.

        One failing for `ControllerConfig.unfillable_seconds` is treated as unavailable: nothing new
        goes there and its work is placed elsewhere (deadline jobs: their policy decides). When
        launches stop failing it is available again and the queue and cheaper moves are retried.
        """
        bad = {t for t, secs in failing_s.items()
               if secs >= self.controller.unfillable_seconds and any(p.node_type == t for p in self.pools)}
        added, cleared = sorted(bad - self.unfillable), self.unfillable - bad
        self.unfillable = bad
        self.ledger.put_state("unfillable", json.dumps(sorted(bad)))
        out: list[dict[str, Any]] = []
        for node_type in added:
            why = f"pool {node_type} could not be launched for {failing_s[node_type]:.0f}s (the autoscaler's launches fail)"
            self.explanations.setdefault("_events", []).append({"at": self.clock(), "event": "pool unfillable",
                                                                 "node_type": node_type, "why": why})
            out += self._vacate(node_type, why)
        if cleared:
            out += self._retry_queue() + self._rebalance()
        return out

    def refresh_prices(self, spot_prices: Mapping[str, float], scores: Mapping[str, int] | None = None) -> None:
        """Live spot prices ($/node-hour) and placement scores (1-10) per spot pool, from the cloud.

        A price that is not a finite number above 0 and below 10x the pool's on-demand price is
        ignored (a broken feed must not make spot look free); so is a score outside 1..10.
        """
        scores = scores or {}
        od = {(p.instance_type, p.region): self.catalog.hourly(p.instance_type, "on-demand", p.region)
              for p in self.pools if (p.instance_type, p.region) in self.catalog}
        new = []
        for p in self.pools:
            if p.market == "spot":
                price, score = spot_prices.get(p.node_type), scores.get(p.node_type)
                ceiling = 10 * od.get((p.instance_type, p.region), p.hourly_price)
                if isinstance(price, (int, float)) and not isinstance(price, bool) and math.isfinite(price) \
                        and 0 < price < ceiling:
                    p = replace(p, hourly_price=float(price))
                if type(score) is int and 1 <= score <= 10:
                    p = replace(p, placement_score=score)
            new.append(p)
        self.pools = tuple(new)
        self.ledger.put_state("live_prices", json.dumps({p.node_type: [p.hourly_price, p.placement_score]
                                                         for p in self.pools if p.market == "spot"}))

    def refresh_live_prices(self, live: Any) -> None:
        """Ask a `LiveSpotPrices` (EC2 through boto3) for every spot pool's price and placement score."""
        spot = [p for p in self.pools if p.market == "spot"]
        prices: dict[str, float] = {}
        scores: dict[str, int] = {}
        for region in sorted({p.region for p in spot}):
            here = [p for p in spot if p.region == region]
            zones = live.spot_prices(sorted({p.instance_type for p in here}), region)
            for p in here:
                if zones.get(p.instance_type):
                    prices[p.node_type] = min(zones[p.instance_type].values())
                got = live.placement_scores([p.instance_type], region, max(1, p.max_nodes))
                if got:
                    scores[p.node_type] = max(got.values())
        self.refresh_prices(prices, scores)

    def _vacate(self, node_type: str, why: str) -> list[dict[str, Any]]:
        """The pool is unavailable: its deadline jobs pause (their policy picks), the rest is re-placed."""
        steered_here = [n for n in self.steppers if any(a.node_type == node_type for a in self.allocations.get(n, []))]
        decisions = [Decision(workload=n, action="pause",
                              reason=f"{why}: checkpoint now; its deadline policy picks on-demand or waiting at its next tick")
                     for n in steered_here]
        for n in steered_here:
            self._release(n)
        for d in replace_interrupted(self.snapshot(), node_type, self._running_specs(), self.tenants):
            decisions.append(replace(d, reason=d.reason.replace(f"spot pool {node_type} got an interruption notice", why)
                                     .replace(f"spot pool {node_type} interrupted", why)))
        return self._apply(decisions)

    def _unavailable(self) -> set[str]:
        return self.interrupted | self.unfillable

    def explain(self, name: str) -> list[dict[str, Any]]:
        self._check_name(name, allow_events=True)
        return self.explanations.get(name, [])

    def intervals(self, name: str) -> list[dict[str, Any]]:
        self._check_name(name)
        return self.ledger.intervals(name)

    def status(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            "cluster": self.cluster.name,
            "config": self.cluster.source,
            "pools": [{**asdict(p), "used_nodes": snap.used_nodes(p.node_type), "interrupted": p.node_type in self.interrupted,
                       "unfillable": p.node_type in self.unfillable}
                      for p in self.pools],
            "running": {n: [asdict(a) for a in lst] for n, lst in self.allocations.items()},
            "queued": list(self.queue),
            "paused": sorted(n for n, m in self.meta.items() if m.get("state") == "paused"),
            "steered": {n: {"policy": self.specs[n].spot_policy, "tick": j.tick, "progress_hours": round(j.progress, 6),
                            "instance": j.instance, "restarts": j.restarts} for n, j in self.steppers.items() if n in self.specs},
            "catalog_version": self.catalog.version,
        }

    def cost_report(self) -> dict[str, Any]:
        now = self.clock()
        report = {}
        for column in ("tenant", "workload", "market"):
            report[column] = [{"key": r.key, "cost": r.cost, "on_demand_cost": r.on_demand_cost,
                               "savings": r.savings, "worker_hours": r.hours} for r in self.ledger.costs_by(column, now=now)]
        total = sum(r["cost"] for r in report["tenant"])
        od = sum(r["on_demand_cost"] for r in report["tenant"])
        report["total"] = {"cost": total, "on_demand_cost": od, "savings": od - total,
                           "savings_pct": 100 * (od - total) / od if od else 0.0}
        report["intervals"] = len(self.ledger.intervals())
        return report

    # -- the controller ----------------------------------------------------------
    def controller_tick(self) -> list[dict[str, Any]]:
        """Look at every running workload once: reconcile the ledger with Ray, steer deadline jobs, rebalance."""
        now = self.clock()
        self._record_pool_availability()
        out = self._reconcile()
        for name in sorted(self.steppers):
            if name in self.specs:
                out += self._steer(name, now)
        out += self._rebalance()
        self._last_tick = now
        return out

    def _steered(self, spec: WorkloadSpec) -> bool:
        return spec.kind != "serving" and spec.deadline_hours is not None and spec.checkpoint_interval_hours is not None \
            and spec.priority != "critical"

    def _admit_steered(self, spec: WorkloadSpec, running: dict[str, WorkloadSpec]) -> list[Decision]:
        spot = self._spot_pool(spec)
        od = self._od_price(spec)
        ratio = min(1000.0, max(1.0, od / spot.hourly_price)) if spot is not None and od else 1.0
        params = JobParams(job_hours=spec.expected_hours, deadline_hours=spec.deadline_hours,  # type: ignore[arg-type]
                           restart_hours=spec.restart_overhead_hours, price_ratio=ratio)
        now = self.clock()
        if self.market is not None:
            # The trace's own tick, as `simulate` runs it; ticks fall a quarter into each trace tick,
            # so that the market's notice for that tick has reached the scheduler.
            gap = self.market.gap_hours
            hour = self.market.hour(now)
            history = self.market.history(hour)
            first_at = now + ((self.market.tick(hour) + 1.25) * gap - hour) * self.seconds_per_hour
        else:
            gap = max(self.controller.tick_seconds / self.seconds_per_hour,
                      params.deadline_hours / self.controller.max_policy_ticks)
            history = self.pool_history.get(spot.node_type, []) if spot is not None else []
            first_at = now + gap * self.seconds_per_hour
        job = JobStepper(POLICIES[spec.spot_policy](), params, gap, history=history)
        self.steppers[spec.name] = job
        decisions = self._steer_decisions(spec, job, first=True)
        self._put_meta(spec.name, {**self.meta[spec.name], "next_tick": first_at})
        return decisions

    def _steer(self, name: str, now: float) -> list[dict[str, Any]]:
        meta = self.meta.get(name, {})
        job = self.steppers[name]
        if now + 1e-6 < meta.get("next_tick", 0.0) or job.done:
            return []
        spec = self.specs[name]
        live = _instance(self.allocations[name][0].market if name in self.allocations else None)
        progress = meta.get("progress")
        job.observe(job.progress if progress is None else progress * spec.expected_hours, instance=live)
        decisions = self._steer_decisions(spec, job, first=False)
        return self._apply(decisions)

    def _steer_decisions(self, spec: WorkloadSpec, job: JobStepper, *, first: bool) -> list[Decision]:
        """One tick of the job's policy, and the decision that carries out its choice."""
        name = spec.name
        avail = self._spot_available(spec)
        before = job.instance
        choice = job.decide(avail)
        why = (f"{spec.spot_policy} at {job.hour:.3g}h of {job.params.deadline_hours:g}h, "
               f"{job.progress:.3g}h of {job.params.job_hours:g}h done, spot {'up' if avail else 'down'}")
        decisions: list[Decision] = []
        if choice != before or first:
            if choice != NONE and not first and choice == SPOT and not self._may_move(name):
                job.instance = before  # over the hour's move budget: stay
                why += f"; stays: {self.controller.max_moves_per_hour:g} moves per hour used"
            elif choice == NONE:
                decisions.append(Decision(workload=name, action="pause", reason=f"{why}: waiting for spot is cheaper"))
            else:
                markets = ("spot",) if choice == SPOT else ("reserved", "on-demand")
                d = place_on(self.snapshot(), spec, self._running_specs() | {name: spec}, self.tenants, markets, why,
                             voluntary=choice == SPOT)
                if d.action == "move" and (first or before == NONE):  # a start, not a move of running work
                    d = Decision(workload=name, action="place", allocations=d.allocations,
                                 reason=d.reason.replace(": moved to ", ": placed on "))
                if d.action == "queue":
                    job.instance = before if not first else NONE
                decisions.append(d)
        job.run_for(job.gap_hours)
        job.end_tick(avail)
        self._save_stepper(name, job)
        if not first:
            self._put_meta(name, {**self.meta[name], "next_tick": self.meta[name]["next_tick"]
                                  + job.gap_hours * self.seconds_per_hour})
        return decisions

    def _spot_pool(self, spec: WorkloadSpec):  # type: ignore[no-untyped-def]
        pools = [p for p in self.pools if p.market == "spot" and (not spec.regions or p.region in spec.regions)
                 and p.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker) > 0]
        return min(pools, key=lambda p: p.hourly_price, default=None)

    def _od_price(self, spec: WorkloadSpec) -> float:
        prices = [p.hourly_price for p in self.pools if p.market == "on-demand" and (not spec.regions or p.region in spec.regions)]
        return min(prices, default=0.0)

    def _spot_available(self, spec: WorkloadSpec) -> bool:
        """A spot pool it may use is not interrupted and has room for its minimum."""
        snap = self.snapshot().without(spec.name)
        for p in self.pools:
            if p.market != "spot" or p.node_type in self._unavailable() or (spec.regions and p.region not in spec.regions):
                continue
            per_node = p.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker)
            if per_node and snap.free_nodes(p.node_type) * per_node >= spec.min_workers:
                return True
        return False

    def _record_pool_availability(self) -> None:
        for p in self.pools:
            if p.market == "spot":
                h = self.pool_history.setdefault(p.node_type, [])
                h.append(p.node_type not in self._unavailable())
                del h[:-MAX_POOL_HISTORY]
                self.ledger.put_state(f"history:{p.node_type}", json.dumps(h))

    def _may_move(self, name: str) -> bool:
        hour_s = self.seconds_per_hour
        recent = [t for t in self.meta.get(name, {}).get("moves", []) if t > self.clock() - hour_s]
        return len(recent) < self.controller.max_moves_per_hour

    def _rebalance(self) -> list[dict[str, Any]]:
        free = {n: s for n, s in self._running_specs().items() if n not in self.steppers and self._may_move(n)}
        return self._apply(rebalance(self.snapshot(), free, self.tenants))

    def _reconcile(self) -> list[dict[str, Any]]:
        """For attached work (a Ray job's training workers, a Serve app's replicas): charge the node types
        Ray says they are on; a Serve app whose replicas are gone (deleted) is finished."""
        if self.observer is None:
            return []
        out = []
        now = self.clock()
        gone: list[tuple[str, str]] = []
        for name, meta in sorted(self.meta.items()):
            attach = meta.get("attach")
            if not attach or name not in self.specs:
                continue
            seen = {t: wn for t, wn in self.observer(attach).items() if any(p.node_type == t for p in self.pools)}
            if attach.startswith("serve:"):
                why = self._serve_presence(name, meta, bool(seen), now)
                if why:
                    gone.append((name, why))
                    continue
            open_now = {r["node_type"]: (r["workers"], r["nodes"]) for r in self.ledger.open_intervals(name)}
            if seen == open_now:
                continue
            self.ledger.close(name, at=now)
            spec = self.specs[name]
            for node_type, (workers, nodes) in sorted(seen.items()):
                pool = next(p for p in self.pools if p.node_type == node_type)
                od = nodes * self.catalog.hourly(pool.instance_type, "on-demand", pool.region)
                self.ledger.open(workload=name, tenant=spec.tenant, node_type=node_type, market=pool.market,
                                 workers=workers, nodes=nodes, hourly_cost=nodes * pool.hourly_price,
                                 on_demand_hourly_cost=od, at=now)
            where = ", ".join(f"{w}x {t}" for t, (w, _) in sorted(seen.items())) or "nowhere"
            out.append(self._record(name, {"action": "charge", "reason": f"Ray runs its workers on {where}",
                                           "observed": {t: w for t, (w, _) in seen.items()}}))
        for name, why in gone:
            out.append(self._record(name, {"action": "finish", "reason": why}))
            self.finish(name)
        return out

    def _serve_presence(self, name: str, meta: dict[str, Any], present: bool, now: float) -> str | None:
        """Why a Serve app's workload is over (its replicas gone for SERVE_GONE_S, or never up), or None."""
        if present:
            if not meta.get("seen") or meta.get("absent_since") is not None:
                self._put_meta(name, {**meta, "seen": True, "absent_since": None})
            return None
        since = meta.get("absent_since")
        if since is None:
            self._put_meta(name, {**meta, "absent_since": now})
            return None
        if meta.get("seen") and now - since >= SERVE_GONE_S:
            return f"its Serve replicas have been gone for {now - since:.0f}s: the app was deleted"
        if not meta.get("seen") and now - since >= SERVE_NEVER_S:
            return f"no Serve replica came up in {now - since:.0f}s"
        return None

    # -- applying decisions ----------------------------------------------------
    def _running_specs(self) -> dict[str, WorkloadSpec]:
        return {n: self.specs[n] for n in self.allocations if n in self.specs}

    def _apply(self, decisions: list[Decision]) -> list[dict[str, Any]]:
        out = []
        for d in decisions:
            meta = self.meta.get(d.workload)
            if self.market is not None and d.workload in self.steppers:
                self._hold_for_move(d)
            if d.action in ("place", "move"):
                self._release(d.workload)
                self._dequeue(d.workload)
                self.allocations[d.workload] = list(d.allocations)
                self.ledger.put_state(f"alloc:{d.workload}", json.dumps([asdict(a) for a in d.allocations]))
                attached = bool(meta and meta.get("attach"))
                for a in d.allocations:
                    if attached:
                        break  # charged by what Ray runs (_reconcile), not by the decision
                    pool = next(p for p in self.pools if p.node_type == a.node_type)
                    od = a.nodes * self.catalog.hourly(pool.instance_type, "on-demand", pool.region)
                    self.ledger.open(workload=a.workload, tenant=a.tenant, node_type=a.node_type, market=a.market,
                                     workers=a.workers, nodes=a.nodes, hourly_cost=a.hourly_cost, on_demand_hourly_cost=od)
                if meta is not None:
                    moves = meta.get("moves", []) + ([self.clock()] if d.voluntary else [])
                    self._put_meta(d.workload, {**meta, "state": "placed", "epoch": meta.get("epoch", 0) + 1,
                                                "moves": moves[-32:]})
            elif d.action in ("preempt", "pause"):
                self._release(d.workload)
                if meta is not None:
                    self._put_meta(d.workload, {**meta, "state": "paused" if d.action == "pause" else "queued",
                                                "epoch": meta.get("epoch", 0) + 1})
            elif d.action == "queue":
                self._release(d.workload)
                if d.workload not in self.queue and d.workload not in self.steppers:
                    self.queue.append(d.workload)
                    self.ledger.put_state("queue", json.dumps(self.queue))
                if meta is not None:
                    self._put_meta(d.workload, {**meta, "state": "queued", "epoch": meta.get("epoch", 0) + 1})
            elif d.action == "refuse":
                self._dequeue(d.workload)
            out.append(self._record(d.workload, d.to_dict()))
        return out

    def _hold_for_move(self, d: Decision) -> None:
        """A replayed market's clock stops while a steered job's move is carried out (until `run_started`)."""
        assert self.market is not None
        if d.action in ("place", "move"):
            if self._holder in (None, d.workload):
                self._holder = d.workload
                self.market.reload_clock()
                self.market.hold()
        elif self._holder in (None, d.workload):
            # Not placed (waiting for spot, queued): nothing to carry out, so time runs on. This also ends
            # the hold a replay starts with when its job's first answer is to wait.
            self._holder = None
            self.market.reload_clock()
            self.market.release()

    def _release_clock(self) -> None:
        if self.market is not None and self._holder is not None:
            self._holder = None
            self.market.reload_clock()
            self.market.release()

    def _record(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "at": self.clock()}
        self.explanations.setdefault(name, []).append(record)
        self.explanations[name] = self.explanations[name][-MAX_EXPLANATIONS:]
        self.ledger.put_state(f"why:{name}", json.dumps(self.explanations[name]))
        return record

    def _release(self, name: str) -> None:
        if self.allocations.pop(name, None) is not None:
            if not self.meta.get(name, {}).get("attach"):
                self.ledger.close(name)
            self.ledger.delete_state(f"alloc:{name}")

    def _forget(self, name: str) -> None:
        if self._holder == name:
            self._release_clock()
        self.ledger.close(name)  # attached or not, nothing is charged after the end
        self.specs.pop(name, None)
        self.ledger.delete_state(f"spec:{name}")
        self.steppers.pop(name, None)
        self.ledger.delete_state(f"steer:{name}")
        self.meta.pop(name, None)
        self.ledger.delete_state(f"meta:{name}")
        self._dequeue(name)

    def _dequeue(self, name: str) -> None:
        if name in self.queue:
            self.queue.remove(name)
            self.ledger.put_state("queue", json.dumps(self.queue))

    def _retry_queue(self) -> list[dict[str, Any]]:
        if not self.queue:
            return []
        waiting = [self.specs[n] for n in self.queue if n in self.specs]
        return self._apply(place(self.snapshot(), waiting, self._running_specs(), self.tenants))

    def _put_meta(self, name: str, meta: dict[str, Any]) -> None:
        self.meta[name] = meta
        self.ledger.put_state(f"meta:{name}", json.dumps(meta))

    def _save_stepper(self, name: str, job: JobStepper) -> None:
        state = {"params": asdict(job.params), "gap_hours": job.gap_hours, "policy": self.specs[name].spot_policy,
                 "past": job.past[-MAX_POOL_HISTORY:], "tick": job.tick, "progress": job.progress,
                 "instance": job.instance, "overhead_left": job.overhead_left, "restarts": job.restarts,
                 "preemptions": job.preemptions, "launched": job.launched}
        self.ledger.put_state(f"steer:{name}", json.dumps(state))

    def _stepper_from(self, state: dict[str, Any]) -> JobStepper:
        """A stepper as saved; its policy re-plans from the saved history (its tables are not saved)."""
        job = JobStepper(POLICIES[state["policy"]](), JobParams(**state["params"]), state["gap_hours"],
                         history=state["past"])
        for key in ("tick", "progress", "instance", "overhead_left", "restarts", "preemptions", "launched"):
            setattr(job, key, state[key])
        return job

    def _check_name(self, name: str, *, allow_events: bool = False) -> None:
        if allow_events and name == "_events":
            return
        check_text(name, field="name", max_len=MAX_NAME, pattern=NAME_PATTERN)

    def _check_pool(self, node_type: str, *, spot: bool) -> None:
        check_text(node_type, field="node_type", max_len=MAX_NAME, pattern=NAME_PATTERN)
        pool = next((p for p in self.pools if p.node_type == node_type), None)
        if pool is None:
            raise ConfigError(f"no pool {node_type!r}; pools: {', '.join(p.node_type for p in self.pools)}", field="node_type")
        if spot and pool.market != "spot":
            raise ConfigError(f"{node_type} is a {pool.market} pool; only spot pools are interrupted", field="node_type")


LAUNCH_FAILURE_FRESH_S = 60.0
"""A failed launch this recent means the pool is still failing (the autoscaler retries every few seconds)."""
NOTICE_SECONDS = 120
"""AWS gives two minutes between a spot interruption notice and the reclaim."""
# Ray's NodeDeathInfo reasons that mean the capacity was taken, not given back when idle.
LOST_REASONS = {2: "unexpected termination", 3: "preempted"}  # UNEXPECTED_TERMINATION, AUTOSCALER_DRAIN_PREEMPTED


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=1)
class SchedulerActor(SchedulerState):
    """SchedulerState as a named, detached actor on the head node."""

    def __init__(self, cluster: ClusterSpec, ledger_path: str, controller: ControllerConfig) -> None:
        super().__init__(cluster, ledger_path, controller=controller, observer=ray_observer)
        self._seen_dead: set[str] = set()
        self._failing_since: dict[str, float] = {}
        self._prices_due = 0.0
        # The controller and node watching go through the actor's own queue, so they never race a command.
        me = ray.get_runtime_context().current_actor
        threading.Thread(target=_poll_forever, args=(me, controller.tick_seconds), daemon=True, name="controller").start()

    def ping(self) -> str:
        return "ok"

    def tick(self) -> list[dict[str, Any]]:
        out = self.sync_nodes() + self.sync_capacity()
        if self.controller.live_prices_seconds and time.time() >= self._prices_due:
            self._prices_due = time.time() + self.controller.live_prices_seconds
            try:
                from elasticml.scheduler.aws_prices import LiveSpotPrices

                self.refresh_live_prices(LiveSpotPrices(endpoint_url=os.environ.get("ELASTICML_EC2_ENDPOINT")))
            except Exception as exc:  # EC2 unreachable or throttling: keep the last prices, say so
                self.explanations.setdefault("_events", []).append(
                    {"at": self.clock(), "event": "live prices failed", "why": str(exc)[:300]})
        return out + self.controller_tick()

    def sync_capacity(self) -> list[dict[str, Any]]:
        """Pools the autoscaler cannot fill: launches that keep failing (a cloud's capacity errors)."""
        from ray.autoscaler.v2.sdk import get_cluster_status

        try:
            status = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=5)
        except Exception:  # the autoscaler's state is unavailable for a moment: judge at the next tick
            return []
        now = time.time()
        fresh = {}
        for launch in status.failed_launches:
            at = float(launch.failed_ts_s or launch.request_ts_s or 0)
            if now - at <= LAUNCH_FAILURE_FRESH_S:
                fresh[launch.ray_node_type_name] = max(fresh.get(launch.ray_node_type_name, 0.0), at)
        for node_type in list(self._failing_since):
            if node_type not in fresh:
                del self._failing_since[node_type]
        for node_type, at in fresh.items():
            self._failing_since.setdefault(node_type, at)
        return self.set_unfillable({t: now - since for t, since in self._failing_since.items()})

    def sync_nodes(self) -> list[dict[str, Any]]:
        """Treat a spot node that died other than idle as an interruption of its pool."""
        out: list[dict[str, Any]] = []
        spot_pools = {p.node_type for p in self.pools if p.market == "spot"}
        for node in ray.nodes():
            node_id = node["NodeID"]
            if node.get("Alive") or node_id in self._seen_dead:
                continue
            self._seen_dead.add(node_id)
            node_type = node.get("Labels", {}).get(L.NODE_TYPE)
            reason = LOST_REASONS.get(int(node.get("DeathReason", 0) or 0))
            if node_type in spot_pools and reason:
                decisions = SchedulerState.interrupt(self, node_type)["decisions"]
                for d in decisions:
                    d["reason"] = f"spot node {node_id[-8:]} of {node_type} was lost ({reason}); " + d["reason"]
                out += decisions
                self.explanations.setdefault("_events", []).append(
                    {"at": time.time(), "event": "spot node lost", "node_id": node_id, "node_type": node_type, "why": reason}
                )
        return out

    def interrupt(self, node_type: str) -> dict[str, Any]:
        """Re-place the pool's work, then tell Ray: drain its nodes as preempted.

        Ray's drain (reason PREEMPTION, with the notice's deadline) stops new work
        landing there and makes `ray.train.get_preemption_info()` non-None on the
        Ray Train workers of those nodes, which checkpoint at once.
        """
        result = super().interrupt(node_type)
        result["drained_nodes"] = drain_nodes_of_type(node_type, NOTICE_SECONDS)
        return result


def _poll_forever(handle: Any, period_s: float) -> None:
    while True:
        time.sleep(period_s)
        try:
            ray.get(handle.tick.remote())
        except Exception:  # the actor is restarting or gone: its next incarnation polls again
            return


def serve_attachment(workload: str) -> str:
    """What a scheduler-placed Serve app attaches as: its pinned deployments are named `<workload>-pool-<type>`."""
    return f"serve:{workload}"


def ray_observer(attach: str) -> dict[str, tuple[int, int]]:
    """{node type: (workers, distinct nodes)} of what runs a workload, from the GCS: a Ray job's live
    Ray Train workers (attach = the job's hex id), or a Serve app's live pinned replicas (`serve:NAME`)."""
    import re

    from ray._private import state

    alive_nodes = {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes() if n.get("Alive")}
    seen: dict[str, tuple[int, set[str]]] = {}
    if attach.startswith("serve:"):
        wanted = re.compile(rf"ServeReplica:[^:]+:{re.escape(attach.removeprefix('serve:'))}-pool-[A-Za-z0-9_-]+")
        actors = state.actors(actor_state_name="ALIVE").values()
    else:
        wanted = re.compile(r".*RayTrainWorker.*")
        actors = state.actors(job_id=ray.JobID.from_hex(attach), actor_state_name="ALIVE").values()
    for actor in actors:
        if not wanted.fullmatch(str(actor.get("ActorClassName", ""))):
            continue
        node_id = actor.get("Address", {}).get("NodeID")
        node_type = alive_nodes.get(node_id, {}).get(L.NODE_TYPE)
        if node_type is None:
            continue
        workers, nodes = seen.get(node_type, (0, set()))
        seen[node_type] = (workers + 1, nodes | {node_id})
    return {t: (w, len(n)) for t, (w, n) in seen.items()}


def drain_nodes_of_type(node_type: str, notice_seconds: int) -> list[str]:
    """Ask the GCS to drain every alive node of a node type as preempted; returns the accepted node ids."""
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    deadline_ms = time.time_ns() // 1_000_000 + notice_seconds * 1000
    drained = []
    for node in ray.nodes():
        if node.get("Alive") and node.get("Labels", {}).get(L.NODE_TYPE) == node_type:
            accepted, _ = gcs.drain_node(
                node["NodeID"], autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                f"spot interruption notice for {node_type}", deadline_ms,
            )
            if accepted:
                drained.append(node["NodeID"])
    return drained
