"""The controller: how the scheduler keeps steering running work, and what it steers by.

Who owns what: the store owns the records, `Scheduler` (core.py) the commands; the
controller is handed the scheduler (its store and clock) and an observer of Ray, and owns
only a cache of each deadline job's `JobStepper` (rebuilt from the job's record whenever the
store was read again). Every `ControllerConfig.tick_seconds` `tick` looks at every running
workload, in one store command: it reconciles the ledger with what Ray runs (`observer`),
runs each deadline job's `JobStepper` (the object `simulate` runs, fed the same inputs:
availability now and before, progress, time left, prices) at its policy's tick, and moves
other checkpointable work to capacity at least 10% cheaper, at most `max_moves_per_hour`
voluntary moves an hour. A move is carried out by the work itself: it follows its
`Placement` (whose `epoch` grows with every move). On a replayed spot market the clock,
the pace, spot prices, the pool's history and the policy's tick come from the market, and
its clock is held while a steered job's move is carried out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from elasticml.cluster.config import ClusterSpec

from elasticml.dataconf import check_number
from elasticml.scheduler.capacity import Pool
from elasticml.scheduler.core import Scheduler, check_workload_name
from elasticml.scheduler.deadline import NONE, OD, SPOT, Instance, JobParams, JobStepper
from elasticml.scheduler.policies import POLICIES
from elasticml.scheduler.policy import Decision, place_on
from elasticml.scheduler.settings import ControllerConfig
from elasticml.scheduler.spec import WorkloadSpec
from elasticml.scheduler.store import Store, Workload

MAX_POOL_HISTORY = 20_000
"""Availability bits kept per spot pool (the policies' model of the pool)."""
MAX_CATCH_UP_TICKS = 64
"""Policy ticks one controller pass may run for a job that fell behind."""
SERVE_GONE_S = 20.0
"""A scheduler-placed Serve app whose replicas have been gone this long (clock seconds) was deleted."""
SERVE_NEVER_S = 900.0
"""... or whose replicas never came up in this long."""

Observer = Callable[[str], Mapping[str, tuple[int, int]]]
"""attach -> {node type: (workers, nodes)} of what runs a workload, as Ray sees it (`ray_view.ray_observer`)."""


def _instance(market: str | None) -> Instance:
    return NONE if market is None else SPOT if market == "spot" else OD


class Controller:
    def __init__(self, scheduler: Scheduler, *, observer: Observer | None = None) -> None:
        self.s = scheduler
        self.store = scheduler.store
        self.observer = observer
        self._steppers: dict[str, tuple[int, JobStepper]] = {}
        scheduler.steer = self

    # -- the door's call ------------------------------------------------------------------------
    def run_started(self, name: str, epoch: int) -> float:
        """The workload's run for placement `epoch` is up (its checkpoint restored).

        On a replayed market this ends the move: the held clock runs again, and the
        answer is how long to wait before training (the job's restart hours, in
        wall seconds) so that the restart costs what the simulator charges. 0 otherwise.
        """
        check_workload_name(name)
        check_number(epoch, field="epoch", lo=0, hi=2**31, integer=True)
        w = self.store.workloads.get(name)
        market = self.s.market
        if market is None or w is None or w.epoch != epoch or name not in market.holders:
            return 0.0
        market.done(name)
        return w.spec.restart_overhead_hours * self.s.seconds_per_hour

    # -- the tick -------------------------------------------------------------------------------
    def tick(self) -> list[dict[str, Any]]:
        """Look at every running workload once: reconcile the ledger with Ray, steer deadline jobs, rebalance."""
        with self.s.command():
            now = self.s.clock()
            out: list[dict[str, Any]] = []
            for node_type, p in sorted(self.store.pools.items()):
                if p.interrupted and p.retry_at is not None and now >= p.retry_at:
                    self.s.note_event(
                        {"at": now, "event": "spot pool tried again", "node_type": node_type,
                         "why": "no notice came after its lost node: spot may be back (failed launches would say not)"})
                    out += self.s.clear_interruption(node_type)
            self._record_pool_availability()
            out += self._reconcile()
            out += self._hold_to_budgets(now)
            for name in sorted(self.store.workloads):
                if self.store.workloads[name].stepper is not None:
                    out += self._steer(name, now)
            out += self.s.rebalance()
            return out

    def _hold_to_budgets(self, now: float) -> list[dict[str, Any]]:
        """A tenant whose spend has reached its budget has its running work paused: a placement is
        checked against what it is expected to cost, and an expectation can be too low."""
        spend = self.store.ledger.spend_by_tenant(now=now)
        over = {t for t, p in self.store.tenants.items() if p.budget is not None and spend.get(t, 0.0) >= p.budget}
        if not over:
            return []
        decisions = [Decision(workload=n, action="pause",
                              reason=f"over budget: tenant {w.spec.tenant} has spent ${spend[w.spec.tenant]:.2f} of "
                                     f"${self.store.tenants[w.spec.tenant].budget:.2f}; paused until an admin raises it")
                     for n, w in sorted(self.store.workloads.items()) if w.spec.tenant in over and w.allocations]
        return self.s.apply(decisions)

    def steered(self, spec: WorkloadSpec) -> bool:
        return spec.kind != "serving" and spec.deadline_hours is not None and spec.checkpoint_interval_hours is not None \
            and spec.priority != "critical"

    def admit(self, spec: WorkloadSpec) -> list[Decision]:
        """A deadline job's first tick, under a new stepper (its record is saved with it)."""
        spot = self._spot_pool(spec)
        od = self._od_price(spec)
        ratio = min(1000.0, max(1.0, od / spot.hourly_price)) if spot is not None and od else 1.0
        params = JobParams(job_hours=spec.expected_hours, deadline_hours=spec.deadline_hours,  # type: ignore[arg-type]  # steered(): only a spec with a deadline is admitted
                           restart_hours=spec.restart_overhead_hours, price_ratio=ratio)
        now = self.s.clock()
        market = self.s.market
        if market is not None:
            # The trace's own tick, as `simulate` runs it; ticks fall a quarter into each trace tick,
            # so that the market's notice for that tick has reached the scheduler.
            gap = market.market.gap_hours
            hour = market.hour(now)
            history = market.market.history(hour)
            first_at = now + ((market.market.tick(hour) + 1.25) * gap - hour) * self.s.seconds_per_hour
        else:
            gap = max(self.s.config.tick_seconds / self.s.seconds_per_hour,
                      params.deadline_hours / self.s.config.max_policy_ticks)
            history = [c == "1" for c in self.store.pool(spot.node_type).history] if spot is not None else []
            first_at = now + gap * self.s.seconds_per_hour
        job = JobStepper(POLICIES[spec.spot_policy](), params, gap, history=history)
        self._save(spec.name, job, next_tick=first_at)
        return self._steer_decisions(spec, job, first=True)

    def _steer(self, name: str, now: float) -> list[dict[str, Any]]:
        """Every policy tick that is due. A controller that was held up catches up rather than let the
        policy's clock fall behind the job's (it would think it had more time than it has)."""
        out: list[dict[str, Any]] = []
        for _ in range(MAX_CATCH_UP_TICKS):
            w = self.store.workloads.get(name)
            if w is None or w.stepper is None:
                break
            job = self.stepper(w)
            if job.done or now + 1e-6 < (w.next_tick or 0.0):
                break
            live = _instance(w.allocations[0].market if w.allocations else None)
            job.observe(job.progress if w.progress is None else w.progress * w.spec.expected_hours, instance=live)
            out += self.s.apply(self._steer_decisions(w.spec, job, first=False))
        return out

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
            if choice == SPOT and not first and not self.s.may_move(self.store.workloads[name]):
                job.instance = before  # over the hour's move budget: stay
                why += f"; stays: {self.s.config.max_moves_per_hour:g} moves per hour used"
            elif choice == NONE:
                decisions.append(Decision(workload=name, action="pause", reason=f"{why}: waiting for spot is cheaper"))
            else:
                markets = ("spot",) if choice == SPOT else ("reserved", "on-demand")
                d = place_on(self.s.snapshot(), spec, self.s.running_specs() | {name: spec}, self.s.tenants, markets, why,
                             voluntary=choice == SPOT)
                if d.action == "move" and (first or before == NONE):  # a start, not a move of running work
                    d = Decision(workload=name, action="place", allocations=d.allocations,
                                 reason=d.reason.replace(": moved to ", ": placed on "))
                if d.action == "queue":
                    job.instance = before if not first else NONE
                decisions.append(d)
        job.run_for(job.gap_hours)
        job.end_tick(avail)
        w = self.store.workloads[name]
        self._save(name, job, next_tick=None if first else (w.next_tick or 0.0) + job.gap_hours * self.s.seconds_per_hour)
        return decisions

    def _spot_pool(self, spec: WorkloadSpec) -> Pool | None:
        pools = [p for p in self.s.pools if p.market == "spot" and (not spec.regions or p.region in spec.regions)
                 and p.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker) > 0]
        return min(pools, key=lambda p: p.hourly_price, default=None)

    def _od_price(self, spec: WorkloadSpec) -> float:
        prices = [p.hourly_price for p in self.s.pools if p.market == "on-demand" and (not spec.regions or p.region in spec.regions)]
        return min(prices, default=0.0)

    def _spot_available(self, spec: WorkloadSpec) -> bool:
        """A spot pool it may use is not interrupted and has room for its minimum."""
        snap = self.s.snapshot().without(spec.name)
        unavailable = self.s.unavailable()
        for p in self.s.pools:
            if p.market != "spot" or p.node_type in unavailable or (spec.regions and p.region not in spec.regions):
                continue
            per_node = p.workers_per_node(spec.cpus_per_worker, spec.gpus_per_worker, spec.memory_gb_per_worker)
            if per_node and snap.free_nodes(p.node_type) * per_node >= spec.min_workers:
                return True
        return False

    def _record_pool_availability(self) -> None:
        """The spot pools' availability, tick by tick: the history a deadline job's policy starts from.
        On a replayed market that history is the trace's, so nothing is kept (or written) here."""
        if self.s.market is not None:
            return
        unavailable = self.s.unavailable()
        for p in self.s.pools:
            if p.market == "spot":
                rec = self.store.pool(p.node_type)
                bit = "0" if p.node_type in unavailable else "1"
                self.store.put_pool(replace(rec, history=(rec.history + bit)[-MAX_POOL_HISTORY:]))

    # -- attached work ------------------------------------------------------------------------------
    def _reconcile(self) -> list[dict[str, Any]]:
        """For attached work (a Ray job's training workers, a Serve app's replicas): charge the node types
        Ray says they are on; placed work Ray shows nowhere is charged its allocation (what it holds);
        a Serve app whose replicas are gone (deleted) is finished."""
        if self.observer is None:
            return []
        out = []
        now = self.s.clock()
        gone: list[tuple[str, str]] = []
        pools = {p.node_type: p for p in self.s.pools}
        for name, w in sorted(self.store.workloads.items()):
            if not w.attach:
                continue
            seen = {t: wn for t, wn in self.observer(w.attach).items() if t in pools}
            if w.attach.startswith("serve:"):
                why = self._serve_presence(w, bool(seen), now)
                if why:
                    gone.append((name, why))
                    continue
            if not seen and w.allocations:  # nothing observed: charged what the scheduler gave it
                seen = {a.node_type: (a.workers, a.nodes) for a in w.allocations}
            open_now = {r["node_type"]: (r["workers"], r["nodes"]) for r in self.store.ledger.open_intervals(name)}
            if seen == open_now:
                continue
            self.store.ledger.close(name, at=now)
            for node_type, (workers, nodes) in sorted(seen.items()):
                pool = pools[node_type]
                self.s.open_interval(name, w.spec.tenant, pool, workers=workers, nodes=nodes,
                                     hourly_cost=nodes * pool.hourly_price, at=now)
            where = ", ".join(f"{n}x {t}" for t, (n, _) in sorted(seen.items())) or "nowhere"
            out.append(self.s.record(name, {"action": "charge", "reason": f"Ray runs its workers on {where}",
                                            "observed": {t: n for t, (n, _) in seen.items()}}))
        for name, why in gone:
            out.append(self.s.record(name, {"action": "finish", "reason": why}))
            self.s.finish(name)
        return out

    def _serve_presence(self, w: Workload, present: bool, now: float) -> str | None:
        """Why a Serve app's workload is over (its replicas gone for SERVE_GONE_S, or never up), or None."""
        if present:
            if not w.seen or w.absent_since is not None:
                self.store.put_workload(replace(w, seen=True, absent_since=None))
            return None
        if w.absent_since is None:
            self.store.put_workload(replace(w, absent_since=now))
            return None
        if w.seen and now - w.absent_since >= SERVE_GONE_S:
            return f"its Serve replicas have been gone for {now - w.absent_since:.0f}s: the app was deleted"
        if not w.seen and now - w.absent_since >= SERVE_NEVER_S:
            return f"no Serve replica came up in {now - w.absent_since:.0f}s"
        return None

    # -- steppers ----------------------------------------------------------------------------------------
    def stepper(self, w: Workload) -> JobStepper:
        """The job's stepper: cached while the store holds what it was built from."""
        cached = self._steppers.get(w.spec.name)
        if cached is not None and cached[0] == self.store.generation:
            return cached[1]
        state = w.stepper
        assert state is not None
        job = JobStepper(POLICIES[state["policy"]](), JobParams(**state["params"]), state["gap_hours"],
                         history=state["past"])
        for key in ("tick", "progress", "instance", "overhead_left", "restarts", "preemptions", "launched"):
            setattr(job, key, state[key])
        self._steppers[w.spec.name] = (self.store.generation, job)
        return job

    def _save(self, name: str, job: JobStepper, *, next_tick: float | None) -> None:
        w = self.store.workloads[name]
        state = {"params": asdict(job.params), "gap_hours": job.gap_hours, "policy": w.spec.spot_policy,
                 "past": job.past[-MAX_POOL_HISTORY:], "tick": job.tick, "progress": job.progress,
                 "instance": job.instance, "overhead_left": job.overhead_left, "restarts": job.restarts,
                 "preemptions": job.preemptions, "launched": job.launched}
        self.store.put_workload(replace(w, stepper=state, next_tick=w.next_tick if next_tick is None else next_tick))
        self._steppers[name] = (self.store.generation, job)


def open_scheduler(cluster: ClusterSpec, ledger_path: str | Path, *, config: ControllerConfig | None = None,
                   clock: Callable[[], float] | None = None, observer: Observer | None = None,
                   incarnation: str | None = None, on_write: Callable[[str], None] | None = None,
                   ) -> tuple[Scheduler, Controller]:
    """The store at `ledger_path`, the scheduler's commands over it and its controller, put together
    (the actor does this on the head; tests and the simulator without Ray)."""
    store = Store(ledger_path, on_write=on_write)
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    scheduler = Scheduler(cluster, store, config=config, incarnation=incarnation, **kwargs)
    return scheduler, Controller(scheduler, observer=observer)
