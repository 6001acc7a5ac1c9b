"""The one definition of every cluster elasticml deploys: node types, markets, labels, instance types.

The local cluster (tests, demo), the AWS cluster-launcher YAMLs and the KubeRay
manifests are all rendered from `CLUSTERS` (see `render.py`), and a test checks
that the committed files equal what renders, so what was tested is what gets
deployed: the same node type names, the same labels, the same markets.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from elasticml import labels as L
from elasticml.dataconf import check_text
from elasticml.errors import ConfigError
from elasticml.labels import Market

MIN_ADMIN_PREFIX = 8
"""The widest admin network accepted (/8 and narrower): an admin range is a VPN or bastion's, not a
continent."""


def admin_network(value: Any, *, field: str = "admin_cidr") -> str:
    """`value` as an IPv4 CIDR that `ipaddress` parses strictly (no bits past the prefix), no wider than /8.
    IPv4 only: it becomes a security group rule's `CidrIp`, which EC2 takes for IPv4 alone."""
    check_text(value, field=field, max_len=43)
    try:
        net = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise ConfigError(f"must be an IPv4 network such as 10.0.0.0/16, got {value!r} ({exc})", field=field) from None
    if net.prefixlen < MIN_ADMIN_PREFIX:
        raise ConfigError(f"{value} is open to {'the world' if net.prefixlen == 0 else 'too much of it'}; "
                          f"use your VPN or bastion range (/{MIN_ADMIN_PREFIX} or narrower)", field=field)
    return str(net)


def image_parts(image: Any) -> dict[str, str]:
    """REPOSITORY:TAG as a definition's `image` and `image_tag`; ConfigError naming `image` otherwise."""
    if not isinstance(image, str):
        raise ConfigError(f"must be a string, got {type(image).__name__}", field="image")
    repo, _, tag = image.rpartition(":")
    if not repo or not tag or "/" in tag or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,254}", image):
        raise ConfigError(f"must be REPOSITORY:TAG, got {image[:80]!r}", field="image")
    return {"image": repo, "image_tag": tag}


@dataclass(kw_only=True, frozen=True)
class NodeGroup:
    name: str
    """Node type name, the same in every target."""
    market: Market
    cpus: int
    gpus: int = 0
    memory_gib: int = 0
    instance_type: str
    """AWS instance type (priced in the scheduler's catalog)."""
    min_workers: int = 0
    max_workers: int

    def __post_init__(self) -> None:
        if self.max_workers < self.min_workers or self.min_workers < 0:
            raise ConfigError("need 0 <= min_workers <= max_workers", field=f"{self.name}.max_workers")

    @property
    def ray_resources(self) -> dict[str, int]:
        """Ray's logical resources of a node of this group: what the scheduler and Ray place by."""
        return {"CPU": self.cpus, **({"GPU": self.gpus} if self.gpus else {})}

    @property
    def labels(self) -> dict[str, str]:
        out = {L.MARKET_TYPE: "spot" if self.market == "spot" else "on-demand"}
        if self.market == "reserved":
            out[L.CAPACITY] = L.RESERVED
        out[L.NODE_TYPE] = self.name
        return out


