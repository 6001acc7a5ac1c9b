"""Every call the scheduler answers, declared once: its request type, who may make it, and how it is audited.

`ROUTES` is the table the door (door.py) serves and the client (client.py) calls; a test holds
both to it. A request crosses the wire as (route name, {field: value}) of plain values only;
the door rebuilds the request here, so the caller's classes are never trusted: every field is
checked by exact type (`type(x) is str`, no subclasses), and a spec or tenant policy is built
again field by field, which runs its checks on the actor's side.

Columns of a route:
- `roles`: who may call it at all (admin, tenant, agent);
- `mutates`: whether it changes the scheduler (its failures are audited);
- `audit`: `summary` (the door writes one record when it succeeds), `decisions` (the decisions
  it takes are recorded, one record each), `failures` (only a refusal is recorded: a check) or
  `none` (a read); every refusal and failure of a change is recorded whatever this says;
- `owns`: which field a tenant must own (`workload`, `tenant`, `spec`, `target`) or `none`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

from elasticml.dataconf import check_number, check_text
from elasticml.errors import ConfigError
from elasticml.scheduler.spec import (
    ATTACH_MAX,
    ATTACH_PATTERN,
    MAX_NAME,
    MAX_WORKLOAD,
    NAME_PATTERN,
    REGION_PATTERN,
    WORKLOAD_PATTERN,
    TenantPolicy,
    WorkloadSpec,
)

MAX_FIELDS = 8
PLAIN = (str, int, float, bool, type(None))


def _exact(value: Any, kinds: tuple[type, ...], field: str) -> None:
    if type(value) not in kinds:
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ConfigError(f"must be {names}, got {type(value).__name__}", field=field)
    if type(value) is float and not math.isfinite(value):
        raise ConfigError("must be a finite number", field=field)


def rebuilt(value: Any, cls: type, field: str) -> Any:
    """`value` as a new `cls` built from its fields' plain values (its checks run again here)."""
    if type(value) is not cls:
        raise ConfigError(f"must be a {cls.__name__}, got {type(value).__name__}", field=field)
    kwargs = {}
    for f in fields(cls):
        v = object.__getattribute__(value, f.name)
        if type(v) is tuple:
            for item in v:
                _exact(item, (str,), f"{field}.{f.name}")
        else:
            _exact(v, PLAIN, f"{field}.{f.name}")
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(str(exc), field=f"{field}.{exc.field}" if getattr(exc, "field", None) else field) from None


class Request:
    """A call's arguments; subclasses are kw-only frozen dataclasses whose checks run on construction."""

    route: ClassVar[str]

    def wire(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]  # subclasses are dataclasses; the base is not

    @classmethod
    def from_wire(cls, raw: Any) -> Request:
        if type(raw) is not dict or len(raw) > MAX_FIELDS:
            raise ConfigError(f"must be a mapping of at most {MAX_FIELDS} fields", field="args")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]  # subclasses are dataclasses; the base is not
        for key in raw:
            if type(key) is not str or key not in known:
                raise ConfigError(f"unknown field {str(key)[:40]!r}; {cls.route} takes {', '.join(sorted(known)) or 'none'}",
                                  field="args")
        return cls(**raw)


def _name(value: Any, field: str = "name") -> None:
    check_text(value, field=field, max_len=MAX_WORKLOAD, pattern=WORKLOAD_PATTERN)
    _exact(value, (str,), field)


def _tenant(value: Any, field: str = "tenant") -> None:
    _exact(value, (str,), field)
    check_text(value, field=field, max_len=MAX_NAME, pattern=NAME_PATTERN)


def _pool(value: Any) -> None:
    _exact(value, (str,), "node_type")
    check_text(value, field="node_type", max_len=MAX_NAME, pattern=NAME_PATTERN)


@dataclass(kw_only=True, frozen=True)
class Place(Request):
    route: ClassVar[str] = "place"
    spec: WorkloadSpec
    attach: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "spec", rebuilt(self.spec, WorkloadSpec, "spec"))
        if self.attach is not None:
            _exact(self.attach, (str,), "attach")
            check_text(self.attach, field="attach", max_len=ATTACH_MAX, pattern=ATTACH_PATTERN)


