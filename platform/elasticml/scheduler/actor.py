"""The scheduler actor: one named, detached Ray actor per cluster that owns placement state.

Who owns what: the actor owns the workload specs, their allocations, the
queue and the interrupted-pool set, all persisted in the ledger's SQLite file
on every change; the policy (`policy.py`) owns every decision and is pure. The
actor only takes a snapshot, asks the policy, applies what it says and writes
it down. Ray restarts the actor if it dies (`max_restarts=-1`); a new
incarnation reloads everything from the ledger, so a restart loses nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from elasticml import labels as L
from elasticml.cluster.config import load_cluster_spec
from elasticml.scheduler.capacity import Allocation, Snapshot, pools_from_cluster
from elasticml.scheduler.catalog import PriceCatalog
from elasticml.scheduler.ledger import Ledger
from elasticml.scheduler.policy import Decision, place, rebalance, replace_interrupted
from elasticml.scheduler.spec import TenantPolicy, Tenants, WorkloadSpec

ACTOR_NAME = "elasticml-scheduler"
NAMESPACE = "elasticml"


class SchedulerState:
    """The actor's logic without Ray, so it can be tested and reasoned about on its own."""

    def __init__(self, cluster_config: str, ledger_path: str) -> None:
        self.catalog = PriceCatalog.load()
        self.pools = pools_from_cluster(load_cluster_spec(cluster_config), self.catalog)
        self.ledger = Ledger(ledger_path)
        self.specs = {k.removeprefix("spec:"): WorkloadSpec.from_dict(json.loads(v))
                      for k, v in self.ledger.state_items("spec:").items()}
        self.allocations = {k.removeprefix("alloc:"): [Allocation(**a) for a in json.loads(v)]
                            for k, v in self.ledger.state_items("alloc:").items()}
        self.queue: list[str] = json.loads(self.ledger.get_state("queue") or "[]")
        self.interrupted: set[str] = set(json.loads(self.ledger.get_state("interrupted") or "[]"))
        self.tenants = Tenants(policies={k.removeprefix("tenant:"): TenantPolicy(**json.loads(v))
                                         for k, v in self.ledger.state_items("tenant:").items()})
        self.explanations: dict[str, list[dict[str, Any]]] = {
            k.removeprefix("why:"): json.loads(v) for k, v in self.ledger.state_items("why:").items()
        }

    # -- snapshot --------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        now = time.time()
        spend = {r.key: r.cost for r in self.ledger.costs_by("tenant", now=now)}
        allocs = tuple(a for lst in self.allocations.values() for a in lst)
        return Snapshot(now=now / 3600, pools=self.pools, allocations=allocs,
                        interrupted_pools=frozenset(self.interrupted), tenant_spend=spend)

    # -- commands --------------------------------------------------------------
    def set_tenant(self, policy: dict[str, Any]) -> None:
        p = TenantPolicy(**policy)
        self.tenants = Tenants(policies={**self.tenants.policies, p.tenant: p})
        self.ledger.put_state(f"tenant:{p.tenant}", json.dumps(asdict(p)))

    def submit(self, spec_dict: dict[str, Any]) -> list[dict[str, Any]]:
        spec = WorkloadSpec.from_dict(spec_dict)
        if spec.name in self.allocations:
            self._release(spec.name)
        running_specs = {n: s for n, s in self.specs.items() if n in self.allocations}
        decisions = place(self.snapshot(), [spec], running_specs, self.tenants)
        self.specs[spec.name] = spec
        self.ledger.put_state(f"spec:{spec.name}", json.dumps(spec.to_dict()))
        return self._apply(decisions)

    def finish(self, name: str) -> list[dict[str, Any]]:
        """The workload is done: close its intervals, then give its room to the queue and to cheaper moves."""
        self._release(name)
        self.specs.pop(name, None)
        self.ledger.delete_state(f"spec:{name}")
        self._dequeue(name)
        return self._retry_queue() + self._apply(rebalance(self.snapshot(), self._running_specs(), self.tenants))

    def interrupt(self, node_type: str) -> dict[str, Any]:
        """A spot pool got an interruption notice: {"decisions": re-placements, "drained_nodes": []}."""
        decisions = replace_interrupted(self.snapshot(), node_type, self._running_specs(), self.tenants)
        self.interrupted.add(node_type)
        self.ledger.put_state("interrupted", json.dumps(sorted(self.interrupted)))
        return {"decisions": self._apply(decisions), "drained_nodes": []}

    def clear_interruption(self, node_type: str) -> list[dict[str, Any]]:
        self.interrupted.discard(node_type)
        self.ledger.put_state("interrupted", json.dumps(sorted(self.interrupted)))
        return self._retry_queue() + self._apply(rebalance(self.snapshot(), self._running_specs(), self.tenants))

    def placement(self, name: str) -> dict[str, Any] | None:
        """The current placement of a running workload, with its Ray options."""
        if name not in self.allocations:
            return None
        last = next((d for d in reversed(self.explanations.get(name, [])) if d["action"] in ("place", "move")), None)
        return last

    def explain(self, name: str) -> list[dict[str, Any]]:
        return self.explanations.get(name, [])

    def status(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            "pools": [{**asdict(p), "used_nodes": snap.used_nodes(p.node_type), "interrupted": p.node_type in self.interrupted}
                      for p in self.pools],
            "running": {n: [asdict(a) for a in lst] for n, lst in self.allocations.items()},
            "queued": list(self.queue),
            "catalog_version": self.catalog.version,
        }

    def cost_report(self) -> dict[str, Any]:
        now = time.time()
        report = {}
        for column in ("tenant", "workload", "market"):
            report[column] = [{"key": r.key, "cost": r.cost, "on_demand_cost": r.on_demand_cost,
                               "savings": r.savings, "worker_hours": r.hours} for r in self.ledger.costs_by(column, now=now)]
        total = sum(r["cost"] for r in report["tenant"])
        od = sum(r["on_demand_cost"] for r in report["tenant"])
        report["total"] = {"cost": total, "on_demand_cost": od, "savings": od - total,
                           "savings_pct": 100 * (od - total) / od if od else 0.0}
        report["intervals"] = len(self.ledger.intervals())
        return report

    # -- applying decisions ----------------------------------------------------
    def _running_specs(self) -> dict[str, WorkloadSpec]:
        return {n: self.specs[n] for n in self.allocations if n in self.specs}

    def _apply(self, decisions: list[Decision]) -> list[dict[str, Any]]:
        out = []
        for d in decisions:
            if d.action in ("place", "move"):
                self._release(d.workload)
                self._dequeue(d.workload)
                self.allocations[d.workload] = list(d.allocations)
                self.ledger.put_state(f"alloc:{d.workload}", json.dumps([asdict(a) for a in d.allocations]))
                for a in d.allocations:
                    pool = next(p for p in self.pools if p.node_type == a.node_type)
                    od = a.nodes * self.catalog.hourly(pool.instance_type, "on-demand", pool.region)
                    self.ledger.open(workload=a.workload, tenant=a.tenant, node_type=a.node_type, market=a.market,
                                     workers=a.workers, hourly_cost=a.hourly_cost, on_demand_hourly_cost=od)
            elif d.action == "preempt":
                self._release(d.workload)
            elif d.action == "queue":
                self._release(d.workload)
                if d.workload not in self.queue:
                    self.queue.append(d.workload)
                    self.ledger.put_state("queue", json.dumps(self.queue))
            elif d.action == "refuse":
                self._dequeue(d.workload)
            record = {**d.to_dict(), "at": time.time()}
            self.explanations.setdefault(d.workload, []).append(record)
            self.explanations[d.workload] = self.explanations[d.workload][-20:]
            self.ledger.put_state(f"why:{d.workload}", json.dumps(self.explanations[d.workload]))
            out.append(record)
        return out

    def _release(self, name: str) -> None:
        if self.allocations.pop(name, None) is not None:
            self.ledger.close(name)
            self.ledger.delete_state(f"alloc:{name}")

    def _dequeue(self, name: str) -> None:
        if name in self.queue:
            self.queue.remove(name)
            self.ledger.put_state("queue", json.dumps(self.queue))

    def _retry_queue(self) -> list[dict[str, Any]]:
        if not self.queue:
            return []
        waiting = [self.specs[n] for n in self.queue if n in self.specs]
        return self._apply(place(self.snapshot(), waiting, self._running_specs(), self.tenants))


