"""The scheduler and the API server in the cloud renders: started on the head after Ray, HTTPS with the cluster's CA.

Tenants reach the platform only through the API server, with their own `eml1.` credential; it is
the one tenant-facing process that holds the Ray token. This module owns where it runs and how
it is reached in each target (`render.py` calls it; it imports nothing from there):

- AWS (`ray up`): after `ray start`, the head's last start command runs `elasticml scheduler
  start`, which creates the scheduler and the API server (a detached actor) on 0.0.0.0:8443 with
  the head's own Ray TLS certificate: `python -m elasticml.provision.tls node` made it at boot for
  every address the head has, signed by the cluster's CA. The security group admits 8443 from the
  admin CIDR (workers reach it inside the group). URL: `https://HEAD_PRIVATE_IP:8443`.
- KubeRay: a second container of the RayCluster's head pod, `elasticml-api`, waits for the GCS,
  runs `elasticml scheduler start` (idempotent) and then `elasticml api serve` on 8443 with the
  pod's Ray TLS certificate, which the head's init container also makes for the Service's name;
  the Service `elasticml-api` (ClusterIP) selects the head pod: `https://elasticml-api.NS.svc:8443`.
- KubeRay, a RayJob's or RayService's head: `elasticml-scheduler` runs `scheduler start` alone (its
  API server stays on loopback; no Service reaches it), ready once the scheduler exists.

Why every platform head runs a scheduler of its own, rather than pointing RayJob and RayService
clusters at the RayCluster's: a named actor lives in one Ray cluster, and the scheduler acts on the
cluster it runs in (it reads `ray.nodes()` and the autoscaler's state, places by labels there and
drains that cluster's nodes on an interruption). A job's driver (`jobs/train.py`) or a Serve app
looks it up in its own cluster (`SchedulerClient.connect`); the RayCluster's scheduler could
neither see nor drain a RayJob's nodes. Tenants' clusters (`tenant.py`) are the other way: no
scheduler of theirs, the platform's API server with the tenant's credential, since their code runs
where the platform's token is not. Every platform head also runs the interruption watcher
(`elasticml-watcher`, `k8s_watcher.py`) for its own cluster's pods, as the head's ServiceAccount
(`head_access.py`), and its Ray container, where the scheduler actor runs, has the tenant roles it
vends (`iam.TENANT_ROLE_ENV`), as the AWS head's start command sets.

On both, the server holds the cluster CA's key (AWS: the head's file mount; KubeRay: the CA Secret,
which in the head pod only this container and the init container mount) and signs workers' Ray TLS
certificates, each for the address it asks from, for the node agent (`--node-ca-dir`,
`node_certs.py`). On KubeRay the scheduler trusts as the agent the credential of the Secret
`elasticml-<cluster>-agent`, which workers ask with: the container copies it where `scheduler
start` looks before starting it.

Why a container rather than a postStart hook on the Ray container: a hook that fails kills the
Ray head with it, its output reaches no log, and KubeRay uses that hook itself for some
features. The container starts the server again whenever it stops, alone (re-running `scheduler
start`, which finds what exists; its own loop, since with autoscaler v2 KubeRay allows the head
pod no restartPolicy but Never), logs to `kubectl logs -c elasticml-api`, and its readiness probe
keeps the Service's endpoint out until the server answers. A Ray driver in another container of the pod finds the head's raylet
by its process and reaches it through its sockets under /tmp/ray, so the head pod shares its
process namespace and /tmp/ray (the volume KubeRay's autoscaler sidecar shares already, under
KubeRay's own name for it), and ~/.elasticml: the scheduler's ledger, admin and agent credentials
(the watcher calls as the agent), and the files of tenants' jobs, which the job drivers in the Ray
container read.
"""

from __future__ import annotations

from typing import Any

from elasticml.provision.iam import TENANT_ROLE_ENV
from elasticml.provision.tls import tls_env

