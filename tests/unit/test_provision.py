"""Provisioning files: generated from one definition, valid against their schemas, secure by default."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from elasticml import labels as L
from elasticml.cluster.config import load_cluster_spec, ray_schema
from elasticml.provision.definition import CLUSTERS
from elasticml.provision.render import definition_at_site
from elasticml.provision.kuberay_rules import ManifestError, validate_manifest
from elasticml.provision import karpenter
from elasticml.provision.aws import setup_environment
from elasticml.provision.render import render, render_all

AT_SITE = {n: d if n == "local" else definition_at_site(n) for n, d in CLUSTERS.items()}
"""Each definition with the committed example's site values, as the committed files are rendered."""

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]


def load(rel: str):
    return yaml.safe_load((REPO / rel).read_text())


def _ray_start(commands: list[str]) -> str:
    return next(c for c in commands if "ray start" in c)


def test_committed_files_are_exactly_what_the_definition_renders():
    files = render_all()
    assert "cluster_configs/local.yaml" in files and len(files) == 17 + 2 + 4 + 2 + 4 + 2 + 4 + 2 + 2 + 2 + 6 + 1 + 2 + 2
    # + tenant trust and roles, Serve ingresses, service accounts, Karpenter, the AWS docker variants, Grafana
    # dashboards, PodMonitors, the API server's Service (with the scheduler's config), the platform's namespaces,
    # the heads' ServiceAccount and RBAC, NetworkPolicies and IRSA trust, the alerting rules and their PrometheusRules,
    # the AWS security groups' rules
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


@pytest.mark.parametrize("name", AWS + [f"{n}-docker" for n in AWS])
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
    assert "security_group" not in raw["provider"]  # Ray makes no group (one it made would admit SSH from anywhere)
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if c.startswith("RAY_") or "ray start" in c)
    assert raw["file_mounts"]["~/.ray/auth_token"]
    # The node agents' credential where the watcher (and the head's scheduler) look for it, on every
    # node and private; the admin's is never mounted.
    agent = f"~/.elasticml/credentials/{raw['cluster_name']}/agent"
    assert raw["file_mounts"][agent] == agent and not any("admin" in k for k in raw["file_mounts"])
    assert any(c.startswith("chmod 600") and agent in c for c in raw["setup_commands"])
    # Ray's TLS: the CA on every node (its key on the head only: test_aws_workers_never_get_the_ca_key), each
    # node's own certificate made after the package is installed (Ray runs setup_commands, then the head's or
    # the worker's own), and every Ray process (head, workers, the watcher) started with it.
    ca = f"~/.elasticml/credentials/{raw['cluster_name']}/tls"
    assert raw["file_mounts"][ca] == ca
    assert any("pip install" in c for c in raw["setup_commands"])
    assert any("elasticml.provision.tls node" in c and ca in c for c in raw["head_setup_commands"])
    for setup in [raw["worker_setup_commands"]] + [b["worker_setup_commands"] for b in types.values()
                                                    if "worker_setup_commands" in b]:
        cert = next(i for i, c in enumerate(setup) if "elasticml.provision.tls request" in c)
        assert cert < next((i for i, c in enumerate(setup) if "watcher" in c), len(setup))
    tls = ["RAY_USE_TLS=1", "RAY_TLS_SERVER_CERT=$HOME/.elasticml/tls/node.crt",
           "RAY_TLS_SERVER_KEY=$HOME/.elasticml/tls/node.key", "RAY_TLS_CA_CERT=$HOME/.elasticml/tls/ca.crt"]
    spot_setups = [c for b in types.values() for c in b.get("worker_setup_commands", []) if "watcher" in c]
    for command in [c for c in starts if "ray start" in c] + spot_setups:
        assert all(t in command for t in tls), command
    assert any("pip install" in c and "elasticml" in c for c in raw["setup_commands"])
    assert "RAY_enable_autoscaler_v2=1" in _ray_start(raw["head_start_ray_commands"])


