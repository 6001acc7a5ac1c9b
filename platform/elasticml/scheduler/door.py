"""The door: the one way into the scheduler. It serves the routes of requests.py, one handler each.

Every call names its caller's credential; the door verifies it, rebuilds the request from plain
values (requests.py), checks the caller's role and ownership, runs the handler inside one store
command with the audit record of its outcome, and answers. What a tenant owns: the workloads
whose spec names it as tenant, its own tenant's residency and storage credentials. A tenant's
workload names are its own: the door reads its `nightly` as `TENANT/nightly` (spec.scoped), so
two tenants may both run a `nightly` and neither can name the other's; an admin names a
tenant's workload in full (`acme/nightly`). A tenant places at most at its priority ceiling
(`TenantPolicy.max_priority`) and attaches only what the platform started for the workload.

Refusals (an unknown credential, a role or ownership check, a request that fails its checks)
raise `AccessDenied` or `ConfigError`, and are audited once per burst of one caller's refusals
of one call: the first at once, the rest counted into one record when the burst ends, so a
flood cannot fill the disk.

What the door cannot stop: a Ray token holder. Ray's `__ray_call__` (a public developer API on
every actor in Ray 2.60) runs any closure inside the scheduler's actor, so whoever holds the
cluster's token is trusted whatever the door checks. Tenants hold credentials, not the token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

from elasticml.errors import AccessDenied, ConfigError, ElasticMLError, SchedulerError
from elasticml.scheduler import principals, tenant_storage
from elasticml.scheduler.controller import Controller
from elasticml.scheduler.core import Scheduler
from elasticml.scheduler.identity import Principal, verify
from elasticml.scheduler.requests import ROUTES, Request, Route
from elasticml.scheduler.requests import (
    AddPrincipal, AuditRecords, CheckResidency, ClearInterruption, CostReport, Explain, Finish, GetPlacement, Interrupt, Intervals,
    ListPrincipals, Place, RecordEvent, RemovePrincipal, ReportProgress, RunStarted, SetTenant, Status,
    StorageCredentials, Tick, Whoami,
)
from elasticml.scheduler.spec import priority_rank, scoped

BURST_SECONDS = 10.0
"""Refusals by one caller within this long of its first are audited as one record."""

Handler = Callable[["Door", Principal, Any], Any]
HANDLERS: dict[type[Request], Handler] = {}


def handles(request: type[Request]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        if request in HANDLERS:
            raise RuntimeError(f"two handlers for {request.route}")
        HANDLERS[request] = fn
        return fn
    return register


AttachCheck = Callable[[str, str], str | None]
"""(attach, workload) -> why it may not be attached, or None: whether the platform started it for the workload."""


class Door:
    def __init__(self, scheduler: Scheduler, controller: Controller, *, attach_check: AttachCheck | None = None,
                 tick: Callable[[], Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """`tick`: what an admin's `tick` runs (the actor's: Ray's signals, then the controller)."""
        self.s = scheduler
        self.controller = controller
        self.tick = tick or controller.tick
        self.drain: Callable[[str], list[str]] | None = None
        """Tells Ray to drain a pool's nodes as preempted after an admin's or agent's notice (the actor's)."""
        self.attach_check = attach_check
        self._clock = clock
        self._bursts: dict[tuple[str, str, str], list[Any]] = {}
        """(caller, call, outcome) -> [burst start, refusals since the audited one, the last one's (target, why)]."""

    def call(self, token: Any, route_name: Any, args: Any) -> Any:
        if type(route_name) is not str or not route_name.isidentifier() or len(route_name) > 40:
            raise ConfigError("must be a call's name", field="method")
        who = verify(token, self.s.principals)
        if who is None:  # one burst for every unknown caller and call: rotating names buys no records
            self._refuse("an unknown caller", route_name, None, "the credential is not recognised (see `elasticml "
                         "scheduler credential`; set ELASTICML_CREDENTIAL_PATH to your credential file)", key="*")
        route = ROUTES.get(route_name)
        if route is None:
            self._refuse(str(who), route_name, None, f"no such call {route_name!r}", key="*")
        try:
            req = route.request.from_wire(args)
        except ConfigError as exc:
            self._refuse(str(who), route.name, None, f"invalid request: {exc}", exc)
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:  # a shape no check foresaw
            self._refuse(str(who), route.name, None, f"invalid request: {type(exc).__name__}",
                         ConfigError(f"invalid request ({type(exc).__name__})", field="args"))
        req = self._in_namespace(who, req)
        target = _target(req)
        reason = self._forbidden(who, route, req)
        if reason is not None:
            self._refuse(str(who), route.name, target, reason)
        self.s.caller = str(who)
        try:
            with self.s.command():
                result = HANDLERS[route.request](self, who, req)
                if route.audit == "summary":
                    self.s.audit_action(route.name, target=target, who=str(who), why=_summary(req))
            return result
        except ElasticMLError as exc:
            if route.mutates or route.audit in ("summary", "failures"):
                self._refuse(str(who), route.name, target, str(exc), exc, outcome="failed")
            raise
        except Exception as exc:  # undone with its command; audited, and never a trace to the caller
            self._refuse(str(who), route.name, target, f"{type(exc).__name__}: {str(exc)[:200]}",
                         SchedulerError(f"{route.name} failed ({type(exc).__name__}); it was undone"), outcome="error")
        finally:
            self.s.caller = "scheduler"

    # -- refusals --------------------------------------------------------------------------------
    def _refuse(self, who: str, route: str, target: str | None, reason: str, exc: Exception | None = None,
                *, outcome: str = "denied", key: str | None = None) -> NoReturn:
        """Audit the refusal (once per burst of the caller's refusals of this call, or of `key`), then
        raise it (AccessDenied, or `exc`)."""
        now = self._clock()
        burst_key = (who, key or route, outcome)
        burst = self._bursts.get(burst_key)
        if burst is not None and now - burst[0] < BURST_SECONDS:
            burst[1] += 1
            burst[2] = (target, reason)
        else:
            self.flush_refusals(only=burst_key)
            self._bursts[burst_key] = [now, 0, None]
            with self.s.command():
                self.s.audit_action(route, target=target, who=who, why=reason, outcome=outcome)
        if exc is not None:
            raise exc
        raise AccessDenied(who, route if target is None else f"{route} {target}", reason)

    def flush_refusals(self, *, only: tuple[str, str, str] | None = None) -> None:
        """Write the counted refusals of bursts that are over (of `only`, whatever its age)."""
        now = self._clock()
        for key, (start, count, last) in list(self._bursts.items()):
            if only is not None and key != only:
                continue
            if only is None and now - start < BURST_SECONDS:
                continue
            del self._bursts[key]
            if count:
                who, route, outcome = key
                target, reason = last
                with self.s.command():
                    self.s.audit_action(route, target=target, who=who, outcome=outcome,
                                        why=f"{count} more refusal(s) in {BURST_SECONDS:g}s after the one above; "
                                            f"the last: {reason}")

    # -- checks -------------------------------------------------------------------------------------
    def _in_namespace(self, who: Principal, req: Request) -> Request:
        """A tenant's request with its workload names read in its own namespace. A workload an admin
        placed for it under a bare name is still its own by that name."""
        if who.role != "tenant":
            return req
        owners = self.s.owners
        if isinstance(req, Place) and req.spec.tenant == who.name:
            return replace(req, spec=replace(req.spec, name=_own(who.name, req.spec.name, owners)))
        if isinstance(req, RecordEvent):
            return replace(req, target=_own(who.name, req.target, owners))
        name = getattr(req, "name", None)
        if ROUTES[req.route].owns == "workload" and type(name) is str and name != "_events":
            return replace(req, name=_own(who.name, name, owners))  # type: ignore[type-var]  # every Request subclass is a dataclass; the base is not
        return req

    def _forbidden(self, who: Principal, route: Route, req: Request) -> str | None:
        """Why `who` may not make this call, or None."""
        if who.role not in route.roles:
            return {"admin": "only an admin may", "agent": "a node agent only signals spot pools (and reads them)"
                    }.get(who.role, "only an admin or a node agent signals pools" if route.roles == ("admin", "agent")
                          else "only an admin may")
        if who.role != "tenant":
            return None
        owners = self.s.owners
        if route.owns == "spec":
            spec, attach = req.spec, req.attach  # type: ignore[attr-defined]  # owns == "spec": a Place, which has both
            if spec.tenant != who.name:
                return f"a tenant places its own workloads only (the spec says tenant {spec.tenant!r})"
            policy = self.s.tenants.of(who.name)
            if priority_rank(spec.priority) < priority_rank(policy.max_priority):
                return (f"tenant {who.name} places at most at priority {policy.max_priority} (its ceiling, set by an "
                        f"admin); the spec asks for {spec.priority}")
            live = sum(1 for w in self.s.store.workloads.values() if w.spec.tenant == who.name)
            if spec.name not in self.s.store.workloads and live >= policy.max_workloads:
                return f"tenant {who.name} has {live} workloads, its most (max_workloads, set by an admin)"
            if attach is not None and attach.startswith("serve:") and spec.kind != "serving":
                return "only a serving workload attaches to a Serve app"
            held = self.s.store.workloads.get(spec.name)
            if held is not None and held.attach and held.attach.startswith("serve:") and attach != held.attach:
                # Its replicas run until the app is deleted: placing something else under its name would
                # stop the charges for them and hand their capacity out again.
                return f"{spec.name} is a Serve app's workload; it ends when the app is deleted"
            if attach is not None:
                from elasticml.scheduler.ray_view import serve_attachment

                if attach.startswith("serve:"):
                    bare = spec.name.rpartition("/")[2]  # Serve names the deployments without the tenant
                    own = (serve_attachment(bare), serve_attachment(bare, tenant=spec.tenant))
                    if attach not in own:
                        return f"a Serve app attaches as its own workload only ({' or '.join(own)})"
                elif self.attach_check is None:
                    return "attach names a Ray job, which only the platform's own entrypoints or an admin may"
                else:
                    return self.attach_check(attach, spec.name)
            return None
        if route.owns == "target":
            if owners.get(req.target) != who.name:  # type: ignore[attr-defined]  # owns == "target": the request has .target
                return ("a tenant records events of its own workloads only (an app without a tenant is an "
                        "operator's: give it `tenant:` so the scheduler places it)")
            return None
        if route.owns == "tenant":
            if req.tenant != who.name:  # type: ignore[attr-defined]  # owns == "tenant": the request has .tenant
                return ("a tenant checks its own residency only" if isinstance(req, CheckResidency)
                        else "a tenant gets credentials for its own prefix only")
            return None
        if route.owns == "workload":
            name = req.name  # type: ignore[attr-defined]  # owns == "workload": the request has .name
            if name == "_events":
                return "cluster events are for an admin"
            if owners.get(name) != who.name:
                return "a tenant sees and changes its own workloads only (no workload of this tenant has that name)"
            held = self.s.store.workloads.get(name)
            if isinstance(req, Finish) and held is not None and held.attach and held.attach.startswith("serve:"):
                return f"{name} is a Serve app's workload: it ends when the app is deleted (its replicas with it)"
        return None


