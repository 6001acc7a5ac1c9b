"""A tenant's Serve apps through the API server: deploy (and update), status, list, delete, and the
app's API keys (mint, list, revoke).

The server holds the Ray token, so it builds and runs the app; what runs is the platform's own
completion app (`elasticml.serve.completion`) from a `ServeConfig` the server validated, never a
tenant's code: no custom autoscaling policy, model module, environment variables or key files.
The build acts as the tenant (its credential reaches the scheduler), so the app is placed with the
tenant's budget, priority ceiling and residency and its deploy is audited in the tenant's name.

What it serves: the newest checkpoint of one of the tenant's own jobs (`job:SUBMISSION_ID`), or a
checkpoint in its S3 prefix (`s3://...`, confined where the cluster keeps tenants to their
prefixes). A path on the head is refused: it could be another tenant's run.

Each app is Serve's application `TENANT.NAME` at `/TENANT/NAME` (`.` is not in a name, so two
tenants' apps never collide), closed to everyone without one of its keys: the server keeps the
keys' digests (never a key) and an app with no key admits no one. Keys take effect when the app
is built, so minting or revoking one rebuilds it and answers once the new build serves: a
revoked key is refused from then on.
"""

from __future__ import annotations

import builtins
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from elasticml.atomic import write_atomic
from elasticml.dataconf import check_text
from elasticml.errors import AccessDenied, ConfigError, SchedulerError
from elasticml.scheduler.spec import MAX_NAME, NAME_PATTERN

FORBIDDEN = {
    "tenant": "the server deploys the app as the caller's tenant",
    "market": "the scheduler places a tenant's app",
    "env_vars": "a tenant's replicas get no environment of its choosing",
    "api_keys": "mint keys with apps/keys/mint; the server keeps their digests",
    "api_keys_file": "mint keys with apps/keys/mint; the server keeps their digests",
    "allowed_model_modules": "a tenant's app serves the reference model only",
    "tenant_share": "a tenant's app is its own: its keys share it",
}
MAX_APPS_PER_TENANT = 20
MAX_KEYS_PER_APP = 10
READY_WAIT_S = 100.0
"""How long a key change waits for the rebuilt app to serve before it answers."""
KEY_ID = r"k[0-9a-f]{8}"


class ServeOps(Protocol):
    """What the server asks of Ray Serve (the real one: `RayServe`)."""

    def run(self, app: Any, *, name: str, route_prefix: str) -> None: ...
    def delete(self, name: str) -> None: ...
    def status(self, name: str) -> str: ...


def serve_name(tenant: str, name: str) -> str:
    return f"{tenant}.{name}"


def route_prefix(tenant: str, name: str) -> str:
    return f"/{tenant}/{name}"


