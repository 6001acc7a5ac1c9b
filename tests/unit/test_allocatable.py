"""Pods that fit: every Ray pod of every KubeRay manifest schedules on every node its NodePools may launch.

The allocatable numbers are held to the ones Karpenter publishes; the fit check reads the rendered
manifests as Kubernetes and Karpenter would (the NodePools' requirements and taints, the pods' node
selectors, tolerations and containers), not the code that rendered them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from elasticml.errors import ConfigError
from elasticml.provision import allocatable as A
from elasticml.provision.karpenter import CAPACITY_TYPE, INSTANCE_FAMILY, INSTANCE_SIZE
from elasticml.provision.render import definition_at_site
from elasticml.provision.tenant import render_tenant

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]

PUBLISHED = {
    # Karpenter's website/content/en/docs/reference/instance-types.md (AL2023): allocatable cpu, memory, pods.
    "m7i.2xlarge": (7910, 29317, 58), "m7i.4xlarge": (15890, 57691, 234), "m7i.8xlarge": (31850, 118312, 234),
    "c7i.4xlarge": (15890, 27381, 234), "c7i.8xlarge": (31850, 57691, 234), "c7i.12xlarge": (47810, 88002, 234),
    "c7i.16xlarge": (63770, 112779, 737), "g5.12xlarge": (47810, 173400, 737), "g5.16xlarge": (63770, 239554, 234),
    "g5.24xlarge": (95690, 355262, 737), "g5.48xlarge": (191450, 723299, 345), "p5.48xlarge": (191450, 1938410, 100),
}
AUTOSCALER_SIDECAR = {"cpu": "500m", "memory": "512Mi"}
"""What KubeRay gives the autoscaler container it adds to the head when in-tree autoscaling is on
(its default requests; the manifest does not carry it, the node must still hold it)."""


def test_allocatable_is_what_karpenter_publishes_for_every_type_in_the_table():
    assert set(PUBLISHED) == set(A.INSTANCE_TYPES)
    for name, (cpu_m, memory_mi, pods) in PUBLISHED.items():
        it = A.INSTANCE_TYPES[name]
        assert (A.allocatable(it).cpu_m, A.allocatable(it).memory_mi, it.max_pods) == (cpu_m, memory_mi, pods), name
    assert [A.kube_reserved_cpu_m(n) for n in (1, 2, 4, 8, 192)] == [60, 70, 80, 90, 550]
    assert A.kube_reserved_memory_mi(58) == 893 and A.vm_memory_overhead_mi(32768) == 2458


@pytest.mark.parametrize("name", AWS)
def test_the_definitions_instance_types_are_in_the_table_and_agree_with_it(name):
    for g in definition_at_site(name).groups:
        it = A.instance_type(g.instance_type)
        assert (it.vcpus, it.memory_mib, it.gpus) == (g.cpus, g.memory_gib * 1024, g.gpus), g.name
        assert A.pool_sizes(g.instance_type)[0] == it  # the group's own size is its pool's smallest
        assert A.pod_requests(g.instance_type).fits_in(A.pod_room(it))


def test_requests_for_an_unknown_instance_type_name_the_table():
    with pytest.raises(ConfigError, match="allocatable.py") as info:
        A.pod_requests("m7i.3xlarge")
    assert info.value.field == "instance_type"


def test_a_gpu_group_never_gets_a_size_with_fewer_gpus():
    assert [it.name for it in A.pool_sizes("g5.12xlarge")] == ["g5.12xlarge", "g5.24xlarge", "g5.48xlarge"]
    assert [it.name for it in A.pool_sizes("m7i.2xlarge")] == ["m7i.2xlarge", "m7i.4xlarge", "m7i.8xlarge"]


# ---- reading manifests as the kube-scheduler and Karpenter do ----

def _cpu_m(q: Any) -> int:
    q = str(q)
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


def _memory_mi(q: Any) -> int:
    q = str(q)
    for unit, mi in (("Ki", 1 / 1024), ("Mi", 1), ("Gi", 1024), ("Ti", 1024 * 1024)):
        if q.endswith(unit):
            return -int(-float(q[: -len(unit)]) * mi // 1)
    return -(-int(q) // 2**20)


def _container_requests(c: dict[str, Any]) -> A.Resources:
    res = c.get("resources", {})
    want = {**res.get("limits", {}), **res.get("requests", {})}  # a limit alone is also the request
    return A.Resources(cpu_m=_cpu_m(want.get("cpu", 0)), memory_mi=_memory_mi(want.get("memory", 0)),
                       gpus=int(want.get("nvidia.com/gpu", 0)))


def pod_requests(pod: dict[str, Any], *, autoscaler_sidecar: bool) -> A.Resources:
    containers = [_container_requests(c) for c in pod["containers"]]
    if autoscaler_sidecar:
        containers.append(_container_requests({"resources": {"requests": AUTOSCALER_SIDECAR}}))
    total = A.Resources(cpu_m=sum(c.cpu_m for c in containers), memory_mi=sum(c.memory_mi for c in containers),
                        gpus=sum(c.gpus for c in containers))
    for init in (_container_requests(c) for c in pod.get("initContainers", [])):  # run one at a time, before
        total = A.Resources(cpu_m=max(total.cpu_m, init.cpu_m), memory_mi=max(total.memory_mi, init.memory_mi),
                            gpus=max(total.gpus, init.gpus))
    return total


def _labels(it: A.InstanceType, capacity: str) -> dict[str, str]:
    return {CAPACITY_TYPE: capacity, "node.kubernetes.io/instance-type": it.name, INSTANCE_FAMILY: it.family,
            INSTANCE_SIZE: it.size, "karpenter.k8s.aws/instance-cpu": str(it.vcpus),
            "karpenter.k8s.aws/instance-memory": str(it.memory_mib),
            "karpenter.k8s.aws/instance-gpu-count": str(it.gpus)}


def _admits(req: dict[str, Any], labels: dict[str, str]) -> bool:
    value, op, values = labels.get(req["key"]), req["operator"], req.get("values", [])
    if op == "In":
        return value in values
    if op == "NotIn":
        return value not in values
    if op in ("Exists", "DoesNotExist"):
        return (value is not None) == (op == "Exists")
    return value is not None and (int(value) > int(values[0]) if op == "Gt" else int(value) < int(values[0]))


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    return any(t["key"] == taint["key"] and (t.get("operator") == "Exists" or t.get("value") == taint.get("value"))
               and t.get("effect", taint["effect"]) == taint["effect"] for t in tolerations)


def landing(pod: dict[str, Any], pools: list[dict[str, Any]]) -> list[tuple[str, A.InstanceType]]:
    """(pool, instance type) for every node a pool may launch that the pod's selector and tolerations admit."""
    out = []
    for pool in pools:
        spec = pool["spec"]["template"]["spec"]
        if not all(_tolerates(pod.get("tolerations", []), t) for t in spec.get("taints", [])):
            continue
        reqs = spec["requirements"]
        capacities = next(r["values"] for r in reqs if r["key"] == CAPACITY_TYPE)
        for it in A.INSTANCE_TYPES.values():
            for capacity in capacities:
                labels = _labels(it, capacity)
                if all(_admits(r, labels) for r in reqs) and all(labels.get(k) == v
                                                                  for k, v in pod.get("nodeSelector", {}).items()):
                    out.append((pool["metadata"]["name"], it))
    return out


