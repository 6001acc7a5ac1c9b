"""The controller: how the scheduler keeps steering running work, and what it steers by.

Who owns what: `SchedulerState` (state.py) owns the workloads, allocations and
ledger; this mixin is its steering half. Every `ControllerConfig.tick_seconds`
`controller_tick` looks at every running workload: it reconciles the ledger
with what Ray runs (`ray_view`), runs each deadline job's `JobStepper` (the
object `simulate` runs, fed the same inputs: availability now and before,
progress, time left, prices) at its policy's tick, and moves other
checkpointable work to capacity at least 10% cheaper, at most
`max_moves_per_hour` voluntary moves an hour. A move is carried out by the
work itself: it follows its `Placement` (whose `epoch` grows with every move).
On a replayed spot market (`cluster.spot_market`) the clock, the pace, spot
prices, the pool's history and the policy's tick come from the market, and its
clock is held while a steered job's move is carried out.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from elasticml.dataconf import check_number
from elasticml.errors import ConfigError
from elasticml.scheduler.capacity import Pool
from elasticml.scheduler.deadline import NONE, OD, SPOT, Instance, JobParams, JobStepper
from elasticml.scheduler.policies import POLICIES
from elasticml.scheduler.policy import Decision, place_on, rebalance
from elasticml.scheduler.spec import WorkloadSpec

if TYPE_CHECKING:
    from elasticml.scheduler.state import SchedulerState

MAX_POOL_HISTORY = 20_000
"""Availability bits kept per spot pool (the policies' model of the pool)."""
MAX_CATCH_UP_TICKS = 64
"""Policy ticks one controller pass may run for a job that fell behind."""
SERVE_GONE_S = 20.0
"""A scheduler-placed Serve app whose replicas have been gone this long (clock seconds) was deleted."""
SERVE_NEVER_S = 900.0
"""... or whose replicas never came up in this long."""


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
    unfillable_seconds: float | None = 15.0
    """A pool whose launches have failed this long is treated as unavailable; None = never. A replayed
    market with notices turns it off: its notices say when spot goes and comes back, and failed launches
    would only echo them, late by the seconds this takes (hours of compressed time)."""
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
        if self.unfillable_seconds is not None:
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


def priced_by_market(pools: tuple[Pool, ...], price_ratio: float) -> tuple[Pool, ...]:
    """Spot pools priced at the replayed market's ratio to on-demand for the same instance."""
    od = {(p.instance_type, p.region): p.hourly_price for p in pools if p.market == "on-demand"}
    return tuple(replace(p, hourly_price=od.get((p.instance_type, p.region), p.hourly_price * price_ratio) / price_ratio)
                 if p.market == "spot" else p for p in pools)


def _instance(market: str | None) -> Instance:
    return NONE if market is None else SPOT if market == "spot" else OD


class Controller:
    """The steering half of `SchedulerState` (a mixin: it reads and writes that class's state)."""

    def controller_tick(self: SchedulerState) -> list[dict[str, Any]]:
        """Look at every running workload once: reconcile the ledger with Ray, steer deadline jobs, rebalance."""
        now = self.clock()
        out: list[dict[str, Any]] = []
        for node_type, at in sorted(self.interrupt_expiry.items()):
            if now >= at and node_type in self.interrupted:
                self.note_event(
                    {"at": now, "event": "spot pool tried again", "node_type": node_type,
                     "why": "no notice came after its lost node: spot may be back (failed launches would say not)"})
                out += self.clear_interruption(node_type)
        self._record_pool_availability()
        out += self._reconcile()
        for name in sorted(self.steppers):
            if name in self.specs:
                out += self._steer(name, now)
        out += self._rebalance()
        return out

    def run_started(self: SchedulerState, name: str, epoch: int) -> float:
        """The workload's run for placement `epoch` is up (its checkpoint restored).

        On a replayed market this ends the move: the held clock runs again, and the
        answer is how long to wait before training (the job's restart hours, in
        wall seconds) so that the restart costs what the simulator charges. 0 otherwise.
        """
        self._check_name(name)
        check_number(epoch, field="epoch", lo=0, hi=2**31, integer=True)
        meta = self.meta.get(name)
        if self.market is None or meta is None or meta.get("epoch") != epoch or name not in self._holders:
            return 0.0
        self._release_clock(name)
        return self.specs[name].restart_overhead_hours * self.seconds_per_hour

    def _steered(self: SchedulerState, spec: WorkloadSpec) -> bool:
        return spec.kind != "serving" and spec.deadline_hours is not None and spec.checkpoint_interval_hours is not None \
            and spec.priority != "critical"

    def _admit_steered(self: SchedulerState, spec: WorkloadSpec) -> list[Decision]:
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

    def _steer(self: SchedulerState, name: str, now: float) -> list[dict[str, Any]]:
        """Every policy tick that is due. A controller that was held up catches up rather than let the
        policy's clock fall behind the job's (it would think it had more time than it has)."""
        out: list[dict[str, Any]] = []
        for _ in range(MAX_CATCH_UP_TICKS):
            job = self.steppers.get(name)
            if job is None or job.done or now + 1e-6 < self.meta.get(name, {}).get("next_tick", 0.0):
                break
            spec = self.specs[name]
            live = _instance(self.allocations[name][0].market if name in self.allocations else None)
            progress = self.meta[name].get("progress")
            job.observe(job.progress if progress is None else progress * spec.expected_hours, instance=live)
            out += self._apply(self._steer_decisions(spec, job, first=False))
        return out

    def _steer_decisions(self: SchedulerState, spec: WorkloadSpec, job: JobStepper, *, first: bool) -> list[Decision]:
        """One tick of the job's policy, and the decision that carries out its choice."""
        name = spec.name
        avail = self._spot_available(spec)
        before = job.instance
        choice = job.decide(avail)
        why = (f"{spec.spot_policy} at {job.hour:.3g}h of {job.params.deadline_hours:g}h, "
               f"{job.progress:.3g}h of {job.params.job_hours:g}h done, spot {'up' if avail else 'down'}")
        decisions: list[Decision] = []
        if choice != before or first:
            if choice == SPOT and not first and not self._may_move(name):
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

    def _spot_pool(self: SchedulerState, spec: WorkloadSpec):  # type: ignore[no-untyped-def]
        pools = [p for p in self.pools if p.market == "spot" and (not spec.regions or p.region in spec.regions)
                 and p.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker) > 0]
        return min(pools, key=lambda p: p.hourly_price, default=None)

    def _od_price(self: SchedulerState, spec: WorkloadSpec) -> float:
        prices = [p.hourly_price for p in self.pools if p.market == "on-demand" and (not spec.regions or p.region in spec.regions)]
        return min(prices, default=0.0)

    def _spot_available(self: SchedulerState, spec: WorkloadSpec) -> bool:
        """A spot pool it may use is not interrupted and has room for its minimum."""
        snap = self.snapshot().without(spec.name)
        for p in self.pools:
            if p.market != "spot" or p.node_type in self._unavailable() or (spec.regions and p.region not in spec.regions):
                continue
            per_node = p.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker)
            if per_node and snap.free_nodes(p.node_type) * per_node >= spec.min_workers:
                return True
        return False

    def _record_pool_availability(self: SchedulerState) -> None:
        """The spot pools' availability, tick by tick: the history a deadline job's policy starts from.
        On a replayed market that history is the trace's, so nothing is kept (or written) here."""
        if self.market is not None:
            return
        for p in self.pools:
            if p.market == "spot":
                h = self.pool_history.setdefault(p.node_type, [])
                h.append(p.node_type not in self._unavailable())
                del h[:-MAX_POOL_HISTORY]
                self.ledger.put_state(f"history:{p.node_type}", json.dumps(h))

    def _may_move(self: SchedulerState, name: str) -> bool:
        hour_s = self.seconds_per_hour
        recent = [t for t in self.meta.get(name, {}).get("moves", []) if t > self.clock() - hour_s]
        return len(recent) < self.controller.max_moves_per_hour

    def _rebalance(self: SchedulerState) -> list[dict[str, Any]]:
        free = {n: s for n, s in self._running_specs().items() if n not in self.steppers and self._may_move(n)}
        return self._apply(rebalance(self.snapshot(), free, self.tenants))

    def _reconcile(self: SchedulerState) -> list[dict[str, Any]]:
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

    def _serve_presence(self: SchedulerState, name: str, meta: dict[str, Any], present: bool, now: float) -> str | None:
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

    def _hold_for_move(self: SchedulerState, d: Decision) -> None:
        """A replayed market's clock stops while a steered job's move is carried out (until `run_started`)."""
        assert self.market is not None
        if d.action in ("place", "move"):
            self._holders.add(d.workload)
            self.market.reload_clock()
            self.market.hold()
        else:
            # Not placed (waiting for spot, queued): nothing to carry out for it. With no other move under
            # way time runs on; this also ends the hold a replay starts with when its job's first answer is to wait.
            self._release_clock(d.workload)

    def _release_clock(self: SchedulerState, name: str) -> None:
        """`name`'s move is carried out; the clock runs again once no move is under way."""
        self._holders.discard(name)
        if self.market is not None and not self._holders:
            self.market.reload_clock()
            self.market.release()

    def _market_now(self: SchedulerState) -> float:
        assert self.market is not None
        self.market.reload_clock()
        return self.market.now()

    def _save_stepper(self: SchedulerState, name: str, job: JobStepper) -> None:
        state = {"params": asdict(job.params), "gap_hours": job.gap_hours, "policy": self.specs[name].spot_policy,
                 "past": job.past[-MAX_POOL_HISTORY:], "tick": job.tick, "progress": job.progress,
                 "instance": job.instance, "overhead_left": job.overhead_left, "restarts": job.restarts,
                 "preemptions": job.preemptions, "launched": job.launched}
        self.ledger.put_state(f"steer:{name}", json.dumps(state))

    def _stepper_from(self: SchedulerState, state: dict[str, Any]) -> JobStepper:
        """A stepper as saved; its policy re-plans from the saved history (its tables are not saved)."""
        job = JobStepper(POLICIES[state["policy"]](), JobParams(**state["params"]), state["gap_hours"],
                         history=state["past"])
        for key in ("tick", "progress", "instance", "overhead_left", "restarts", "preemptions", "launched"):
            setattr(job, key, state[key])
        return job
