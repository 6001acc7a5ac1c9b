"""The scheduler's commands over its store: what `place`, `finish`, `interrupt` and the rest do.

Who owns what: the store (store.py) owns every record; the policies (`policy.py` for
placement, `deadline.py`/`planner.py` for spot vs on-demand under a deadline) own every
decision and are pure. `Scheduler` takes a snapshot, asks them, and applies what they say
to the store, one command a transaction (each public method is one, or joins the one its
caller opened). The controller (controller.py) is a separate object that steers running
work through the same methods; the door (door.py) decides who may call which; the actor
(actor.py) is the shell that runs them on Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

from elasticml.cluster.config import ClusterSpec
from elasticml.dataconf import check_number, check_text
from elasticml.errors import ConfigError, PlacementRefused
from elasticml.scheduler.audit import AuditLog
from elasticml.scheduler.capacity import Allocation, Pool, Snapshot, pools_from_cluster
from elasticml.scheduler.catalog import PriceCatalog
from elasticml.scheduler.replay_clock import ReplayClock, priced_by_market
from elasticml.scheduler.policy import Decision, place, rebalance, replace_interrupted
from elasticml.scheduler.settings import ControllerConfig
from elasticml.scheduler.spec import (
    ATTACH_MAX,
    ATTACH_PATTERN,
    MAX_NAME,
    MAX_WORKLOAD,
    NAME_PATTERN,
    WORKLOAD_PATTERN,
    Placement,
    TenantPolicy,
    Tenants,
    WorkloadSpec,
)
from elasticml.scheduler.store import EVENTS, Store, Workload
from elasticml.scheduler.tenant_storage import CredentialVendor

MAX_MOVES_KEPT = 32


class Scheduler:
    """The scheduler's logic without Ray: commands over a store, with a clock."""

    def __init__(self, cluster: ClusterSpec, store: Store, *, config: ControllerConfig | None = None,
                 clock: Callable[[], float] = time.time, incarnation: str | None = None) -> None:
        """`incarnation` names the running Ray cluster (its session): a store last written by another
        one (the cluster was taken down and started again under the same name) keeps its costs, but
        what it says runs is of a cluster that is gone, and is closed and forgotten."""
        self.cluster = cluster
        self.store = store
        self.config = config or ControllerConfig()
        self.catalog = PriceCatalog.load()
        self._base_pools = pools_from_cluster(cluster, self.catalog)
        self.clock = clock
        self.seconds_per_hour = self.config.seconds_per_hour
        self.market: ReplayClock | None = None
        if self.config.market is not None:
            self.market = ReplayClock(self.config.market)
            self.clock = self.market.now
            self.seconds_per_hour = self.market.seconds_per_hour
            self._base_pools = priced_by_market(self._base_pools, self.market.price_ratio)
        self.caller = "scheduler"
        """Who the change being made is for (the door sets it per call): what the audit trail records."""
        self.audit: AuditLog | None = None
        self.vendor: CredentialVendor | None = None
        """Where tenants' storage credentials come from (tenant_storage.py); None = no tenant prefixes."""
        self.steer: Any = None
        """The controller, which admits deadline jobs under their spot policy (it registers itself)."""
        self.on_record: Callable[[dict[str, Any]], None] | None = None
        """Told of every decision recorded (the actor's metrics)."""
        store.flush_outbox = self._flush_audit
        store.batch_undone = self._note_undone
        self._flushed: tuple[int, int] = (0, 0)
        if incarnation is not None and store.meta("incarnation") not in (None, incarnation):
            self._forget_previous_cluster()
        if incarnation is not None and store.meta("incarnation") != incarnation:
            with store.command():
                store.set_meta("incarnation", incarnation)
        for why in store.quarantined:
            self.note_event({"at": self.clock(), "event": "record set aside", "why": f"unreadable on load: {why}"})

    # -- views of the store -------------------------------------------------------------
    @property
    def pools(self) -> tuple[Pool, ...]:
        """The cluster's pools at their live spot prices and scores, where a feed gave them."""
        out = []
        for p in self._base_pools:
            s = self.store.pools.get(p.node_type)
            if s is not None and s.price is not None:
                p = replace(p, hourly_price=s.price, placement_score=s.score)
            out.append(p)
        return tuple(out)

    @property
    def tenants(self) -> Tenants:
        return Tenants(policies=dict(self.store.tenants))

    @property
    def specs(self) -> dict[str, WorkloadSpec]:
        return {n: w.spec for n, w in self.store.workloads.items()}

    @property
    def allocations(self) -> dict[str, list[Allocation]]:
        return {n: w.allocations for n, w in self.store.workloads.items() if w.allocations}

    @property
    def queue(self) -> list[str]:
        return self.store.queue

    @property
    def interrupted(self) -> set[str]:
        return {n for n, p in self.store.pools.items() if p.interrupted}

    @property
    def unfillable(self) -> set[str]:
        return {n for n, p in self.store.pools.items() if p.unfillable}

    @property
    def owners(self) -> dict[str, str]:
        return self.store.owners

    @property
    def principals(self) -> dict[str, tuple[str, str]]:
        return self.store.principals

    def unavailable(self) -> set[str]:
        return self.interrupted | self.unfillable

    @contextmanager
    def command(self) -> Iterator[None]:
        with self.store.command():
            yield

    def _forget_previous_cluster(self) -> None:
        with self.command():
            gone = sorted(self.store.workloads)
            for name in gone:
                # Charged until the last thing the scheduler heard of it, not until now.
                last = max((r.get("at", 0.0) for r in self.store.reasons(name)), default=None)
                self.store.ledger.close(name, at=self.clock() if last is None else last)
                self.forget(name)
            self.store.set_queue([])
            for p in list(self.store.pools.values()):
                self.store.put_pool(replace(p, interrupted=False, retry_at=None, unfillable=False))
            self.note_event({"at": self.clock(), "event": "new cluster", "why": "the cluster was started again: "
                             f"forgot {len(gone)} workload(s) of the previous one ({', '.join(gone)[:300]}), their "
                             "intervals closed"})

    def snapshot(self) -> Snapshot:
        now = self.clock()
        spend = self.store.ledger.spend_by_tenant(now=now)
        allocs = tuple(a for w in self.store.workloads.values() for a in w.allocations)
        return Snapshot(now=now / 3600, pools=self.pools, allocations=allocs,
                        interrupted_pools=frozenset(self.unavailable()), tenant_spend=spend)

    # -- commands ---------------------------------------------------------------------------
    def place(self, spec: WorkloadSpec, attach: str | None = None, *, steer: Any = None) -> Placement:
        """Place a workload; its own Placement, or PlacementRefused with the reason (nothing kept).

        `attach`: the Ray job (hex id) or Serve app (`serve:NAME`) whose workers run it; the
        ledger then charges where Ray says they run. `steer`: the controller, which admits
        deadline jobs under their spot policy (None: every workload is placed once, as is).
        """
        if type(spec) is not WorkloadSpec:
            raise ConfigError(f"expected a WorkloadSpec, got {type(spec).__name__}", field="spec")
        if attach is not None:
            check_text(attach, field="attach", max_len=ATTACH_MAX, pattern=ATTACH_PATTERN)
        if spec.tenant in self.store.quarantined_tenants:
            raise PlacementRefused(spec.name, f"tenant {spec.tenant}'s policy could not be read from the store: "
                                              "an admin sets it again before its work is placed")
        with self.command():
            spec = self._within_residency(spec)
            old = self.store.workloads.get(spec.name)
            if old is not None and old.allocations:
                self.release(old)
            self.store.set_owner(spec.name, spec.tenant)
            w = Workload(spec=spec, epoch=old.epoch if old else 0, attach=attach, submitted=self.clock())
            self.store.put_workload(w)
            if spec.name in self.store.queue:
                self.store.set_queue([n for n in self.store.queue if n != spec.name])
            steer = steer or self.steer
            if steer is not None and steer.steered(spec):
                try:
                    decisions = steer.admit(spec)
                except ConfigError as exc:
                    raise PlacementRefused(spec.name, str(exc)) from None
            else:
                decisions = place(self.snapshot(), [spec], self.running_specs(), self.tenants)
            own = next(d for d in decisions if d.workload == spec.name)
            if own.action == "refuse":
                raise PlacementRefused(spec.name, own.reason)
            self.apply(decisions)
            return self.placement(spec.name)  # type: ignore[return-value]  # apply() has just recorded it

    def _within_residency(self, spec: WorkloadSpec) -> WorkloadSpec:
        """The spec held to its tenant's regions: it may narrow them, never widen them."""
        allowed = self.tenants.of(spec.tenant).regions
        if not allowed:
            return spec
        outside = [r for r in spec.regions if r not in allowed]
        if outside:
            raise PlacementRefused(spec.name, f"data residency: tenant {spec.tenant} is kept to {list(allowed)}; "
                                              f"the spec asks for {outside}")
        return spec if spec.regions else replace(spec, regions=allowed)

    def placement(self, name: str) -> Placement | None:
        """The workload's placement now, or None if the scheduler does not know it."""
        w = self.store.workloads.get(name)
        if w is None:
            return None
        last = self.store.last_reason(name, ("place", "move", "queue", "pause"))
        reason = last["reason"] if last else ""
        if w.allocations:
            allocs = tuple(w.allocations)
            d = Decision(workload=name, action="place", reason=reason, allocations=allocs,
                         fallback_node_types=tuple(last.get("fallback_node_types", ())) if last else ())
            return Placement(workload=name, state="placed", reason=reason, allocations=allocs,
                             ray_options=d.ray_options(), scaling_config=d.scaling_config_kwargs(), epoch=w.epoch)
        return Placement(workload=name, state="paused" if w.state == "paused" else "queued", reason=reason,
                         epoch=w.epoch)

    def report_progress(self, name: str, fraction: float) -> None:
        """The workload's share of its work done (0..1), as it measures it (steps done / steps)."""
        check_number(fraction, field="fraction", lo=0, hi=1)
        with self.command():
            w = self.store.workloads.get(name)
            if w is None:
                return
            done_before = (w.progress or 0.0) >= 1.0
            self.store.put_workload(replace(w, progress=float(fraction)))
            if fraction >= 1.0 and not done_before:
                self.record(name, {"action": "done", "reason": "it reported all of its work done (its last "
                                   "checkpoint saved); what follows is shutting down"})

    def set_tenant(self, policy: TenantPolicy) -> None:
        if type(policy) is not TenantPolicy:
            raise ConfigError(f"expected a TenantPolicy, got {type(policy).__name__}", field="policy")
        with self.command():
            self.store.put_tenant(policy)
            # Work paused when the tenant's budget ran out is placed again under the new policy.
            paused = [w.spec for w in self.store.workloads.values()
                      if w.spec.tenant == policy.tenant and w.state == "paused" and w.stepper is None]
            if paused:
                self.apply(place(self.snapshot(), paused, self.running_specs(), self.tenants))

    def finish(self, name: str) -> None:
        """The workload is done: close its intervals, then give its room to the queue and to cheaper moves."""
        check_workload_name(name)
        with self.command():
            self.forget(name)
            self.retry_queue()
            self.rebalance()

    def interrupt(self, node_type: str, *, lasts_s: float | None = None, why: str | None = None) -> dict[str, Any]:
        """A spot pool got an interruption notice: its work is re-placed (deadline jobs wait for their policy).

        `lasts_s`: the pool is tried again after this long unless a notice says otherwise (a lost node
        is not a notice: nobody will say the pool is back). A notice (no `lasts_s`) lasts until cleared.
        `why`: what happened, in the decisions' reasons (a lost node's id and cause).
        {"decisions": what changed, "drained_nodes": Ray node ids drained as preempted}.
        """
        self.check_pool(node_type, spot=True)
        with self.command():
            p = self.store.pool(node_type)
            retry_at = p.retry_at
            if lasts_s is None:
                retry_at = None
            elif not p.interrupted or p.retry_at is not None:
                retry_at = self.clock() + lasts_s
            self.store.put_pool(replace(p, interrupted=True, retry_at=retry_at))
            return {"decisions": self.vacate(node_type, why or f"spot pool {node_type} got an interruption notice"),
                    "drained_nodes": []}

    def clear_interruption(self, node_type: str) -> list[dict[str, Any]]:
        self.check_pool(node_type, spot=True)
        with self.command():
            self.store.put_pool(replace(self.store.pool(node_type), interrupted=False, retry_at=None))
            return self.retry_queue() + self.rebalance()

    def set_unfillable(self, failing_s: Mapping[str, float]) -> list[dict[str, Any]]:
        """Pools whose launches have failed for `failing_s[node_type]` seconds, as the autoscaler reports.

        One failing for `ControllerConfig.unfillable_seconds` is treated as unavailable: nothing new
        goes there and its work is placed elsewhere (deadline jobs: their policy decides). When
        launches stop failing it is available again and the queue and cheaper moves are retried.
        """
        limit = self.config.unfillable_seconds
        bad = {t for t, secs in failing_s.items()
               if limit is not None and secs >= limit and any(p.node_type == t for p in self._base_pools)}
        was = self.unfillable
        added, cleared = sorted(bad - was), was - bad
        if bad == was:  # asked every tick: write only a change
            return []
        with self.command():
            for node_type in added + sorted(cleared):
                self.store.put_pool(replace(self.store.pool(node_type), unfillable=node_type in bad))
            out: list[dict[str, Any]] = []
            for node_type in added:
                why = f"pool {node_type} could not be launched for {failing_s[node_type]:.0f}s (the autoscaler's launches fail)"
                self.note_event({"at": self.clock(), "event": "pool unfillable", "node_type": node_type, "why": why})
                out += self.vacate(node_type, why)
            if cleared:
                out += self.retry_queue() + self.rebalance()
            return out

    def vacate(self, node_type: str, why: str) -> list[dict[str, Any]]:
        """The pool is unavailable: its deadline jobs pause (their policy picks), the rest is re-placed."""
        steered_here = [n for n, w in sorted(self.store.workloads.items())
                        if w.stepper is not None and any(a.node_type == node_type for a in w.allocations)]
        decisions = [Decision(workload=n, action="pause",
                              reason=f"{why}: checkpoint now; its deadline policy picks on-demand or waiting at its next tick")
                     for n in steered_here]
        for n in steered_here:
            self.release(self.store.workloads[n])
        for d in replace_interrupted(self.snapshot(), node_type, self.running_specs(), self.tenants):
            decisions.append(replace(d, reason=d.reason.replace(f"spot pool {node_type} got an interruption notice", why)
                                     .replace(f"spot pool {node_type} interrupted", why)))
        return self.apply(decisions)

    # -- reads ------------------------------------------------------------------------------------
    def explain(self, name: str) -> list[dict[str, Any]]:
        if name != EVENTS:
            check_workload_name(name)
        return self.store.reasons(name)

    def intervals(self, name: str) -> list[dict[str, Any]]:
        check_workload_name(name)
        return self.store.ledger.intervals(name)

    def status(self) -> dict[str, Any]:
        snap = self.snapshot()
        steered = {}
        for n, w in sorted(self.store.workloads.items()):
            if w.stepper is not None:
                j = w.stepper
                steered[n] = {"policy": w.spec.spot_policy, "tick": j["tick"], "hour": round(j["tick"] * j["gap_hours"], 6),
                              "progress_hours": round(j["progress"], 6), "instance": j["instance"],
                              "restarts": j["restarts"]}
        return {
            "cluster": self.cluster.name,
            "config": self.cluster.source,
            "pools": [{**asdict(p), "used_nodes": snap.used_nodes(p.node_type), "interrupted": p.node_type in self.interrupted,
                       "unfillable": p.node_type in self.unfillable} for p in self.pools],
            "running": {n: [asdict(a) for a in w.allocations] for n, w in sorted(self.store.workloads.items()) if w.allocations},
            "queued": list(self.store.queue),
            "paused": sorted(n for n, w in self.store.workloads.items() if w.state == "paused"),
            "steered": steered,
            "market_hour": None if self.market is None else round(self.market.hour(self.clock()), 6),
            "catalog_version": self.catalog.version,
        }

    def cost_report(self) -> dict[str, Any]:
        return self.store.ledger.report(now=self.clock())

    # -- applying decisions -------------------------------------------------------------------------
    def running_specs(self) -> dict[str, WorkloadSpec]:
        return {n: w.spec for n, w in self.store.workloads.items() if w.allocations}

    def apply(self, decisions: list[Decision]) -> list[dict[str, Any]]:
        out = []
        with self.command():
            for d in decisions:
                w = self.store.workloads.get(d.workload)
                if self.market is not None and w is not None and w.stepper is not None:
                    self.market.hold_for(d.workload, moving=d.action in ("place", "move"))
                if w is not None and d.action in ("place", "move"):
                    self.release(w)
                    self._dequeue(d.workload)
                    if not w.attach:  # attached work is charged by what Ray runs (controller.reconcile)
                        self.charge(w.spec, d.allocations)
                    moves = (w.moves + ([self.clock()] if d.voluntary else []))[-MAX_MOVES_KEPT:]
                    self.store.put_workload(replace(self.store.workloads[d.workload], state="placed",
                                                    epoch=w.epoch + 1, moves=moves, allocations=list(d.allocations)))
                elif w is not None and d.action in ("preempt", "pause", "queue"):
                    self.release(w)
                    state = "paused" if d.action == "pause" else "queued"
                    self.store.put_workload(replace(self.store.workloads[d.workload], state=state, epoch=w.epoch + 1))
                    if d.action == "queue" and d.workload not in self.store.queue and w.stepper is None:
                        self.store.set_queue([*self.store.queue, d.workload])
                elif d.action == "refuse":
                    self._dequeue(d.workload)
                out.append(self.record(d.workload, d.to_dict()))
        return out

    def charge(self, spec: WorkloadSpec, allocations: tuple[Allocation, ...] | list[Allocation]) -> None:
        """Open ledger intervals for what the scheduler gave the workload."""
        pools = {p.node_type: p for p in self._base_pools}
        for a in allocations:
            self.open_interval(a.workload, spec.tenant, pools[a.node_type], workers=a.workers, nodes=a.nodes,
                               hourly_cost=a.hourly_cost)

    def open_interval(self, name: str, tenant: str, pool: Pool, *, workers: int, nodes: int, hourly_cost: float,
                      at: float | None = None) -> None:
        """One ledger interval from `at` (now), with what the same nodes would cost on demand beside it."""
        od = nodes * self.catalog.hourly(pool.instance_type, "on-demand", pool.region)
        self.store.ledger.open(workload=name, tenant=tenant, node_type=pool.node_type, market=pool.market,
                               workers=workers, nodes=nodes, hourly_cost=hourly_cost, on_demand_hourly_cost=od,
                               at=self.clock() if at is None else at)

    def record(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "at": self.clock()}
        self.store.add_reason(name, record)
        self.audit_action(record.get("action", "?"), target=name, why=record.get("reason", ""))
        if self.on_record is not None:
            self.on_record(record)
        return record

    def record_event(self, action: str, target: str, why: str) -> None:
        """Something a part of the platform decided outside the scheduler (a canary's verdict, a
        release): into the audit trail, by its caller."""
        check_text(action, field="action", max_len=40, pattern=r"[a-z][a-z0-9 _-]*")
        check_text(target, field="target", max_len=MAX_WORKLOAD)
        check_text(why, field="why", max_len=2000)
        with self.command():
            self.audit_action(action, target=target, why=why)

    def note_event(self, event: dict[str, Any]) -> None:
        """Something that happened to the cluster (a node lost, a pool unfillable): kept and audited."""
        with self.command():
            self.store.add_reason(EVENTS, event)
            self.audit_action(event.get("event", "event"), target=event.get("node_type"), why=event.get("why", ""))

    def audit_action(self, action: str, *, target: str | None = None, why: str = "", outcome: str = "done",
                     who: str | None = None) -> None:
        """Into the audit trail (when there is one): written and fsynced with the batch's other records
        just before it commits; the trail's tip is committed with it."""
        if self.audit is None:
            return
        tenant = self.store.owners.get(target) if target is not None else None
        with self.command():
            self.store.outbox.append({"at": self.clock(), "who": who or self.caller, "action": action,
                                      "target": target, "why": why, "tenant": tenant, "outcome": outcome})

    def _flush_audit(self, entries: list[dict[str, Any]]) -> None:
        assert self.audit is not None
        first = self.audit.seq + 1
        self.audit.append_many(entries)
        self._flushed = (first, self.audit.seq)
        self.store.set_meta("audit_tip", self.audit.tip())

    def _note_undone(self) -> None:
        """The trail says so when records it holds belong to a batch that did not commit."""
        if self.audit is not None:
            first, last = self._flushed
            self.audit.append_many([{"at": self.clock(), "who": "scheduler", "action": "undone", "target": None,
                                     "tenant": None, "outcome": "done",
                                     "why": f"records {first}-{last} belong to commands that did not commit"}])

    # -- bookkeeping ---------------------------------------------------------------------------------
    def release(self, w: Workload) -> None:
        """Take the workload's allocations back (its unattached intervals end now)."""
        if w.allocations:
            if not w.attach:
                self.store.ledger.close(w.spec.name, at=self.clock())
            self.store.put_workload(replace(w, allocations=[]))

    def forget(self, name: str) -> None:
        if self.market is not None:
            self.market.done(name)
        self.store.ledger.close(name, at=self.clock())  # attached or not, nothing is charged after the end
        self.store.drop_workload(name)
        self._dequeue(name)

    def _dequeue(self, name: str) -> None:
        if name in self.store.queue:
            self.store.set_queue([n for n in self.store.queue if n != name])

    def retry_queue(self) -> list[dict[str, Any]]:
        waiting = [self.store.workloads[n].spec for n in self.store.queue if n in self.store.workloads]
        if not waiting:
            return []
        return self.apply(place(self.snapshot(), waiting, self.running_specs(), self.tenants))

    def rebalance(self) -> list[dict[str, Any]]:
        free = {n: w.spec for n, w in self.store.workloads.items()
                if w.allocations and w.stepper is None and self.may_move(w)}
        return self.apply(rebalance(self.snapshot(), free, self.tenants))

    def may_move(self, w: Workload) -> bool:
        recent = [t for t in w.moves if t > self.clock() - self.seconds_per_hour]
        return len(recent) < self.config.max_moves_per_hour

    def check_pool(self, node_type: str, *, spot: bool) -> None:
        check_text(node_type, field="node_type", max_len=MAX_NAME, pattern=NAME_PATTERN)
        pool = next((p for p in self._base_pools if p.node_type == node_type), None)
        if pool is None:
            raise ConfigError(f"no pool {node_type!r}; pools: {', '.join(p.node_type for p in self._base_pools)}",
                              field="node_type")
        if spot and pool.market != "spot":
            raise ConfigError(f"{node_type} is a {pool.market} pool; only spot pools are interrupted", field="node_type")


def check_workload_name(name: object) -> None:
    check_text(name, field="name", max_len=MAX_WORKLOAD, pattern=WORKLOAD_PATTERN)
