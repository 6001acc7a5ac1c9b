"""Site values: what differs from one operator's AWS account to another's, kept out of the library.

A definition (`definition.py`) says what a cluster is made of: node groups, markets, instance
types. Where it runs is the operator's: the account, the admin network, the bucket, the image, the
certificate, the subnets and security groups, the tenants. Those live in a YAML file that
`elasticml cluster render --values FILE` reads; `cluster_configs/values.example.yaml` is the
committed example, and what the committed renders (and `render --check`) use.

Every field is checked here, naming it: an account id is 12 digits, the admin CIDR is parsed with
`ipaddress` (`definition.admin_network`: bits past the prefix, or a network wider than /8, are
refused), ids have their AWS shape, lists are bounded. (The checks a definition's own fields share
with the values live in definition.py, which imports nothing of this package's rooms.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from elasticml.dataconf import check_text, from_mapping, shown
from elasticml.errors import ConfigError
from elasticml.provision.definition import ClusterDefinition, admin_network, image_parts
from elasticml.repo import SITE_VALUES_EXAMPLE
from elasticml.yamlio import load_yaml

__all__ = ["EXAMPLE", "MAX_IDS", "ClusterSite", "SiteValues", "admin_network", "load_values"]

EXAMPLE = SITE_VALUES_EXAMPLE
MAX_IDS = 16
"""Subnets, security groups, zones or tenants a cluster lists."""
REGION = r"[a-z]{2}(-gov)?-[a-z]+-[0-9]"


def _ids(value: Any, *, field: str, pattern: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"must be a list, got {type(value).__name__} {shown(value)}", field=field)
    if len(value) > MAX_IDS:
        raise ConfigError(f"at most {MAX_IDS} entries, got {len(value)}", field=field)
    for i, item in enumerate(value):
        check_text(item, field=f"{field}[{i}]", max_len=64, pattern=pattern)
    if len(set(value)) != len(value):
        raise ConfigError("lists an entry twice", field=field)
    return tuple(value)


@dataclass(kw_only=True, frozen=True)
class ClusterSite:
    """Where one definition's cluster runs in this account."""

    region: str
    zones: tuple[str, ...]
    """Availability zones the launcher may use, in `region`."""
    subnets: tuple[str, ...] = ()
    """`subnet-...` ids the nodes launch into (one per zone, private); empty: the launcher picks from
    the first VPC it finds, which is rarely what a site wants."""
    security_groups: tuple[str, ...] = ()
    """`sg-...` ids every node gets, the rules yours; empty: Ray's launcher creates `elasticml-NAME` with
    the rules rendered and its own SSH rule from 0.0.0.0/0 beside them (docs/cloud.md)."""
    tenants: tuple[str, ...] = ()
    """Tenants with a role of their own (their prefix of the bucket only)."""

    def __post_init__(self) -> None:
        check_text(self.region, field="region", max_len=32, pattern=REGION)
        zones = _ids(self.zones, field="zones", pattern=REGION + r"[a-z]")
        if not zones or any(not z.startswith(self.region) for z in zones):
            raise ConfigError(f"must be one or more zones of {self.region}", field="zones")
        object.__setattr__(self, "zones", zones)
        object.__setattr__(self, "subnets", _ids(self.subnets, field="subnets", pattern=r"subnet-[0-9a-f]{8,17}"))
        object.__setattr__(self, "security_groups",
                           _ids(self.security_groups, field="security_groups", pattern=r"sg-[0-9a-f]{8,17}"))
        object.__setattr__(self, "tenants", _ids(self.tenants, field="tenants",
                                                 pattern=r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?"))


@dataclass(kw_only=True, frozen=True)
class SiteValues:
    """One operator's site: the values every rendered file takes from here rather than from the library."""

    account_id: str
    """The AWS account the clusters run in (IAM ARNs, capacity-reservation groups)."""
    admin_cidr: str
    """Where SSH and the API server (HTTPS, 8443) may be reached from: your VPN or bastion range."""
    bucket: str
    """The checkpoint bucket (S3), tenants' prefixes under `tenants/`."""
    image: str
    """REPOSITORY:TAG of the platform's image (built from the Dockerfile; `-cpu`/`-gpu` is appended)."""
    serve_certificate: str
    """The ACM certificate id (a UUID) the RayService's load balancer answers HTTPS with."""
    kuberay_namespace: str = "kuberay-system"
    """Where the KubeRay operator runs (EKS): the platform's NetworkPolicy admits it to the dashboard's ports."""
    prometheus_namespace: str = "monitoring"
    """Where the Prometheus that scrapes the PodMonitor runs (EKS): admitted to the metrics port."""
    clusters: dict[str, ClusterSite] = field(default_factory=dict)
    """Per definition name; a definition not listed cannot be rendered for the cloud."""

    def __post_init__(self) -> None:
        check_text(self.account_id, field="account_id", max_len=12, pattern=r"[0-9]{12}")
        object.__setattr__(self, "admin_cidr", admin_network(self.admin_cidr))
        check_text(self.bucket, field="bucket", max_len=63, pattern=r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
        image_parts(self.image)
        check_text(self.serve_certificate, field="serve_certificate", max_len=64, pattern=r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")
        if not isinstance(self.clusters, dict) or len(self.clusters) > MAX_IDS:
            raise ConfigError(f"must be a mapping of at most {MAX_IDS} definitions", field="clusters")
        parsed = {}
        for name, site in self.clusters.items():
            check_text(name, field="clusters", max_len=40, pattern=r"[a-z0-9-]+")
            parsed[name] = site if isinstance(site, ClusterSite) else from_mapping(
                ClusterSite, site, source=f"clusters.{name}")
        object.__setattr__(self, "clusters", parsed)

    def apply(self, d: ClusterDefinition) -> ClusterDefinition:
        """`d` as it runs at this site; ConfigError naming `clusters` when the site does not list it."""
        if d.name not in self.clusters:
            raise ConfigError(f"the values list no site for {d.name!r} (have: {', '.join(sorted(self.clusters)) or 'none'})",
                              field="clusters")
        site = self.clusters[d.name]
        return replace(d, account_id=self.account_id, admin_cidr=self.admin_cidr, bucket=self.bucket,
                       serve_certificate=self.serve_certificate, region=site.region, zones=site.zones,
                       kuberay_namespace=self.kuberay_namespace, prometheus_namespace=self.prometheus_namespace,
                       subnets=site.subnets, security_groups=site.security_groups, tenants=site.tenants,
                       **image_parts(self.image))  # type: ignore[arg-type]  # image_parts: the str image fields only


def load_values(path: str | Path | None = None) -> SiteValues:
    """The values file at `path` (default: the committed example), checked; ConfigError naming the field."""
    path = Path(path) if path is not None else EXAMPLE
    raw = load_yaml(path, source=str(path), max_bytes=64 << 10)
    return from_mapping(SiteValues, raw, source=str(path))
