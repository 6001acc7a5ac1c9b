"""The API server in the cloud renders (AWS head, KubeRay head pod and Service) and tenants' own clusters."""

from __future__ import annotations

import json
import shlex
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from elasticml.cli import scheduler_start
from elasticml.cli.api import serve as api_serve
from elasticml.errors import ConfigError
from elasticml.provision import tls
from elasticml.provision.definition import CLUSTERS
from elasticml.provision.render import definition_at_site
from elasticml.provision.kuberay_rules import ManifestError, validate_manifest
from elasticml.provision.tenant import render_tenant, tenant_namespace

AT_SITE = {n: d if n == "local" else definition_at_site(n) for n, d in CLUSTERS.items()}
"""Each definition with the committed example's site values, as the committed files are rendered."""

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]


def load(rel: str):
    return yaml.safe_load((REPO / rel).read_text())


def load_all(rel: str) -> list:
    return list(yaml.safe_load_all((REPO / rel).read_text()))


def options(command) -> set[str]:
    return {opt for p in command.params for opt in p.opts}


def flags(command_line: str, after: str) -> dict[str, str | None]:
    """`--flag value` pairs (or `--flag` alone) of the command that follows `after` in a shell line."""
    words, want = shlex.split(command_line), after.split()
    start = next(i for i in range(len(words))  # the program by its name, wherever it is installed
                 if [w.rsplit("/", 1)[-1] for w in words[i:i + len(want)]] == want) + len(want)
    ends = ("&&", "||", ";", "&", "|", "then", "do")
    mine: list[str] = []
    for w in words[start:]:  # up to the end of this command
        if w in ends:
            break
        mine.append(w.removesuffix(";"))
        if w.endswith(";"):
            break
    out: dict[str, str | None] = {}
    for i, w in enumerate(mine):
        if w.startswith("--"):
            nxt = mine[i + 1] if i + 1 < len(mine) else None
            out[w] = None if nxt is None or nxt.startswith("--") else nxt
    return out


# -- AWS ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["", "-docker"])
@pytest.mark.parametrize("name", AWS)
def test_the_aws_head_starts_the_scheduler_and_the_api_server_with_tls_after_ray(name, variant):
    raw = load(f"cluster_configs/{name}{variant}.yaml")
    head = raw["head_start_ray_commands"]
    ray_start = next(i for i, c in enumerate(head) if "ray start --head" in c)
    api = [i for i, c in enumerate(head) if "elasticml scheduler start" in c]
    assert api and api[0] > ray_start, head  # Ray first: the scheduler and the server are actors on it
    command = head[api[0]]
    given = flags(command, "elasticml scheduler start")
    assert set(given) <= options(scheduler_start)  # every flag is one the CLI has
    assert given["--api-host"] == "0.0.0.0" and given["--api-port"] == "8443"
    # The node's own certificate, made at boot by `elasticml.provision.tls node` from the cluster's CA, for
    # every address of the head: the same file Ray's TLS uses.
    node_tls = "$HOME/.elasticml/tls"
    assert given["--api-cert"] == f"{node_tls}/node.crt" and given["--api-key"] == f"{node_tls}/node.key"
    setup = raw["head_setup_commands"]
    assert any("elasticml.provision.tls node" in c and f"--out {node_tls}" in c for c in setup)
    # With the CA (the head's alone) it signs workers' certificates.
    assert given["--node-ca-dir"] == f"~/.elasticml/credentials/{raw['cluster_name']}/tls"
    # It connects to the head's Ray as Ray's own processes do: token auth, Ray's TLS.
    assert given["--address"] == "127.0.0.1:6379"
    for var in ("RAY_AUTH_MODE=token", "RAY_USE_TLS=1", f"RAY_TLS_SERVER_CERT={node_tls}/node.crt",
                f"RAY_TLS_CA_CERT={node_tls}/ca.crt"):
        assert var in command.split(), var


@pytest.mark.parametrize("name", AWS)
def test_only_the_admin_network_reaches_the_aws_api_server(name):
    rules = json.loads((REPO / f"cluster_configs/aws/{name}-security-group.json").read_text())
    rules = [r for r in rules if "UserIdGroupPairs" not in r]  # the cluster's own nodes: every port
    api = [r for r in rules if r["FromPort"] <= 8443 <= r["ToPort"]]
    assert len(api) == 1 and api[0]["IpProtocol"] == "tcp" and (api[0]["FromPort"], api[0]["ToPort"]) == (8443, 8443)
    assert [r["CidrIp"] for r in api[0]["IpRanges"]] == [AT_SITE[name].admin_cidr]
    assert not api[0].get("Ipv6Ranges")
    assert {r["FromPort"] for r in rules} == {22, 8443}  # nothing else is opened to anyone