API_PORT = 8443
SERVICE = "elasticml-api"
"""The Service's name, and the API container's."""
SCHEDULER = "elasticml-scheduler"
"""The container that starts the scheduler on a RayJob's or RayService's head."""
WATCHER = "elasticml-watcher"
"""The Kubernetes interruption watcher's container, on every platform head."""
PORT_NAME = "api"
GCS = "127.0.0.1:6379"
"""The head's GCS from inside the head (node) or its pod; the node certificate covers 127.0.0.1."""
TOKEN_MOUNT = "/etc/elasticml/ray-token"
"""Where the API container mounts the cluster's Ray token Secret (key `auth_token`)."""
SCHEDULER_CONFIG_MOUNT = "/etc/elasticml/cluster"
"""Where the API container mounts the scheduler's cluster config (ConfigMap `elasticml-NAME-scheduler`)."""
SCHEDULER_CONFIG_FILE = "cluster.yaml"
RAY_TMP = "/tmp/ray"
RAY_TMP_VOLUME = "ray-logs"
"""KubeRay's name for the /tmp/ray volume it shares with its autoscaler sidecar: declaring it under the
same name keeps one volume for all three containers (KubeRay adds none when /tmp/ray is mounted)."""
HOME_MOUNT = "/home/ray/.elasticml"
"""ELASTICML_HOME of the image's user (`ray`), shared by the Ray and API containers of the head pod."""


def endpoint(namespace: str) -> str:
    """The API server's URL inside Kubernetes: its Service in the platform's namespace."""
    return f"https://{SERVICE}.{namespace}.svc:{API_PORT}"


def service_dns(namespace_expr: str) -> str:
    """The Service's short DNS name, which the API server's certificate must cover."""
    return f"{SERVICE}.{namespace_expr}.svc"


# -- AWS --------------------------------------------------------------------------
def aws_start_command(*, ray_env: str, venv: str, node_tls: str, node_ca: str) -> str:
    """The head's start command after `ray start`: the scheduler, and the API server beyond loopback
    with the node's own certificate (the CA that signed it is what tenants trust), which signs
    workers' certificates with the CA in `node_ca` (the head's alone)."""
    return (f"{ray_env} {venv}/bin/elasticml scheduler start --address {GCS} --api-host 0.0.0.0 "
            f"--api-port {API_PORT} --api-cert {node_tls}/node.crt --api-key {node_tls}/node.key "
            f"--node-ca-dir {node_ca}")


def aws_ingress(admin_cidr: str) -> dict[str, Any]:
    """The security group's rule for the API server: HTTPS from the admin network only."""
    return {"FromPort": API_PORT, "ToPort": API_PORT, "IpProtocol": "tcp",
            "IpRanges": [{"CidrIp": admin_cidr, "Description": "the API server (HTTPS) from the admin network only"}]}


# -- KubeRay ------------------------------------------------------------------------
def head_selector(raycluster: str) -> dict[str, str]:
    """Labels KubeRay puts on the RayCluster's head pod only (not on its workers, nor on the pods of
    the RayJob's or RayService's clusters, whose names differ)."""
    return {"ray.io/cluster": raycluster, "ray.io/node-type": "head"}


