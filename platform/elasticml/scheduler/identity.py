"""Who calls the scheduler: principals with roles, their credentials, and what each role may do.

A principal is a name and a role:
- `admin`: everything, including tenants' budgets and quotas and the principals themselves;
- `tenant`: its own workloads only (the principal's name is the tenant's): place them, read their
  placement, report their progress, finish them, explain them and see their costs;
- `agent`: a node agent (the spot watcher, the replayed market's driver): interruption notices
  for spot pools, nothing else.

A credential is a bearer token `eml1.<name>.<secret>`, kept in a file only its owner can read
(`ELASTICML_CREDENTIAL_PATH` names it; never the token itself in an environment variable, a
job's runtime_env, a URL or a log). The scheduler stores only the sha256 digest of each and
compares in constant time. The cluster's creator gets the admin credential at
`$ELASTICML_HOME/credentials/<cluster>/admin`.
"""

from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from elasticml.atomic import write_atomic
from elasticml.errors import AuthError, ConfigError
from elasticml.home import home
from elasticml.secret_file import digest

ROLES = ("admin", "tenant", "agent")
CREDENTIAL_ENV = "ELASTICML_CREDENTIAL_PATH"
PREFIX = "eml1"
NAME = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
MAX_CREDENTIAL_BYTES = 4096


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def __post_init__(self) -> None:
        if type(self.name) is not str or not re.fullmatch(NAME, self.name):
            raise ConfigError(f"must be 1-63 of a-z, 0-9 and '-', got {str(self.name)[:70]!r}", field="principal")
        if self.role not in ROLES:
            raise ConfigError(f"must be one of {', '.join(ROLES)}, got {str(self.role)[:20]!r}", field="role")

    def __str__(self) -> str:
        return f"{self.role} {self.name}"


def new_token(name: str) -> str:
    return f"{PREFIX}.{name}.{secrets.token_urlsafe(32)}"


def name_of(token: object) -> str | None:
    """The principal a token claims to be (unverified), or None for something that is not a token."""
    if type(token) is not str or len(token) > MAX_CREDENTIAL_BYTES:
        return None
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not re.fullmatch(NAME, parts[1]):
        return None
    return parts[1]


def verify(token: object, known: dict[str, tuple[str, str]]) -> Principal | None:
    """The principal whose credential this is (`known`: name -> (role, digest)), else None."""
    name = name_of(token)
    if name is None or name not in known:
        digest("x" * 64)  # as much work for an unknown name as for a known one
        return None
    role, want = known[name]
    if not hmac.compare_digest(digest(token), want):  # type: ignore[arg-type]  # name_of found a name, so token is a str
        return None
    return Principal(name, role)


def credentials_dir(cluster: str) -> Path:
    return home() / "credentials" / cluster


def write_credential(path: Path, token: str) -> Path:
    write_atomic(path, token + "\n", mode=0o600)
    return path


def read_credential(path: str | Path) -> str:
    """A credential file's token; AuthError naming the file (never the token) when it is unusable."""
    file = Path(path).expanduser()
    try:
        info = file.stat()
        if info.st_size > MAX_CREDENTIAL_BYTES:
            raise AuthError(f"the credential file {file} is larger than {MAX_CREDENTIAL_BYTES} bytes")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuthError(f"the credential file {file} is readable by others; `chmod 600 {file}`")
        token = file.read_text().strip()
    except FileNotFoundError:
        raise AuthError(f"no credential file at {file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthError(f"cannot read the credential file {file}: {type(exc).__name__}") from None
    if name_of(token) is None:
        raise AuthError(f"the credential file {file} does not hold an elasticml credential")
    return token


def find_credential(cluster: str, explicit: str | Path | None = None, *, default: str = "admin") -> str:
    """The caller's token: `explicit`, else $ELASTICML_CREDENTIAL_PATH, else this cluster's `default`
    file (`admin` on the head; `agent` for the node agents, which every node has)."""
    path = explicit or os.environ.get(CREDENTIAL_ENV) or credentials_dir(cluster) / default
    return read_credential(path)


def admin_credential(cluster: str) -> str:
    """The cluster creator's admin token, made on first use."""
    path = credentials_dir(cluster) / "admin"
    if not path.exists():
        write_credential(path, new_token("admin"))
    return read_credential(path)


AGENT = "node-agent"


def agent_credential(cluster: str) -> str:
    """The node agents' token (the spot watcher, a replayed market's driver), made on first use.

    On a cloud cluster it is made on the launching machine (`elasticml cluster credentials`) and
    travels to every node as a file mount, as Ray's own token does; the head's scheduler trusts it
    as an agent when it starts. Only the agent file goes to workers, never the admin one."""
    path = credentials_dir(cluster) / "agent"
    if not path.exists():
        write_credential(path, new_token(AGENT))
    return read_credential(path)
