"""Ray's TLS in the cloud renders: the CA's key on heads only, workers certified by the head's API
server, and the KubeRay autoscaler sidecar with the head's certificate (KubeRay's TLS sample)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from elasticml.provision.kuberay_rules import validate_manifest
from elasticml.provision.tenant import render_tenant

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]
TLS_ENV = {"RAY_USE_TLS", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT"}


def load(rel: str):  # type: ignore[no-untyped-def]
    return yaml.safe_load((REPO / rel).read_text())


def strings_in(value) -> list[str]:  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [str(value)]


# -- AWS (`ray up`) ---------------------------------------------------------------------
def worker_setups(raw: dict) -> list[list[str]]:
    """Every list of setup commands a worker may run: Ray runs a node type's own worker_setup_commands
    in place of setup_commands + worker_setup_commands."""
    own = [b["worker_setup_commands"] for b in raw["available_node_types"].values() if "worker_setup_commands" in b]
    return [raw["setup_commands"] + raw["worker_setup_commands"], *own]


@pytest.mark.parametrize("name", AWS + [f"{n}-docker" for n in AWS])
def test_aws_workers_never_get_the_ca_key_and_ask_the_head_for_their_certificate(name):
    raw = load(f"cluster_configs/{name}.yaml")
    ca = f"~/.elasticml/credentials/{raw['cluster_name']}/tls"
    agent = f"~/.elasticml/credentials/{raw['cluster_name']}/agent"
    # Ray syncs a worker's file mounts from the head's copies, through `rsync_filter`: the head names the key
    # in the filter file of the CA's folder before Ray starts (its first setup step of its own).
    assert raw["file_mounts"][ca] == ca and raw["rsync_filter"] == [".elasticml-head-only"]
    head = raw["head_setup_commands"]
    assert head[0] == f"printf 'ca.key\\n' > {ca}/.elasticml-head-only"
    assert any("elasticml.provision.tls node" in c and f"--ca-dir {ca}" in c for c in head)
    for setup in worker_setups(raw):
        assert not any("ca.key" in c or "tls node" in c for c in setup), setup
        [ask] = [c for c in setup if "elasticml.provision.tls request" in c]
        words = shlex.split(ask)
        opts = {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}
        assert opts == {"--server": "https://$RAY_HEAD_IP:8443", "--ca-cert": f"{ca}/ca.crt", "--credential": agent,
                        "--out": "$HOME/.elasticml/tls"}
    assert not any("ca.key" in c for c in raw["worker_start_ray_commands"])
    # The head's API server signs with the CA it alone holds; it starts after Ray, and a worker's request
    # waits for it (tls request retries until its deadline).
    [api] = [c for c in raw["head_start_ray_commands"] if "scheduler start" in c]
    assert f"--node-ca-dir {ca}" in api


@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync")
@pytest.mark.parametrize("name", ["aws-cpu", "aws-cpu-docker"])
def test_the_syncs_ray_makes_carry_the_ca_key_to_the_head_and_not_on_to_a_worker(name, tmp_path):
    """Ray's own rsync arguments for the render's `rsync_filter`, and the head's own setup command, run."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    raw = load(f"cluster_configs/{name}.yaml")
    filters = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_filter": raw["rsync_filter"]})  # type: ignore[arg-type]
    mine, head, worker = (tmp_path / n / "tls" for n in ("launcher", "head", "worker"))
    for folder in (mine, head, worker):
        folder.parent.mkdir(parents=True)
    mine.mkdir()
    (mine / "ca.crt").write_text("certificate")
    (mine / "ca.key").write_text("key")

    def sync(src: Path, dst: Path) -> None:  # as SSHCommandRunner.run_rsync_up does, to a local folder
        subprocess.run(["rsync", "-avz", *filters, f"{src}/", f"{dst}/"], check=True, capture_output=True)

    ca = f"~/.elasticml/credentials/{raw['cluster_name']}/tls"
    sync(mine, head)
    subprocess.run(["sh", "-c", raw["head_setup_commands"][0].replace(ca, str(head))], check=True)
    sync(head, worker)
    assert sorted(p.name for p in head.iterdir()) == [".elasticml-head-only", "ca.crt", "ca.key"]
    assert not (worker / "ca.key").exists() and (worker / "ca.crt").read_text() == "certificate"
    sync(mine, head)  # `ray up` again: the head keeps its filter, so no window opens for a worker's sync
    sync(head, worker)
    assert not (worker / "ca.key").exists()


# -- KubeRay --------------------------------------------------------------------------------
def clusters(name: str) -> dict[str, dict]:
    """Every RayCluster spec of a definition: the platform's, the RayJob's, the RayService's, a tenant's."""
    [(_, text)] = render_tenant(name, "research").items()
    tenant = next(d for d in yaml.safe_load_all(text) if d["kind"] == "RayCluster")
    return {"raycluster": load(f"cluster_configs/kuberay/{name}-raycluster.yaml")["spec"],
            "rayjob": load(f"cluster_configs/kuberay/{name}-rayjob.yaml")["spec"]["rayClusterSpec"],
            "rayservice": load(f"cluster_configs/kuberay/{name}-rayservice.yaml")["spec"]["rayClusterConfig"],
            "tenant": tenant["spec"]}


