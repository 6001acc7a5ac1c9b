"""Karpenter for the KubeRay manifests: the EC2NodeClass and one NodePool per market.

Pods select a market by `karpenter.sh/capacity-type`; the spot pool is tainted so that only pods that
tolerate losing their node land there.
"""

from __future__ import annotations

from typing import Any

from elasticml.provision.definition import ClusterDefinition
from elasticml.provision.files import docs
from elasticml.provision.kuberay import CAPACITY_TYPE

def nodeclass(d: ClusterDefinition) -> dict[str, Any]:
    discovery = {"karpenter.sh/discovery": f"elasticml-{d.name}"}
    return {
        "apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass", "metadata": {"name": f"elasticml-{d.name}"},
        "spec": {
            "amiSelectorTerms": [{"alias": "al2023@latest"}],
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


def nodepool(d: ClusterDefinition, market: str) -> dict[str, Any]:
    """One NodePool per market, for the instance types the definition's groups of that market use."""
    groups = [g for g in d.groups if g.market == market]
    spec: dict[str, Any] = {
        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": f"elasticml-{d.name}"},
        "requirements": [
            {"key": CAPACITY_TYPE, "operator": "In", "values": [market]},
            {"key": "node.kubernetes.io/instance-type", "operator": "In",
             "values": sorted({g.instance_type for g in groups})},
        ],
    }
    if market == "spot":  # only pods that tolerate losing their node land here (the spot worker groups)
        spec["taints"] = [{"key": CAPACITY_TYPE, "value": "spot", "effect": "NoSchedule"}]
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": f"elasticml-{d.name}-{market}"},
        "spec": {"template": {"spec": spec},
                 "limits": {"cpu": str(sum(g.cpus * g.max_workers for g in groups))},
                 "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "60s"}},
    }


def manifests(d: ClusterDefinition) -> str:
    markets = [m for m in ("spot", "on-demand", "reserved") if any(g.market == m for g in d.groups)]
    return docs([nodeclass(d)] + [nodepool(d, m) for m in markets])
