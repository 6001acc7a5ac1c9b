"""The typed door to the cluster's scheduler: every caller (CLI, demo, jobs, Serve, watcher) goes through it.

`SchedulerClient.start` creates the one actor of a cluster (`elasticml cluster up`
does it for a local cluster, `elasticml scheduler start` on `ray up` or KubeRay
clusters); everything else uses `connect`, which only looks it up. Specs and
placements cross the actor as dataclasses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from elasticml.cluster.config import ClusterSpec, load_cluster_spec
from elasticml.errors import ConfigError, ElasticMLError, SchedulerNotRunning
from elasticml.home import home
from elasticml.scheduler.actor import ACTOR_NAME, NAMESPACE, SchedulerActor
from elasticml.scheduler.controller import ControllerConfig
from elasticml.scheduler.spec import Placement, TenantPolicy, WorkloadSpec

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
    def __init__(self, handle: Any) -> None:
        self._actor = handle

    @classmethod
    def start(cls, cluster: ClusterSpec | str | Path, *, ledger_path: str | Path | None = None,
              controller: ControllerConfig | None = None) -> SchedulerClient:
        """Create the cluster's scheduler on the head node (or find the one already there).

        Needs a Ray driver connection. The actor is given the parsed config, so it models the
        cluster it was started for whatever the head's working directory holds.
        """
        spec = cluster if isinstance(cluster, ClusterSpec) else load_cluster_spec(cluster)
        ledger = str(ledger_path or home() / "scheduler" / spec.name / "ledger.sqlite")
        handle = SchedulerActor.options(
            name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            # On the head: the ledger file lives on its disk, and the head is never spot.
            resources={"node:__internal_head__": 0.001},
        ).remote(spec, ledger, controller or ControllerConfig.from_env())
        client = cls(handle)
        client._call("ping")
        return client

    @classmethod
    def connect(cls) -> SchedulerClient:
        """The cluster's scheduler; SchedulerNotRunning if nobody started one. Needs a Ray driver connection."""
        try:
            handle = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
        except ValueError:
            raise SchedulerNotRunning(ray.get_runtime_context().gcs_address) from None
        return cls(handle)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return ray.get(getattr(self._actor, method).remote(*args))
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

    def report_progress(self, name: str, fraction: float) -> None:
        self._call("report_progress", name, fraction)

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

    def kill(self, *, no_restart: bool = False) -> None:
        ray.kill(self._actor, no_restart=no_restart)