def pool_is_closed(pool: dict[str, Any]) -> bool:
    """The pool's family and size requirements name only instance types in the table (so a fit on the
    table is a fit on whatever the pool may launch)."""
    reqs = {r["key"]: r for r in pool["spec"]["template"]["spec"]["requirements"]}
    family, size = reqs.get(INSTANCE_FAMILY), reqs.get(INSTANCE_SIZE)
    return (family is not None and size is not None and family["operator"] == size["operator"] == "In"
            and all(f"{f}.{s}" in A.INSTANCE_TYPES for f in family["values"] for s in size["values"]))


def ray_pods(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(where, pod spec, whether KubeRay adds its autoscaler sidecar) for the head and every worker group."""
    spec = {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
            "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])
    where = f"{doc['kind']} {doc['metadata']['name']}"
    pods = [(f"{where} head", spec["headGroupSpec"]["template"]["spec"], bool(spec.get("enableInTreeAutoscaling")))]
    return pods + [(f"{where} {g['groupName']}", g["template"]["spec"], False) for g in spec["workerGroupSpecs"]]


def unfit_pods(docs: list[dict[str, Any]], pools: list[dict[str, Any]]) -> list[str]:
    """Why each pod that could stay Pending would: nowhere to land, or a node it may land on too small."""
    problems = [f"{p['metadata']['name']}: may launch types not in allocatable.py" for p in pools if not pool_is_closed(p)]
    for doc in docs:
        for where, pod, sidecar in ray_pods(doc):
            want = pod_requests(pod, autoscaler_sidecar=sidecar)
            nodes = landing(pod, pools)
            if not nodes:
                problems.append(f"{where}: no NodePool admits it")
            problems += [f"{where}: requests {want} exceed {it.name}'s room {A.pod_room(it)} ({pool})"
                         for pool, it in nodes if not want.fits_in(A.pod_room(it))]
    return problems


def _manifests(name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    kube = REPO / "cluster_configs" / "kuberay"
    docs = [yaml.safe_load((kube / f"{name}-{kind}.yaml").read_text()) for kind in ("raycluster", "rayjob", "rayservice")]
    [(_, tenant)] = render_tenant(name, "research").items()
    docs += [d for d in yaml.safe_load_all(tenant) if d["kind"] == "RayCluster"]
    pools = [d for d in yaml.safe_load_all((kube / f"{name}-karpenter.yaml").read_text()) if d["kind"] == "NodePool"]
    return docs, pools


@pytest.mark.parametrize("name", AWS)
def test_every_pod_of_every_manifest_fits_every_node_its_pools_may_launch(name):
    docs, pools = _manifests(name)
    assert len(docs) == 4 and pools
    assert unfit_pods(docs, pools) == []
    for doc in docs:
        for where, pod, _ in ray_pods(doc):
            kinds = {it.gpus > 0 for _, it in landing(pod, pools)}
            if where.endswith("head"):  # the GPU pools' taint keeps heads off GPU nodes
                assert kinds == {False}, where


@pytest.mark.parametrize("name", AWS)
def test_pods_that_request_the_whole_instance_as_before_are_caught(name):
    """The sizing this replaced (requests = the instance's CPUs, 7/8 of its memory) stays Pending."""
    docs, pools = _manifests(name)
    groups = {g.name.replace("_", "-"): g for g in definition_at_site(name).groups}
    before = copy.deepcopy(docs)
    for doc in before:
        for where, pod, _ in ray_pods(doc):
            if not where.endswith("head"):
                g = groups[where.rsplit(" ", 1)[1]]
                whole = {"cpu": str(g.cpus), "memory": f"{g.memory_gib * 7 // 8}Gi"}
                pod["containers"][0]["resources"]["requests"].update(whole)
    problems = unfit_pods(before, pools)
    assert {p.split(":")[0].rsplit(" ", 1)[1] for p in problems} == set(groups)


def test_only_serve_workers_may_be_disrupted_by_karpenter():
    docs, _ = _manifests("aws-gpu")
    for doc in docs:
        spec = {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
                "RayService": lambda s: s["rayClusterConfig"]}[doc["kind"]](doc["spec"])
        head = spec["headGroupSpec"]["template"]["metadata"]
        assert head["annotations"] == {"karpenter.sh/do-not-disrupt": "true"}, doc["kind"]
        for g in spec["workerGroupSpecs"]:
            pinned = g["template"]["metadata"].get("annotations", {}).get("karpenter.sh/do-not-disrupt") == "true"
            assert pinned == (doc["kind"] != "RayService"), (doc["kind"], g["groupName"])