def _own(tenant: str, name: str, owners: dict[str, str]) -> str:
    if owners.get(name) == tenant and scoped(tenant, name) not in owners:
        return name
    return scoped(tenant, name)


def _target(req: Request) -> str | None:
    if isinstance(req, Place):
        return req.spec.name
    for field in ("name", "target", "node_type", "tenant"):
        value = getattr(req, field, None)
        if type(value) is str:
            return value
    if isinstance(req, SetTenant):
        return req.policy.tenant
    return None


def _summary(req: Request) -> str:
    if isinstance(req, SetTenant):
        return repr(req.policy)[:300]
    if isinstance(req, CheckResidency):
        return f"{req.what or 'storage'} in {req.region}: allowed"
    if isinstance(req, StorageCredentials):
        return f"s3://{req.bucket}/tenants/{req.tenant}/ for {req.hours}h"
    if isinstance(req, AddPrincipal):
        return f"role {req.role}"
    return ""


# -- handlers: one per route ------------------------------------------------------------------------------
@handles(Place)
def _place(door: Door, who: Principal, req: Place) -> Any:
    return door.s.place(req.spec, req.attach)


@handles(GetPlacement)
def _placement(door: Door, who: Principal, req: GetPlacement) -> Any:
    return door.s.placement(req.name)


