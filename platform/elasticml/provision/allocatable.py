"""What one Ray pod may request on a node Karpenter launches, and which sizes a NodePool may launch.

Owner of the instance-type table that the KubeRay renders size pods and NodePools by. A pod that
requests a whole instance (8 CPU on an m7i.2xlarge) never schedules: the kubelet keeps some of the
node for itself and the DaemonSets take more. So a pod requests what is left, computed here the way
Karpenter computes a node before launching it, and a NodePool allows only sizes a pod of its group
fits on.

Glossary:
- capacity: what EC2 sells (vCPUs, memory in MiB, GPUs).
- allocatable: capacity less kube-reserved CPU and memory, the kubelet's hard eviction threshold and
  Karpenter's VM memory overhead; what the kube-scheduler hands out. `allocatable()` equals the
  numbers Karpenter publishes for AL2023 nodes (its docs' reference/instance-types.md), which the
  tests hold it to.
- pod room: allocatable less the DaemonSet budget (`DAEMONSETS`); what one Ray pod requests.
- pool sizes: the sizes of a group's instance family that its NodePool may launch: from the group's
  own size up to `MAX_SIZE_FACTOR` times its vCPUs, never with fewer GPUs. Every one of them fits the
  pod, so Karpenter may launch a larger size when the cheapest is short (spot) and pack pods on it.

Invariant: a NodePool names only instance types in `INSTANCE_TYPES`, so every pod's fit is checked
against real numbers; add a size here (with its sources) before a pool may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from elasticml.errors import ConfigError

MAX_SIZE_FACTOR = 4
"""A pool allows sizes up to 4x its group's vCPUs (m7i 2xlarge..8xlarge): a choice when one size is
short on spot, without letting one node hold so many Ray pods that losing it loses a pool."""


@dataclass(kw_only=True, frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_mib: int
    gpus: int = 0
    max_pods: int
    """ENI-limited pods (amazon-eks-ami's eni-max-pods.txt: ENIs x (IPv4 per ENI - 1) + 2), which
    Karpenter uses when the NodePool sets no maxPods, and which kube-reserved memory grows with."""

    def __post_init__(self) -> None:
        if "." not in self.name or min(self.vcpus, self.memory_mib, self.max_pods) <= 0 or self.gpus < 0:
            raise ConfigError(f"not an instance type: {self!r}", field="instance_type")

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def size(self) -> str:
        return self.name.split(".", 1)[1]


def _table(*rows: tuple[str, int, int, int, int]) -> dict[str, InstanceType]:
    return {name: InstanceType(name=name, vcpus=vcpus, memory_mib=mib, gpus=gpus, max_pods=pods)
            for name, vcpus, mib, gpus, pods in rows}


# vCPUs, memory and GPUs: the EC2 instance type docs (docs.aws.amazon.com/ec2/latest/instancetypes),
# as Karpenter's labels karpenter.k8s.aws/instance-cpu, -memory and -gpu-count carry them. Max pods:
# amazon-eks-ami's templates/shared/runtime/eni-max-pods.txt. All four agree with Karpenter's
# website/content/en/docs/reference/instance-types.md (AL2023), where the numbers below were checked.
INSTANCE_TYPES = _table(
    # name           vCPU  memory MiB  GPUs  max pods
    ("m7i.2xlarge",     8,     32768,    0,    58),
    ("m7i.4xlarge",    16,     65536,    0,   234),
    ("m7i.8xlarge",    32,    131072,    0,   234),
    ("c7i.4xlarge",    16,     32768,    0,   234),
    ("c7i.8xlarge",    32,     65536,    0,   234),
    ("c7i.12xlarge",   48,     98304,    0,   234),
    ("c7i.16xlarge",   64,    131072,    0,   737),
    ("g5.12xlarge",    48,    196608,    4,   737),
    ("g5.16xlarge",    64,    262144,    1,   234),  # one A10G: never in a 4-GPU group's pool
    ("g5.24xlarge",    96,    393216,    4,   737),
    ("g5.48xlarge",   192,    786432,    8,   345),
    ("p5.48xlarge",   192,   2097152,    8,   100),
)

# The kubelet's reservations as EKS's AMIs and Karpenter set them (Karpenter's
# pkg/providers/instancetype/types.go): CPU by share of each core, memory by the pod count.
KUBE_RESERVED_CPU = ((0, 1, 600), (1, 2, 100), (2, 4, 50), (4, None, 25))
"""(from core, to core, tenths of a millicore per core): 6% of the first core, 1% of the second, 0.5% of
the next two, 0.25% of the rest (in whole numbers, so that 8 cores reserve exactly 90m)."""
KUBE_RESERVED_MEMORY_BASE_MI = 255
KUBE_RESERVED_MEMORY_PER_POD_MI = 11
EVICTION_THRESHOLD_MI = 100
"""The kubelet's default hard eviction threshold, memory.available < 100Mi."""
VM_MEMORY_OVERHEAD = 0.075
"""Karpenter's vmMemoryOverheadPercent default: the share of EC2's memory the guest OS never sees."""


@dataclass(kw_only=True, frozen=True)
class DaemonSet:
    name: str
    cpu_m: int
    memory_mi: int
    gpu_nodes_only: bool = False


# Room every node keeps for DaemonSets, so that a Ray pod that fills the node still schedules after
# them. Requests where the add-on sets them, else a budget above what they use; conservative on
# purpose, since too little leaves the Ray pod Pending and too much only idles a few hundred millicores.
DAEMONSETS = (
    DaemonSet(name="aws-node (VPC CNI, network policy agent)", cpu_m=50, memory_mi=128),  # requests 25m
    DaemonSet(name="kube-proxy", cpu_m=100, memory_mi=64),  # EKS add-on requests 100m
    DaemonSet(name="ebs-csi-node", cpu_m=30, memory_mi=120),  # three containers at 10m/40Mi
    DaemonSet(name="node-exporter (kube-prometheus-stack)", cpu_m=50, memory_mi=64),  # sets none
    DaemonSet(name="nvidia-device-plugin", cpu_m=50, memory_mi=128, gpu_nodes_only=True),  # sets none
    DaemonSet(name="dcgm-exporter (GPU metrics)", cpu_m=100, memory_mi=512, gpu_nodes_only=True),
)


@dataclass(kw_only=True, frozen=True)
class Resources:
    cpu_m: int
    memory_mi: int
    gpus: int = 0

    def fits_in(self, other: Resources) -> bool:
        return self.cpu_m <= other.cpu_m and self.memory_mi <= other.memory_mi and self.gpus <= other.gpus


def instance_type(name: str) -> InstanceType:
    """The table's entry; ConfigError naming the known types otherwise."""
    if name not in INSTANCE_TYPES:
        raise ConfigError(f"no allocatable numbers for {name!r}; add it to provision/allocatable.py "
                          f"(known: {', '.join(INSTANCE_TYPES)})", field="instance_type")
    return INSTANCE_TYPES[name]


def kube_reserved_cpu_m(vcpus: int) -> int:
    tenths = 0
    for start, end, per_core in KUBE_RESERVED_CPU:
        top = vcpus if end is None else min(vcpus, end)
        tenths += max(0, top - start) * per_core
    return -(-tenths // 10)


def kube_reserved_memory_mi(max_pods: int) -> int:
    return KUBE_RESERVED_MEMORY_BASE_MI + KUBE_RESERVED_MEMORY_PER_POD_MI * max_pods


def vm_memory_overhead_mi(memory_mib: int) -> int:
    return math.ceil(memory_mib * VM_MEMORY_OVERHEAD)


def allocatable(it: InstanceType) -> Resources:
    """What the kube-scheduler may hand out on a node of this type (Karpenter's own estimate)."""
    memory = (it.memory_mib - vm_memory_overhead_mi(it.memory_mib) - kube_reserved_memory_mi(it.max_pods)
              - EVICTION_THRESHOLD_MI)
    return Resources(cpu_m=it.vcpus * 1000 - kube_reserved_cpu_m(it.vcpus), memory_mi=memory, gpus=it.gpus)


def daemonset_budget(gpu_node: bool) -> Resources:
    chosen = [ds for ds in DAEMONSETS if gpu_node or not ds.gpu_nodes_only]
    return Resources(cpu_m=sum(ds.cpu_m for ds in chosen), memory_mi=sum(ds.memory_mi for ds in chosen))


def pod_room(it: InstanceType) -> Resources:
    """What one pod may request on a node of this type once the DaemonSets have theirs."""
    node, ds = allocatable(it), daemonset_budget(it.gpus > 0)
    return Resources(cpu_m=node.cpu_m - ds.cpu_m, memory_mi=node.memory_mi - ds.memory_mi, gpus=it.gpus)


def pool_sizes(name: str) -> tuple[InstanceType, ...]:
    """The sizes a NodePool may launch for a group of `name`: its family in the table, from its vCPUs to
    MAX_SIZE_FACTOR times them, with at least its GPUs (and GPUs only if it has them)."""
    base = instance_type(name)
    return tuple(it for it in INSTANCE_TYPES.values()
                 if it.family == base.family and base.vcpus <= it.vcpus <= MAX_SIZE_FACTOR * base.vcpus
                 and it.gpus >= base.gpus and (it.gpus > 0) == (base.gpus > 0))


def pod_requests(name: str) -> Resources:
    """A Ray pod's requests for a group of `name`: the least room over every size its pool may launch
    (the group's own size, in practice), so that it fits whichever Karpenter picks."""
    rooms = [pod_room(it) for it in pool_sizes(name)]
    return Resources(cpu_m=min(r.cpu_m for r in rooms), memory_mi=min(r.memory_mi for r in rooms),
                     gpus=instance_type(name).gpus)
