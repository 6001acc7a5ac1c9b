"""Render a ClusterDefinition at a site for a target: local (Ray YAML), aws (Ray YAML), kuberay (manifests).

`render(target, cluster, values=...)` returns `{relative path: file text}`; `elasticml cluster render`
writes them, and `--check` (and the tests) compare them with the committed files, which are rendered
with the example site values (`values.py`, `cluster_configs/values.example.yaml`).

The parts live in rooms of their own: `aws.py` (the launcher YAMLs and node set-up), `iam.py` (the
policies), `kuberay.py` (RayCluster, RayJob, RayService and their neighbours), `karpenter.py`,
`api_server.py` (where the scheduler and the API server run), `head_access.py` (the head pods' identity and
who reaches the platform's pods), `tenant.py` (tenants' own clusters).

Security defaults, on purpose: token authentication on everywhere (the token travels to nodes as a
file mount / a Kubernetes Secret, never in the file, and so does the checkpoint key); no rendered
ingress from 0.0.0.0/0 (SSH and the API server's HTTPS only from the admin CIDR, Ray's ports only
inside the security group; a group Ray's launcher makes gets Ray's own SSH rule from 0.0.0.0/0 too,
which the site's `security_groups` avoid: `aws._provider`); nodes get an instance profile that may only read and write the platform's checkpoint
bucket (the head's adds what the autoscaler needs).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from elasticml.errors import ConfigError
from elasticml.provision import api_server, aws, head_access, iam, karpenter, kuberay
from elasticml.provision.definition import CLUSTERS, ClusterDefinition, image_parts
from elasticml.provision.files import as_json, as_yaml, docs, header

if TYPE_CHECKING:
    from elasticml.provision.values import SiteValues

TARGETS = ("local", "aws", "kuberay")
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"


def definition_at_site(cluster: str, values: SiteValues | None = None, *, image: str | None = None) -> ClusterDefinition:
    """The definition `cluster` with the site's values (default: the committed example) and `image`."""
    from elasticml.provision.values import load_values

    if cluster not in CLUSTERS:
        raise ConfigError(f"unknown cluster {cluster!r}; defined: {', '.join(CLUSTERS)}", field="cluster")
    d = (values or load_values()).apply(CLUSTERS[cluster])
    return replace(d, **image_parts(image)) if image is not None else d  # type: ignore[arg-type]  # image_parts: the str image fields only


