"""What Ray tells the scheduler, fed to it at each controller tick: nodes that died (a lost spot
node is an interruption of its pool), launches the autoscaler cannot make (a pool it cannot
fill), live prices when asked, and the dashboards' numbers. Runs only inside the actor."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import ray

from elasticml import labels as L
from elasticml.scheduler.ray_view import LOST_REASONS, drain_nodes_of_type, failed_launches

if TYPE_CHECKING:
    from elasticml.scheduler.shell import Shell

LAUNCH_FAILURE_FRESH_S = 20.0
"""A failed launch this recent means the pool is still failing (the autoscaler retries every few seconds)."""
LOST_NODE_HOLD_S = 120.0
"""A pool whose spot node was lost is tried again after this long (scheduler clock seconds)."""
NOTICE_SECONDS = 120
"""AWS gives two minutes between a spot interruption notice and the reclaim."""


class RaySignals:
    def __init__(self, shell: Shell) -> None:
        from elasticml.scheduler.metrics import SchedulerMetrics

        self.s = shell.scheduler
        self.controller = shell.controller
        self.metrics = SchedulerMetrics()
        self.s.on_record = self.metrics.count
        shell.door.drain = lambda node_type: drain_nodes_of_type(node_type, NOTICE_SECONDS)
        self._seen_dead: set[str] = set()
        self._failing_since: dict[str, float] = {}
        self._prices_due = 0.0

    def look(self) -> dict[str, Any]:
        """What Ray says now (nodes, failed launches): asked outside the committer, so that a slow
        GCS or autoscaler answer never holds up a batch of commands."""
        seen: dict[str, Any] = {"nodes": ray.nodes(), "failed": None}
        if self.s.config.unfillable_seconds is not None:
            try:
                seen["failed"] = failed_launches()
            except Exception:  # the autoscaler's state is unavailable for a moment: judge at the next tick
                pass
        return seen

    def tick(self, seen: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        seen = seen or self.look()
        out = self.sync_nodes(seen["nodes"]) + self.sync_capacity(seen["failed"])
        config = self.s.config
        if config.live_prices_seconds and time.time() >= self._prices_due:
            self._prices_due = time.time() + config.live_prices_seconds
            try:
                from elasticml.scheduler.aws_prices import LiveSpotPrices

                from elasticml.scheduler.prices import refresh_live_prices

                refresh_live_prices(self.s, LiveSpotPrices(endpoint_url=os.environ.get("ELASTICML_EC2_ENDPOINT")))
            except Exception as exc:  # EC2 unreachable or throttling: keep the last prices, say so
                self.s.note_event({"at": self.s.clock(), "event": "live prices failed", "why": str(exc)[:300]})
        out += self.controller.tick()
        try:
            self.metrics.update(self.s)
        except Exception as exc:  # numbers for dashboards must never stop the controller
            print(f"elasticml scheduler: metrics not updated: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return out

    def sync_capacity(self, failed: list[tuple[str, float]] | None) -> list[dict[str, Any]]:
        """Pools the autoscaler cannot fill: launches that keep failing (a cloud's capacity errors)."""
        if self.s.config.unfillable_seconds is None or failed is None:
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
        return self.s.set_unfillable({t: now - since for t, since in self._failing_since.items()})

    def sync_nodes(self, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Treat a spot node that died other than idle as an interruption of its pool."""
        out: list[dict[str, Any]] = []
        spot_pools = {p.node_type for p in self.s.pools if p.market == "spot"}
        for node in nodes:
            node_id = node["NodeID"]
            if node.get("Alive") or node_id in self._seen_dead:
                continue
            node_type = node.get("Labels", {}).get(L.NODE_TYPE)
            reason = LOST_REASONS.get(int(node.get("DeathReason", 0) or 0))
            if node_type in spot_pools and reason:
                with self.s.command():
                    why = f"spot node {node_id[-8:]} of {node_type} was lost ({reason})"
                    out += self.s.interrupt(node_type, lasts_s=LOST_NODE_HOLD_S, why=why)["decisions"]
                    self.s.note_event({"at": self.s.clock(), "event": "spot node lost", "node_id": node_id,
                                       "node_type": node_type, "why": reason})
            # Marked seen once its command is done: a failed one is looked at again at the next tick.
            self._seen_dead.add(node_id)
        return out


def session() -> str:
    """The running Ray cluster's session: new at every start, the same across restarts of the actor."""
    return f"{ray.get_runtime_context().gcs_address}/{ray._private.worker.global_worker.node.session_name}"  # type: ignore[union-attr]  # a connected process has a node