# -- KubeRay ----------------------------------------------------------------------------
def head_of(spec: dict) -> dict:
    return spec["headGroupSpec"]["template"]["spec"]


def kuberay_labels(cluster: str, group: dict, *, head: bool) -> dict[str, str]:
    """The labels KubeRay gives a group's pods: the template's and its own ray.io/* ones."""
    own = {"ray.io/cluster": cluster, "ray.io/node-type": "head" if head else "worker",
           "ray.io/group": "headgroup" if head else group["groupName"], "ray.io/is-ray-node": "yes"}
    return {**group["template"]["metadata"]["labels"], **own}


@pytest.mark.parametrize("name", AWS)
def test_the_kuberay_head_pod_runs_the_api_server_beside_ray(name):
    rc = load(f"cluster_configs/kuberay/{name}-raycluster.yaml")
    validate_manifest(rc)
    pod = head_of(rc["spec"])
    ray, api = pod["containers"][0], next(c for c in pod["containers"] if c["name"] == "elasticml-api")
    assert ray["name"] == "ray-head" and api["image"] == ray["image"]  # KubeRay's Ray container stays first
    script = api["command"][-1]
    assert api["command"][:2] == ["sh", "-c"]
    # Ray's GCS first, then the scheduler (idempotent: it finds what exists), then the server; all of it
    # again whenever the server stops (KubeRay's autoscaler v2 allows the pod no restartPolicy but Never).
    assert script.index("while true; do") < script.index("ray health-check") < \
        script.index("elasticml scheduler start") < script.index("api serve") < script.rindex("done")
    assert "restartPolicy" not in head_of(rc["spec"])
    serve = flags(script, "elasticml api serve")
    assert set(serve) <= options(api_serve) and set(flags(script, "elasticml scheduler start")) <= options(scheduler_start)
    assert serve["--host"] == "0.0.0.0" and serve["--port"] == "8443" and serve["--address"] == "127.0.0.1:6379"
    assert "--jobs" in serve  # tenants' jobs too, as on the other targets
    # Its certificate is the pod's Ray TLS certificate, from the volume Ray's own container reads.
    ray_env = {e["name"]: e.get("value") for e in ray["env"]}
    api_env = {e["name"]: e.get("value") for e in api["env"]}
    assert serve["--tls-cert"] == ray_env["RAY_TLS_SERVER_CERT"] and serve["--tls-key"] == ray_env["RAY_TLS_SERVER_KEY"]
    for var in ("RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT"):
        assert api_env[var] == ray_env[var]
    mounts = {m["name"]: m for m in api["volumeMounts"]}
    assert mounts["ray-tls"] == next(m for m in ray["volumeMounts"] if m["name"] == "ray-tls")
    # The token the head uses (authOptions' Secret), as a read-only file; no env var holds it.
    volumes = {v["name"]: v for v in pod["volumes"]}
    token = volumes["ray-token"]["secret"]
    assert token["secretName"] == rc["spec"]["authOptions"]["secretName"] == f"elasticml-{name}-token"
    assert api_env["RAY_AUTH_MODE"] == "token" and mounts["ray-token"]["readOnly"]
    assert api_env["RAY_AUTH_TOKEN_PATH"] == f"{mounts['ray-token']['mountPath']}/auth_token"
    assert "RAY_AUTH_TOKEN" not in api_env and not any("valueFrom" in e for e in api["env"])
    # A driver in a second container reaches the head's raylet: same process namespace, same /tmp/ray
    # (under the name KubeRay's autoscaler sidecar mounts), and the same ~/.elasticml (ledger, jobs' files).
    assert pod["shareProcessNamespace"] is True
    for path, volume in (("/tmp/ray", "ray-logs"), ("/home/ray/.elasticml", "elasticml-home")):
        for container in (ray, api):
            assert {"name": volume, "mountPath": path} in container["volumeMounts"], (container["name"], path)
        assert volumes[volume] == {"name": volume, "emptyDir": {}}
    # The scheduler's cluster config, from the ConfigMap rendered beside the RayCluster.
    assert api_env["ELASTICML_CLUSTER_CONFIG"] == f"{mounts['scheduler-config']['mountPath']}/cluster.yaml"
    config_map = next(d for d in load_all(f"cluster_configs/kuberay/{name}-api.yaml") if d["kind"] == "ConfigMap")
    assert volumes["scheduler-config"]["configMap"]["name"] == config_map["metadata"]["name"]
    # Nothing of the API container reaches the checkpoint key: the scheduler and the jobs run in Ray's.
    assert "checkpoint-key" not in mounts and "ELASTICML_CHECKPOINT_KEY_PATH" not in api_env
    probe = api["readinessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "api", "scheme": "HTTPS"}


@pytest.mark.parametrize("name", AWS)
def test_the_api_service_selects_the_platform_head_pod_and_its_container_port(name):
    docs = load_all(f"cluster_configs/kuberay/{name}-api.yaml")
    for doc in docs:
        validate_manifest(doc)
    service = next(d for d in docs if d["kind"] == "Service")
    rc = load(f"cluster_configs/kuberay/{name}-raycluster.yaml")
    namespace = AT_SITE[name].namespace
    assert service["metadata"] == {"name": "elasticml-api", "namespace": namespace,
                                   "labels": {"app.kubernetes.io/part-of": "elasticml"}}
    assert rc["metadata"]["namespace"] == namespace
    spec = service["spec"]
    assert spec["type"] == "ClusterIP"  # in-cluster only; from outside: a port-forward or your own LB
    selector = spec["selector"]
    head_labels = kuberay_labels(rc["metadata"]["name"], rc["spec"]["headGroupSpec"], head=True)
    assert selector.items() <= head_labels.items()
    for group in rc["spec"]["workerGroupSpecs"]:  # never a worker
        assert not selector.items() <= kuberay_labels(rc["metadata"]["name"], group, head=False).items()
    for kind, cluster in (("rayjob", "rayClusterSpec"), ("rayservice", "rayClusterConfig")):
        # Their clusters are named after them (plus a suffix): their heads are not selected, nor run the server
        # (only their own scheduler and watcher: tests/unit/test_k8s_head.py).
        doc = load(f"cluster_configs/kuberay/{name}-{kind}.yaml")
        assert not selector.items() <= kuberay_labels(f"{doc['metadata']['name']}-x1", doc["spec"][cluster]["headGroupSpec"],
                                                      head=True).items()
        assert [c["name"] for c in head_of(doc["spec"][cluster])["containers"]] == \
            ["ray-head", "elasticml-scheduler", "elasticml-watcher"]
    [port] = spec["ports"]
    api = next(c for c in head_of(rc["spec"])["containers"] if c["name"] == "elasticml-api")
    [container_port] = api["ports"]
    assert port["port"] == 8443 and port["targetPort"] == container_port["name"] and container_port["containerPort"] == 8443


@pytest.mark.parametrize("name", AWS)
def test_the_scheduler_config_on_kuberay_has_the_definitions_pools(name, tmp_path):
    from elasticml.cluster.config import load_cluster_spec

    config_map = next(d for d in load_all(f"cluster_configs/kuberay/{name}-api.yaml") if d["kind"] == "ConfigMap")
    (tmp_path / "cluster.yaml").write_text(config_map["data"]["cluster.yaml"])
    on_k8s = load_cluster_spec(tmp_path / "cluster.yaml")
    on_aws = load_cluster_spec(REPO / f"cluster_configs/{name}.yaml")
    assert on_k8s.name == on_aws.name == f"elasticml-{name}"  # one scheduler name (its ledger, its credentials)
    assert {n: (t.labels, t.resources, t.max_workers) for n, t in on_k8s.worker_types.items()} == \
        {n: (t.labels, t.resources, t.max_workers) for n, t in on_aws.worker_types.items()}
    assert on_k8s.raw["provider"]["region"] == AT_SITE[name].region  # what its prices are read for
    assert "setup_commands" not in on_k8s.raw and "file_mounts" not in on_k8s.raw


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake in memory (no socket): raises ssl.SSLError when the client refuses the server."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, conn, out, peer_in in (("client", client, c_out, s_in), ("server", server, s_out, c_in)):
            if not done[side]:
                try:
                    conn.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("no handshake")


@pytest.mark.parametrize("name", AWS)
def test_the_head_pods_certificate_is_valid_for_the_api_services_name(name, tmp_path):
    """What the head's init container runs (its $(VAR)s as Kubernetes fills them), then a client that
    trusts the cluster's CA and dials the Service's name, as a tenant's pod does."""
    rc = load(f"cluster_configs/kuberay/{name}-raycluster.yaml")
    init = head_of(rc["spec"])["initContainers"][0]
    namespace = rc["metadata"]["namespace"]
    ca = tmp_path / "ca"
    tls.make_ca(ca, name)
    args = [a.replace("$(POD_IP)", "10.1.2.3").replace("$(POD_NAMESPACE)", namespace) for a in init["command"][4:]]
    args[args.index("--ca-dir") + 1], args[args.index("--out") + 1] = str(ca), str(tmp_path / "node")
    assert tls.main(["node", *args]) == 0
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "node" / "node.crt", tmp_path / "node" / "node.key")
    client = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    host = f"elasticml-api.{namespace}.svc"
    _handshake(server, client, host)
    _handshake(server, client, f"{host}.cluster.local")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "elasticml-api.other-namespace.svc")


