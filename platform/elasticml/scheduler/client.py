"""The typed door to the cluster's scheduler: every caller (CLI, demo, jobs, Serve, watcher) goes through it.

`SchedulerClient.start` creates the one actor of a cluster (`elasticml cluster up`
does it for a local cluster, `elasticml scheduler start` on `ray up` or KubeRay
clusters); everything else uses `connect`, which only looks it up. Specs and
placements cross the actor as dataclasses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from elasticml.cluster.config import ClusterSpec, load_cluster_spec
from elasticml.errors import ConfigError, ElasticMLError, SchedulerNotRunning
from elasticml.home import home
from elasticml.scheduler.actor import ACTOR_NAME, NAMESPACE, SchedulerActor
from elasticml.scheduler.controller import ControllerConfig
from elasticml.scheduler.spec import Placement, TenantPolicy, WorkloadSpec

if TYPE_CHECKING:
    from elasticml.storage import S3Credentials

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
"""Where Ray's cluster launcher leaves the running cluster's config on its head node."""
CONFIG_ENV = "ELASTICML_CLUSTER_CONFIG"
"""A cluster YAML path set on KubeRay heads (and anywhere the launcher's file is absent)."""


def running_cluster_config(explicit: str | Path | None = None) -> Path:
    """The config of the cluster this process runs on: --config, then $ELASTICML_CLUSTER_CONFIG,
    then the launcher's ~/ray_bootstrap_config.yaml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    bootstrap = BOOTSTRAP_CONFIG.expanduser()
    if bootstrap.is_file():
        return bootstrap
    raise ConfigError(
        f"which cluster? pass --config CLUSTER.yaml, set {CONFIG_ENV}, or run on a `ray up` head "
        f"(which has {BOOTSTRAP_CONFIG})", field="config",
    )


class SchedulerClient:
    def __init__(self, handle: Any, token: str) -> None:
        self._actor = handle
        self._token = token

    @classmethod
    def start(cls, cluster: ClusterSpec | str | Path, *, ledger_path: str | Path | None = None,
              controller: ControllerConfig | None = None) -> SchedulerClient:
        """Create the cluster's scheduler on the head node (or find the one already there).

        Needs a Ray driver connection. The actor is given the parsed config, so it models the
        cluster it was started for whatever the head's working directory holds.
        """
        from elasticml.scheduler.identity import admin_credential, agent_credential, digest, name_of

        spec = cluster if isinstance(cluster, ClusterSpec) else load_cluster_spec(cluster)
        ledger = str(ledger_path or home() / "scheduler" / spec.name / "ledger.sqlite")
        token = admin_credential(spec.name)  # the creator is the first admin
        handle = SchedulerActor.options(
            name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            # On the head: the ledger file lives on its disk, and the head is never spot.
            resources={"node:__internal_head__": 0.001},
        ).remote(spec, ledger, controller or ControllerConfig.from_env(), digest(token))
        ray.get(handle.ping.remote())
        client = cls(handle, token)
        agent = agent_credential(spec.name)  # the node agents' (file-mounted on cloud nodes), trusted as agents
        if {"name": name_of(agent), "role": "agent"} not in client.principals():
            client._call("add_principal", name_of(agent), "agent", digest(agent))
        return client

    @classmethod
    def connect(cls, credential: str | Path | None = None, *, default: str = "admin") -> SchedulerClient:
        """The cluster's scheduler, called as the principal whose credential file is `credential`
        (default: $ELASTICML_CREDENTIAL_PATH, else this cluster's `default` file in $ELASTICML_HOME:
        `admin`, or `agent` for node agents). SchedulerNotRunning if nobody started one. Needs a Ray
        driver connection."""
        from elasticml.scheduler.identity import find_credential

        try:
            handle = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
        except ValueError:
            raise SchedulerNotRunning(ray.get_runtime_context().gcs_address) from None
        return cls(handle, find_credential(ray.get(handle.ping.remote()), credential, default=default))

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return ray.get(self._actor.call.remote(self._token, method, args))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ElasticMLError):
                raise cause from None
            raise

    def place(self, spec: WorkloadSpec, *, attach: str | None = None) -> Placement:
        """This workload's placement (placed, queued or paused); PlacementRefused says why not at all.

        `attach`: the Ray job id whose training workers run it, so the ledger charges where they run.
        """
        if not isinstance(spec, WorkloadSpec):
            raise ConfigError(f"expected a WorkloadSpec, got {type(spec).__name__}", field="spec")
        return self._call("place", spec, attach)

    def placement(self, name: str) -> Placement | None:
        return self._call("placement", name)

    def wait_placed(self, name: str, placement: Placement, *, max_wait_s: float, waited_s: float = 0.0,
                    poll_s: float = 1.0) -> tuple[Placement, float]:
        """Ask again until `name` is placed; (its placement, seconds waited in all, counting `waited_s`).
        SchedulerError when that passes `max_wait_s`, or when the scheduler forgets it."""
        import time

        from elasticml.errors import SchedulerError

        while not placement.placed:
            if waited_s > max_wait_s:
                raise SchedulerError(f"{name} waited {waited_s:.0f}s to be placed: {placement.reason}")
            time.sleep(poll_s)
            waited_s += poll_s
            found = self.placement(name)
            if found is None:
                raise SchedulerError(f"the scheduler forgot {name}")
            placement = found
        return placement, waited_s

    def report_progress(self, name: str, fraction: float) -> None:
        self._call("report_progress", name, fraction)

    def report_progress_async(self, name: str, fraction: float) -> None:
        """report_progress without waiting for the answer (a training callback must not block on it)."""
        self._actor.call.remote(self._token, "report_progress", (name, fraction))

    def run_started(self, name: str, epoch: int) -> float:
        """The workload's run for placement `epoch` is up; how long to wait before training (a replay's restart)."""
        return self._call("run_started", name, epoch)

    def finish(self, name: str) -> None:
        self._call("finish", name)

    def interrupt(self, node_type: str) -> dict[str, Any]:
        """{"decisions": [...], "drained_nodes": [Ray node ids drained as preempted]}."""
        return self._call("interrupt", node_type)

    def clear_interruption(self, node_type: str) -> list[dict[str, Any]]:
        return self._call("clear_interruption", node_type)

    def tick(self) -> list[dict[str, Any]]:
        """Run the controller once now (it also runs on its own period)."""
        return self._call("tick")

    def explain(self, name: str) -> list[dict[str, Any]]:
        return self._call("explain", name)

    def status(self) -> dict[str, Any]:
        return self._call("status")

    def cost_report(self) -> dict[str, Any]:
        return self._call("cost_report")

    def intervals(self, name: str) -> list[dict[str, Any]]:
        """The ledger's intervals for one workload, oldest first."""
        return self._call("intervals", name)

    def set_tenant(self, policy: TenantPolicy) -> None:
        self._call("set_tenant", policy)

    def check_residency(self, tenant: str, uris: list[str]) -> None:
        """Refuse (PlacementRefused, audited) when any s3:// URI's bucket lies outside the tenant's regions;
        called before data or checkpoints are read or written there."""
        from elasticml.storage import bucket_region

        for uri in uris:
            region = bucket_region(uri)
            if region is not None:
                self._call("check_residency", tenant, region, uri[:300])

    def storage_credentials(self, tenant: str, bucket: str, hours: float = 1.0) -> "S3Credentials | None":
        """Short-lived credentials reaching only s3://BUCKET/tenants/TENANT/ (None where the cluster
        keeps no tenant prefixes)."""
        return self._call("storage_credentials", tenant, bucket, hours)

    def tenant_storage(self, tenant: str, uris: list[str], hours: float) -> list["S3Credentials"]:
        """Credentials for every bucket among `uris`, installed in this process (storage.use_credentials)
        and returned, for the job's workers to install too. Empty where the cluster vends none."""
        from elasticml.storage import use_credentials

        buckets = sorted({u.removeprefix("s3://").split("/", 1)[0] for u in uris if u.startswith("s3://")})
        creds = [c for c in (self.storage_credentials(tenant, b, hours) for b in buckets) if c is not None]
        use_credentials(creds)
        return creds

    def record_event(self, action: str, target: str, why: str) -> None:
        """Put a decision taken elsewhere in the platform (a canary verdict) into the audit trail (admin)."""
        self._call("record_event", action, target, why)

    def whoami(self) -> dict[str, str]:
        return self._call("whoami")

    def add_principal(self, name: str, role: str, file: str | Path) -> Path:
        """A new credential for `name` with `role` (admin only), written to `file` (mode 0600); the
        scheduler keeps only its digest. Hand the file to whoever acts as `name`."""
        from elasticml.scheduler.identity import Principal, digest, new_token, write_credential

        Principal(name, role)  # refuse a bad name or role before a secret exists
        token = new_token(name)
        self._call("add_principal", name, role, digest(token))
        return write_credential(Path(file).expanduser(), token)

    def remove_principal(self, name: str) -> None:
        self._call("remove_principal", name)

    def principals(self) -> list[dict[str, str]]:
        return self._call("list_principals")

    def kill(self, *, no_restart: bool = False) -> None:
        ray.kill(self._actor, no_restart=no_restart)


def job_tenant(tenant: str | None, market: str | None) -> str | None:
    """The tenant a job (jobs/train.py, jobs/tune.py) runs as: run with a tenant's credential
    ($ELASTICML_CREDENTIAL_PATH) it is that tenant's work whatever its flags say, so the scheduler
    places it with its budget and residency: another --tenant and any --market are refused.
    Without one, `tenant` as given (an operator's choice). Needs a Ray driver connection then."""
    from elasticml.scheduler.identity import CREDENTIAL_ENV

    if not os.environ.get(CREDENTIAL_ENV):
        return tenant
    me = SchedulerClient.connect().whoami()
    if me["role"] != "tenant":
        return tenant
    if tenant not in (None, me["name"]):
        raise ConfigError(f"this job runs as tenant {me['name']}, not {tenant}", field="tenant")
    if market not in (None, "any"):
        raise ConfigError("a tenant's job is placed by the scheduler; --market is for admins", field="market")
    return me["name"]