@pytest.mark.parametrize("name", AWS + [f"{n}-docker" for n in AWS])
def test_aws_nodes_get_the_checkpoint_key_as_a_private_file_mount_and_ray_gets_its_path(name):
    """Every node writes or loads checkpoints: the key made by `cluster credentials` on the launching
    machine is mounted on each (0600) and every Ray process started there, head and workers, so every
    job and replica, has ELASTICML_CHECKPOINT_KEY_PATH naming it; so do login shells (~/.bashrc)."""
    raw = load(f"cluster_configs/{name}.yaml")
    key = f"~/.elasticml/credentials/{raw['cluster_name']}/checkpoint.key"
    assert raw["file_mounts"][key] == key
    assert any(c.startswith("chmod 600") and key in c.split() for c in raw["setup_commands"])
    var = f"ELASTICML_CHECKPOINT_KEY_PATH={key.replace('~', '$HOME')}"
    starts = [c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(var in c.split() for c in starts), starts
    assert any(f"echo 'export {var}' >> ~/.bashrc" in c for c in raw["setup_commands"])
    for body in raw["available_node_types"].values():  # a node type's own setup replaces the cluster's
        if "worker_setup_commands" in body:
            assert any(c.startswith("chmod 600") and key in c.split() for c in body["worker_setup_commands"])
    jsonschema.validate(raw, ray_schema())


@pytest.mark.parametrize("name", AWS)
def test_every_kuberay_pod_mounts_the_checkpoint_key_secret_read_only_and_names_it(name):
    """The key travels as the CA does: a Secret (`elasticml-NAME-checkpoint-key`, from the file `cluster
    credentials` made), mounted read-only in every Ray pod, head and workers, of the RayCluster, the
    RayJob's and the RayService's, with ELASTICML_CHECKPOINT_KEY_PATH naming the file; the pods' group
    (the image's user) may read it, nobody else. The manifests still pass the CRDs and the controller."""
    for kind, spec_of in (("raycluster", lambda d: d["spec"]), ("rayjob", lambda d: d["spec"]["rayClusterSpec"]),
                          ("rayservice", lambda d: d["spec"]["rayClusterConfig"])):
        doc = load(f"cluster_configs/kuberay/{name}-{kind}.yaml")
        validate_manifest(doc)
        spec = spec_of(doc)
        pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
        assert len(pods) == 1 + len(AT_SITE[name].groups)
        for pod in pods:
            volume = next(v for v in pod["volumes"] if v["name"] == "checkpoint-key")
            assert volume["secret"] == {"secretName": f"elasticml-{name}-checkpoint-key", "defaultMode": 0o400}
            container = pod["containers"][0]
            mount = next(m for m in container["volumeMounts"] if m["name"] == "checkpoint-key")
            assert mount["readOnly"] is True
            env = {e["name"]: e for e in container["env"]}
            assert env["ELASTICML_CHECKPOINT_KEY_PATH"] == {"name": "ELASTICML_CHECKPOINT_KEY_PATH",
                                                            "value": f"{mount['mountPath']}/checkpoint.key"}
            assert pod["securityContext"] == {"fsGroup": 100}


@pytest.mark.parametrize("name", AWS)
def test_iam_policies_let_workers_reach_the_bucket_and_nothing_more(name):
    bucket = AT_SITE[name].bucket
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
            assert st["Condition"]["StringEquals"]["aws:RequestedRegion"] == AT_SITE[name].region


@pytest.mark.parametrize("name", AWS)
def test_kuberay_manifests_validate_and_map_markets_to_node_pools(name):
    docs = {kind: load(f"cluster_configs/kuberay/{name}-{kind}.yaml") for kind in ("raycluster", "rayjob", "rayservice")}
    for doc in docs.values():
        validate_manifest(doc)  # the vendored CRD and the KubeRay controller's rules
    groups = docs["raycluster"]["spec"]["workerGroupSpecs"]
    definition = {g.name.replace("_", "-"): g for g in AT_SITE[name].groups}
    assert {g["groupName"] for g in groups} == set(definition)
    for g in groups:
        d = definition[g["groupName"]]
        pod = g["template"]["spec"]
        assert pod["nodeSelector"]["karpenter.sh/capacity-type"] == d.market
        assert g["labels"] == d.labels and "labels" not in g["rayStartParams"]  # KubeRay >= 1.5's way
        assert g["idleTimeoutSeconds"] >= 0 and g["resources"]["CPU"] == str(d.cpus)
        spot_toleration = any(t.get("value") == "spot" for t in pod.get("tolerations", []))
        assert spot_toleration == (d.market == "spot")
    head = docs["raycluster"]["spec"]["headGroupSpec"]["template"]["spec"]
    for pod in [head] + [g["template"]["spec"] for g in groups]:
        # The token through authOptions (KubeRay hands it to Ray, its autoscaler and the job submitter);
        # no manifest holds it or points an env var at a secret of its own.
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert "RAY_AUTH_TOKEN" not in env and not any("secretKeyRef" in e.get("valueFrom", {}) for e in env.values())
        # The head has its own ServiceAccount (the head role, the watcher's RBAC); workers keep the worker one.
        assert pod["serviceAccountName"] == (f"elasticml-{name}-head" if pod is head else f"elasticml-{name}")
        assert pod["containers"][0]["image"].startswith(AT_SITE[name].image + ":")
        # Ray's TLS: an init container makes the pod's certificate (its IP) into a memory volume that Ray's
        # container reads and the TLS variables point at: the head's from the CA Secret, a worker's by asking
        # the API server (test_render_tls.py).
        init = pod["initContainers"][0]
        if pod is head:
            assert init["command"][:4] == ["python", "-m", "elasticml.provision.tls", "node"]
            assert "$(POD_IP)" in init["command"] and {e["name"] for e in init["env"]} == {"POD_IP", "POD_NAMESPACE"}
        else:
            assert "elasticml.provision.tls request" in init["command"][-1] and "$(POD_IP)" in init["command"][-1]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["ray-ca"]["secret"]["secretName"] == f"elasticml-{name}-ca"
        assert volumes["ray-tls"]["emptyDir"] == {"medium": "Memory"}
        tls_mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "ray-tls")
        assert env["RAY_USE_TLS"]["value"] == "1" and tls_mount["readOnly"]
        for var, file in (("RAY_TLS_SERVER_CERT", "node.crt"), ("RAY_TLS_SERVER_KEY", "node.key"), ("RAY_TLS_CA_CERT", "ca.crt")):
            assert env[var]["value"] == f"{tls_mount['mountPath']}/{file}"
    for spec in (docs["raycluster"]["spec"], docs["rayjob"]["spec"]["rayClusterSpec"],
                 docs["rayservice"]["spec"]["rayClusterConfig"]):
        assert spec["authOptions"] == {"mode": "token", "secretName": f"elasticml-{name}-token"}
        assert spec["autoscalerOptions"]["version"] == "v2" and spec["enableInTreeAutoscaling"] is True
    assert docs["rayjob"]["spec"]["submissionMode"] == "K8sJobMode" and docs["rayjob"]["spec"]["backoffLimit"] >= 1
    assert docs["rayservice"]["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    account = load(f"cluster_configs/kuberay/{name}-serviceaccount.yaml")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(f"role/elasticml-{name}-worker")
    serve = yaml.safe_load(docs["rayservice"]["spec"]["serveConfigV2"])
    assert serve["applications"][0]["import_path"] == "serve_apps.completion:app"
    assert "jobs/train.py" in docs["rayjob"]["spec"]["entrypoint"]


def _rc(doc):
    return doc["spec"]


def _group(doc):
    return doc["spec"]["workerGroupSpecs"][0]


@pytest.mark.parametrize("kind, mutate, field, words", [
    # The CRD's own schema.
    ("raycluster", lambda d: _group(d).update({"minReplicas": "two"}), "minReplicas", "is not of type 'integer'"),
    ("raycluster", lambda d: _rc(d)["autoscalerOptions"].update({"upscalingMode": "Fast"}), "upscalingMode", "Fast"),
    ("raycluster", lambda d: _rc(d)["authOptions"].update({"mode": "on"}), "authOptions.mode", "'on'"),
    ("raycluster", lambda d: _rc(d).update({"workerGroups": []}), "spec.workerGroups", "does not define"),
    ("raycluster", lambda d: _group(d).pop("groupName"), "workerGroupSpecs.0", "groupName"),
    ("raycluster", lambda d: d.update({"apiVersion": "ray.io/v1alpha2"}), "kind", "no vendored CRD"),
    # The controller's rules (validation.go).
    ("raycluster", lambda d: _group(d)["rayStartParams"].update({"labels": "a=b"}), "rayStartParams.labels",
     "top-level Labels"),
    ("raycluster", lambda d: _group(d)["rayStartParams"].update({"num-cpus": "8"}), "resources", "both rayStartParams"),
    ("raycluster", lambda d: _group(d)["labels"].update({"bad key!": "x"}), "labels", "invalid label key"),
    ("raycluster", lambda d: _group(d)["labels"].update({"ok": "-bad-"}), "labels", "invalid label value"),
    ("raycluster", lambda d: d["metadata"].update({"name": "x" * 54}), "metadata.name", "53 characters"),
    ("raycluster", lambda d: d["metadata"].update({"name": "1-not-dns-1035"}), "metadata.name", "DNS1035"),
    ("raycluster", lambda d: _rc(d)["autoscalerOptions"].pop("version"), "idleTimeoutSeconds", "autoscaler v2"),
    ("raycluster", lambda d: _rc(d)["workerGroupSpecs"].append(dict(_group(d))), "workerGroupSpecs", "unique"),
    ("raycluster", lambda d: _group(d).update({"minReplicas": 5, "maxReplicas": 1}), "minReplicas", "greater than"),
    ("raycluster", lambda d: _rc(d).update({"rayVersion": "2.40.0"}), "rayVersion", "2.52.0"),
    ("raycluster", lambda d: _rc(d)["headGroupSpec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "RAY_enable_autoscaler_v2", "value": "1"}), "autoscalerOptions.version", "only use the former"),
    ("raycluster", lambda d: _group(d)["template"]["spec"].update({"restartPolicy": "Always"}), "restartPolicy",
     "Never or unset"),
    ("rayjob", lambda d: d["metadata"].update({"name": "x" * 48}), "metadata.name", "47 characters"),
    ("rayjob", lambda d: d["spec"].update({"runtimeEnvYAML": "working_dir: [unclosed"}), "runtimeEnvYAML", "valid YAML"),
    ("rayjob", lambda d: d["spec"].update({"backoffLimit": -1}), "backoffLimit", "positive"),
    ("rayjob", lambda d: d["spec"].update({"activeDeadlineSeconds": 0}), "activeDeadlineSeconds", "positive"),
    ("rayjob", lambda d: d["spec"].update({"shutdownAfterJobFinishes": False}), "ttlSecondsAfterFinished",
     "cannot have TTLSecondsAfterFinished"),
    ("rayjob", lambda d: d["spec"].update({"submissionMode": "InteractiveMode"}), "backoffLimit", "InteractiveMode"),
    ("rayjob", lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"].update(
        {"labels": "a=b"}), "rayStartParams.labels", "top-level Labels"),
    ("rayservice", lambda d: d["spec"]["upgradeStrategy"].update({"type": "Rolling"}), "upgradeStrategy", "Rolling"),
    ("rayservice", lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"].update(
        {"headService": {"metadata": {"name": "mine"}}}), "headService", "should not be set"),
    ("rayservice", lambda d: d["spec"].update({"serveConfigV2": "applications: [unclosed"}), "serveConfigV2", "YAML"),
])
def test_each_kind_of_manifest_the_crds_or_the_kuberay_controller_refuse_is_refused(kind, mutate, field, words):
    doc = load(f"cluster_configs/kuberay/aws-cpu-{kind}.yaml")
    validate_manifest(doc)
    mutate(doc)
    with pytest.raises(ManifestError, match=words) as info:
        validate_manifest(doc)
    assert field in str(info.value.field), info.value


@pytest.mark.parametrize("name", AWS)
def test_karpenter_node_pools_match_the_definitions_markets_and_pass_karpenters_crds(name):
    docs = list(yaml.safe_load_all((REPO / f"cluster_configs/kuberay/{name}-karpenter.yaml").read_text()))
    for doc in docs:
        validate_manifest(doc)
    nodeclass = next(d for d in docs if d["kind"] == "EC2NodeClass")
    assert nodeclass["spec"]["metadataOptions"]["httpTokens"] == "required"
    assert nodeclass["spec"]["capacityReservationSelectorTerms"]
    assert nodeclass["spec"]["amiSelectorTerms"] == [{"alias": karpenter.AMI_ALIAS}]  # pinned, never @latest
    assert re.fullmatch(r"al2023@v\d{8}", karpenter.AMI_ALIAS)
    pools = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NodePool"}
    families = {(g.market, g.instance_type.split(".")[0]) for g in AT_SITE[name].groups}
    assert set(pools) == {f"elasticml-{name}-{m}-{f}" for m, f in families}
    for pool in pools.values():
        spec = pool["spec"]
        assert spec["template"]["spec"]["expireAfter"] == "720h" and spec["disruption"]["budgets"]
        assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty"
    groups = load(f"cluster_configs/kuberay/{name}-raycluster.yaml")["spec"]["workerGroupSpecs"]
    by_name = {g.name.replace("_", "-"): g for g in AT_SITE[name].groups}
    for g in groups:  # every worker group's pods fit exactly one pool: its market's, of its instance family
        selector = g["template"]["spec"]["nodeSelector"]
        family = by_name[g["groupName"]].instance_type.split(".")[0]
        assert selector == {"karpenter.sh/capacity-type": by_name[g["groupName"]].market,
                            "karpenter.k8s.aws/instance-family": family}
        pool = pools[f"elasticml-{name}-{selector['karpenter.sh/capacity-type']}-{family}"]
        reqs = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
        assert reqs["karpenter.sh/capacity-type"] == [selector["karpenter.sh/capacity-type"]]
        assert reqs["karpenter.k8s.aws/instance-family"] == [family]
        assert by_name[g["groupName"]].instance_type.split(".")[1] in reqs["karpenter.k8s.aws/instance-size"]
        taints = {t["key"] for t in pool["spec"]["template"]["spec"].get("taints", [])}
        tolerated = {t["key"] for t in g["template"]["spec"].get("tolerations", [])}
        assert taints <= tolerated  # the group's pods tolerate their pool's taints
        gpus, spot = bool(by_name[g["groupName"]].gpus), by_name[g["groupName"]].market == "spot"
        # GPU pools: the GPU taint alone, the one the NVIDIA device plugin's DaemonSet tolerates (with the
        # spot taint too it would not run there, and no GPU would be advertised); CPU spot pools: spot's.
        assert taints == ({"nvidia.com/gpu"} if gpus else {"karpenter.sh/capacity-type"} if spot else set())
    bad = json.loads(json.dumps(docs[1]))
    bad["spec"]["template"]["spec"]["requirements"][0]["operator"] = "Within"
    with pytest.raises(ManifestError, match="Within"):
        validate_manifest(bad)


def test_render_refuses_unknown_targets_and_clusters():
    from elasticml.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown target"):
        render("gcp", "aws-cpu")
    with pytest.raises(ConfigError, match="unknown cluster"):
        render("aws", "aws-tpu")
    with pytest.raises(ConfigError, match="render aws for aws-cpu or aws-gpu"):
        render("aws", "local")
    with pytest.raises(ConfigError, match="render kuberay for aws-cpu or aws-gpu"):
        render("kuberay", "local")
    with pytest.raises(ConfigError, match="REPOSITORY:TAG"):
        render("kuberay", "aws-cpu", image="no tag here")


@pytest.mark.parametrize("name", AWS)
def test_every_target_has_the_same_pools_with_the_same_labels(name):
    """Local, AWS (both variants) and KubeRay: one node type name, one set of Ray labels, one market."""
    local = load("cluster_configs/local.yaml")["available_node_types"]
    aws = {t: b["labels"] for t, b in load(f"cluster_configs/{name}.yaml")["available_node_types"].items() if "labels" in b}
    docker = {t: b["labels"] for t, b in load(f"cluster_configs/{name}-docker.yaml")["available_node_types"].items()
              if "labels" in b}
    kuberay = {g["labels"][L.NODE_TYPE]: g["labels"]
               for g in load(f"cluster_configs/kuberay/{name}-raycluster.yaml")["spec"]["workerGroupSpecs"]}
    assert aws == docker == kuberay and set(aws) == {g.name for g in AT_SITE[name].groups}
    for node_type, labels in aws.items():
        if node_type in local:
            assert local[node_type]["labels"] == labels


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
    key = f"arn:aws:kms:{AT_SITE[name].region}:{AT_SITE[name].account_id}:alias/elasticml-{name}"
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
    d = AT_SITE[name]
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
        _ray_start(raw["head_start_ray_commands"])


@pytest.mark.parametrize("name", AWS)
def test_the_rayservice_is_reached_over_https_only(name):
    ingress = load(f"cluster_configs/kuberay/{name}-serve-ingress.yaml")
    service = load(f"cluster_configs/kuberay/{name}-rayservice.yaml")
    notes = ingress["metadata"]["annotations"]
    assert json.loads(notes["alb.ingress.kubernetes.io/listen-ports"]) == [{"HTTPS": 443}]  # no plain HTTP listener
    assert notes["alb.ingress.kubernetes.io/certificate-arn"].startswith(f"arn:aws:acm:{AT_SITE[name].region}:")
    assert notes["alb.ingress.kubernetes.io/scheme"] == "internal" and "TLS13" in notes["alb.ingress.kubernetes.io/ssl-policy"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{service['metadata']['name']}-serve-svc", "port": {"number": 8000}}


def test_the_image_is_rays_matching_release_with_the_package_and_every_manifest_uses_it(tmp_path):
    """No daemon here to build it: the Dockerfile is checked as text, the manifests as rendered."""
    import re

    docker = (REPO / "Dockerfile").read_text()
    base = re.search(r"ARG RAY_TAG=(\S+)", docker).group(1)
    ray_pin = re.search(r'"ray\[[^\]]*\]>=([\d.]+),<', (REPO / "pyproject.toml").read_text()).group(1)
    assert base.startswith(ray_pin) and "-py311-" in base and "FROM rayproject/ray:${RAY_TAG}" in docker
    assert all(f"COPY --chown=ray:users {d} ./{d}" in docker for d in ("platform", "serve_apps", "jobs"))
    # Every package from a lock with hashes (the default flavour's lock holds torch's CPU build), then
    # the package alone.
    assert "ARG LOCK=runtime-cpu.lock" in docker and "--build-arg LOCK=runtime-cuda.lock" in docker
    assert '--require-hashes --extra-index-url "${TORCH_CPU_INDEX}" -r "requirements/${LOCK}"' in docker
    # Editable, so elasticml.repo finds jobs/ beside the package (the API server runs jobs/train.py from there),
    # which the build checks; no cluster configs in the image (the scheduler's comes from its ConfigMap).
    assert "pip install --no-cache-dir --no-deps --no-build-isolation --editable ." in docker
    assert "assert (JOBS / 'train.py').is_file()" in docker
    assert "cluster_configs" in (REPO / ".dockerignore").read_text().split()
    assert "torch==2.13.0+cpu \\" in (REPO / "requirements/runtime-cpu.lock").read_text()
    assert "requirements" not in (REPO / ".dockerignore").read_text().split()
    for name in AWS:
        d = AT_SITE[name]
        for kind in ("raycluster", "rayjob", "rayservice"):
            text = (REPO / f"cluster_configs/kuberay/{name}-{kind}.yaml").read_text()
            images = set(re.findall(r"image: (\S+)", text))
            assert images and images <= {f"{d.image}:{d.image_tag}-cpu", f"{d.image}:{d.image_tag}-gpu"}, images
    out = subprocess.run([str(Path(sys.executable).with_name("elasticml")), "cluster", "render", "--image",
                          "registry.example.com/ml/elasticml:7", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "cluster_configs/kuberay/aws-gpu-raycluster.yaml").read_text()
    assert "image: registry.example.com/ml/elasticml:7-gpu" in text and "image: registry.example.com/ml/elasticml:7-cpu" in text
    bad = subprocess.run([str(Path(sys.executable).with_name("elasticml")), "cluster", "render", "--image", "no-tag",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "image" in bad.stderr


@pytest.mark.parametrize("name", AWS)
def test_aws_nodes_boot_a_current_ami_family_with_python_3_11_or_later(name):
    raw = load(f"cluster_configs/{name}.yaml")
    assert "latest_dlami" not in (REPO / f"cluster_configs/{name}.yaml").read_text()
    for node_type, body in raw["available_node_types"].items():
        ami = body["node_config"]["ImageId"]
        gpus = body["resources"].get("GPU", 0)
        # Resolved by EC2 at launch from the public SSM parameter of the family, in the cluster's region.
        assert ami.startswith("resolve:ssm:/aws/service/") and "ubuntu" in ami and "24.04" in ami, node_type
        assert ("deeplearning" in ami) == bool(gpus), node_type
    head = json.loads((REPO / f"cluster_configs/aws/{name}-head-policy.json").read_text())
    ssm = next(st for st in head["Statement"] if st["Sid"] == "ResolvePublicAmiParameters")
    assert ssm["Action"] == ["ssm:GetParameters"] and ssm["Resource"].endswith("::parameter/aws/service/*")
    setup = raw["setup_commands"]
    assert all(c in setup for c in setup_environment())  # what test_setup_commands... runs in a fresh venv
    # Ray and elasticml from the nodes' virtualenv, where setup installed them.
    assert all(re.search(r"\$HOME/venv/bin/(ray|elasticml) ", c) for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"])


@pytest.mark.parametrize("name", AWS)
def test_the_docker_variant_runs_ray_in_the_platforms_image_with_the_same_pools(name):
    d = AT_SITE[name]
    plain, docker = load(f"cluster_configs/{name}.yaml"), load(f"cluster_configs/{name}-docker.yaml")
    assert docker["docker"]["head_image"] == f"{d.image}:{d.image_tag}-cpu"
    for node_type, body in docker["available_node_types"].items():
        same = plain["available_node_types"][node_type]
        assert body.get("labels") == same.get("labels") and body["resources"] == same["resources"]
        assert body["node_config"]["MetadataOptions"]["HttpPutResponseHopLimit"] == 2  # the container is a hop
        assert body["node_config"]["MetadataOptions"]["HttpTokens"] == "required"
        if body["resources"].get("GPU"):
            assert body["docker"]["worker_image"] == f"{d.image}:{d.image_tag}-gpu"
    assert not any("pip install" in c for c in docker["setup_commands"])  # the image has the platform
    assert any("elasticml.provision.tls node" in c for c in docker["head_setup_commands"])
    assert any("elasticml.provision.tls request" in c for c in docker["worker_setup_commands"])
    assert any("docker.io" in c for c in docker["initialization_commands"])


@pytest.mark.parametrize("name", AWS)
def test_the_pod_monitor_scrapes_every_ray_pod_the_manifests_make(name):
    monitor = load(f"cluster_configs/kuberay/{name}-podmonitor.yaml")
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    for kind in ("raycluster", "rayjob", "rayservice"):
        doc = load(f"cluster_configs/kuberay/{name}-{kind}.yaml")
        spec = {"raycluster": lambda d: d["spec"], "rayjob": lambda d: d["spec"]["rayClusterSpec"],
                "rayservice": lambda d: d["spec"]["rayClusterConfig"]}[kind](doc)
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            labels = {**group["template"]["metadata"]["labels"], "ray.io/is-ray-node": "yes"}  # KubeRay adds the latter
            assert selector.items() <= labels.items(), (kind, group.get("groupName"))