# -- a tenant's own cluster ---------------------------------------------------------------
def tenant_docs(cluster: str = "aws-cpu", tenant: str = "research") -> dict[str, dict]:
    [(path, text)] = render_tenant(cluster, tenant).items()
    assert path == f"cluster_configs/kuberay/tenants/{cluster}-{tenant}.yaml"
    return {d["kind"]: d for d in yaml.safe_load_all(text)}


def pods_of(rc: dict) -> list[dict]:
    return [head_of(rc["spec"])] + [g["template"]["spec"] for g in rc["spec"]["workerGroupSpecs"]]


def strings_in(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [str(value)]


@pytest.mark.parametrize("name", AWS)
def test_a_tenants_cluster_is_valid_and_lives_in_its_own_namespace(name):
    docs = tenant_docs(name, "research")
    assert set(docs) == {"Namespace", "NetworkPolicy", "RayCluster"}
    for doc in docs.values():
        validate_manifest(doc)  # the CRD and KubeRay's rules; Kubernetes' own kinds against theirs
    assert docs["Namespace"]["metadata"]["name"] == "elasticml-tenant-research" == tenant_namespace("research")
    assert docs["RayCluster"]["metadata"]["namespace"] == docs["NetworkPolicy"]["metadata"]["namespace"] == \
        "elasticml-tenant-research"


@pytest.mark.parametrize("name", AWS)
def test_a_tenants_cluster_references_no_platform_secret(name):
    rc = tenant_docs(name, "research")["RayCluster"]
    text = " ".join(strings_in(rc))
    platform = load(f"cluster_configs/kuberay/{name}-rayservice.yaml")["spec"]["rayClusterConfig"]
    platform_secrets = {v["secret"]["secretName"] for p in pods_of({"spec": platform}) for v in p["volumes"] if "secret" in v}
    platform_secrets.add(platform["authOptions"]["secretName"])
    assert platform_secrets == {f"elasticml-{name}-{s}" for s in ("token", "ca", "checkpoint-key", "api-keys", "agent")}
    assert not any(s in text for s in platform_secrets)
    assert rc["spec"]["authOptions"] == {"mode": "token", "secretName": "tenant-research-token"}  # a token of its own
    for pod in pods_of(rc):
        assert "serviceAccountName" not in pod  # never the platform's (its IAM role)
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets == {"tenant-research-ca", "tenant-research-checkpoint-key", "tenant-research-credential"}
        for container in pod["containers"]:
            env = {e["name"] for e in container.get("env", [])}
            assert not env & {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}  # KubeRay alone gives Ray the tenant's token
            # No CA key where the tenant's code runs: only the init container that certifies the pod reads it.
            assert "ray-ca" not in {m["name"] for m in container["volumeMounts"]}
    # No admin or agent credential, by name or by path, anywhere.
    assert not any(w in text for w in ("/admin", "/agent", "credentials/elasticml-", "node-agent"))


@pytest.mark.parametrize("name", AWS)
def test_a_tenants_pods_call_the_platforms_api_server_with_the_tenants_credential(name, tmp_path, monkeypatch):
    rc = tenant_docs(name, "research")["RayCluster"]
    service = next(d for d in load_all(f"cluster_configs/kuberay/{name}-api.yaml") if d["kind"] == "Service")
    url = f"https://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{service['spec']['ports'][0]['port']}"
    assert url == f"https://elasticml-api.elasticml-{name}.svc:8443"
    for pod in pods_of(rc):
        ray = pod["containers"][0]
        env = {e["name"]: e["value"] for e in ray["env"]}
        assert env["ELASTICML_ENDPOINT"] == url
        mounts = {m["name"]: m["mountPath"] for m in ray["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert env["ELASTICML_CREDENTIAL_PATH"] == f"{mounts['credential']}/credential"
        assert volumes["credential"]["emptyDir"] == {"medium": "Memory"}
        # An init container copies the Secret 0600 (a Secret's file is 0440, which credentials refuse).
        copy = next(c for c in pod["initContainers"] if c["name"] == "credential")
        source = next(m["mountPath"] for m in copy["volumeMounts"] if m["name"] == "credential-secret")
        assert copy["command"][-1] == f"install -m 600 {source}/credential {mounts['credential']}/credential"
        assert volumes["credential-secret"]["secret"]["secretName"] == "tenant-research-credential"
        assert env["ELASTICML_CA_CERT"] == f"{mounts['api-ca']}/ca.crt" and volumes["api-ca"]["configMap"]
    # What the CLI and SchedulerClient build from that environment: the API server over HTTPS, trusting the CA.
    from elasticml.api.login import configured_client
    from elasticml.api.transport import HttpTransport

    ca = tmp_path / "ca"
    tls.make_ca(ca, name)
    (tmp_path / "credential").write_text("eml1.research.secret\n")
    (tmp_path / "credential").chmod(0o600)
    monkeypatch.setenv("ELASTICML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ELASTICML_ENDPOINT", env["ELASTICML_ENDPOINT"])
    monkeypatch.setenv("ELASTICML_CREDENTIAL_PATH", str(tmp_path / "credential"))
    monkeypatch.setenv("ELASTICML_CA_CERT", str(ca / "ca.crt"))
    transport = configured_client()._transport
    assert isinstance(transport, HttpTransport) and transport.endpoint == url


@pytest.mark.parametrize("name", AWS)
def test_a_tenants_cluster_runs_on_the_platforms_node_pools(name):
    rc = tenant_docs(name, "research")["RayCluster"]
    platform = load(f"cluster_configs/kuberay/{name}-raycluster.yaml")
    assert head_of(rc["spec"])["nodeSelector"] == head_of(platform["spec"])["nodeSelector"]
    mine = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    theirs = {g["groupName"]: g for g in platform["spec"]["workerGroupSpecs"]}
    assert set(mine) == set(theirs)
    for group, g in mine.items():
        pod, platform_pod = g["template"]["spec"], theirs[group]["template"]["spec"]
        assert pod["nodeSelector"] == platform_pod["nodeSelector"] and pod.get("tolerations") == platform_pod.get("tolerations")
        assert g["labels"] == theirs[group]["labels"] and g["maxReplicas"] == theirs[group]["maxReplicas"]


@pytest.mark.parametrize("name", AWS)
def test_a_tenants_namespace_reaches_only_the_api_port_of_the_platforms(name):
    policy = tenant_docs(name, "research")["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == {} and sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["ingress"] == [{"from": [{"podSelector": {}}]}]  # only its own pods reach it
    service = next(d for d in load_all(f"cluster_configs/kuberay/{name}-api.yaml") if d["kind"] == "Service")
    platform_ns = AT_SITE[name].namespace
    to_platform = [r for r in policy["egress"] for p in r.get("to", [])
                   if (p.get("namespaceSelector") or {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == platform_ns]
    assert len(to_platform) == 1
    [rule] = to_platform
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    assert rule["to"][0]["podSelector"]["matchLabels"] == service["spec"]["selector"]  # the API server's pod
    for r in policy["egress"]:
        for peer in r.get("to", []):
            if "namespaceSelector" in peer:  # another namespace: the platform's API port, or DNS
                ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                assert ns in (platform_ns, "kube-system"), r
                if ns == "kube-system":
                    assert {p["port"] for p in r["ports"]} == {53}
            elif "ipBlock" in peer:  # beyond the cluster: HTTPS only (S3, the Kubernetes API), never IMDS
                assert r["ports"] == [{"protocol": "TCP", "port": 443}]
                assert peer["ipBlock"]["except"] == ["169.254.169.254/32"]
            else:
                assert peer == {"podSelector": {}} and "ports" not in r  # its own cluster's pods


@pytest.mark.parametrize("tenant", ["Research", "re_search", "-x", "x-", "", "a" * 47, "acme/x", "a b", 7])
def test_a_bad_tenant_name_is_refused_naming_the_field(tenant):
    with pytest.raises(ConfigError) as info:
        render_tenant("aws-cpu", tenant)  # type: ignore[arg-type]
    assert info.value.field == "tenant"
    assert tenant_namespace("a" * 46) == "elasticml-tenant-" + "a" * 46  # the longest that fits


def test_the_cli_renders_a_tenants_cluster_and_refuses_a_bad_one(tmp_path):
    exe = str(Path(sys.executable).with_name("elasticml"))
    out = subprocess.run([exe, "cluster", "render", "--tenant", "research", "--cluster", "aws-gpu", "--out", str(tmp_path),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"wrote": ["cluster_configs/kuberay/tenants/aws-gpu-research.yaml"]}
    docs = list(yaml.safe_load_all((tmp_path / "cluster_configs/kuberay/tenants/aws-gpu-research.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Namespace", "NetworkPolicy", "RayCluster"]
    bad = subprocess.run([exe, "cluster", "render", "--tenant", "Bad_Name", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("elasticml: error: tenant:")
    wrong = subprocess.run([exe, "cluster", "render", "--tenant", "research", "--target", "aws", "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "target" in wrong.stderr


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d["spec"].update({"type": "Public"}), "spec.type", "ClusterIP"),
    (lambda d: d["spec"]["ports"][0].update({"port": 70000}), "spec.ports[0].port", "65535"),
    (lambda d: d["spec"]["ports"][0].update({"targetPort": "a-very-long-port-name"}), "targetPort", "named port"),
    (lambda d: d["spec"].update({"selectr": {}}), "spec.selectr", "does not define"),
    (lambda d: d["metadata"].pop("namespace"), "metadata.namespace", "namespace"),
    (lambda d: d["metadata"].update({"name": "Elasticml-API"}), "metadata.name", "DNS label"),
])
def test_a_broken_api_service_is_refused(mutate, field, words):
    doc = next(d for d in load_all("cluster_configs/kuberay/aws-cpu-api.yaml") if d["kind"] == "Service")
    mutate(doc)
    with pytest.raises(ManifestError, match=words) as info:
        validate_manifest(doc)
    assert field in str(info.value.field)


@pytest.mark.parametrize("mutate, field, words", [
    (lambda s: s["egress"][1]["ports"][0].update({"protocol": "ICMP"}), "egress", "ICMP"),
    (lambda s: s["egress"][3]["to"][0]["ipBlock"].update({"except": ["10.0.0.0/8", "::/0"]}), "except", "inside"),
    (lambda s: s["egress"][3]["to"][0]["ipBlock"].update({"cidr": "0.0.0.0/33"}), "ipBlock", "CIDR"),
    (lambda s: s["egress"][3]["to"][0].update({"podSelector": {}}), "egress[3].to[0]", "ipBlock"),
    (lambda s: s.update({"policyTypes": ["Ingress", "Outgress"]}), "policyTypes", "Outgress"),
    (lambda s: s.pop("podSelector"), "spec", "podSelector"),
])
def test_a_broken_network_policy_is_refused(mutate, field, words):
    doc = tenant_docs()["NetworkPolicy"]
    mutate(doc["spec"])
    with pytest.raises(ManifestError, match=words) as info:
        validate_manifest(doc)
    assert field in str(info.value.field)


def test_the_platforms_namespace_defaults_per_definition_and_a_bad_one_is_refused():
    from elasticml.provision.definition import ClusterDefinition

    assert [AT_SITE[n].namespace for n in AWS] == ["elasticml-aws-cpu", "elasticml-aws-gpu"]  # side by side
    for name in AWS:  # every namespaced manifest of a definition is in its namespace
        for rel in [f"cluster_configs/kuberay/{name}-{k}.yaml" for k in ("raycluster", "rayjob", "rayservice",
                                                                         "serve-ingress", "serviceaccount", "podmonitor")]:
            assert load(rel)["metadata"]["namespace"] == AT_SITE[name].namespace, rel
        assert load(f"cluster_configs/kuberay/{name}-namespace.yaml")["metadata"]["name"] == AT_SITE[name].namespace
    with pytest.raises(ConfigError) as info:
        ClusterDefinition(name="x", region="us-east-1", head_instance_type="m7i.large", groups=(), namespace="Ops_NS")
    assert info.value.field == "namespace"