def api_container(*, image: str, pod_tls: str, ca_mount: str, agent_mount: str, cluster: str) -> dict[str, Any]:
    """The platform RayCluster head's API container: scheduler first, then the server, again after any exit
    (see the module docstring); the trap hands the pod's TERM on to the server. The server signs workers'
    certificates with the CA Secret at `ca_mount`; the scheduler trusts, as the node agent, the credential
    of the Secret at `agent_mount`, which workers ask with (copied 0600 where `scheduler start` looks for it)."""
    agent = f"{HOME_MOUNT}/credentials/{cluster}/agent"
    script = "\n".join([
        "trap 'kill $pid 2>/dev/null; exit 0' TERM INT",
        f"mkdir -p {agent.rsplit('/', 1)[0]} && install -m 600 {agent_mount}/credential {agent} || "
        f"echo 'elasticml-api: no node agent credential in {agent_mount}: workers get no certificate' >&2",
        "while true; do",
        f"  until ray health-check --address {GCS} >/dev/null 2>&1; do sleep 2; done",
        f"  if elasticml scheduler start --address {GCS}; then",
        f"    elasticml api serve --jobs --host 0.0.0.0 --port {API_PORT} --address {GCS} "
        f"--tls-cert {pod_tls}/node.crt --tls-key {pod_tls}/node.key --node-ca-dir {ca_mount} & pid=$!",
        "    wait $pid",
        "  fi",
        "  echo 'elasticml-api: the API server stopped; starting it again in 5 s' >&2",
        "  sleep 5",
        "done",
    ])
    return {
        "name": SERVICE, "image": image, "command": ["sh", "-c", script],
        "env": _driver_env(pod_tls) + [
            {"name": "ELASTICML_CLUSTER_CONFIG", "value": f"{SCHEDULER_CONFIG_MOUNT}/{SCHEDULER_CONFIG_FILE}"}],
        "ports": [{"name": PORT_NAME, "containerPort": API_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT_NAME, "scheme": "HTTPS"},
                           "periodSeconds": 10, "failureThreshold": 3},
        "volumeMounts": _driver_mounts(pod_tls) + [
            {"name": "ray-ca", "mountPath": ca_mount, "readOnly": True},
            {"name": "agent-credential", "mountPath": agent_mount, "readOnly": True},
            {"name": "scheduler-config", "mountPath": SCHEDULER_CONFIG_MOUNT, "readOnly": True}],
        "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"cpu": "500m", "memory": "2Gi"}},
    }


SCHEDULER_CHECK_S = 300
SCHEDULER_STARTED = "/tmp/elasticml-scheduler-started"
"""Made in the scheduler container (its own /tmp) once `scheduler start` succeeded: its readiness."""


def scheduler_container(*, image: str, pod_tls: str) -> dict[str, Any]:
    """A RayJob's or RayService's head: the scheduler alone (its API server stays on loopback, which
    `scheduler start` gives it; no Service reaches it). Started again if it is ever gone: `scheduler
    start` finds what exists, every SCHEDULER_CHECK_S."""
    script = "\n".join([
        "trap 'exit 0' TERM INT",
        "while true; do",
        f"  until ray health-check --address {GCS} >/dev/null 2>&1; do sleep 2; done",
        (f"  if elasticml scheduler start --address {GCS} >/dev/null; then touch {SCHEDULER_STARTED}; "
         "else echo 'elasticml-scheduler: scheduler start failed; trying again' >&2; fi"),
        f"  sleep {SCHEDULER_CHECK_S} & wait $!",
        "done",
    ])
    return {
        "name": SCHEDULER, "image": image, "command": ["sh", "-c", script],
        "env": _driver_env(pod_tls) + [
            {"name": "ELASTICML_CLUSTER_CONFIG", "value": f"{SCHEDULER_CONFIG_MOUNT}/{SCHEDULER_CONFIG_FILE}"}],
        # Ready once the scheduler is: KubeRay submits a RayJob's job (whose driver looks the scheduler up)
        # only when the head pod is ready.
        "readinessProbe": {"exec": {"command": ["test", "-f", SCHEDULER_STARTED]}, "periodSeconds": 5},
        "volumeMounts": _driver_mounts(pod_tls) + [
            {"name": "scheduler-config", "mountPath": SCHEDULER_CONFIG_MOUNT, "readOnly": True}],
        "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
    }


