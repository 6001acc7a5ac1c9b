"""The scheduler's client: every caller (CLI, demo, jobs, Serve, watcher) reaches the door through it.

`SchedulerClient.start` creates the one actor of a cluster (`elasticml cluster up`
does it for a local cluster, `elasticml scheduler start` on `ray up` or KubeRay
clusters); everything else uses `connect`, which only looks it up. Each method builds
the request its route declares (requests.py) and sends its plain fields; the answer
comes back as the door's handler gave it.
"""

from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import ray

from elasticml.cluster.config import ClusterSpec, load_cluster_spec
from elasticml.errors import ConfigError, ElasticMLError, SchedulerNotRunning
from elasticml.home import home
from elasticml.scheduler.actor import ACTOR_NAME, NAMESPACE, SchedulerActor
from elasticml.scheduler import requests as R
from elasticml.scheduler.settings import ControllerConfig
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


class RayTransport:
    """Requests to the scheduler actor over a Ray connection, as the principal whose token it holds."""

    def __init__(self, handle: Any, token: str) -> None:
        self.actor = handle
        self._token = token

    def __call__(self, route: str, args: dict[str, Any], *, wait: bool = True) -> Any:
        ref = self.actor.call.remote(self._token, route, args)
        if not wait:
            return None
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ElasticMLError):
                raise cause from None
            raise


Transport = Callable[..., Any]
"""(route name, {field: plain value}, wait=True) -> the answer; a RayTransport, or any function (tests)."""