def render(target: str, cluster: str, *, image: str | None = None, values: SiteValues | None = None) -> dict[str, str]:
    """`image`: REPOSITORY:TAG of the platform's image (default: the values'), for the manifests."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}", field="target")
    if cluster not in CLUSTERS:
        raise ConfigError(f"unknown cluster {cluster!r}; defined: {', '.join(CLUSTERS)}", field="cluster")
    if target == "local":
        if cluster != "local":
            raise ConfigError("only the 'local' definition renders for the local target", field="cluster")
        d = CLUSTERS[cluster]
        return {"cluster_configs/local.yaml": as_yaml(_local(d), header(d, "elasticml cluster up"))}
    if cluster == "local":  # Ray's fake provider on this machine: there is no cloud to render it for
        raise ConfigError(f"the 'local' definition is for this machine; render {target} for "
                          f"{' or '.join(c for c in CLUSTERS if c != 'local')}", field="cluster")
    d = definition_at_site(cluster, values, image=image)
    if target == "aws":
        aws.require_security_groups(d)
        return {
            f"cluster_configs/{d.name}.yaml": as_yaml(aws.launcher(d), header(d, f"ray up cluster_configs/{d.name}.yaml")),
            f"cluster_configs/{d.name}-docker.yaml": as_yaml(aws.launcher_docker(d), header(
                d, f"ray up cluster_configs/{d.name}-docker.yaml (Ray in the platform's image: see Dockerfile)")),
            f"cluster_configs/aws/{d.name}-head-policy.json": as_json(iam.head_policy(d)),
            f"cluster_configs/aws/{d.name}-worker-policy.json": as_json(iam.worker_policy(d)),
            f"cluster_configs/aws/{d.name}-security-group.json": as_json(aws.security_group_rules(d)),
            f"cluster_configs/aws/{d.name}-bucket-policy.json": as_json(iam.bucket_policy(d)),
            f"cluster_configs/aws/{d.name}-bucket-encryption.json": as_json(iam.bucket_encryption(d)),
            f"cluster_configs/aws/{d.name}-tenant-trust.json": as_json(iam.tenant_trust(d)),
            f"cluster_configs/aws/{d.name}-head-irsa-trust.json": as_json(head_access.irsa_trust(d)),
            **{f"cluster_configs/aws/{d.name}-tenant-{t}-policy.json": as_json(iam.tenant_policy(d, t)) for t in d.tenants},
        }
    apply = "kubectl apply -f"
    return {
        f"cluster_configs/kuberay/{d.name}-raycluster.yaml": as_yaml(kuberay.raycluster(d), header(d, apply)),
        f"cluster_configs/kuberay/{d.name}-rayjob.yaml": as_yaml(kuberay.rayjob(d), header(d, apply)),
        f"cluster_configs/kuberay/{d.name}-rayservice.yaml": as_yaml(kuberay.rayservice(d), header(d, apply)),
        f"cluster_configs/kuberay/{d.name}-serve-ingress.yaml": as_yaml(kuberay.serve_ingress(d), header(d, apply)),
        f"cluster_configs/kuberay/{d.name}-serviceaccount.yaml": as_yaml(kuberay.service_account_manifest(d),
                                                                         header(d, apply)),
        f"cluster_configs/kuberay/{d.name}-api.yaml": header(d, f"{apply} (with the RayCluster: its API "
                                                                "server's Service and the scheduler's config)")
        + docs([api_server.service(namespace=d.namespace, raycluster=kuberay.meta(d, "raycluster")["name"],
                                   labels=kuberay.PART_OF),
                api_server.scheduler_config_map(name=f"elasticml-{d.name}-scheduler", namespace=d.namespace,
                                                labels=kuberay.PART_OF, config_yaml=kuberay.scheduler_config(d))]),
        f"cluster_configs/kuberay/{d.name}-head.yaml": header(d, f"{apply} (the head pods' ServiceAccount and the "
                                                                 "interruption watcher's read-only rights)")
        + docs([head_access.service_account_manifest(d, kuberay.PART_OF), *head_access.watcher_rbac(d, kuberay.PART_OF)]),
        f"cluster_configs/kuberay/{d.name}-networkpolicy.yaml": header(d, f"{apply} (who reaches the platform's Ray "
                                                                          "pods and its API server)")
        + docs(head_access.network_policies(d, raycluster=kuberay.meta(d, "raycluster")["name"],
                                            pod_labels=kuberay.POD_LABELS, labels=kuberay.PART_OF)),
        f"cluster_configs/kuberay/{d.name}-podmonitor.yaml": as_yaml(kuberay.pod_monitor(d), header(
            d, f"{apply} (with the Prometheus Operator, e.g. kube-prometheus-stack)")),
        f"cluster_configs/kuberay/{d.name}-prometheusrule.yaml": as_yaml(kuberay.prometheus_rule(d), header(
            d, f"{apply} (with the Prometheus Operator; the alerts of docs/observability.md)")),
        f"cluster_configs/kuberay/{d.name}-karpenter.yaml": header(d, f"{apply} (Karpenter >= 1.5, "
                                                                      "ReservedCapacity feature gate on)")
        + karpenter.manifests(d),
        f"cluster_configs/kuberay/{d.name}-namespace.yaml": as_yaml(kuberay.namespace(d), header(d, f"{apply} (first)")),
    }


def render_all(values: SiteValues | None = None) -> dict[str, str]:
    """Every file `cluster render` writes: the local cluster, each cloud definition at the site, the
    dashboards and the alerting rules."""
    from elasticml.observe import alerts, dashboards
    from elasticml.provision.values import load_values

    values = values or load_values()
    files = render("local", "local") | dashboards.rendered() | alerts.rendered()
    for name in CLUSTERS:
        if name != "local":
            files |= render("aws", name, values=values) | render("kuberay", name, values=values)
    return files


def _local(d: ClusterDefinition) -> dict[str, Any]:
    types: dict[str, Any] = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for g in d.groups:
        types[g.name] = {"resources": g.ray_resources, "labels": g.labels, "node_config": {"InstanceType": g.instance_type},
                         "min_workers": g.min_workers, "max_workers": g.max_workers}
    return {
        "cluster_name": f"elasticml-{d.name}",
        "max_workers": sum(g.max_workers for g in d.groups),
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": d.idle_timeout_minutes,
        "provider": {"type": "external", "module": FAKE_PROVIDER, "launch_multiple": True, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True, "region": d.region},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
    }
