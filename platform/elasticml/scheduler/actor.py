"""The scheduler actor: one named, detached Ray actor per cluster that owns placement and steers running work.

Who owns what: `SchedulerState` (state.py) is all of the actor's logic without
Ray, with its controller (controller.py); this module makes it a detached actor
on the head node and feeds it what Ray says: nodes that died (a lost spot node
is an interruption of its pool), launches the autoscaler cannot make (a pool
it cannot fill), live prices when asked, and, through `ray_view`, which node
types each workload's workers are on. Ray restarts the actor if it dies
(`max_restarts=-1`); a new incarnation reloads everything from the ledger.
Commands and the controller's ticks go through the actor's one queue
(`max_concurrency=1`), so they never race.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import ray

from elasticml import labels as L
from elasticml.cluster.config import ClusterSpec
from elasticml.scheduler.controller import ControllerConfig
from elasticml.scheduler.ray_view import LOST_REASONS, drain_nodes_of_type, failed_launches, ray_observer
from elasticml.scheduler.state import SchedulerState

ACTOR_NAME = "elasticml-scheduler"
NAMESPACE = "elasticml"

LAUNCH_FAILURE_FRESH_S = 20.0
"""A failed launch this recent means the pool is still failing (the autoscaler retries every few seconds)."""
LOST_NODE_HOLD_S = 120.0
"""A pool whose spot node was lost is tried again after this long (scheduler clock seconds)."""
NOTICE_SECONDS = 120
"""AWS gives two minutes between a spot interruption notice and the reclaim."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=1)
class SchedulerActor:
    """The named, detached actor on the head node. Ray lets anyone holding its handle call any of its
    methods, so it has only three: `ping` (the cluster's name, nothing else), `call` (every request,
    through the authenticating `Door`) and `poll` (the controller's ticks, with a secret only the
    actor's own poll thread knows)."""

    def __init__(self, cluster: ClusterSpec, ledger_path: str, controller: ControllerConfig, admin_digest: str) -> None:
        import secrets
        from pathlib import Path

        from elasticml.scheduler.audit import AuditLog, load_key
        from elasticml.scheduler.door import Door

        from elasticml.scheduler.tenant_storage import CredentialVendor

        self.core = ClusterScheduler(cluster, ledger_path, controller)
        self.core.vendor = CredentialVendor.from_env()  # the head's tenant roles (cloud); None locally
        folder = Path(ledger_path).parent
        self.core.audit = AuditLog(folder / "audit.jsonl", load_key(folder / "audit.key"))
        if not any(role == "admin" for role, _ in self.core.principals.values()):
            self.core.add_principal("admin", "admin", admin_digest)
            self.core.audit_action("add_principal", target="admin", who="scheduler", why="role admin: the cluster's creator")
        self.door = Door(self.core)
        self._poll_secret = secrets.token_hex(32)
        # The controller and node watching go through the actor's own queue, so they never race a command.
        me = ray.get_runtime_context().current_actor
        threading.Thread(target=_poll_forever, args=(me, self._poll_secret, controller.tick_seconds), daemon=True,
                         name="controller").start()

    def ping(self) -> str:
        return self.core.cluster.name

    def call(self, token: Any, method: Any, args: Any) -> Any:
        return self.door.call(token, method, args)

    def poll(self, secret: Any) -> list[dict[str, Any]]:
        import hmac

        if type(secret) is not str or not hmac.compare_digest(secret, self._poll_secret):
            raise PermissionError("poll is the actor's own")
        return self.core.tick()


