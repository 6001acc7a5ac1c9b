"""A small Python client for the scheduler actor; the CLI and the demo use the same calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from elasticml.errors import ElasticMLError
from elasticml.home import home
from elasticml.scheduler.actor import ACTOR_NAME, NAMESPACE, SchedulerActor


class SchedulerClient:
    def __init__(self, handle: Any) -> None:
        self._actor = handle

    @classmethod
    def connect(cls, *, cluster_config: str | Path | None = None, ledger_path: str | Path | None = None,
                cluster_name: str = "local") -> SchedulerClient:
        """The cluster's scheduler, created on the head node if it does not exist yet.

        Needs a Ray driver connection (`ClusterInfo.connect()` or `ray.init`).
        """
        import os

        from elasticml.repo import default_cluster_config

        # Inside a job the cluster's name comes from the head's environment (set by `cluster up`).
        cluster_name = os.environ.get("ELASTICML_CLUSTER_NAME", cluster_name)
        config = str(Path(cluster_config or default_cluster_config()).resolve())
        ledger = str(ledger_path or home() / "scheduler" / cluster_name / "ledger.sqlite")
        handle = SchedulerActor.options(
            name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
            # On the head: the ledger file lives on its disk, and the head is never spot.
            resources={"node:__internal_head__": 0.001},
        ).remote(config, ledger)
        client = cls(handle)
        client._call("ping")
        return client

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return ray.get(getattr(self._actor, method).remote(*args))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ElasticMLError):
                raise cause from None
            raise

    def submit(self, spec: dict[str, Any]) -> list[dict[str, Any]]:
        return self._call("submit", spec)

    def finish(self, name: str) -> list[dict[str, Any]]:
        return self._call("finish", name)

    def interrupt(self, node_type: str) -> dict[str, Any]:
        """{"decisions": [...], "drained_nodes": [Ray node ids drained as preempted]}."""
        return self._call("interrupt", node_type)

    def clear_interruption(self, node_type: str) -> list[dict[str, Any]]:
        return self._call("clear_interruption", node_type)

    def placement(self, name: str) -> dict[str, Any] | None:
        return self._call("placement", name)

    def explain(self, name: str) -> list[dict[str, Any]]:
        return self._call("explain", name)

    def status(self) -> dict[str, Any]:
        return self._call("status")

    def cost_report(self) -> dict[str, Any]:
        return self._call("cost_report")

    def set_tenant(self, tenant: str, *, budget: float | None = None, max_cpus: float | None = None) -> None:
        self._call("set_tenant", {"tenant": tenant, "budget": budget, "max_cpus": max_cpus})

    def kill(self, *, no_restart: bool = False) -> None:
        ray.kill(self._actor, no_restart=no_restart)
