"""Who the platform's head pods are on Kubernetes and AWS, and who may reach the platform's Ray pods.

The head pods (of the RayCluster, of each RayJob's cluster and each RayService's) run the scheduler,
which vends tenants' storage credentials, and the interruption watcher, which reads Nodes: they get a
ServiceAccount of their own, `elasticml-NAME-head`, with the head's IAM role (IRSA). Workers keep
`elasticml-NAME` and the worker role, which reaches neither tenants' prefixes nor their roles. (KubeRay
also binds its autoscaler's Role to the head pod's ServiceAccount: that right is the head's alone too.)

- `service_account`: the head's, annotated with `role/elasticml-NAME-head` (iam.head_policy's role, which
  iam.tenant_trust lets assume the tenants' roles); `irsa_trust`: that role's trust policy on EKS.
- `watcher_rbac`: what the watcher (`k8s_watcher.py`) reads, read-only: Nodes (get, list, watch: a
  ClusterRole, Nodes being cluster-wide) and Pods (list, in the platform's namespace only: a Role).
- `network_policies`: ingress to the platform's Ray pods. KubeRay binds the head's dashboard to 0.0.0.0
  (its controller dials it), so the namespace's policy says who may: the platform's own pods (the
  namespace: workers, heads, KubeRay's job submitter), the KubeRay operator (dashboard and dashboard
  agent; it checks pods' health by exec, not by GCS), Prometheus (metrics), and Serve's HTTP port from
  anywhere (the Ingress's ALB, targets by pod IP, and KubeRay's proxy health check; Serve checks API keys
  itself). The API server's port on the platform RayCluster's head is open to tenants' namespaces
  (labelled `elasticml.io/tenant` by `tenant.py`, whose egress policy expects exactly this).
"""

from __future__ import annotations

from typing import Any

from elasticml.provision import api_server
from elasticml.provision.definition import ClusterDefinition

RBAC = "rbac.authorization.k8s.io"
OPERATOR_PODS = {"app.kubernetes.io/name": "kuberay-operator"}
"""The KubeRay operator's pods (its Helm chart's label), in the site's `kuberay_namespace`."""
PROMETHEUS_PODS = {"app.kubernetes.io/name": "prometheus"}
"""The Prometheus Operator's Prometheus pods (what scrapes the PodMonitor), in the site's `prometheus_namespace`."""
DASHBOARD, DASHBOARD_AGENT, METRICS, SERVE = 8265, 52365, 8080, 8000
TENANT_LABEL = "elasticml.io/tenant"


def service_account(d: ClusterDefinition) -> str:
    return f"elasticml-{d.name}-head"


def service_account_manifest(d: ClusterDefinition, labels: dict[str, str]) -> dict[str, Any]:
    """The head pods' identity on EKS (IRSA): the head role, which vends tenants' credentials."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": service_account(d), "namespace": d.namespace, "labels": dict(labels),
                         "annotations": {"eks.amazonaws.com/role-arn":
                                         f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-head"}}}


OIDC_PLACEHOLDER = "EKS_OIDC_ID"
"""Stands for the EKS cluster's OIDC provider id in `irsa_trust` (the site values do not hold it): the last
part of `aws eks describe-cluster --name EKS --query cluster.identity.oidc.issuer`."""


def irsa_trust(d: ClusterDefinition) -> dict[str, Any]:
    """The head role's trust policy: EC2 (the `ray up` head's instance profile, which holds the same role)
    and, on EKS, only the head pods' ServiceAccount (with the pod's projected token). One document for
    both, since `aws iam update-assume-role-policy` replaces the whole trust: one that named only the
    ServiceAccount would leave a `ray up` head without credentials once its current ones expired.
    Replace OIDC_PLACEHOLDER before applying it."""
    issuer = f"oidc.eks.{d.region}.amazonaws.com/id/{OIDC_PLACEHOLDER}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "TheRayUpHead", "Effect": "Allow", "Action": "sts:AssumeRole",
         "Principal": {"Service": "ec2.amazonaws.com"}},
        {"Sid": "TheHeadPodsServiceAccount", "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
         "Principal": {"Federated": f"arn:aws:iam::{d.account_id}:oidc-provider/{issuer}"},
         "Condition": {"StringEquals": {f"{issuer}:sub": f"system:serviceaccount:{d.namespace}:{service_account(d)}",
                                        f"{issuer}:aud": "sts.amazonaws.com"}}}]}


def watcher_rbac(d: ClusterDefinition, labels: dict[str, str]) -> list[dict[str, Any]]:
    """Nodes read cluster-wide, Pods listed in the platform's namespace: bound to the head's ServiceAccount."""
    name = f"elasticml-{d.name}-node-watcher"
    subject = [{"kind": "ServiceAccount", "name": service_account(d), "namespace": d.namespace}]
    return [
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": {"name": name, "labels": dict(labels)},
         "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name, "labels": dict(labels)},
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": name}, "subjects": subject},
        {"apiVersion": f"{RBAC}/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": d.namespace, "labels": dict(labels)},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": d.namespace, "labels": dict(labels)},
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": name}, "subjects": subject},
    ]


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def network_policies(d: ClusterDefinition, *, raycluster: str, pod_labels: dict[str, str],
                     labels: dict[str, str]) -> list[dict[str, Any]]:
    """Ingress to the platform's Ray pods (`pod_labels`: every Ray pod of the namespace's clusters), and to
    the API server on `raycluster`'s head (see the module docstring). Egress is not limited."""
    def namespace(name: str) -> dict[str, Any]:  # a pod label alone would match in any namespace
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}

    ray = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"elasticml-{d.name}-ray", "namespace": d.namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes", **pod_labels}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {}}]},  # the platform's namespace: its own pods only
                {"from": [{**namespace(d.kuberay_namespace), "podSelector": {"matchLabels": dict(OPERATOR_PODS)}}],
                 "ports": _tcp(DASHBOARD, DASHBOARD_AGENT)},
                {"from": [{**namespace(d.prometheus_namespace), "podSelector": {"matchLabels": dict(PROMETHEUS_PODS)}}],
                 "ports": _tcp(METRICS)},
                {"ports": _tcp(SERVE)},
            ],
        },
    }
    api = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"elasticml-{d.name}-api", "namespace": d.namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchLabels": api_server.head_selector(raycluster)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                {"key": TENANT_LABEL, "operator": "Exists"}]}}], "ports": _tcp(api_server.API_PORT)}],
        },
    }
    return [ray, api]
