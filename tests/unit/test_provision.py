"""Provisioning files: generated from one definition, valid against their schemas, secure by default."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private.label_utils import parse_node_labels_string

from elasticml import labels as L
from elasticml.cluster.config import load_cluster_spec, ray_schema
from elasticml.provision.definition import CLUSTERS
from elasticml.provision.kuberay_schema import validate_manifest
from elasticml.provision.render import render, render_all

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]


def load(rel: str):
    return yaml.safe_load((REPO / rel).read_text())


def test_committed_files_are_exactly_what_the_definition_renders():
    files = render_all()
    assert "cluster_configs/local.yaml" in files and len(files) == 17 + 2 + 4 + 2  # + tenant trust and roles, Serve ingresses
    stale = [rel for rel, text in files.items() if (REPO / rel).read_text() != text]
    assert not stale, f"run `elasticml cluster render`: {stale}"
    out = subprocess.run([str(Path(sys.executable).with_name("elasticml")), "cluster", "render", "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "up to date" in out.stdout


def test_render_check_notices_a_hand_edit(tmp_path):
    exe = str(Path(sys.executable).with_name("elasticml"))
    subprocess.run([exe, "cluster", "render", "--out", str(tmp_path)], check=True, capture_output=True, timeout=60)
    path = tmp_path / "cluster_configs" / "aws-cpu.yaml"
    path.write_text(path.read_text().replace("max_workers: 8", "max_workers: 80"))
    out = subprocess.run([exe, "cluster", "render", "--check", "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cluster_configs/aws-cpu.yaml" in out.stderr


@pytest.mark.parametrize("name", AWS)
def test_aws_yamls_are_valid_launcher_configs_with_the_local_labels(name):
    raw = load(f"cluster_configs/{name}.yaml")
    jsonschema.validate(raw, ray_schema())
    spec = load_cluster_spec(REPO / f"cluster_configs/{name}.yaml")
    local = load_cluster_spec(REPO / "cluster_configs/local.yaml")
    for t in spec.worker_types.values():
        if t.name in local.node_types:  # same node type name: same labels as what the tests ran on
            assert t.labels == local.node_types[t.name].labels
        assert t.labels[L.NODE_TYPE] == t.name and t.market in L.MARKETS
    assert {t.market for t in spec.worker_types.values()} == {"spot", "on-demand", "reserved"}


@pytest.mark.parametrize("name", AWS)
def test_aws_markets_head_auth_security_and_watcher(name):
    raw = load(f"cluster_configs/{name}.yaml")
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]  # the head is on-demand
    for node_type, body in types.items():
        if node_type == raw["head_node_type"]:
            continue
        market = L.market_of(body["labels"])
        cfg = body["node_config"]
        assert ("InstanceMarketOptions" in cfg) == (market == "spot"), node_type
        reservation = cfg.get("CapacityReservationSpecification", {})
        assert ("CapacityReservationTarget" in reservation) == (market == "reserved"), node_type
        # On-demand launches never take the reservation reserved work is placed on.
        assert (reservation.get("CapacityReservationPreference") == "none") == (market == "on-demand"), node_type
        watcher = any("elasticml.provision.watcher" in c for c in body.get("worker_setup_commands", []))
        assert watcher == (market == "spot"), node_type
        assert cfg["IamInstanceProfile"]["Arn"].endswith("-worker")
    assert head["node_config"]["IamInstanceProfile"]["Arn"].endswith("-head")
    for rule in raw["provider"]["security_group"]["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule.get("IpRanges", []))
        assert all(r.get("CidrIpv6") != "::/0" for r in rule.get("Ipv6Ranges", []))
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if c.startswith("RAY_") or "ray start" in c)
    assert raw["file_mounts"]["~/.ray/auth_token"]
    # The node agents' credential where the watcher (and the head's scheduler) look for it, on every
    # node and private; the admin's is never mounted.
    agent = f"~/.elasticml/credentials/{raw['cluster_name']}/agent"
    assert raw["file_mounts"][agent] == agent and not any("admin" in k for k in raw["file_mounts"])
    assert any(c.startswith("chmod 600") and agent in c for c in raw["setup_commands"])
    # Ray's TLS: the CA on every node, each node's own certificate made after the package is installed,
    # and every Ray process (head, workers, the watcher) started with it.
    ca = f"~/.elasticml/credentials/{raw['cluster_name']}/tls"
    assert raw["file_mounts"][ca] == ca
    setup = raw["setup_commands"]
    cert = next(i for i, c in enumerate(setup) if "elasticml.provision.tls node" in c and ca in c)
    assert cert > next(i for i, c in enumerate(setup) if "pip install" in c)
    tls = ["RAY_USE_TLS=1", "RAY_TLS_SERVER_CERT=$HOME/.elasticml/tls/node.crt",
           "RAY_TLS_SERVER_KEY=$HOME/.elasticml/tls/node.key", "RAY_TLS_CA_CERT=$HOME/.elasticml/tls/ca.crt"]
    spot_setups = [c for b in types.values() for c in b.get("worker_setup_commands", []) if "watcher" in c]
    for command in [c for c in starts if "ray start" in c] + spot_setups:
        assert all(t in command for t in tls), command
    assert any("pip install" in c and "elasticml" in c for c in raw["setup_commands"])
    assert "RAY_enable_autoscaler_v2=1" in raw["head_start_ray_commands"][-1]


@pytest.mark.parametrize("name", AWS)
def test_iam_policies_let_workers_reach_the_bucket_and_nothing_more(name):
    bucket = CLUSTERS[name].bucket
    worker = json.loads((REPO / f"cluster_configs/aws/{name}-worker-policy.json").read_text())
    for st in worker["Statement"]:
        if st["Effect"] == "Deny":  # tenants' prefixes, which only their own vended credentials reach
            assert st["Resource"] == f"arn:aws:s3:::{bucket}/tenants/*" or \
                st["Condition"]["StringLike"]["s3:prefix"] == ["tenants/*"]
            continue
        assert st["Effect"] == "Allow"
        if st["Sid"] == "UseTheBucketsKey":  # the bucket's objects are encrypted with this key alone
            assert set(st["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt"} and "kms:ResourceAliases" in str(st)
            continue
        assert all(a.startswith("s3:") for a in st["Action"])
        assert st["Resource"] in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*")
    head = json.loads((REPO / f"cluster_configs/aws/{name}-head-policy.json").read_text())
    for st in head["Statement"]:
        assert "*" not in st["Action"] and not any(a.endswith(":*") for a in st["Action"])
        if st["Resource"] == "*":
            assert st["Condition"]["StringEquals"]["aws:RequestedRegion"] == CLUSTERS[name].region


@pytest.mark.parametrize("name", AWS)
def test_kuberay_manifests_validate_and_map_markets_to_node_pools(name):
    docs = {kind: load(f"cluster_configs/kuberay/{name}-{kind}.yaml") for kind in ("raycluster", "rayjob", "rayservice")}
    for doc in docs.values():
        validate_manifest(doc)
    groups = docs["raycluster"]["spec"]["workerGroupSpecs"]
    definition = {g.name.replace("_", "-"): g for g in CLUSTERS[name].groups}
    assert {g["groupName"] for g in groups} == set(definition)
    for g in groups:
        d = definition[g["groupName"]]
        pod = g["template"]["spec"]
        assert pod["nodeSelector"]["karpenter.sh/capacity-type"] == d.market
        assert parse_node_labels_string(g["rayStartParams"]["labels"]) == d.labels
        spot_toleration = any(t.get("value") == "spot" for t in pod.get("tolerations", []))
        assert spot_toleration == (d.market == "spot")
    head = docs["raycluster"]["spec"]["headGroupSpec"]["template"]["spec"]
    for pod in [head] + [g["template"]["spec"] for g in groups]:
        # The token is a mounted file; no variable holds it for every process to inherit.
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" not in env
        assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values())
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "ray-token")
        assert mount["readOnly"] and env["RAY_AUTH_TOKEN_PATH"]["value"] == mount["mountPath"] + "/token"
        volume = next(v for v in pod["volumes"] if v["name"] == "ray-token")
        assert volume["secret"]["secretName"] == f"elasticml-{name}-token" and volume["secret"]["defaultMode"] == 0o400
        # Ray's TLS: an init container makes the pod's certificate (its IP) from the CA Secret into a
        # memory volume that Ray's container reads and the TLS variables point at.
        init = pod["initContainers"][0]
        assert init["command"][:4] == ["python", "-m", "elasticml.provision.tls", "node"] and "$(POD_IP)" in init["command"]
        assert {e["name"] for e in init["env"]} == {"POD_IP", "POD_NAMESPACE"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["ray-ca"]["secret"]["secretName"] == f"elasticml-{name}-ca"
        assert volumes["ray-tls"]["emptyDir"] == {"medium": "Memory"}
        tls_mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "ray-tls")
        assert env["RAY_USE_TLS"]["value"] == "1" and tls_mount["readOnly"]
        for var, file in (("RAY_TLS_SERVER_CERT", "node.crt"), ("RAY_TLS_SERVER_KEY", "node.key"), ("RAY_TLS_CA_CERT", "ca.crt")):
            assert env[var]["value"] == f"{tls_mount['mountPath']}/{file}"
    serve = yaml.safe_load(docs["rayservice"]["spec"]["serveConfigV2"])
    assert serve["applications"][0]["import_path"] == "serve_apps.completion:app"
    assert "jobs/train.py" in docs["rayjob"]["spec"]["entrypoint"]


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
        (lambda d: d["spec"]["autoscalerOptions"].update({"upscalingMode": "Fast"}), "Fast"),
        (lambda d: d["spec"].update({"workerGroups": []}), "workerGroups"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].update({"minReplicas": 5, "maxReplicas": 1, "replicas": 5}), "maxReplicas"),
        (lambda d: d.update({"apiVersion": "ray.io/v1alpha1"}), "ray.io/v1"),
    ],
)
def test_kuberay_schema_rejects_mistakes(mutate, words):
    doc = load("cluster_configs/kuberay/aws-cpu-raycluster.yaml")
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError, match=words):
        validate_manifest(doc)


def test_render_refuses_unknown_targets_and_clusters():
    from elasticml.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown target"):
        render("gcp", "aws-cpu")
    with pytest.raises(ConfigError, match="unknown cluster"):
        render("aws", "aws-tpu")
    with pytest.raises(ConfigError, match="render aws-cpu or aws-gpu"):
        render("aws", "local")


def test_a_definition_cannot_open_ssh_to_the_world():
    from elasticml.errors import ConfigError
    from elasticml.provision.definition import ClusterDefinition

    with pytest.raises(ConfigError, match="admin_cidr"):
        ClusterDefinition(name="x", region="us-east-1", head_instance_type="m7i.large", groups=(), admin_cidr="0.0.0.0/0")


@pytest.mark.parametrize("name", AWS)
def test_aws_nodes_require_imdsv2_and_the_head_manages_only_its_own_clusters_instances(name):
    raw = load(f"cluster_configs/{name}.yaml")
    for node_type, body in raw["available_node_types"].items():
        assert body["node_config"]["MetadataOptions"] == {"HttpEndpoint": "enabled", "HttpTokens": "required",
                                                         "HttpPutResponseHopLimit": 1}, node_type
    policy = json.loads((REPO / "cluster_configs" / "aws" / f"{name}-head-policy.json").read_text())
    cluster = raw["cluster_name"]
    for st in policy["Statement"]:
        actions = set(st["Action"])
        instances = [r for r in ([st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"])
                     if ":instance/" in r or r == "*"]
        if actions & {"ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"}:
            assert st["Condition"] == {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": cluster}}, st
        if "ec2:RunInstances" in actions and instances:
            assert st["Condition"] == {"StringEquals": {"aws:RequestTag/ray-cluster-name": cluster}}, st
        if "ec2:CreateTags" in actions:
            assert st["Condition"] in ({"StringEquals": {"ec2:ResourceTag/ray-cluster-name": cluster}},
                                       {"StringEquals": {"ec2:CreateAction": "RunInstances"}}), st
        if st["Resource"] == "*":
            assert all(a.startswith(("ec2:Describe", "ec2:GetSpot")) for a in actions), st


@pytest.mark.parametrize("name", AWS)
def test_the_bucket_refuses_plain_http_and_encrypts_every_object_with_the_clusters_key(name):
    policy = json.loads((REPO / "cluster_configs" / "aws" / f"{name}-bucket-policy.json").read_text())
    encryption = json.loads((REPO / "cluster_configs" / "aws" / f"{name}-bucket-encryption.json").read_text())
    key = f"arn:aws:kms:{CLUSTERS[name].region}:{CLUSTERS[name].account_id}:alias/elasticml-{name}"
    rule = encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert rule == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    assert all(st["Effect"] == "Deny" for st in policy["Statement"])
    assert by_sid["DenyWithoutTLS"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert by_sid["DenyWithoutTLS"]["Action"] == "s3:*"
    assert by_sid["DenyOtherEncryption"]["Condition"]["StringNotEqualsIfExists"] == {
        "s3:x-amz-server-side-encryption": "aws:kms"}
    assert by_sid["DenyOtherKeys"]["Condition"]["StringNotEqualsIfExists"] == {
        "s3:x-amz-server-side-encryption-aws-kms-key-id": key}
    for role in ("head", "worker"):  # both roles can use that key, and only keys with its alias
        statements = json.loads((REPO / "cluster_configs" / "aws" / f"{name}-{role}-policy.json").read_text())["Statement"]
        kms = next(st for st in statements if st["Sid"] == "UseTheBucketsKey")
        assert kms["Condition"] == {"ForAnyValue:StringEquals": {"kms:ResourceAliases": f"alias/elasticml-{name}"}}


@pytest.mark.parametrize("name", AWS)
def test_each_tenant_role_reaches_only_its_prefix_and_only_the_head_may_assume_it(name):
    d = CLUSTERS[name]
    assert d.tenants
    trust = json.loads((REPO / f"cluster_configs/aws/{name}-tenant-trust.json").read_text())
    assert [st["Principal"]["AWS"] for st in trust["Statement"]] == [f"arn:aws:iam::{d.account_id}:role/elasticml-{name}-head"]
    for tenant in d.tenants:
        policy = json.loads((REPO / f"cluster_configs/aws/{name}-tenant-{tenant}-policy.json").read_text())
        for st in policy["Statement"]:
            assert st["Effect"] == "Allow"
            if st["Sid"] == "OwnPrefix":
                assert st["Resource"] == f"arn:aws:s3:::{d.bucket}/tenants/{tenant}/*"
            elif st["Sid"] == "ListOwnPrefix":
                assert st["Condition"]["StringLike"]["s3:prefix"] == [f"tenants/{tenant}/*"]
            else:
                assert st["Sid"] in ("BucketRegion", "UseTheBucketsKey") and "s3:GetObject" not in st["Action"]
    head = json.loads((REPO / f"cluster_configs/aws/{name}-head-policy.json").read_text())
    vend = next(st for st in head["Statement"] if st["Sid"] == "VendTenantCredentials")
    assert vend["Resource"] == f"arn:aws:iam::{d.account_id}:role/elasticml-{name}-tenant-*"
    raw = load(f"cluster_configs/{name}.yaml")
    assert f"ELASTICML_TENANT_ROLE_ARN=arn:aws:iam::{d.account_id}:role/elasticml-{name}-tenant-{{tenant}}" in \
        raw["head_start_ray_commands"][-1]


@pytest.mark.parametrize("name", AWS)
def test_the_rayservice_is_reached_over_https_only(name):
    ingress = load(f"cluster_configs/kuberay/{name}-serve-ingress.yaml")
    service = load(f"cluster_configs/kuberay/{name}-rayservice.yaml")
    notes = ingress["metadata"]["annotations"]
    assert json.loads(notes["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTPS": 443}]  # no plain HTTP listener
    assert notes["alb.ingress.kubernetes.io/certificate-arn"].startswith(f"arn:aws:acm:{CLUSTERS[name].region}:")
    assert notes["alb.ingress.kubernetes.io/scheme"] == "internal" and "TLS13" in notes["alb.ingress.kubernetes.io/ssl-policy"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{service['metadata']['name']}-serve-svc", "port": {"number": 8000}}