@dataclass(kw_only=True, frozen=True)
class Named(Request):
    """A call about one workload."""

    name: str

    def __post_init__(self) -> None:
        _name(self.name)


@dataclass(kw_only=True, frozen=True)
class GetPlacement(Named):
    route: ClassVar[str] = "placement"


@dataclass(kw_only=True, frozen=True)
class Finish(Named):
    route: ClassVar[str] = "finish"


@dataclass(kw_only=True, frozen=True)
class Explain(Request):
    route: ClassVar[str] = "explain"
    name: str

    def __post_init__(self) -> None:
        if self.name != "_events":
            _name(self.name)


@dataclass(kw_only=True, frozen=True)
class Intervals(Named):
    route: ClassVar[str] = "intervals"


@dataclass(kw_only=True, frozen=True)
class ReportProgress(Request):
    route: ClassVar[str] = "report_progress"
    name: str
    fraction: float

    def __post_init__(self) -> None:
        _name(self.name)
        _exact(self.fraction, (int, float), "fraction")
        check_number(self.fraction, field="fraction", lo=0, hi=1)


@dataclass(kw_only=True, frozen=True)
class RunStarted(Request):
    route: ClassVar[str] = "run_started"
    name: str
    epoch: int

    def __post_init__(self) -> None:
        _name(self.name)
        _exact(self.epoch, (int,), "epoch")
        check_number(self.epoch, field="epoch", lo=0, hi=2**31, integer=True)


@dataclass(kw_only=True, frozen=True)
class Status(Request):
    route: ClassVar[str] = "status"


@dataclass(kw_only=True, frozen=True)
class CostReport(Request):
    route: ClassVar[str] = "cost_report"


@dataclass(kw_only=True, frozen=True)
class PoolSignal(Request):
    """A signal about one pool."""

    node_type: str

    def __post_init__(self) -> None:
        _pool(self.node_type)


@dataclass(kw_only=True, frozen=True)
class Interrupt(PoolSignal):
    route: ClassVar[str] = "interrupt"


@dataclass(kw_only=True, frozen=True)
class ClearInterruption(PoolSignal):
    route: ClassVar[str] = "clear_interruption"


@dataclass(kw_only=True, frozen=True)
class CheckResidency(Request):
    route: ClassVar[str] = "check_residency"
    tenant: str
    region: str
    what: str = ""

    def __post_init__(self) -> None:
        _tenant(self.tenant)
        _exact(self.region, (str,), "region")
        check_text(self.region, field="region", max_len=32, pattern=REGION_PATTERN)
        _exact(self.what, (str,), "what")
        if self.what:
            check_text(self.what, field="what", max_len=300)