@dataclass(kw_only=True, frozen=True)
class ClusterDefinition:
    name: str
    """Cluster name and file stem."""
    region: str
    head_instance_type: str
    groups: tuple[NodeGroup, ...]
    idle_timeout_minutes: float = 5.0
    description: str = ""
    # Where it runs: the operator's site values (`values.py`, `cluster render --values FILE`) fill these;
    # the library holds no account, network, bucket, image or certificate of anyone's.
    zones: tuple[str, ...] = ()
    account_id: str = ""
    admin_cidr: str = ""
    """Where SSH and the API server (HTTPS, 8443) may be reached from on AWS (`admin_network`)."""
    bucket: str = ""
    image: str = ""
    """The platform's image repository (built from the Dockerfile; push it where your cluster pulls)."""
    image_tag: str = ""
    """Its tag; `-cpu` or `-gpu` is appended (rayproject/ray 2.60.0 py311 cpu / cu124 bases)."""
    serve_certificate: str = ""
    """The ACM certificate id that the RayService's load balancer answers HTTPS with."""
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    """Tenants with a role of their own that reaches only s3://BUCKET/tenants/TENANT/ (the nodes' roles
    are denied tenants/*); the scheduler vends its credentials (scheduler/tenant_storage.py)."""
    cpu_ami: str = "resolve:ssm:/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id"
    """The head's and CPU nodes' AMI family: Canonical's Ubuntu 24.04 (Python 3.12), resolved by EC2 at launch
    from its public SSM parameter in whichever region the cluster runs (pin an `ami-...` id here instead
    to freeze it)."""
    gpu_ami: str = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
    """GPU nodes' AMI family: AWS's Deep Learning Base OSS Nvidia Driver GPU AMI on Ubuntu 24.04 (drivers,
    CUDA, Python 3.12), resolved likewise."""
    kuberay_namespace: str = "kuberay-system"
    """Where the KubeRay operator runs (it alone, of other namespaces, reaches the Ray dashboard's ports)."""
    prometheus_namespace: str = "monitoring"
    """Where the Prometheus that scrapes the PodMonitor runs (it alone, of other namespaces, reaches 8080)."""
    namespace: str = ""
    """The Kubernetes namespace of the platform's KubeRay manifests (default `elasticml-NAME`, so two
    definitions' clusters live side by side); tenants' clusters reach the API server's Service in it."""

    def __post_init__(self) -> None:
        if self.admin_cidr:
            admin_network(self.admin_cidr)
        if not self.namespace:
            object.__setattr__(self, "namespace", f"elasticml-{self.name}")
        for name in ("namespace", "kuberay_namespace", "prometheus_namespace"):
            value = getattr(self, name)
            if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", value):
                raise ConfigError(f"must be a Kubernetes namespace (1-63 of a-z, 0-9 and '-'), got {str(value)[:70]!r}",
                                  field=name)

        for tenant in self.tenants:
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", tenant):
                raise ConfigError(f"must be 1-32 of a-z, 0-9 and '-' (an IAM role name part), got {tenant!r}",
                                  field="tenants")

    def group(self, name: str) -> NodeGroup:
        return next(g for g in self.groups if g.name == name)

    def image_for(self, gpus: int) -> str:
        """The platform's image (Dockerfile: the matching rayproject/ray tag with elasticml installed)."""
        return f"{self.image}:{self.image_tag}-{'gpu' if gpus else 'cpu'}"


def _cpu_groups(instance: str, cpus: int, mem: int, spot: int, od: int, reserved: int) -> tuple[NodeGroup, ...]:
    return (
        NodeGroup(name="cpu_spot", market="spot", cpus=cpus, memory_gib=mem, instance_type=instance, max_workers=spot),
        NodeGroup(name="cpu_on_demand", market="on-demand", cpus=cpus, memory_gib=mem, instance_type=instance, max_workers=od),
        NodeGroup(name="cpu_reserved", market="reserved", cpus=cpus, memory_gib=mem, instance_type=instance, max_workers=reserved),
    )


CLUSTERS: dict[str, ClusterDefinition] = {
    # One box: 1-CPU fake nodes so that a laptop or CI can run several of them.
    "local": ClusterDefinition(
        name="local", region="us-east-1", head_instance_type="m7i.large", idle_timeout_minutes=0.25,
        description="the local elastic cluster (tests, demo): Ray's fake multi-node provider, autoscaler v2",
        groups=_cpu_groups("m7i.large", 1, 8, spot=2, od=2, reserved=2),
    ),
    "aws-cpu": ClusterDefinition(
        name="aws-cpu", region="us-east-1", head_instance_type="m7i.large",
        description="small business: CPU nodes for training small models and int8 serving",
        groups=_cpu_groups("m7i.2xlarge", 8, 32, spot=8, od=4, reserved=2),
    ),
    "aws-gpu": ClusterDefinition(
        name="aws-gpu", region="us-east-1", head_instance_type="m7i.2xlarge",
        description="enterprise: GPU nodes for FSDP training and bf16 serving, CPU nodes for data",
        groups=_cpu_groups("c7i.4xlarge", 16, 32, spot=8, od=4, reserved=0)[:2] + (
            NodeGroup(name="gpu_spot", market="spot", cpus=48, gpus=4, memory_gib=192, instance_type="g5.12xlarge", max_workers=8),
            NodeGroup(name="gpu_on_demand", market="on-demand", cpus=48, gpus=4, memory_gib=192, instance_type="g5.12xlarge", max_workers=4),
            NodeGroup(name="gpu_reserved", market="reserved", cpus=192, gpus=8, memory_gib=2048, instance_type="p5.48xlarge", max_workers=2),
        ),
    ),
}