NOTICE_SECONDS = 120
"""AWS gives two minutes between a spot interruption notice and the reclaim."""
NODE_POLL_S = float(os.environ.get("ELASTICML_SCHEDULER_NODE_POLL_S", "5"))
# Ray's NodeDeathInfo reasons that mean the capacity was taken, not given back when idle.
LOST_REASONS = {2: "unexpected termination", 3: "preempted"}  # UNEXPECTED_TERMINATION, AUTOSCALER_DRAIN_PREEMPTED


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=1)
class SchedulerActor(SchedulerState):
    """SchedulerState as a named, detached actor on the head node."""

    def __init__(self, cluster_config: str, ledger_path: str) -> None:
        super().__init__(cluster_config, ledger_path)
        self._seen_dead: set[str] = set()
        # Node watching goes through the actor's own queue, so it never races a command.
        me = ray.get_runtime_context().current_actor
        threading.Thread(target=_poll_forever, args=(me,), daemon=True, name="node-watch").start()

    def ping(self) -> str:
        return "ok"

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
                decisions = super().interrupt(node_type)["decisions"]
                for d in decisions:
                    d["reason"] = f"spot node {node_id[-8:]} of {node_type} was lost ({reason}); " + d["reason"]
                out += decisions
                self.explanations.setdefault("_events", []).append(
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


def _poll_forever(handle: Any) -> None:
    while True:
        time.sleep(NODE_POLL_S)
        try:
            ray.get(handle.sync_nodes.remote())
        except Exception:  # the actor is restarting or gone: its next incarnation polls again
            return


def drain_nodes_of_type(node_type: str, notice_seconds: int) -> list[str]:
    """Ask the GCS to drain every alive node of a node type as preempted; returns the accepted node ids."""
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    deadline_ms = time.time_ns() // 1_000_000 + notice_seconds * 1000
    drained = []
    for node in ray.nodes():
        if node.get("Alive") and node.get("Labels", {}).get(L.NODE_TYPE) == node_type:
            accepted, _ = gcs.drain_node(
                node["NodeID"], autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                f"spot interruption notice for {node_type}", deadline_ms,
            )
            if accepted:
                drained.append(node["NodeID"])
    return drained
