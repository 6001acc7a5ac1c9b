"""Karpenter for the KubeRay manifests: the EC2NodeClass and one NodePool per market and instance family.

A worker group's pods select their pool by `karpenter.sh/capacity-type` and
`karpenter.k8s.aws/instance-family` (`node_selector`); the pool allows the sizes of that family its
pods fit on (`allocatable.pool_sizes`), so Karpenter may launch a larger size when the cheapest is
short. Taints keep pods off nodes that are not for them: the GPU pools' `nvidia.com/gpu` (only pods
that use GPUs, so a head never lands on a p5), and the CPU spot pools' capacity-type taint (only pods
that tolerate losing their node). A GPU spot pool carries the GPU taint alone: the NVIDIA device
plugin's DaemonSet tolerates that one and no other, and without it no node advertises its GPUs; the
GPU taint already keeps every pod but GPU workers off, and those select their market.
"""

from __future__ import annotations

from typing import Any

from elasticml.errors import ConfigError
from elasticml.provision import allocatable
from elasticml.provision.definition import ClusterDefinition, NodeGroup
from elasticml.provision.files import docs

CAPACITY_TYPE = "karpenter.sh/capacity-type"
INSTANCE_FAMILY = "karpenter.k8s.aws/instance-family"
INSTANCE_SIZE = "karpenter.k8s.aws/instance-size"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
SPOT_TAINT = {"key": CAPACITY_TYPE, "value": "spot", "effect": "NoSchedule"}
DO_NOT_DISRUPT = {"karpenter.sh/do-not-disrupt": "true"}
"""On the pods Karpenter must not move to consolidate or replace a drifted node: heads and training workers."""

AMI_ALIAS = "al2023@v20260818"
"""The EKS-optimized AL2023 release every node boots (Karpenter picks its NVIDIA variant for GPU types).
Pinned, not `@latest`, so that a new AMI reaches nodes only when an operator bumps this and renders:
with `@latest` every release drifts every node, which Karpenter then replaces."""
EXPIRE_AFTER = "720h"
"""Nodes are replaced after 30 days, so that the pinned AMI's successors and patches do reach them."""
TERMINATION_GRACE = "48h"
"""How long an expiring node waits for do-not-disrupt pods before it is drained anyway: a training run
gets two days to finish or checkpoint (it resumes from its checkpoint), and a platform head does move."""
DISRUPTION_BUDGET = "10%"
"""At most this share of a pool's nodes disrupted at once (Karpenter rounds up: a small pool loses one)."""


def node_selector(g: NodeGroup) -> dict[str, str]:
    """Where a worker group's pods land: its market's pool of its instance family, whatever the size."""
    return {CAPACITY_TYPE: g.market, INSTANCE_FAMILY: allocatable.instance_type(g.instance_type).family}


def _pools(d: ClusterDefinition) -> dict[tuple[str, str], list[NodeGroup]]:
    pools: dict[tuple[str, str], list[NodeGroup]] = {}
    for g in d.groups:
        pools.setdefault((g.market, allocatable.instance_type(g.instance_type).family), []).append(g)
    if not any(market == "on-demand" and not any(g.gpus for g in groups) for (market, _), groups in pools.items()):
        # The head selects on-demand capacity and tolerates neither taint.
        raise ConfigError("a KubeRay head needs an on-demand CPU node group to land on", field=f"{d.name}.groups")
    return pools


def nodeclass(d: ClusterDefinition) -> dict[str, Any]:
    discovery = {"karpenter.sh/discovery": f"elasticml-{d.name}"}
    return {
        "apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass", "metadata": {"name": f"elasticml-{d.name}"},
        "spec": {
            "amiSelectorTerms": [{"alias": AMI_ALIAS}],
            "role": f"elasticml-{d.name}-karpenter-node",
            "subnetSelectorTerms": [{"tags": discovery}], "securityGroupSelectorTerms": [{"tags": discovery}],
            # Reserved capacity: the cluster's capacity reservations, found by their tag.
            "capacityReservationSelectorTerms": [{"tags": {"elasticml/cluster": d.name}}],
            "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1,
                                "httpProtocolIPv6": "disabled"},
            "blockDeviceMappings": [{"deviceName": "/dev/xvda",
                                     "ebs": {"volumeSize": "100Gi", "volumeType": "gp3", "encrypted": True}}],
        },
    }


def pool_name(d: ClusterDefinition, market: str, family: str) -> str:
    return f"elasticml-{d.name}-{market}-{family}"


def nodepool(d: ClusterDefinition, market: str, family: str, groups: list[NodeGroup]) -> dict[str, Any]:
    """The pool of one market and instance family, for the definition's groups of that market and family."""
    sizes = {it.name: it for g in groups for it in allocatable.pool_sizes(g.instance_type)}
    gpu = any(g.gpus for g in groups)
    spec: dict[str, Any] = {
        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": f"elasticml-{d.name}"},
        "requirements": [
            {"key": CAPACITY_TYPE, "operator": "In", "values": [market]},
            {"key": INSTANCE_FAMILY, "operator": "In", "values": [family]},
            {"key": INSTANCE_SIZE, "operator": "In",
             "values": [it.size for it in sorted(sizes.values(), key=lambda it: it.vcpus)]},
        ],
        "expireAfter": EXPIRE_AFTER,
        "terminationGracePeriod": TERMINATION_GRACE,
    }
    taints = [GPU_TAINT] if gpu else [SPOT_TAINT] if market == "spot" else []
    if taints:
        spec["taints"] = [dict(t) for t in taints]
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": pool_name(d, market, family)},
        "spec": {"template": {"spec": spec},
                 "limits": {"cpu": str(sum(g.cpus * g.max_workers for g in groups))},
                 # WhenEmpty, never WhenUnderutilized: Ray's autoscaler removes idle worker pods itself,
                 # and Karpenter moving a busy one to pack nodes would kill its tasks (on spot too,
                 # where a cheaper replacement is not worth a lost run).
                 "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "60s",
                                "budgets": [{"nodes": DISRUPTION_BUDGET}]}},
    }


def manifests(d: ClusterDefinition) -> str:
    order = {"spot": 0, "on-demand": 1, "reserved": 2}
    pools = sorted(_pools(d).items(), key=lambda item: (order[item[0][0]], item[0][1]))
    return docs([nodeclass(d)] + [nodepool(d, market, family, groups) for (market, family), groups in pools])
