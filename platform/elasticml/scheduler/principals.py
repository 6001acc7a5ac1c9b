"""Who may call the scheduler, kept in its store: add, change, remove and list principals.

Only digests of credentials are kept (identity.py makes and checks them). One rule holds across
every change: there is always an admin, so the last one can be neither removed nor demoted.
"""

from __future__ import annotations

from elasticml.dataconf import check_text
from elasticml.errors import ConfigError
from elasticml.scheduler.core import Scheduler
from elasticml.scheduler.identity import Principal
from elasticml.scheduler.spec import MAX_NAME, NAME_PATTERN


def add_principal(s: Scheduler, name: str, role: str, credential_digest: str) -> None:
    principal = Principal(name, role)
    check_text(credential_digest, field="credential_digest", max_len=64, pattern="[0-9a-f]{64}")
    old = s.store.principals.get(name)
    if old is not None and old[0] == "admin" and role != "admin" and _admins(s) == 1:
        raise ConfigError(f"{name} is the last admin: add another admin before changing its role", field="role")
    with s.command():
        s.store.put_principal(principal.name, principal.role, credential_digest)


def remove_principal(s: Scheduler, name: str) -> None:
    check_text(name, field="name", max_len=MAX_NAME, pattern=NAME_PATTERN)
    if name not in s.store.principals:
        raise ConfigError(f"no principal {name!r}", field="name")
    if s.store.principals[name][0] == "admin" and _admins(s) == 1:
        raise ConfigError("the last admin cannot be removed", field="name")
    with s.command():
        s.store.drop_principal(name)


def _admins(s: Scheduler) -> int:
    return sum(r == "admin" for r, _ in s.store.principals.values())


def list_principals(s: Scheduler) -> list[dict[str, str]]:
    return [{"name": n, "role": r} for n, (r, _) in sorted(s.store.principals.items())]