@dataclass(kw_only=True, frozen=True)
class StorageCredentials(Request):
    route: ClassVar[str] = "storage_credentials"
    tenant: str
    bucket: str
    hours: float = 1.0

    def __post_init__(self) -> None:
        _tenant(self.tenant)
        _exact(self.bucket, (str,), "bucket")
        check_text(self.bucket, field="bucket", max_len=63, pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
        _exact(self.hours, (int, float), "hours")


@dataclass(kw_only=True, frozen=True)
class RecordEvent(Request):
    route: ClassVar[str] = "record_event"
    action: str
    target: str
    why: str

    def __post_init__(self) -> None:
        for name in ("action", "target", "why"):
            _exact(getattr(self, name), (str,), name)
        check_text(self.action, field="action", max_len=40, pattern=r"[a-z][a-z0-9 _-]*")
        _name(self.target, "target")
        check_text(self.why, field="why", max_len=2000)


@dataclass(kw_only=True, frozen=True)
class SetTenant(Request):
    route: ClassVar[str] = "set_tenant"
    policy: TenantPolicy

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", rebuilt(self.policy, TenantPolicy, "policy"))


@dataclass(kw_only=True, frozen=True)
class AddPrincipal(Request):
    route: ClassVar[str] = "add_principal"
    name: str
    role: str
    credential_digest: str

    def __post_init__(self) -> None:
        for name in ("name", "role", "credential_digest"):
            _exact(getattr(self, name), (str,), name)
        check_text(self.credential_digest, field="credential_digest", max_len=64, pattern="[0-9a-f]{64}")


@dataclass(kw_only=True, frozen=True)
class RemovePrincipal(Request):
    route: ClassVar[str] = "remove_principal"
    name: str

    def __post_init__(self) -> None:
        _tenant(self.name, "name")


@dataclass(kw_only=True, frozen=True)
class ListPrincipals(Request):
    route: ClassVar[str] = "list_principals"


@dataclass(kw_only=True, frozen=True)
class Tick(Request):
    route: ClassVar[str] = "tick"


@dataclass(kw_only=True, frozen=True)
class Whoami(Request):
    route: ClassVar[str] = "whoami"


@dataclass(kw_only=True, frozen=True)
class AuditRecords(Request):
    """The audit trail's newest records: a tenant's own (about its workloads, or made by it), an admin's all."""

    route: ClassVar[str] = "audit_records"
    limit: int = 100

    def __post_init__(self) -> None:
        _exact(self.limit, (int,), "limit")
        check_number(self.limit, field="limit", lo=1, hi=1000, integer=True)


Role = Literal["admin", "tenant", "agent"]
Audit = Literal["summary", "decisions", "failures", "none"]
Owns = Literal["workload", "tenant", "spec", "target", "none"]


@dataclass(frozen=True)
class Route:
    request: type[Request]
    roles: tuple[Role, ...]
    mutates: bool
    audit: Audit
    owns: Owns = "none"

    @property
    def name(self) -> str:
        return self.request.route


ADMIN: tuple[Role, ...] = ("admin",)
PEOPLE: tuple[Role, ...] = ("admin", "tenant")
EVERYONE: tuple[Role, ...] = ("admin", "tenant", "agent")
POOL_SIGNALLERS: tuple[Role, ...] = ("admin", "agent")

ROUTES: dict[str, Route] = {r.name: r for r in (
    Route(Place, PEOPLE, mutates=True, audit="decisions", owns="spec"),
    Route(GetPlacement, PEOPLE, mutates=False, audit="none", owns="workload"),
    Route(ReportProgress, PEOPLE, mutates=True, audit="decisions", owns="workload"),
    Route(RunStarted, PEOPLE, mutates=True, audit="none", owns="workload"),
    Route(Finish, PEOPLE, mutates=True, audit="summary", owns="workload"),
    Route(Explain, PEOPLE, mutates=False, audit="none", owns="workload"),
    Route(Intervals, PEOPLE, mutates=False, audit="none", owns="workload"),
    Route(Status, EVERYONE, mutates=False, audit="none"),
    Route(CostReport, PEOPLE, mutates=False, audit="none"),
    Route(Interrupt, POOL_SIGNALLERS, mutates=True, audit="summary"),
    Route(ClearInterruption, POOL_SIGNALLERS, mutates=True, audit="summary"),
    Route(CheckResidency, PEOPLE, mutates=False, audit="failures", owns="tenant"),
    Route(StorageCredentials, PEOPLE, mutates=False, audit="summary", owns="tenant"),
    Route(RecordEvent, PEOPLE, mutates=True, audit="decisions", owns="target"),
    Route(SetTenant, ADMIN, mutates=True, audit="summary"),
    Route(AddPrincipal, ADMIN, mutates=True, audit="summary"),
    Route(RemovePrincipal, ADMIN, mutates=True, audit="summary"),
    Route(ListPrincipals, ADMIN, mutates=False, audit="none"),
    Route(Tick, ADMIN, mutates=True, audit="decisions"),
    Route(Whoami, EVERYONE, mutates=False, audit="none"),
    Route(AuditRecords, PEOPLE, mutates=False, audit="none"),
)}
