"""The scheduler's only door: every call names its caller's credential; the door verifies it, checks
the caller's role and ownership, audits the outcome, then lets the state act.

What each role may do (identity.py says who the roles are):

| method | admin | tenant | agent |
|---|---|---|---|
| place | any spec | specs of its own tenant, named in its namespace | - |
| placement, report_progress, run_started, finish, explain, intervals | any workload | its own workloads | - |
| status | everything | its own workloads | pools only |
| cost_report | everything | its own costs | - |
| interrupt, clear_interruption | spot pools | - | spot pools |
| check_residency (may this tenant's data be in region R, under this URI?) | any tenant | its own | - |
| storage_credentials (short-lived, its bucket prefix only) | any tenant | its own | - |
| record_event (a deployment, a canary verdict) | any | its own workloads' | - |
| set_tenant, add/remove/list principals, tick, cluster events | yes | - | - |
| whoami | yes | yes | yes |

A tenant's workload names are its own: the door reads its `nightly` as `TENANT/nightly` (spec.scoped)
in every call, so two tenants may both run a `nightly` and neither can name the other's. An admin
names a tenant's workload in full (`acme/nightly`).

A refusal raises `AccessDenied` and is audited like every change.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from elasticml.errors import AccessDenied, ConfigError
from elasticml.scheduler.identity import Principal, verify
from elasticml.scheduler.spec import WorkloadSpec, scoped
from elasticml.scheduler.state import SchedulerState

OWN_WORKLOAD = {"placement", "report_progress", "run_started", "finish", "explain", "intervals"}
ADMIN_ONLY = {"set_tenant", "add_principal", "remove_principal", "list_principals", "tick"}
POOL_SIGNALS = {"interrupt", "clear_interruption"}
CHANGES = {"place", "finish", "set_tenant", "add_principal", "remove_principal", "interrupt", "clear_interruption",
           "report_progress", "check_residency", "storage_credentials"}
"""Methods whose successful calls are audited (reads are not; their refusals are)."""
PUBLIC = OWN_WORKLOAD | ADMIN_ONLY | POOL_SIGNALS | {"place", "status", "cost_report", "whoami", "check_residency",
                                                      "record_event", "storage_credentials"}
MAX_ARGS = 4


class Door:
    def __init__(self, state: SchedulerState) -> None:
        self.state = state

    def call(self, token: Any, method: Any, args: tuple[Any, ...]) -> Any:
        state = self.state
        if type(method) is not str or not method.isidentifier() or len(method) > 40:
            raise ConfigError("must be a method name", field="method")
        if not isinstance(args, tuple) or len(args) > MAX_ARGS:
            raise ConfigError(f"must be a tuple of at most {MAX_ARGS} arguments", field="args")
        principal = verify(token, state.principals)
        if principal is None:
            self._deny("an unknown caller", method, None, "the credential is not recognised (see `elasticml "
                       "scheduler credential`; set ELASTICML_CREDENTIAL_PATH to your credential file)")
        assert principal is not None
        args = _in_namespace(principal, method, args, state.owners)
        target = self._target(method, args)
        reason = self._forbidden(principal, method, args)
        if reason is not None:
            self._deny(str(principal), method, target, reason)
        state.caller = str(principal)
        try:
            result = self._dispatch(principal, method, args)
        except Exception as exc:
            if method in CHANGES:
                state.audit_action(method, target=target, why=str(exc), outcome="failed")
            raise
        finally:
            state.caller = "scheduler"
        if method in CHANGES and method not in ("place", "report_progress"):  # a placement audits its decisions
            state.audit_action(method, target=target, who=str(principal), why=_summary(method, args))
        return result

    def _deny(self, who: str, method: str, target: str | None, reason: str) -> None:
        self.state.audit_action(method, target=target, who=who, why=reason, outcome="denied")
        raise AccessDenied(who, method if target is None else f"{method} {target}", reason)

    @staticmethod
    def _target(method: str, args: tuple[Any, ...]) -> str | None:
        if method == "place" and args and isinstance(args[0], WorkloadSpec):
            return args[0].name
        if method == "record_event" and len(args) > 1 and type(args[1]) is str:
            return args[1][:80]
        if args and type(args[0]) is str:
            return args[0][:80]
        return None

    def _forbidden(self, who: Principal, method: str, args: tuple[Any, ...]) -> str | None:
        """Why `who` may not make this call, or None."""
        if method not in PUBLIC:
            return f"no such method {method!r}"
        if method == "whoami" or who.role == "admin":
            return None
        if method in ADMIN_ONLY:
            return "only an admin may"
        if who.role == "agent":
            return None if method in POOL_SIGNALS | {"status"} else "a node agent only signals spot pools (and reads them)"
        if method in POOL_SIGNALS:
            return "only an admin or a node agent signals pools"
        if method == "place":
            spec = args[0] if args else None
            if not isinstance(spec, WorkloadSpec):
                return None  # the state refuses it with the field named
            if spec.tenant != who.name:
                return f"a tenant places its own workloads only (the spec says tenant {spec.tenant!r})"
            return None  # its names are in its namespace (_in_namespace): no other tenant's can be meant
        if method == "record_event":
            target = args[1] if len(args) > 1 else None
            if type(target) is not str or self.state.owners.get(target) != who.name:
                return ("a tenant records events of its own workloads only (an app without a tenant is an "
                        "operator's: give it `tenant:` so the scheduler places it)")
            return None
        if method == "check_residency":
            return None if args and args[0] == who.name else "a tenant checks its own residency only"
        if method == "storage_credentials":
            return None if args and args[0] == who.name else "a tenant gets credentials for its own prefix only"
        if method in OWN_WORKLOAD:
            name = args[0] if args else None
            if name == "_events":
                return "cluster events are for an admin"
            if type(name) is not str or self.state.owners.get(name) != who.name:
                return "a tenant sees and changes its own workloads only (no workload of this tenant has that name)"
            return None
        return None  # status and cost_report: filtered to what is its own

    def _dispatch(self, who: Principal, method: str, args: tuple[Any, ...]) -> Any:
        state = self.state
        if method == "whoami":
            return {"name": who.name, "role": who.role}
        if method == "status" and who.role != "admin":
            return _status_for(state.status(), who, state.owners)
        if method == "cost_report" and who.role == "tenant":
            return _costs_for(state.cost_report(), who.name, state.owners)
        return getattr(state, method)(*args)


def _in_namespace(who: Principal, method: str, args: tuple[Any, ...], owners: dict[str, str]) -> tuple[Any, ...]:
    """A tenant's call with its workload names read in its own namespace. A workload an admin placed
    for it under a bare name is still its own by that name."""
    if who.role != "tenant" or not args:
        return args
    first = args[0]
    if method == "place" and isinstance(first, WorkloadSpec) and first.tenant == who.name:
        return (replace(first, name=_own(who.name, first.name, owners)), *args[1:])
    if method in OWN_WORKLOAD and type(first) is str and first != "_events" and len(first) <= 200:
        return (_own(who.name, first, owners), *args[1:])
    if method == "record_event" and len(args) > 1 and type(args[1]) is str and len(args[1]) <= 200:
        return (first, _own(who.name, args[1], owners), *args[2:])
    return args


def _own(tenant: str, name: str, owners: dict[str, str]) -> str:
    if owners.get(name) == tenant and scoped(tenant, name) not in owners:
        return name
    return scoped(tenant, name)


def _summary(method: str, args: tuple[Any, ...]) -> str:
    if method == "set_tenant" and args:
        return repr(args[0])[:300]
    if method == "check_residency" and len(args) >= 2:
        return f"{args[2] if len(args) > 2 else 'storage'} in {args[1]}: allowed"
    if method == "storage_credentials" and len(args) >= 2:
        return f"s3://{str(args[1])[:63]}/tenants/{str(args[0])[:63]}/ for {args[2] if len(args) > 2 else 1.0}h"
    if method == "add_principal" and len(args) >= 2:
        return f"role {args[1]}"
    return ""


def _status_for(status: dict[str, Any], who: Principal, owners: dict[str, str]) -> dict[str, Any]:
    if who.role == "agent":
        return {k: status[k] for k in ("cluster", "pools", "market_hour")}
    mine = {n for n, t in owners.items() if t == who.name}
    return {**status, "running": {n: v for n, v in status["running"].items() if n in mine},
            "queued": [n for n in status["queued"] if n in mine], "paused": [n for n in status["paused"] if n in mine],
            "steered": {n: v for n, v in status["steered"].items() if n in mine}}


def _costs_for(report: dict[str, Any], tenant: str, owners: dict[str, str]) -> dict[str, Any]:
    rows = [r for r in report["tenant"] if r["key"] == tenant]
    cost = sum(r["cost"] for r in rows)
    od = sum(r["on_demand_cost"] for r in rows)
    return {"tenant": rows, "workload": [r for r in report["workload"] if owners.get(r["key"]) == tenant],
            "total": {"cost": cost, "on_demand_cost": od, "savings": od - cost,
                      "savings_pct": 100 * (od - cost) / od if od else 0.0}}
