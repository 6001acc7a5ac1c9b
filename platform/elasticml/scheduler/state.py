"""The scheduler's state and its door, without Ray: what the actor is, testable and reasoned about alone.

Who owns what: `SchedulerState` owns the workload specs, their allocations,
the queue, the pools judged unavailable (interruption notices, pools the
autoscaler cannot fill) and one `JobStepper` per deadline job, all persisted in
the ledger's SQLite file on every change. The policies (`policy.py` for
placement, `deadline.py`/`planner.py` for spot vs on-demand under a deadline)
own every decision and are pure: the state takes a snapshot, asks them,
applies what they say and writes it down. Its steering half is
`controller.Controller`; `actor.py` runs it as a Ray actor.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

from elasticml.cluster.config import ClusterSpec
from elasticml.cluster.spot_market import SpotMarket
from elasticml.dataconf import check_number, check_text
from elasticml.errors import ConfigError, PlacementRefused
from elasticml.scheduler.capacity import Allocation, Snapshot, pools_from_cluster
from elasticml.scheduler.audit import AuditLog
from elasticml.scheduler.catalog import PriceCatalog
from elasticml.scheduler.controller import Controller, ControllerConfig, priced_by_market
from elasticml.scheduler.deadline import JobStepper
from elasticml.scheduler.ledger import Ledger
from elasticml.scheduler.tenant_storage import MAX_SESSION_HOURS, CredentialVendor, check_confined
from elasticml.storage import S3Credentials
from elasticml.scheduler.policy import Decision, place, replace_interrupted
from elasticml.scheduler.spec import (
    MAX_NAME,
    MAX_WORKLOAD,
    NAME_PATTERN,
    REGION_PATTERN,
    WORKLOAD_PATTERN,
    Placement,
    TenantPolicy,
    Tenants,
    WorkloadSpec,
)

MAX_EXPLANATIONS = 200
"""Decisions and events kept per workload for `explain`."""

Observer = Callable[[str], Mapping[str, tuple[int, int]]]
"""attach -> {node type: (workers, nodes)} of what runs a workload, as Ray sees it (`ray_view.ray_observer`)."""


class SchedulerState(Controller):
    """The actor's logic without Ray, so it can be tested and reasoned about on its own."""

    def __init__(self, cluster: ClusterSpec, ledger_path: str, *, controller: ControllerConfig | None = None,
                 clock: Callable[[], float] = time.time, observer: Observer | None = None,
                 incarnation: str | None = None) -> None:
        """`incarnation` names the running Ray cluster (its session): a ledger last written by another
        one (the cluster was taken down and started again under the same name) keeps its costs, but
        what it says runs is of a cluster that is gone, and is closed and forgotten."""
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
            self.pools = priced_by_market(self.pools, self.market.settings.price_ratio)
        self.ledger = Ledger(ledger_path)
        self.specs = {k.removeprefix("spec:"): WorkloadSpec.from_dict(json.loads(v))
                      for k, v in self.ledger.state_items("spec:").items()}
        self.allocations = {k.removeprefix("alloc:"): [Allocation(**a) for a in json.loads(v)]
                            for k, v in self.ledger.state_items("alloc:").items()}
        self.queue: list[str] = json.loads(self.ledger.get_state("queue") or "[]")
        self.interrupted: set[str] = set(json.loads(self.ledger.get_state("interrupted") or "[]"))
        """Spot pools with a live interruption notice."""
        self.interrupt_expiry: dict[str, float] = json.loads(self.ledger.get_state("interrupt_expiry") or "{}")
        """Interrupted pools that are tried again at this clock time (a lost node's, not a notice's)."""
        self.unfillable: set[str] = set(json.loads(self.ledger.get_state("unfillable") or "[]"))
        """Pools whose launches have been failing (the autoscaler's view): unavailable too."""
        live = json.loads(self.ledger.get_state("live_prices") or "{}")
        self.pools = tuple(replace(p, hourly_price=live[p.node_type][0], placement_score=live[p.node_type][1])
                           if p.node_type in live else p for p in self.pools)
        self.tenants = Tenants(policies={k.removeprefix("tenant:"): _tenant_policy(json.loads(v))
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
        self.principals: dict[str, tuple[str, str]] = {
            k.removeprefix("principal:"): tuple(json.loads(v)) for k, v in self.ledger.state_items("principal:").items()
        }
        """Who may call the scheduler: name -> (role, sha256 of the credential); see identity.py."""
        self.owners: dict[str, str] = {k.removeprefix("owner:"): v for k, v in self.ledger.state_items("owner:").items()}
        """Workload name -> the tenant it belongs to (kept after it finishes, with its history)."""
        self.caller = "scheduler"
        """Who the change being made is for (the door sets it per call): what the audit trail records."""
        self.audit: AuditLog | None = None
        self.vendor: CredentialVendor | None = None
        """Where tenants' storage credentials come from (tenant_storage.py); None = no tenant prefixes."""
        self.steppers: dict[str, JobStepper] = {}
        for name, raw in self.ledger.state_items("steer:").items():
            self.steppers[name.removeprefix("steer:")] = self._stepper_from(json.loads(raw))
        self._holders: set[str] = set()
        """The workloads whose moves hold the replayed market's clock (until their runs are up)."""
        if incarnation is not None and self.ledger.get_state("incarnation") not in (None, incarnation):
            self._forget_previous_cluster()
        if incarnation is not None:
            self.ledger.put_state("incarnation", incarnation)

    def _forget_previous_cluster(self) -> None:
        gone = sorted(set(self.specs) | set(self.allocations) | set(self.meta))
        for name in gone:
            # Charged until the last thing the scheduler heard of it, not until now.
            last = max((r.get("at", 0.0) for r in self.explanations.get(name, [])), default=None)
            self.ledger.close(name, at=self.clock() if last is None else last)
            self._release(name)
            self._forget(name)
        self.queue, self.interrupted, self.unfillable = [], set(), set()
        for key in ("queue", "interrupted", "unfillable"):
            self.ledger.put_state(key, "[]")
        self.note_event({"at": self.clock(), "event": "new cluster", "why": f"the cluster was started again: forgot "
                         f"{len(gone)} workload(s) of the previous one ({', '.join(gone)[:300]}), their intervals closed"})

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
        spec = self._within_residency(spec)
        if spec.name in self.allocations:
            self._release(spec.name)
        if self.owners.get(spec.name) != spec.tenant:
            self.owners[spec.name] = spec.tenant
            self.ledger.put_state(f"owner:{spec.name}", spec.tenant)
        self.specs[spec.name] = spec
        self.ledger.put_state(f"spec:{spec.name}", json.dumps(spec.to_dict()))
        meta = {"epoch": self.meta.get(spec.name, {}).get("epoch", 0), "state": "queued", "attach": attach,
                "progress": None, "moves": [], "submitted": self.clock()}
        self._put_meta(spec.name, meta)
        self.steppers.pop(spec.name, None)
        self.ledger.delete_state(f"steer:{spec.name}")
        if self._steered(spec):
            try:
                decisions = self._admit_steered(spec)
            except ConfigError as exc:
                self._forget(spec.name)
                raise PlacementRefused(spec.name, str(exc)) from None
        else:
            decisions = place(self.snapshot(), [spec], self._running_specs(), self.tenants)
        self._apply(decisions)
        own = next(d for d in decisions if d.workload == spec.name)
        if own.action == "refuse":
            self._forget(spec.name)
            raise PlacementRefused(spec.name, own.reason)
        return self.placement(spec.name)  # type: ignore[return-value]

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

    def check_residency(self, tenant: str, region: str, what: str = "") -> None:
        """Refuse (PlacementRefused) data or checkpoints of `tenant` in `region` outside its regions."""
        check_text(tenant, field="tenant", max_len=MAX_NAME, pattern=NAME_PATTERN)
        check_text(region, field="region", max_len=32, pattern=REGION_PATTERN)
        if what:
            check_text(what, field="what", max_len=300)
        allowed = self.tenants.of(tenant).regions
        if allowed and region not in allowed:
            raise PlacementRefused(what or tenant, f"data residency: tenant {tenant} is kept to {list(allowed)}, "
                                                   f"but {what or 'the storage'} is in {region}")
        if self.vendor is not None:  # tenants' data is confined to their prefixes here
            check_confined(tenant, what)

    def storage_credentials(self, tenant: str, bucket: str, hours: float = 1.0) -> S3Credentials | None:
        """Short-lived credentials that reach only s3://BUCKET/tenants/TENANT/; None where this cluster
        keeps no tenant prefixes (nothing configured to vend them)."""
        check_text(tenant, field="tenant", max_len=MAX_NAME, pattern=NAME_PATTERN)
        check_text(bucket, field="bucket", max_len=63, pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
        check_number(hours, field="hours", lo=0.25, hi=MAX_SESSION_HOURS)
        if self.vendor is None:
            return None
        return self.vendor.vend(tenant, bucket, float(hours))

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
            done_before = (self.meta[name].get("progress") or 0.0) >= 1.0
            self._put_meta(name, {**self.meta[name], "progress": float(fraction)})
            if fraction >= 1.0 and not done_before:
                self._record(name, {"action": "done", "reason": "it reported all of its work done (its last "
                                    "checkpoint saved); what follows is shutting down"})


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

    def interrupt(self, node_type: str, *, lasts_s: float | None = None) -> dict[str, Any]:
        """A spot pool got an interruption notice: its work is re-placed (deadline jobs wait for their policy).

        `lasts_s`: the pool is tried again after this long unless a notice says otherwise (a lost node
        is not a notice: nobody will say the pool is back). A notice (no `lasts_s`) lasts until cleared.
        {"decisions": what changed, "drained_nodes": Ray node ids drained as preempted}.
        """
        self._check_pool(node_type, spot=True)
        if lasts_s is None:
            self.interrupt_expiry.pop(node_type, None)
        elif node_type not in self.interrupted or node_type in self.interrupt_expiry:
            self.interrupt_expiry[node_type] = self.clock() + lasts_s
        self.ledger.put_state("interrupt_expiry", json.dumps(self.interrupt_expiry))
        self.interrupted.add(node_type)
        self.ledger.put_state("interrupted", json.dumps(sorted(self.interrupted)))
        return {"decisions": self._vacate(node_type, f"spot pool {node_type} got an interruption notice"),
                "drained_nodes": []}

    def clear_interruption(self, node_type: str) -> list[dict[str, Any]]:
        self._check_pool(node_type, spot=True)
        self.interrupt_expiry.pop(node_type, None)
        self.ledger.put_state("interrupt_expiry", json.dumps(self.interrupt_expiry))
        self.interrupted.discard(node_type)
        self.ledger.put_state("interrupted", json.dumps(sorted(self.interrupted)))
        return self._retry_queue() + self._rebalance()

    def set_unfillable(self, failing_s: Mapping[str, float]) -> list[dict[str, Any]]:
        """Pools whose launches have failed for `failing_s[node_type]` seconds, as the autoscaler reports.

        One failing for `ControllerConfig.unfillable_seconds` is treated as unavailable: nothing new
        goes there and its work is placed elsewhere (deadline jobs: their policy decides). When
        launches stop failing it is available again and the queue and cheaper moves are retried.
        """
        limit = self.controller.unfillable_seconds
        bad = {t for t, secs in failing_s.items()
               if limit is not None and secs >= limit and any(p.node_type == t for p in self.pools)}
        added, cleared = sorted(bad - self.unfillable), self.unfillable - bad
        if bad != self.unfillable:  # asked every tick: write only a change
            self.ledger.put_state("unfillable", json.dumps(sorted(bad)))
        self.unfillable = bad
        out: list[dict[str, Any]] = []
        for node_type in added:
            why = f"pool {node_type} could not be launched for {failing_s[node_type]:.0f}s (the autoscaler's launches fail)"
            self.note_event({"at": self.clock(), "event": "pool unfillable", "node_type": node_type, "why": why})
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
            "steered": {n: {"policy": self.specs[n].spot_policy, "tick": j.tick, "hour": round(j.hour, 6),
                            "progress_hours": round(j.progress, 6), "instance": j.instance, "restarts": j.restarts}
                        for n, j in self.steppers.items() if n in self.specs},
            "market_hour": None if self.market is None else round(self.market.hour(self.clock()), 6),
            "catalog_version": self.catalog.version,
        }

    def cost_report(self) -> dict[str, Any]:
        return self.ledger.report(now=self.clock())

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
                                     workers=a.workers, nodes=a.nodes, hourly_cost=a.hourly_cost, on_demand_hourly_cost=od,
                                     at=self.clock())
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


    def _record(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "at": self.clock()}
        self.explanations.setdefault(name, []).append(record)
        self.explanations[name] = self.explanations[name][-MAX_EXPLANATIONS:]
        self.ledger.put_state(f"why:{name}", json.dumps(self.explanations[name]))
        self.audit_action(record.get("action", "?"), target=name, why=record.get("reason", ""))
        return record

    def record_event(self, action: str, target: str, why: str) -> None:
        """Something a part of the platform decided outside the scheduler (a canary's verdict, a
        release): into the audit trail, by its caller."""
        check_text(action, field="action", max_len=40, pattern=r"[a-z][a-z0-9 _-]*")
        check_text(target, field="target", max_len=80)
        check_text(why, field="why", max_len=2000)
        self.audit_action(action, target=target, why=why)

    def note_event(self, event: dict[str, Any]) -> None:
        """Something that happened to the cluster (a node lost, a pool unfillable): kept and audited."""
        self.explanations.setdefault("_events", []).append(event)
        self.explanations["_events"] = self.explanations["_events"][-MAX_EXPLANATIONS:]
        self.audit_action(event.get("event", "event"), target=event.get("node_type"), why=event.get("why", ""))

    def audit_action(self, action: str, *, target: str | None = None, why: str = "", outcome: str = "done",
                     who: str | None = None) -> None:
        """Append to the audit trail (when there is one) and keep its tip in the ledger."""
        if self.audit is None:
            return
        tenant = self.owners.get(target) if target is not None else None
        rec = self.audit.append(at=self.clock(), who=who or self.caller, action=action, target=target, why=why,
                                tenant=tenant, outcome=outcome)
        self.ledger.put_state("audit_tip", json.dumps([rec["seq"], rec["mac"]]))

    # -- principals ---------------------------------------------------------------
    def add_principal(self, name: str, role: str, credential_digest: str) -> None:
        from elasticml.scheduler.identity import Principal

        principal = Principal(name, role)
        check_text(credential_digest, field="credential_digest", max_len=64, pattern="[0-9a-f]{64}")
        self.principals[principal.name] = (principal.role, credential_digest)
        self.ledger.put_state(f"principal:{name}", json.dumps([principal.role, credential_digest]))

    def remove_principal(self, name: str) -> None:
        check_text(name, field="name", max_len=MAX_NAME, pattern=NAME_PATTERN)
        if name not in self.principals:
            raise ConfigError(f"no principal {name!r}", field="name")
        if self.principals[name][0] == "admin" and sum(r == "admin" for r, _ in self.principals.values()) == 1:
            raise ConfigError("the last admin cannot be removed", field="name")
        del self.principals[name]
        self.ledger.delete_state(f"principal:{name}")

    def list_principals(self) -> list[dict[str, str]]:
        return [{"name": n, "role": r} for n, (r, _) in sorted(self.principals.items())]

    def _release(self, name: str) -> None:
        if self.allocations.pop(name, None) is not None:
            if not self.meta.get(name, {}).get("attach"):
                self.ledger.close(name, at=self.clock())
            self.ledger.delete_state(f"alloc:{name}")

    def _forget(self, name: str) -> None:
        if name in self._holders:
            self._release_clock(name)
        self.ledger.close(name, at=self.clock())  # attached or not, nothing is charged after the end
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


    def _check_name(self, name: str, *, allow_events: bool = False) -> None:
        if allow_events and name == "_events":
            return
        check_text(name, field="name", max_len=MAX_WORKLOAD, pattern=WORKLOAD_PATTERN)

    def _check_pool(self, node_type: str, *, spot: bool) -> None:
        check_text(node_type, field="node_type", max_len=MAX_NAME, pattern=NAME_PATTERN)
        pool = next((p for p in self.pools if p.node_type == node_type), None)
        if pool is None:
            raise ConfigError(f"no pool {node_type!r}; pools: {', '.join(p.node_type for p in self.pools)}", field="node_type")
        if spot and pool.market != "spot":
            raise ConfigError(f"{node_type} is a {pool.market} pool; only spot pools are interrupted", field="node_type")


def _tenant_policy(raw: dict[str, Any]) -> TenantPolicy:
    return TenantPolicy(**{**raw, "regions": tuple(raw.get("regions", ()))})