def watcher_container(*, image: str, pod_tls: str) -> dict[str, Any]:
    """The Kubernetes interruption watcher (`k8s_watcher.py`) of this head's Ray cluster, under a restart
    loop as on AWS nodes; it calls the scheduler as the node agent, whose credential `scheduler start`
    wrote in the shared ~/.elasticml. Its cluster and namespace are the pod's own (downward API)."""
    script = ("trap 'exit 0' TERM INT\n"
              "while true; do python -m elasticml.provision.k8s_watcher & wait $!; sleep 5; done")
    return {
        "name": WATCHER, "image": image, "command": ["sh", "-c", script],
        "env": _driver_env(pod_tls) + [
            {"name": "RAY_ADDRESS", "value": GCS},
            {"name": "ELASTICML_RAY_CLUSTER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}},
            {"name": "ELASTICML_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "volumeMounts": _driver_mounts(pod_tls),
        "resources": {"requests": {"cpu": "100m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
    }


def _driver_env(pod_tls: str) -> list[dict[str, Any]]:
    """A Ray driver's in a container of the head pod: the head's Ray TLS and token (a file, as KubeRay's
    Secret holds it); no checkpoint key: the scheduler actor and the jobs run in the Ray container."""
    return [{"name": k, "value": v} for k, v in tls_env(pod_tls).items()] + [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN_PATH", "value": f"{TOKEN_MOUNT}/auth_token"}]


def _driver_mounts(pod_tls: str) -> list[dict[str, Any]]:
    return [{"name": "ray-tls", "mountPath": pod_tls, "readOnly": True},
            {"name": "ray-token", "mountPath": TOKEN_MOUNT, "readOnly": True}, *shared_mounts()]


def shared_mounts() -> list[dict[str, Any]]:
    """What the Ray container and the head pod's other containers share (see the module docstring)."""
    return [{"name": RAY_TMP_VOLUME, "mountPath": RAY_TMP}, {"name": "elasticml-home", "mountPath": HOME_MOUNT}]


def api_volumes(*, token_secret: str, scheduler_config: str) -> list[dict[str, Any]]:
    return [
        {"name": "ray-token", "secret": {"secretName": token_secret, "defaultMode": 0o400,
                                         "items": [{"key": "auth_token", "path": "auth_token"}]}},
        {"name": "scheduler-config", "configMap": {"name": scheduler_config}},
        {"name": RAY_TMP_VOLUME, "emptyDir": {}},
        {"name": "elasticml-home", "emptyDir": {}},
    ]


def add_to_head(pod: dict[str, Any], *, token_secret: str, scheduler_config: str, pod_tls: str, serve_api: bool,
                tenant_role: str, ca_mount: str, agent_mount: str, cluster: str) -> None:
    """Give a platform head pod (its Ray container first) the scheduler (with the API server when `serve_api`:
    the platform RayCluster's, which also signs workers' certificates), the interruption watcher, and what
    they share with Ray. The Ray container, where the scheduler actor runs, gets the tenant roles it vends
    credentials of (`tenant_role`). The pod's own volumes `ray-ca` and `agent-credential` are the caller's."""
    image = pod["containers"][0]["image"]
    pod["shareProcessNamespace"] = True
    pod["containers"][0]["env"].append({"name": TENANT_ROLE_ENV, "value": tenant_role})
    pod["containers"][0]["volumeMounts"] += shared_mounts()
    pod["containers"].append(api_container(image=image, pod_tls=pod_tls, ca_mount=ca_mount, agent_mount=agent_mount,
                                           cluster=cluster) if serve_api
                             else scheduler_container(image=image, pod_tls=pod_tls))
    pod["containers"].append(watcher_container(image=image, pod_tls=pod_tls))
    pod["volumes"] += api_volumes(token_secret=token_secret, scheduler_config=scheduler_config)


def service(*, namespace: str, raycluster: str, labels: dict[str, str]) -> dict[str, Any]:
    """The API server's Service: in-cluster only (ClusterIP), to the head pod's API container."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": namespace, "labels": dict(labels)},
            "spec": {"type": "ClusterIP", "selector": head_selector(raycluster),
                     "ports": [{"name": "https", "port": API_PORT, "targetPort": PORT_NAME, "protocol": "TCP"}]}}


def scheduler_config_map(*, name: str, namespace: str, labels: dict[str, str], config_yaml: str) -> dict[str, Any]:
    """The cluster config `scheduler start` reads on a KubeRay head (no launcher wrote one there)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace,
                                                                  "labels": dict(labels)},
            "data": {SCHEDULER_CONFIG_FILE: config_yaml}}
