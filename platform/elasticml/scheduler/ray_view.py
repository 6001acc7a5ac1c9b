"""What Ray says runs: the GCS's and the autoscaler's views that the scheduler actor reads.

Pure functions of a live Ray connection, kept apart from the state they feed:
`ray_observer` (which node types a workload's workers or replicas are on, for
the ledger), `drain_nodes_of_type` (an interruption notice, told to Ray), and
`failed_launches` (the autoscaler's failed launches, for pools it cannot fill).
"""

from __future__ import annotations

import re
import time

import ray

from elasticml import labels as L

LOST_REASONS = {2: "unexpected termination", 3: "preempted"}  # UNEXPECTED_TERMINATION, AUTOSCALER_DRAIN_PREEMPTED
"""Ray's NodeDeathInfo reasons that mean the capacity was taken, not given back when idle."""


def serve_attachment(workload: str, *, tenant: str | None = None) -> str:
    """What a scheduler-placed Serve app attaches as: its pinned deployments are named `<workload>-pool-<type>`,
    in an operator's Serve app (`serve:NAME`) or in the app TENANT.NAME the API server built for a tenant
    (`serve:TENANT.NAME`)."""
    return f"serve:{tenant}.{workload}" if tenant else f"serve:{workload}"


def serve_replicas(attach: str) -> re.Pattern[str]:
    """The Ray actor names of the pinned replicas a `serve:` attachment stands for. A tenant's app built
    by the API server is its own Serve app TENANT.NAME; an operator's app has no `.` in its name: so one
    tenant's replicas are never counted as another's, or as an operator's."""

    tenant, _, name = attach.removeprefix("serve:").rpartition(".")
    app = rf"(?:{re.escape(tenant)}\.{re.escape(name)}|[^:.]+)" if tenant else r"[^:.]+"
    return re.compile(rf"ServeReplica:{app}:{re.escape(name)}-pool-[A-Za-z0-9_-]+")


def ray_observer(attach: str) -> dict[str, tuple[int, int]]:
    """{node type: (workers, distinct nodes)} of what runs a workload, from the GCS: a Ray job's live
    Ray Train workers (attach = the job's hex id), or a Serve app's live pinned replicas (`serve:NAME`)."""
    import re

    from ray._private import state

    alive_nodes = {n["NodeID"]: n.get("Labels", {}) for n in ray.nodes() if n.get("Alive")}
    seen: dict[str, tuple[int, set[str]]] = {}
    if attach.startswith("serve:"):
        wanted = serve_replicas(attach)
        actors = state.actors(actor_state_name="ALIVE").values()
    else:
        wanted = re.compile(r".*RayTrainWorker.*")
        actors = state.actors(job_id=ray.JobID.from_hex(attach), actor_state_name="ALIVE").values()
    for actor in actors:
        if not wanted.fullmatch(str(actor.get("ActorClassName", ""))):
            continue
        node_id = actor.get("Address", {}).get("NodeID")
        node_type = alive_nodes.get(node_id, {}).get(L.NODE_TYPE)
        if node_type is None:
            continue
        workers, nodes = seen.get(node_type, (0, set()))
        seen[node_type] = (workers + 1, nodes | {node_id})
    return {t: (w, len(n)) for t, (w, n) in seen.items()}


def drain_nodes_of_type(node_type: str, notice_seconds: int) -> list[str]:
    """Ask the GCS to drain every alive node of a node type as preempted; returns the accepted node ids."""
    from ray.core.generated import autoscaler_pb2

    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)  # type: ignore[attr-defined]  # ray/_raylet.pyi declares only part of the extension
    deadline_ms = time.time_ns() // 1_000_000 + notice_seconds * 1000
    drained = []
    for node in ray.nodes():
        if node.get("Alive") and node.get("Labels", {}).get(L.NODE_TYPE) == node_type:
            accepted, _ = gcs.drain_node(
                node["NodeID"], autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),  # type: ignore[attr-defined]  # protobuf-generated, no stub
                f"spot interruption notice for {node_type}", deadline_ms,
            )
            if accepted:
                drained.append(node["NodeID"])
    return drained


def failed_launches(timeout_s: int = 5) -> list[tuple[str, float]]:
    """(node type, when) of each launch the autoscaler reports failed, newest state from the GCS."""
    from ray.autoscaler.v2.sdk import get_cluster_status

    status = get_cluster_status(ray.get_runtime_context().gcs_address, timeout=timeout_s)
    return [(launch.ray_node_type_name, float(launch.failed_ts_s or launch.request_ts_s or 0))
            for launch in status.failed_launches]


PLATFORM_ENTRYPOINTS = ("jobs/train.py", "jobs/tune.py", "jobs/distill.py")
"""The platform's own job entrypoints: a tenant's placement may attach only a live Ray job running one."""


def attachable(attach: str, workload: str) -> str | None:
    """Why a tenant may not attach `workload` to the Ray job `attach` (None: it may): the job must be
    alive in the GCS and be one of the platform's own entrypoints, which place themselves with
    their own job id. A made-up id, a finished job or someone's own script is refused."""
    import re

    from ray._private import state

    if not re.fullmatch(r"[0-9a-f]{1,64}", attach):
        return "attach names a Ray job by its hex id"
    for job in state.state.job_table():
        if job["JobID"] == attach:
            if job["IsDead"]:
                return f"Ray job {attach} has finished"
            entry = str(job.get("Entrypoint", ""))
            if not any(e in entry for e in PLATFORM_ENTRYPOINTS):
                return f"Ray job {attach} is not one of the platform's entrypoints ({', '.join(PLATFORM_ENTRYPOINTS)})"
            return None
    return f"no Ray job {attach} runs on this cluster"