def volumes_with_ca_key(pod: dict) -> set[str]:
    """Volumes of a pod that hold a CA Secret's `ca.key` (all of it, or an items selection naming it)."""
    out = set()
    for v in pod["volumes"]:
        secret = v.get("secret")
        if secret and secret["secretName"].endswith("-ca"):
            items = secret.get("items")
            if items is None or any(i["key"] == "ca.key" for i in items):
                out.add(v["name"])
    return out


@pytest.mark.parametrize("name", AWS)
@pytest.mark.parametrize("kind", ["raycluster", "rayjob", "rayservice"])
def test_no_platform_worker_pod_can_read_the_ca_key(name, kind):
    spec = clusters(name)[kind]
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        assert volumes_with_ca_key(pod) == set(), group["groupName"]
        assert "ca.key" not in " ".join(strings_in(pod))
        [ca] = [v for v in pod["volumes"] if v["name"] == "ray-ca"]
        assert ca["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        # The init container asks the platform's API server, as the node agent, for the pod's own IP.
        [init] = [c for c in pod["initContainers"] if c["name"] == "ray-tls-cert"]
        script = init["command"][-1]
        assert init["command"][:2] == ["sh", "-c"]
        words = shlex.split(script[script.index("python -m elasticml.provision.tls request"):])
        opts = {w: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}
        assert opts["--server"] == f"https://elasticml-api.elasticml-{name}.svc:8443"
        assert opts["--ip"] == "$(POD_IP)" and opts["--out"] == "/etc/ray-tls"
        mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        assert opts["--ca-cert"] == f"{mounts['ray-ca']}/ca.crt"
        # The agent's Secret is 0440 for the pod's group, which credentials refuse: copied 0600 first.
        assert f"install -m 600 {mounts['agent-credential']}/credential {opts['--credential']}" in script
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["agent-credential"]["secret"]["secretName"] == f"elasticml-{name}-agent"
        for container in pod["containers"]:  # Ray's container reads the certificate, never the agent's Secret
            assert {m["name"] for m in container["volumeMounts"]} & {"ray-ca", "agent-credential"} == set()
    # Heads certify themselves (their service names too) with the key; in the head pod only the init
    # container, and the platform's API server that signs for workers, mount it.
    head = spec["headGroupSpec"]["template"]["spec"]
    assert volumes_with_ca_key(head) == {"ray-ca"}
    readers = {c["name"] for c in head["initContainers"] + head["containers"]
               if any(m["name"] == "ray-ca" for m in c["volumeMounts"])}
    assert readers == ({"ray-tls-cert", "elasticml-api"} if kind == "raycluster" else {"ray-tls-cert"})


@pytest.mark.parametrize("name", AWS)
def test_the_api_server_signs_with_the_ca_and_the_scheduler_trusts_the_agents_secret(name):
    head = clusters(name)["raycluster"]["headGroupSpec"]["template"]["spec"]
    [api] = [c for c in head["containers"] if c["name"] == "elasticml-api"]
    script = api["command"][-1]
    mounts = {m["name"]: m for m in api["volumeMounts"]}
    assert f"--node-ca-dir {mounts['ray-ca']['mountPath']}" in script and mounts["ray-ca"]["readOnly"]
    # The agents' credential where `scheduler start` looks (the head's ELASTICML_HOME, 0600), before it runs.
    target = f"/home/ray/.elasticml/credentials/elasticml-{name}/agent"
    install = f"install -m 600 {mounts['agent-credential']['mountPath']}/credential {target}"
    assert install in script and script.index(install) < script.index("elasticml scheduler start")


@pytest.mark.parametrize("name", AWS)
@pytest.mark.parametrize("kind", ["raycluster", "rayjob", "rayservice", "tenant"])
def test_the_autoscaler_sidecar_runs_with_the_head_pods_certificate(name, kind):
    spec = clusters(name)[kind]
    head = spec["headGroupSpec"]["template"]["spec"]
    ray = head["containers"][0]
    options = spec["autoscalerOptions"]
    env = {e["name"]: e["value"] for e in options["env"]}
    assert set(env) == TLS_ENV and env == {e["name"]: e["value"] for e in ray["env"] if e["name"] in TLS_ENV}
    [mount] = options["volumeMounts"]
    assert mount == next(m for m in ray["volumeMounts"] if m["name"] == "ray-tls") and mount["readOnly"]
    assert any(v["name"] == mount["name"] for v in head["volumes"])  # the head pod's volume, which KubeRay shares


@pytest.mark.parametrize("name", AWS)
def test_the_rendered_manifests_still_pass_the_crds_and_kuberays_rules(name):
    for kind in ("raycluster", "rayjob", "rayservice"):
        validate_manifest(load(f"cluster_configs/kuberay/{name}-{kind}.yaml"))


@pytest.mark.parametrize("name", AWS)
def test_a_tenants_pods_keep_certifying_themselves_from_the_tenants_own_ca(name):
    """A tenant's cluster has no API server of its own and its CA is the tenant's: every pod's init container
    signs with it, as before; nothing of the platform's CA or agent reaches it."""
    spec = clusters(name)["tenant"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        [init] = [c for c in pod["initContainers"] if c["name"] == "ray-tls-cert"]
        assert init["command"][:4] == ["python", "-m", "elasticml.provision.tls", "node"]
        assert {v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "ray-ca"} == {"tenant-research-ca"}
        assert "agent-credential" not in {v["name"] for v in pod["volumes"]}