@handles(ReportProgress)
def _report_progress(door: Door, who: Principal, req: ReportProgress) -> None:
    door.s.report_progress(req.name, req.fraction)


@handles(RunStarted)
def _run_started(door: Door, who: Principal, req: RunStarted) -> float:
    return door.controller.run_started(req.name, req.epoch)


@handles(Finish)
def _finish(door: Door, who: Principal, req: Finish) -> None:
    door.s.finish(req.name)


@handles(Explain)
def _explain(door: Door, who: Principal, req: Explain) -> Any:
    return door.s.explain(req.name)


@handles(Intervals)
def _intervals(door: Door, who: Principal, req: Intervals) -> Any:
    return door.s.intervals(req.name)


@handles(Status)
def _status(door: Door, who: Principal, req: Status) -> Any:
    status = door.s.status()
    if who.role == "admin":
        return status
    if who.role == "agent":
        return {k: status[k] for k in ("cluster", "pools", "market_hour")}
    mine = {n for n, t in door.s.owners.items() if t == who.name}
    return {**status, "running": {n: v for n, v in status["running"].items() if n in mine},
            "queued": [n for n in status["queued"] if n in mine], "paused": [n for n in status["paused"] if n in mine],
            "steered": {n: v for n, v in status["steered"].items() if n in mine}}


