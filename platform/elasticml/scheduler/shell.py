"""The scheduler put together: store, commands, controller, door and audit trail, without Ray.

The actor (actor.py) opens one on the head node; tests and benchmarks open the same thing in
process. Opening it also keeps two promises that hold across restarts: the cluster's creator
is an admin whenever no admin exists, and the audit tip a schema-1 store left unsigned is
checked against the trail and signed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from elasticml.cluster.config import ClusterSpec
from elasticml.errors import AuditError
from elasticml.scheduler.audit import AuditLog, load_key
from elasticml.scheduler.controller import Controller, Observer
from elasticml.scheduler.core import Scheduler
from elasticml.scheduler.door import AttachCheck, Door
from elasticml.scheduler.principals import add_principal
from elasticml.scheduler.settings import ControllerConfig
from elasticml.scheduler.store import Store


@dataclass
class Shell:
    store: Store
    scheduler: Scheduler
    controller: Controller
    door: Door


def open_shell(cluster: ClusterSpec, ledger_path: str | Path, config: ControllerConfig | None = None, *,
               admin_digest: str, audit_key_path: str | Path, incarnation: str | None = None, live: bool = False,
               observer: Observer | None = None, attach_check: AttachCheck | None = None,
               clock: Callable[[], float] | None = None, on_write: Callable[[str], None] | None = None) -> Shell:
    """`live`: on a real cluster (Ray's observer of workers, the head's storage-credential vendor)."""
    store = Store(ledger_path, on_write=on_write)
    kwargs = {} if clock is None else {"clock": clock}
    scheduler = Scheduler(cluster, store, config=config, incarnation=incarnation, **kwargs)
    if live:
        from elasticml.scheduler.ray_view import ray_observer
        from elasticml.scheduler.tenant_storage import CredentialVendor

        observer = observer or ray_observer
        scheduler.vendor = CredentialVendor.from_env()  # the head's tenant roles (cloud); None locally
    trail = Path(ledger_path).parent / "audit.jsonl"
    _move_key_from_beside_the_trail(trail.parent / "audit.key", Path(audit_key_path))
    scheduler.audit = AuditLog(trail, load_key(Path(audit_key_path)))
    _sign_unsigned_tip(scheduler, trail)
    controller = Controller(scheduler, observer=observer)
    if not any(role == "admin" for role, _ in store.principals.values()):
        with scheduler.command():
            add_principal(scheduler, "admin", "admin", admin_digest)
            scheduler.audit_action("add_principal", target="admin", who="scheduler", why="role admin: the cluster's creator")
    return Shell(store, scheduler, controller, Door(scheduler, controller, attach_check=attach_check))


def _move_key_from_beside_the_trail(old: Path, new: Path) -> None:
    """Schedulers of schema 1 kept the audit key beside the trail, where whoever could rewrite the
    trail could re-sign it too: it moves to its own place, once (the trail's MACs need that key)."""
    if old.exists() and not new.exists():
        import os

        new.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old, new)


def _sign_unsigned_tip(scheduler: Scheduler, trail: Path) -> None:
    """A schema-1 tip ([seq, mac], unsigned): if the trail reaches it, sign the trail's tip now;
    if not, refuse to start over a trail that was cut."""
    old = scheduler.store.meta("audit_tip")
    if not isinstance(old, list):
        return
    audit = scheduler.audit
    assert audit is not None
    macs = {r.get("seq"): r.get("mac") for r in audit.records()}
    if len(old) != 2 or macs.get(old[0], "0" * 64 if old[0] == 0 else None) != old[1]:
        raise AuditError(f"the audit trail {trail} does not reach the tip its store recorded ({old[:1]}): "
                         "records were cut off; `elasticml audit verify` says where")
    with scheduler.command():
        scheduler.store.set_meta("audit_tip", audit.tip())