class Apps:
    def __init__(self, folder: Path, serve: ServeOps, jobs: Any, connect: Callable[[str], Any], *,
                 build: Callable[..., Any] | None = None, resolve: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`jobs`: the server's `Jobs` (whose run folders a `job:` checkpoint names); `connect(token)`: a
        `SchedulerClient` acting as that credential's principal; `build(args, sched=...)`: the app
        (default: the completion app's builder); `resolve`: `latest:RUN_DIR` to the checkpoint it
        names now (default: the platform's, which also verifies it)."""
        self.folder, self.serve, self.jobs, self.connect, self.clock = folder, serve, jobs, connect, clock
        if build is None:
            from elasticml.serve.completion import build_deployment

            build = build_deployment
        if resolve is None:
            from elasticml.train.checkpoint import resolve_checkpoint

            resolve = resolve_checkpoint
        self.build, self.resolve = build, resolve
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_lock = threading.Lock()

    @contextmanager
    def _holding(self, tenant: str, name: str) -> Iterator[None]:
        """One change of an app at a time (its record, its keys, its build), so two calls never
        interleave a read and a write of its keys."""
        with self._locks_lock:
            lock = self._locks.setdefault((tenant, name), threading.Lock())
        with lock:
            yield

    # -- the app -----------------------------------------------------------------------------
    def deploy(self, who: dict[str, str], token: str, body: Any) -> dict[str, Any]:
        """Deploy a new app or update one: the same name replaces its config."""
        config = _config_of(body)
        name = config.get("name", "completion")
        check_text(name, field="config.name", max_len=MAX_NAME, pattern=NAME_PATTERN)
        tenant = who["name"]
        # A tenant's ceiling is `normal` unless an admin raised it (ServeConfig's own default is an operator's `high`).
        config = {"priority": "normal", **config, "name": name,
                  "checkpoint": self._checkpoint(who, config.get("checkpoint"))}
        with self._holding(tenant, name):
            if not self._record(tenant, name).exists() and len(self._names(tenant)) >= MAX_APPS_PER_TENANT:
                raise ConfigError(f"a tenant has at most {MAX_APPS_PER_TENANT} apps; delete one first",
                                  field="config.name")
            self._build(tenant, token, config, self._keys(tenant, name), wait=False)
            self._record(tenant, name).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self._record(tenant, name), json.dumps({"config": config, "updated": self.clock()}),
                         mode=0o600)
            return self._describe(tenant, name)

    def status(self, who: dict[str, str], body: Any) -> dict[str, Any]:
        tenant, name = self._own(who, body)
        return self._describe(tenant, name)

    def list(self, who: dict[str, str], body: Any) -> list[dict[str, Any]]:
        tenants = sorted(p.name for p in (self.folder / "apps").glob("*")) if who["role"] == "admin" else [who["name"]]
        return [self._describe(t, n) for t in tenants for n in self._names(t)]

    def delete(self, who: dict[str, str], token: str, body: Any) -> dict[str, Any]:
        with self._changing(who, body) as (tenant, name):
            self.serve.delete(serve_name(tenant, name))
            self._record(tenant, name).unlink()
            self._keys_file(tenant, name).unlink(missing_ok=True)
        # The scheduler's controller finishes the app's workload when Ray shows none of its replicas
        # (a tenant may not finish a Serve app's workload itself: its replicas would run on unpaid).
        return {"app": name, "tenant": tenant, "deleted": True}

    # -- its keys ------------------------------------------------------------------------------
    def mint_key(self, who: dict[str, str], token: str, body: Any) -> dict[str, Any]:
        """A new key for the app, shown once; the app is rebuilt with it before this answers."""
        from elasticml.serve.auth import new_key

        with self._changing(who, body) as (tenant, name):
            keys = self._keys(tenant, name)
            if len(keys) >= MAX_KEYS_PER_APP:
                raise ConfigError(f"an app has at most {MAX_KEYS_PER_APP} keys; revoke one first", field="app")
            key, key_digest = new_key()
            key_id = f"k{secrets.token_hex(4)}"
            keys[key_id] = {"digest": key_digest, "created": self.clock()}
            self._rebuild(tenant, name, token, keys)  # saved once the app serves with it
            self._save_keys(tenant, name, keys)
        return {"app": name, "key_id": key_id, "key": key,
                "note": "shown once: the server keeps only its digest"}

    def list_keys(self, who: dict[str, str], body: Any) -> builtins.list[dict[str, Any]]:  # the method `list` shadows it here
        tenant, name = self._own(who, body)
        return [{"key_id": k, "created": v["created"]} for k, v in sorted(self._keys(tenant, name).items())]

    def revoke_key(self, who: dict[str, str], token: str, body: Any) -> dict[str, Any]:
        """The key stops working: the app is rebuilt without it before this answers."""
        with self._changing(who, body) as (tenant, name):
            key_id = body.get("key_id")
            check_text(key_id, field="key_id", max_len=9, pattern=KEY_ID)
            keys = self._keys(tenant, name)
            if key_id not in keys:
                raise ConfigError(f"the app {name} has no key {key_id}", field="key_id")
            del keys[key_id]
            # The key stays listed (and revocable again) until a build without it serves.
            self._rebuild(tenant, name, token, keys)
            self._save_keys(tenant, name, keys)
        return {"app": name, "key_id": key_id, "revoked": True}

    # -- inside --------------------------------------------------------------------------------
    def _checkpoint(self, who: dict[str, str], spec: Any) -> str:
        check_text(spec, field="config.checkpoint", max_len=1024)
        if spec.startswith("job:"):
            # Resolved once, here: a rebuild for a key change serves the same model, whatever the run writes next.
            return self.resolve(f"latest:{self.jobs.run_dir(who, {'submission_id': spec.removeprefix('job:')})}")
        if spec.startswith("s3://"):
            from elasticml.scheduler.tenant_storage import check_confined

            check_confined(who["name"], spec)  # its own prefix, whether or not the cluster vends prefixes
            return str(spec)  # the build checks it against the tenant's residency too
        raise ConfigError("a tenant's app serves its own job's checkpoint (job:SUBMISSION_ID) or one in its "
                          "S3 prefix (s3://...)", field="config.checkpoint")

    def _build(self, tenant: str, token: str, config: dict[str, Any], keys: dict[str, dict[str, Any]], *,
               wait: bool) -> None:
        name = config["name"]
        digests = {f"{tenant}/{k}": v["digest"] for k, v in keys.items()}
        # No key yet: a digest nobody holds the key of, so the app admits no one (an empty keyring is open).
        args = {**config, "tenant": tenant, "tenant_share": 1.0,
                "api_keys": digests or {f"{tenant}/none": _nobody()}}
        app = self.build(args, sched=self.connect(token), attach=f"serve:{serve_name(tenant, name)}")
        self.serve.run(app, name=serve_name(tenant, name), route_prefix=route_prefix(tenant, name))
        if wait:
            deadline = time.monotonic() + READY_WAIT_S
            while (state := self.serve.status(serve_name(tenant, name))) != "RUNNING":
                if state in ("DEPLOY_FAILED", "NOT_STARTED") or time.monotonic() > deadline:
                    raise SchedulerError(f"the app {name} did not come back up after its keys changed ({state}); "
                                         "its previous keys may still be in force: see apps/status")
                time.sleep(0.5)

    def _rebuild(self, tenant: str, name: str, token: str, keys: dict[str, dict[str, Any]]) -> None:
        self._build(tenant, token, json.loads(self._record(tenant, name).read_text())["config"], keys, wait=True)

    def _own(self, who: dict[str, str], body: Any) -> tuple[str, str]:
        """(tenant, app) named by the body, if the caller may see it."""
        tenant, name = self._named(who, body)
        self._require(who, tenant, name)
        return tenant, name

    @contextmanager
    def _changing(self, who: dict[str, str], body: Any) -> Iterator[tuple[str, str]]:
        """(tenant, app) named by the body, held for one change and seen to exist while it is held."""
        tenant, name = self._named(who, body)
        with self._holding(tenant, name):
            self._require(who, tenant, name)
            yield tenant, name

    @staticmethod
    def _named(who: dict[str, str], body: Any) -> tuple[str, str]:
        """(tenant, app) named by the body's `app` (and, for an admin, `tenant`), checked as names."""
        if type(body) is not dict:
            raise ConfigError("the body is a JSON object naming the app", field="body")
        name = body.get("app")
        check_text(name, field="app", max_len=MAX_NAME, pattern=NAME_PATTERN)
        tenant = who["name"]
        if who["role"] == "admin" and body.get("tenant") is not None:
            tenant = body["tenant"]
            check_text(tenant, field="tenant", max_len=MAX_NAME, pattern=NAME_PATTERN)
        return tenant, str(name)

    def _require(self, who: dict[str, str], tenant: str, name: str) -> None:
        if not self._record(tenant, name).exists():
            raise AccessDenied(f"{who['role']} {who['name']}", f"use app {name}", "this tenant has no app of that name")

    def _describe(self, tenant: str, name: str) -> dict[str, Any]:
        return {"app": name, "tenant": tenant, "route_prefix": route_prefix(tenant, name),
                "status": self.serve.status(serve_name(tenant, name)), "keys": len(self._keys(tenant, name))}

    def _names(self, tenant: str) -> builtins.list[str]:
        return sorted(p.stem for p in (self.folder / "apps" / tenant).glob("*.json"))

    def _record(self, tenant: str, name: str) -> Path:
        return self.folder / "apps" / tenant / f"{name}.json"

    def _keys_file(self, tenant: str, name: str) -> Path:
        return self._record(tenant, name).with_suffix(".keys")

    def _keys(self, tenant: str, name: str) -> dict[str, dict[str, Any]]:
        file = self._keys_file(tenant, name)
        return json.loads(file.read_text()) if file.exists() else {}

    def _save_keys(self, tenant: str, name: str, keys: dict[str, dict[str, Any]]) -> None:
        write_atomic(self._keys_file(tenant, name), json.dumps(keys), mode=0o600)


def _config_of(body: Any) -> dict[str, Any]:
    """The body's `config`: ServeConfig fields a tenant may set, checked by ServeConfig itself."""
    from elasticml.serve.config import ServeConfig

    if type(body) is not dict or type(body.get("config")) is not dict:
        raise ConfigError('the body is {"config": {ServeConfig fields}}', field="config")
    unknown = set(body) - {"config"}
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))[:200]}", field="body")
    config = dict(body["config"])
    for name, why in FORBIDDEN.items():
        if name in config:
            raise ConfigError(why, field=f"config.{name}")
    if config.get("autoscaling", "reactive") not in ("reactive", "predictive"):
        raise ConfigError("a tenant's app scales reactive or predictive (no policy code of its own)",
                          field="config.autoscaling")
    # Every field checked now, strictly (the checkpoint is resolved later; any text passes here).
    ServeConfig.from_dict({**config, "checkpoint": "s3://check/only", "tenant": "check"}, source="config")
    return config


def _nobody() -> str:
    from elasticml.secret_file import digest

    return digest(secrets.token_urlsafe(32))


class RayServe:
    """Ray Serve on the cluster the server is connected to."""

    def run(self, app: Any, *, name: str, route_prefix: str) -> None:
        from ray import serve

        serve._run(app, name=name, route_prefix=route_prefix, _blocking=False)

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name, _blocking=True)

    def status(self, name: str) -> str:
        from ray import serve

        try:
            apps = serve.status().applications
        except Exception:  # Serve not started on this cluster yet
            return "NOT_STARTED"
        app = apps.get(name)
        return str(app.status.value if hasattr(app.status, "value") else app.status) if app else "NOT_STARTED"


def server_apps(jobs: Any, call: Callable[[str, str, dict[str, Any]], Any], folder: Path | None = None) -> Apps:
    """The API server's apps, on the cluster it is connected to, each built as its caller."""
    from elasticml.home import home
    from elasticml.scheduler.client import SchedulerClient

    def connect(token: str) -> SchedulerClient:
        return SchedulerClient(lambda route, fields, wait=True: call(token, route, fields))

    return Apps(folder or home() / "api", RayServe(), jobs, connect)