@handles(CostReport)
def _cost_report(door: Door, who: Principal, req: CostReport) -> Any:
    report = door.s.cost_report()
    if who.role == "admin":
        return report
    owners = door.s.owners
    rows = [r for r in report["tenant"] if r["key"] == who.name]
    cost = sum(r["cost"] for r in rows)
    od = sum(r["on_demand_cost"] for r in rows)
    return {"tenant": rows, "workload": [r for r in report["workload"] if owners.get(r["key"]) == who.name],
            "total": {"cost": cost, "on_demand_cost": od, "savings": od - cost,
                      "savings_pct": 100 * (od - cost) / od if od else 0.0}}


@handles(Interrupt)
def _interrupt(door: Door, who: Principal, req: Interrupt) -> Any:
    result = door.s.interrupt(req.node_type)
    if door.drain is not None:
        result["drained_nodes"] = door.drain(req.node_type)
    return result


@handles(ClearInterruption)
def _clear(door: Door, who: Principal, req: ClearInterruption) -> Any:
    return door.s.clear_interruption(req.node_type)


@handles(CheckResidency)
def _check_residency(door: Door, who: Principal, req: CheckResidency) -> None:
    tenant_storage.check_residency(door.s.tenants.of(req.tenant), door.s.vendor, req.region, req.what)


@handles(StorageCredentials)
def _storage_credentials(door: Door, who: Principal, req: StorageCredentials) -> Any:
    return tenant_storage.storage_credentials(door.s.vendor, req.tenant, req.bucket, req.hours)


@handles(RecordEvent)
def _record_event(door: Door, who: Principal, req: RecordEvent) -> None:
    door.s.record_event(req.action, req.target, req.why)


@handles(SetTenant)
def _set_tenant(door: Door, who: Principal, req: SetTenant) -> None:
    door.s.set_tenant(req.policy)


@handles(AddPrincipal)
def _add_principal(door: Door, who: Principal, req: AddPrincipal) -> None:
    principals.add_principal(door.s, req.name, req.role, req.credential_digest)


@handles(RemovePrincipal)
def _remove_principal(door: Door, who: Principal, req: RemovePrincipal) -> None:
    principals.remove_principal(door.s, req.name)


@handles(ListPrincipals)
def _list_principals(door: Door, who: Principal, req: ListPrincipals) -> Any:
    return principals.list_principals(door.s)


@handles(Tick)
def _tick(door: Door, who: Principal, req: Tick) -> Any:
    door.flush_refusals()
    return door.tick()


@handles(Whoami)
def _whoami(door: Door, who: Principal, req: Whoami) -> dict[str, str]:
    return {"name": who.name, "role": who.role}


@handles(AuditRecords)
def _audit_records(door: Door, who: Principal, req: AuditRecords) -> list[dict[str, Any]]:
    audit = door.s.audit
    if audit is None:
        return []
    records = audit.records()
    if who.role != "admin":
        records = [r for r in records if r.get("tenant") == who.name or r.get("who") == str(who)]
    return records[-req.limit:]