class SchedulerClient:
    """One method per route of requests.ROUTES (a test holds them together), each building its request."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    @classmethod
    def start(cls, cluster: ClusterSpec | str | Path, *, ledger_path: str | Path | None = None,
              controller: ControllerConfig | None = None) -> SchedulerClient:
        """Create the cluster's scheduler on the head node (or find the one already there).

        Needs a Ray driver connection. The actor is given the parsed config, so it models the
        cluster it was started for whatever the head's working directory holds.
        """
        from elasticml.scheduler.audit import audit_key_path
        from elasticml.scheduler.identity import admin_credential, agent_credential, name_of
        from elasticml.secret_file import digest

        spec = cluster if isinstance(cluster, ClusterSpec) else load_cluster_spec(cluster)
        ledger = str(ledger_path or home() / "scheduler" / spec.name / "ledger.sqlite")
        token = admin_credential(spec.name)  # the creator is the first admin
        handle = SchedulerActor.options(  # type: ignore[attr-defined]  # mypy keeps a decorated class's own type; ray.remote made it an ActorClass
            name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            # On the head: the ledger file lives on its disk, and the head is never spot.
            resources={"node:__internal_head__": 0.001},
        ).remote(spec, ledger, controller or ControllerConfig.from_env(), digest(token),
                  # Named as the ledger's folder is (what `elasticml audit verify --name` finds it by).
                  str(audit_key_path(Path(ledger).parent.name)))
        ray.get(handle.ping.remote())
        client = cls(RayTransport(handle, token))
        agent = agent_credential(spec.name)  # the node agents' (file-mounted on cloud nodes), trusted as agents
        if {"name": name_of(agent), "role": "agent"} not in client.principals():
            client._send(R.AddPrincipal(name=name_of(agent) or "", role="agent", credential_digest=digest(agent)))
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
        cluster_name = cast(str, ray.get(handle.ping.remote()))  # ping answers the cluster's name
        return cls(RayTransport(handle, find_credential(cluster_name, credential, default=default)))

    def _send(self, request: R.Request, *, wait: bool = True) -> Any:
        return self._transport(request.route, request.wire(), wait=wait)

    def place(self, spec: WorkloadSpec, *, attach: str | None = None) -> Placement:
        """This workload's placement (placed, queued or paused); PlacementRefused says why not at all.

        `attach`: the Ray job id whose training workers run it, so the ledger charges where they run.
        """
        return cast("Placement", self._send(R.Place(spec=spec, attach=attach)))

    def placement(self, name: str) -> Placement | None:
        return cast("Placement | None", self._send(R.GetPlacement(name=name)))

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
        self._send(R.ReportProgress(name=name, fraction=fraction))

    def report_progress_async(self, name: str, fraction: float) -> None:
        """report_progress without waiting for the answer (a training callback must not block on it)."""
        self._send(R.ReportProgress(name=name, fraction=fraction), wait=False)

    def run_started(self, name: str, epoch: int) -> float:
        """The workload's run for placement `epoch` is up; how long to wait before training (a replay's restart)."""
        return cast("float", self._send(R.RunStarted(name=name, epoch=epoch)))

    def finish(self, name: str) -> None:
        self._send(R.Finish(name=name))

    def interrupt(self, node_type: str) -> dict[str, Any]:
        """{"decisions": [...], "drained_nodes": [Ray node ids drained as preempted]}."""
        return cast("dict[str, Any]", self._send(R.Interrupt(node_type=node_type)))

    def clear_interruption(self, node_type: str) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", self._send(R.ClearInterruption(node_type=node_type)))

    def tick(self) -> list[dict[str, Any]]:
        """Run the controller once now (it also runs on its own period)."""
        return cast("list[dict[str, Any]]", self._send(R.Tick()))

    def explain(self, name: str) -> list[dict[str, Any]]:
        return cast("list[dict[str, Any]]", self._send(R.Explain(name=name)))

    def status(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self._send(R.Status()))

    def cost_report(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self._send(R.CostReport()))

    def intervals(self, name: str) -> list[dict[str, Any]]:
        """The ledger's intervals for one workload, oldest first."""
        return cast("list[dict[str, Any]]", self._send(R.Intervals(name=name)))

    def set_tenant(self, policy: TenantPolicy) -> None:
        self._send(R.SetTenant(policy=policy))

    def check_residency(self, tenant: str, uris: list[str]) -> None:
        """Refuse (PlacementRefused, audited) when any s3:// URI's bucket lies outside the tenant's regions;
        called before data or checkpoints are read or written there."""
        from elasticml.storage import bucket_region

        for uri in uris:
            region = bucket_region(uri)
            if region is not None:
                self._send(R.CheckResidency(tenant=tenant, region=region, what=uri[:300]))

    def storage_credentials(self, tenant: str, bucket: str, hours: float = 1.0) -> "S3Credentials | None":
        """Short-lived credentials reaching only s3://BUCKET/tenants/TENANT/ (None where the cluster
        keeps no tenant prefixes)."""
        return cast("S3Credentials | None", self._send(R.StorageCredentials(tenant=tenant, bucket=bucket, hours=hours)))

    def tenant_storage(self, tenant: str, uris: list[str], hours: float) -> list["S3Credentials"]:
        """Credentials for every bucket among `uris`, installed in this process (storage.use_credentials)
        and returned, for the job's workers to install too. Empty where the cluster vends none."""
        from elasticml.storage import use_credentials

        buckets = sorted({u.removeprefix("s3://").split("/", 1)[0] for u in uris if u.startswith("s3://")})
        creds = [c for c in (self.storage_credentials(tenant, b, hours) for b in buckets) if c is not None]
        use_credentials(creds)
        return creds

    def record_event(self, action: str, target: str, why: str) -> None:
        """Put a decision taken elsewhere in the platform (a canary verdict) into the audit trail."""
        self._send(R.RecordEvent(action=action, target=target, why=why))

    def whoami(self) -> dict[str, str]:
        return cast("dict[str, str]", self._send(R.Whoami()))

    def audit_records(self, limit: int = 100) -> list[dict[str, Any]]:
        """The trail's newest records: a tenant's own, an admin's all."""
        return cast("list[dict[str, Any]]", self._send(R.AuditRecords(limit=limit)))

    def add_principal(self, name: str, role: str, file: str | Path) -> Path:
        """A new credential for `name` with `role` (admin only), written to `file` (mode 0600); the
        scheduler keeps only its digest. Hand the file to whoever acts as `name`."""
        from elasticml.scheduler.identity import Principal, new_token, write_credential
        from elasticml.secret_file import digest

        Principal(name, role)  # refuse a bad name or role before a secret exists
        token = new_token(name)
        self._send(R.AddPrincipal(name=name, role=role, credential_digest=digest(token)))
        return write_credential(Path(file).expanduser(), token)

    def remove_principal(self, name: str) -> None:
        self._send(R.RemovePrincipal(name=name))

    def list_principals(self) -> list[dict[str, str]]:
        return cast("list[dict[str, str]]", self._send(R.ListPrincipals()))

    principals = list_principals

    def kill(self, *, no_restart: bool = False) -> None:
        ray.kill(self._transport.actor, no_restart=no_restart)  # type: ignore[attr-defined]  # kill is for a RayTransport (a driver on the cluster)


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
