"""The platform's head pods on Kubernetes: each runs its own cluster's scheduler and interruption watcher
as the head's own ServiceAccount (head role, read-only RBAC), and a NetworkPolicy says who reaches them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from elasticml.cli import scheduler_start
from elasticml.provision import iam
from elasticml.provision.k8s_watcher import CLUSTER_ENV, NAMESPACE_ENV
from elasticml.provision.kuberay_rules import ManifestError, validate_manifest
from elasticml.provision.render import definition_at_site
from elasticml.provision.tenant import render_tenant

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]
KINDS = {"raycluster": lambda d: d["spec"], "rayjob": lambda d: d["spec"]["rayClusterSpec"],
         "rayservice": lambda d: d["spec"]["rayClusterConfig"]}


def load_all(rel: str) -> list:
    return list(yaml.safe_load_all((REPO / rel).read_text()))


def by_kind(docs: list) -> dict:
    return {d["kind"]: d for d in docs}


def head_and_workers(name: str, kind: str) -> tuple[dict, list[dict]]:
    [doc] = load_all(f"cluster_configs/kuberay/{name}-{kind}.yaml")
    spec = KINDS[kind](doc)
    return spec["headGroupSpec"]["template"]["spec"], [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("name", AWS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_platform_head_runs_its_clusters_scheduler_and_watcher(name, kind):
    """A Ray named actor is per Ray cluster: a RayJob's driver and a RayService's replicas look the scheduler
    up in their own cluster, so each head starts one there (the RayCluster's beside its API server)."""
    d = definition_at_site(name)
    pod, workers = head_and_workers(name, kind)
    ray = pod["containers"][0]
    names = [c["name"] for c in pod["containers"]]
    starter = pod["containers"][1]
    assert names == ["ray-head", "elasticml-api" if kind == "raycluster" else "elasticml-scheduler", "elasticml-watcher"]
    script = starter["command"][-1]
    assert script.index("ray health-check") < script.index("elasticml scheduler start --address 127.0.0.1:6379")
    assert env_of(starter)["ELASTICML_CLUSTER_CONFIG"]["value"].startswith(
        next(m["mountPath"] for m in starter["volumeMounts"] if m["name"] == "scheduler-config"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scheduler-config"]["configMap"]["name"] == f"elasticml-{name}-scheduler"
    if kind != "raycluster":  # ready once the scheduler is: KubeRay submits the job, or serves, only then
        probe = starter["readinessProbe"]["exec"]["command"]
        assert probe[:2] == ["test", "-f"] and f"touch {probe[2]}" in script
        assert "api serve" not in script and "ports" not in starter  # no API server beyond loopback there
        assert {o for o in script.split() if o.startswith("--")} <= {o for p in scheduler_start.params for o in p.opts}
    # The watcher: a restart loop, its own cluster and namespace from the pod, a Ray driver of the head.
    watcher = pod["containers"][2]
    assert "while true; do python -m elasticml.provision.k8s_watcher" in watcher["command"][-1]
    env = env_of(watcher)
    assert env[CLUSTER_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}
    assert env[NAMESPACE_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["RAY_ADDRESS"]["value"] == "127.0.0.1:6379" and env["RAY_AUTH_MODE"]["value"] == "token"
    for container in (starter, watcher):  # the head's raylet and ~/.elasticml (the agent credential) shared
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/tmp/ray", "/home/ray/.elasticml"} <= mounts and "checkpoint-key" not in str(container["volumeMounts"])
    assert pod["shareProcessNamespace"] is True
    # The scheduler actor runs in the Ray container: the tenant roles it vends, as the AWS head's start sets them.
    assert env_of(ray)[iam.TENANT_ROLE_ENV]["value"] == iam.tenant_role(d)
    # The head's own ServiceAccount; workers keep theirs and none of the head's containers or env.
    assert pod["serviceAccountName"] == f"elasticml-{name}-head"
    for w in workers:
        assert w["serviceAccountName"] == f"elasticml-{name}" and [c["name"] for c in w["containers"]] == ["ray-worker"]
        assert iam.TENANT_ROLE_ENV not in env_of(w["containers"][0])


@pytest.mark.parametrize("name", AWS)
def test_a_tenants_cluster_gets_no_scheduler_watcher_head_role_or_tenant_roles(name):
    [text] = render_tenant(name, "research").values()
    rc = next(d for d in yaml.safe_load_all(text) if d["kind"] == "RayCluster")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    assert [c["name"] for c in head["containers"]] == ["ray-head"] and "serviceAccountName" not in head
    assert iam.TENANT_ROLE_ENV not in env_of(head["containers"][0])


@pytest.mark.parametrize("name", AWS)
def test_the_heads_service_account_has_the_head_role_and_read_only_rbac(name):
    d = definition_at_site(name)
    docs = load_all(f"cluster_configs/kuberay/{name}-head.yaml")
    for doc in docs:
        validate_manifest(doc)
    kinds = by_kind(docs)
    account = kinds["ServiceAccount"]
    head_role = f"arn:aws:iam::{d.account_id}:role/elasticml-{name}-head"
    assert account["metadata"]["name"] == f"elasticml-{name}-head" and account["metadata"]["namespace"] == d.namespace
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": head_role}
    # The tenants' roles trust exactly that role (a pod's IRSA session is a session of it).
    assert iam.tenant_trust(d)["Statement"][0]["Principal"] == {"AWS": head_role}
    assert kinds["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    assert kinds["Role"]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    assert kinds["Role"]["metadata"]["namespace"] == d.namespace  # pods of the platform's namespace only
    subject = [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": d.namespace}]
    for binding, role in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        assert kinds[binding]["subjects"] == subject  # the head's, never the workers'
        assert kinds[binding]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role,
                                             "name": kinds[role]["metadata"]["name"]}
    trust = json.loads((REPO / f"cluster_configs/aws/{name}-head-irsa-trust.json").read_text())
    # One trust for both heads (`update-assume-role-policy` replaces it whole): the `ray up` head's EC2 and
    # the EKS head pods' ServiceAccount, nothing else.
    ec2, st = trust["Statement"]
    assert ec2["Action"] == "sts:AssumeRole" and ec2["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert st["Action"] == "sts:AssumeRoleWithWebIdentity" and ":oidc-provider/oidc.eks." in st["Principal"]["Federated"]
    conditions = st["Condition"]["StringEquals"]
    assert sorted(v for k, v in conditions.items()) == sorted(
        [f"system:serviceaccount:{d.namespace}:elasticml-{name}-head", "sts.amazonaws.com"])


def kuberay_labels(cluster: str, spec: dict, group: dict | None) -> dict:
    """What KubeRay puts on a pod of `group` (None: the head) of the cluster `cluster`."""
    tmpl = (group or spec["headGroupSpec"])["template"]["metadata"]["labels"]
    return {**tmpl, "ray.io/cluster": cluster, "ray.io/node-type": "worker" if group else "head",
            "ray.io/group": group["groupName"] if group else "headgroup", "ray.io/is-ray-node": "yes"}


def selects(selector: dict, labels: dict) -> bool:
    return selector["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", AWS)
def test_the_network_policy_lets_only_the_platform_operator_prometheus_and_tenants_in(name):
    d = definition_at_site(name)
    docs = load_all(f"cluster_configs/kuberay/{name}-networkpolicy.yaml")
    for doc in docs:
        validate_manifest(doc)
        assert doc["metadata"]["namespace"] == d.namespace and doc["spec"]["policyTypes"] == ["Ingress"]
    ray, api = docs
    # Every Ray pod of the platform's clusters (heads and workers of the RayCluster, RayJob's, RayService's).
    for kind, spec_of in KINDS.items():
        [doc] = load_all(f"cluster_configs/kuberay/{name}-{kind}.yaml")
        spec = spec_of(doc)
        cluster = doc["metadata"]["name"] + ("" if kind == "raycluster" else "-x1")
        for group in [None, *spec["workerGroupSpecs"]]:
            assert selects(ray["spec"]["podSelector"], kuberay_labels(cluster, spec, group))
            assert selects(api["spec"]["podSelector"], kuberay_labels(cluster, spec, group)) == \
                (kind == "raycluster" and group is None)  # the API server's head only
    rules = ray["spec"]["ingress"]
    assert rules[0] == {"from": [{"podSelector": {}}]}  # the platform's own namespace, any port
    for rule in rules[1:]:
        ports = {p["port"] for p in rule["ports"]}
        if "from" not in rule:
            assert ports == {8000}  # Serve's HTTP (the Ingress's ALB, KubeRay's proxy check); API keys guard it
            continue
        [peer] = rule["from"]
        # The operator's and Prometheus's own namespaces: their label on a pod elsewhere admits nothing.
        where = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        who = peer["podSelector"]["matchLabels"]
        assert (who, ports, where) in (({"app.kubernetes.io/name": "kuberay-operator"}, {8265, 52365}, d.kuberay_namespace),
                                       ({"app.kubernetes.io/name": "prometheus"}, {8080}, d.prometheus_namespace))
        assert 6379 not in ports and 10001 not in ports  # GCS and Ray Client: the platform's pods only
    # The API port from tenants' namespaces, as their own egress policy expects.
    [rule] = api["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    [text] = render_tenant(name, "research").values()
    tenant_docs = by_kind(list(yaml.safe_load_all(text)))
    [expression] = rule["from"][0]["namespaceSelector"]["matchExpressions"]
    assert expression["operator"] == "Exists" and expression["key"] in tenant_docs["Namespace"]["metadata"]["labels"]
    egress = [r for r in tenant_docs["NetworkPolicy"]["spec"]["egress"] if r.get("ports") == rule["ports"]]
    assert len(egress) == 1 and egress[0]["to"][0]["podSelector"] == api["spec"]["podSelector"]


def _doc(name: str, kind: str) -> dict:
    return copy.deepcopy(by_kind(load_all(f"cluster_configs/kuberay/{name}-head.yaml"))[kind])


@pytest.mark.parametrize("kind, mutate, field, words", [
    ("ClusterRole", lambda d: d["metadata"].update({"namespace": "x"}), "metadata.namespace", "cluster-wide"),
    ("ClusterRole", lambda d: d["rules"][0].update({"verbs": ["*"]}), "rules[0].verbs", "verbs"),
    ("ClusterRole", lambda d: d["rules"][0].pop("resources"), "rules[0]", "apiGroups and resources"),
    ("Role", lambda d: d["metadata"].pop("namespace"), "metadata.namespace", "names its namespace"),
    ("RoleBinding", lambda d: d["roleRef"].update({"apiGroup": "rbac"}), "roleRef", "roleRef"),
    ("ClusterRoleBinding", lambda d: d["roleRef"].update({"kind": "Role"}), "roleRef", "ClusterRole"),
    ("RoleBinding", lambda d: d["subjects"][0].pop("namespace"), "subjects[0].namespace", "namespace"),
    ("ServiceAccount", lambda d: d["metadata"].update({"name": "Head_SA"}), "metadata.name", "DNS subdomain"),
    ("ServiceAccount", lambda d: d.update({"secrets": []}), "secrets", "does not define"),
])
def test_broken_rbac_is_refused_naming_the_field(kind, mutate, field, words):
    doc = _doc("aws-cpu", kind)
    validate_manifest(doc)
    mutate(doc)
    with pytest.raises(ManifestError, match=words) as info:
        validate_manifest(doc)
    assert info.value.field == field