class ClusterScheduler(SchedulerState):
    """SchedulerState fed by Ray: nodes that died, launches that fail, live prices, drains."""

    def __init__(self, cluster: ClusterSpec, ledger_path: str, controller: ControllerConfig) -> None:
        from elasticml.scheduler.metrics import SchedulerMetrics

        super().__init__(cluster, ledger_path, controller=controller, observer=ray_observer, incarnation=_session())
        self.metrics = SchedulerMetrics()
        self._seen_dead: set[str] = set()
        self._failing_since: dict[str, float] = {}
        self._prices_due = 0.0

    def tick(self) -> list[dict[str, Any]]:
        out = self.sync_nodes() + self.sync_capacity()
        if self.controller.live_prices_seconds and time.time() >= self._prices_due:
            self._prices_due = time.time() + self.controller.live_prices_seconds
            try:
                from elasticml.scheduler.aws_prices import LiveSpotPrices

                self.refresh_live_prices(LiveSpotPrices(endpoint_url=os.environ.get("ELASTICML_EC2_ENDPOINT")))
            except Exception as exc:  # EC2 unreachable or throttling: keep the last prices, say so
                self.note_event(
                    {"at": self.clock(), "event": "live prices failed", "why": str(exc)[:300]})
        out += self.controller_tick()
        try:
            self.metrics.update(self)
        except Exception as exc:  # numbers for dashboards must never stop the controller
            print(f"elasticml scheduler: metrics not updated: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return out

    def _record(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        out = super()._record(name, record)
        if getattr(self, "metrics", None) is not None:  # decisions replayed while loading come before it
            self.metrics.count(out)
        return out

    def sync_capacity(self) -> list[dict[str, Any]]:
        """Pools the autoscaler cannot fill: launches that keep failing (a cloud's capacity errors)."""
        if self.controller.unfillable_seconds is None:
            return []
        try:
            failed = failed_launches()
        except Exception:  # the autoscaler's state is unavailable for a moment: judge at the next tick
            return []
        now = time.time()
        fresh: dict[str, float] = {}
        for node_type, at in failed:
            if now - at <= LAUNCH_FAILURE_FRESH_S:
                fresh[node_type] = max(fresh.get(node_type, 0.0), at)
        for node_type in list(self._failing_since):
            if node_type not in fresh:
                del self._failing_since[node_type]
        for node_type, at in fresh.items():
            self._failing_since.setdefault(node_type, at)
        return self.set_unfillable({t: now - since for t, since in self._failing_since.items()})

    def sync_nodes(self) -> list[dict[str, Any]]:
        """Treat a spot node that died other than idle as an interruption of its pool."""
        out: list[dict[str, Any]] = []
        spot_pools = {p.node_type for p in self.pools if p.market == "spot"}
        for node in ray.nodes():
            node_id = node["NodeID"]
            if node.get("Alive") or node_id in self._seen_dead:
                continue
            self._seen_dead.add(node_id)
            node_type = node.get("Labels", {}).get(L.NODE_TYPE)
            reason = LOST_REASONS.get(int(node.get("DeathReason", 0) or 0))
            if node_type in spot_pools and reason:
                decisions = SchedulerState.interrupt(self, node_type, lasts_s=LOST_NODE_HOLD_S)["decisions"]
                for d in decisions:
                    d["reason"] = f"spot node {node_id[-8:]} of {node_type} was lost ({reason}); " + d["reason"]
                out += decisions
                self.note_event(
                    {"at": time.time(), "event": "spot node lost", "node_id": node_id, "node_type": node_type, "why": reason}
                )
        return out

    def interrupt(self, node_type: str) -> dict[str, Any]:
        """Re-place the pool's work, then tell Ray: drain its nodes as preempted.

        Ray's drain (reason PREEMPTION, with the notice's deadline) stops new work
        landing there and makes `ray.train.get_preemption_info()` non-None on the
        Ray Train workers of those nodes, which checkpoint at once.
        """
        result = super().interrupt(node_type)
        result["drained_nodes"] = drain_nodes_of_type(node_type, NOTICE_SECONDS)
        return result


def _session() -> str:
    """The running Ray cluster's session: new at every start, the same across restarts of this actor."""
    return f"{ray.get_runtime_context().gcs_address}/{ray._private.worker.global_worker.node.session_name}"


def _poll_forever(handle: Any, secret: str, period_s: float) -> None:
    while True:
        time.sleep(period_s)
        try:
            ray.get(handle.poll.remote(secret))
        except ray.exceptions.RayActorError:  # the actor is restarting or gone: its next incarnation polls again
            return
        except Exception as exc:  # one bad tick must not stop the controller: say so, and look again
            print(f"elasticml scheduler: controller tick failed: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
