"""The KubeRay manifests: RayCluster, RayJob and RayService specs, their pods, and what sits beside them.

Every Ray pod gets token auth (authOptions), Ray's TLS, the checkpoint key, and the platform's labels;
worker groups carry the definition's Ray labels and logical resources as their own fields, so the
same pools as every other target. A pod requests what its node has left (`allocatable.py`) and lands
on its market's NodePool of its instance family (`karpenter.py`). Ray's TLS: a head's init container
certifies the pod from the CA Secret (the key's only readers, with the platform's API server); a
platform worker's init container makes the pod's key and has the API server certify its IP, as the
node agent (`node_certs.py`), and mounts the CA's certificate alone. KubeRay's autoscaler sidecar gets
the head pod's certificate (`autoscalerOptions.env` and `volumeMounts`, as KubeRay's TLS sample).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from elasticml.checkpoint_key import KEY_ENV, KEY_FILE
from elasticml.provision import allocatable, api_server, aws, head_access, iam
from elasticml.provision.definition import ClusterDefinition, NodeGroup
from elasticml.provision.karpenter import CAPACITY_TYPE, DO_NOT_DISRUPT, GPU_TAINT, SPOT_TAINT, node_selector
from elasticml.provision.tls import tls_env
from elasticml.yamlio import dump_yaml

API_KEYS_MOUNT = "/etc/elasticml/api-keys"
"""Where the RayService head mounts the Secret `elasticml-<cluster>-api-keys` (key `api_keys.json`)."""
CA_MOUNT = "/etc/elasticml-ca"
"""Where the TLS init container mounts the Secret `elasticml-<cluster>-ca` (keys `ca.crt`, `ca.key`; a worker's: `ca.crt` only)."""
AGENT_MOUNT = "/etc/elasticml/agent"
"""Where a platform worker's TLS init container mounts the Secret `elasticml-<cluster>-agent` (key `credential`)."""
POD_TLS = "/etc/ray-tls"
"""The pod's own Ray TLS certificate, made by the init container into an in-memory volume."""
KEY_MOUNT = "/etc/elasticml/checkpoint-key"
"""Where every Ray pod mounts the Secret `elasticml-<cluster>-checkpoint-key` (key `checkpoint.key`)."""
IMAGE_GROUP = 100
"""The group of the image's user (rayproject/ray's `ray` is in `users`, gid 100)."""
HEAD_REQUESTS = {"cpu": "2", "memory": "7Gi"}
"""The Ray head container's (num-cpus 0: the GCS, dashboard and autoscaler's driver, no tasks); the
API server's container and KubeRay's autoscaler sidecar bring their own."""


POD_LABELS = {"app.kubernetes.io/part-of": "elasticml"}
"""On every Ray pod of the platform (KubeRay adds its own `ray.io/*` labels): what the PodMonitor selects."""
PART_OF = POD_LABELS
"""On every object of the platform's manifests."""


@dataclass(kw_only=True, frozen=True)
class PodIdentity:
    """Whose Ray pods a RayCluster makes: the Secrets they mount, the ServiceAccount they run as, their
    labels. The platform's (`platform_pods`) or a tenant's own (`provision/tenant.py`), never a mix."""

    token_secret: str
    """authOptions' Secret (key `auth_token`): the cluster's Ray token."""
    ca_secret: str
    """The Ray TLS CA (keys `ca.crt`, `ca.key`), mounted in the init container that certifies the pod."""
    agent_secret: str | None = None
    """The node agent's credential (key `credential`): workers have the platform's API server certify them
    with it and see only the CA's certificate. None: every pod certifies itself from `ca_secret` (a
    tenant's cluster, whose CA is its own and which has no API server)."""
    key_secret: str
    """The checkpoint key (key `checkpoint.key`)."""
    service_account: str | None
    """None: KubeRay's default (the head its autoscaler's own, workers the namespace's `default`)."""
    labels: dict[str, str]
    head_service_account: str | None = None
    """The head pod's own, where it differs from the workers' (the platform's: `head_access.py`)."""


def platform_pods(d: ClusterDefinition) -> PodIdentity:
    return PodIdentity(token_secret=f"elasticml-{d.name}-token", ca_secret=f"elasticml-{d.name}-ca",
                       agent_secret=f"elasticml-{d.name}-agent",
                       key_secret=f"elasticml-{d.name}-checkpoint-key", service_account=service_account(d),
                       labels=dict(POD_LABELS), head_service_account=head_access.service_account(d))


def _resources(g: NodeGroup | None) -> dict[str, Any]:
    """A worker requests what its node has left once the kubelet and the DaemonSets have theirs
    (`allocatable.pod_requests`), not the whole instance, which never schedules. Memory's limit is its
    request: a pod over it is OOM-killed alone rather than pressing the node into evicting others,
    and Ray sizes its object store and memory monitor from it. No CPU limit: the request already
    reserves the cores, and a limit would only throttle Ray's bursts into the CPU the node leaves idle.
    Ray schedules by the group's logical `resources` (CPU 8 on an m7i.2xlarge), not by these."""
    if g is None:
        return {"requests": dict(HEAD_REQUESTS), "limits": {"memory": HEAD_REQUESTS["memory"]}}
    want = allocatable.pod_requests(g.instance_type)
    requests = {"cpu": f"{want.cpu_m}m", "memory": f"{want.memory_mi}Mi"}
    limits = {"memory": requests["memory"]}
    if want.gpus:  # an extended resource: its request must equal its limit
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(want.gpus)
    return {"requests": requests, "limits": limits}


def _container(d: ClusterDefinition, g: NodeGroup | None) -> dict[str, Any]:
    gpus = g.gpus if g else 0
    return {
        "name": "ray-head" if g is None else "ray-worker",
        "image": d.image_for(gpus),
        # The Ray token comes from authOptions (KubeRay gives it to Ray, its autoscaler and the job
        # submitter alike); Ray's TLS from the pod's own certificate; the checkpoint key from its Secret.
        "env": [{"name": k, "value": v} for k, v in tls_env(POD_TLS).items()]
        + [{"name": KEY_ENV, "value": f"{KEY_MOUNT}/{KEY_FILE}"}],
        "volumeMounts": [{"name": "ray-tls", "mountPath": POD_TLS, "readOnly": True},
                         {"name": "checkpoint-key", "mountPath": KEY_MOUNT, "readOnly": True}],
        "resources": _resources(g),
    }


def _tls_init(image: str, extra_dns: tuple[str, ...] = ()) -> dict[str, Any]:
    """The init container that makes the pod's Ray TLS certificate from the CA Secret, key included, before
    Ray starts (a head's; every pod's of a tenant's cluster): for its IP and any service name in its
    namespace, as KubeRay's head service is dialled. `extra_dns`: more names (the API server's Service,
    whose short name the wildcard does not cover)."""
    return {
        "name": "ray-tls-cert", "image": image,
        "command": ["python", "-m", "elasticml.provision.tls", "node", "--ca-dir", CA_MOUNT, "--out", POD_TLS,
                    "--ip", "$(POD_IP)", "--ip", "127.0.0.1", "--dns", "localhost",
                    "--dns", "*.$(POD_NAMESPACE).svc.cluster.local"] + [a for n in extra_dns for a in ("--dns", n)],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "volumeMounts": [{"name": "ray-ca", "mountPath": CA_MOUNT, "readOnly": True},
                         {"name": "ray-tls", "mountPath": POD_TLS}],
    }


def _tls_request(image: str, endpoint: str) -> dict[str, Any]:
    """A platform worker's init container: the pod's own key, certified for its IP by the API server at
    `endpoint` as the node agent (retrying until the server answers). The agent's Secret file is 0440
    for the pod's group, which credentials refuse: it is copied 0600 into the container's own /tmp."""
    credential = "/tmp/agent-credential"
    script = (f"install -m 600 {AGENT_MOUNT}/credential {credential} && exec python -m elasticml.provision.tls "
              f"request --server {endpoint} --ca-cert {CA_MOUNT}/ca.crt --credential {credential} --out {POD_TLS} "
              "--ip $(POD_IP)")
    return {
        "name": "ray-tls-cert", "image": image, "command": ["sh", "-c", script],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "volumeMounts": [{"name": "ray-ca", "mountPath": CA_MOUNT, "readOnly": True},
                         {"name": "agent-credential", "mountPath": AGENT_MOUNT, "readOnly": True},
                         {"name": "ray-tls", "mountPath": POD_TLS}],
    }


def _tls_volumes(who: PodIdentity, *, requests: bool = False) -> list[dict[str, Any]]:
    """`requests`: a worker that asks the API server: the CA Secret's certificate only, and the agent's Secret."""
    ca: dict[str, Any] = {"secretName": who.ca_secret, "defaultMode": 0o400}
    if requests:
        ca["items"] = [{"key": "ca.crt", "path": "ca.crt"}]
    volumes = [{"name": "ray-ca", "secret": ca}, {"name": "ray-tls", "emptyDir": {"medium": "Memory"}}]
    if requests:
        volumes.append(_agent_volume(who))
    return volumes


def _agent_volume(who: PodIdentity) -> dict[str, Any]:
    return {"name": "agent-credential", "secret": {"secretName": who.agent_secret, "defaultMode": 0o400,
                                                   "items": [{"key": "credential", "path": "credential"}]}}


def _key_volume(who: PodIdentity) -> dict[str, Any]:
    return {"name": "checkpoint-key", "secret": {"secretName": who.key_secret, "defaultMode": 0o400}}


def service_account(d: ClusterDefinition) -> str:
    return f"elasticml-{d.name}"


def _pod(container: dict[str, Any], node_selector: dict[str, str], who: PodIdentity,
         certifier: str | None = None) -> dict[str, Any]:
    """`certifier`: for a worker of the platform's, the API server that certifies it (else it certifies itself)."""
    certifier = certifier if who.agent_secret is not None else None
    tls_init = _tls_init(container["image"]) if certifier is None else _tls_request(container["image"], certifier)
    requests = certifier is not None
    pod: dict[str, Any] = {"serviceAccountName": who.service_account} if who.service_account else {}
    return pod | {"nodeSelector": node_selector,
                  # Secret files are root's, and the image runs as `ray`: the pod's group may read them
                  # (Kubernetes makes a read-only Secret's files 0440 for fsGroup), nobody else.
                  "securityContext": {"fsGroup": IMAGE_GROUP},
                  "initContainers": [tls_init], "containers": [container],
                  "volumes": [*_tls_volumes(who, requests=requests), _key_volume(who)]}


PodHook = Callable[[dict[str, Any]], None]
"""Changes every pod of a RayCluster spec once built (a tenant's cluster adds its endpoint and credential)."""


def raycluster_spec(d: ClusterDefinition, who: PodIdentity | None = None, *, api_keys: bool = False,
                    api: bool = False, scheduler: bool = False, each_pod: PodHook | None = None,
                    disruptible_workers: bool = False) -> dict[str, Any]:
    """`who`: whose pods (default the platform's); `api_keys`: the head mounts the serving API keys'
    Secret (the Serve app is built there); `scheduler`: the head runs this Ray cluster's scheduler and
    interruption watcher, `api` the API server too, for the platform's own RayCluster only
    (`api_server.py`); `disruptible_workers`: Karpenter may move the workers (a RayService's Serve
    replicas, which Serve restarts elsewhere) instead of leaving their nodes alone (training, whose
    progress since its last checkpoint a move loses). Heads are never disruptible: the GCS, the
    scheduler and the Serve controller live there."""
    who = who or platform_pods(d)
    workers: list[dict[str, Any]] = []
    for g in d.groups:
        # The family, not the instance type: the pool may launch a larger size of it, which the pod fits.
        pod = _pod(_container(d, g), node_selector(g), who, certifier=api_server.endpoint(d.namespace))
        if g.market == "spot":
            pod["tolerations"] = [{"key": CAPACITY_TYPE, "operator": "Equal", "value": "spot",
                                   "effect": SPOT_TAINT["effect"]}]
        if g.gpus:
            pod.setdefault("tolerations", []).append({"key": GPU_TAINT["key"], "operator": "Exists",
                                                      "effect": GPU_TAINT["effect"]})
        metadata: dict[str, Any] = {"labels": dict(who.labels)}
        if not disruptible_workers:
            metadata["annotations"] = dict(DO_NOT_DISRUPT)
        workers.append({
            "groupName": g.name.replace("_", "-"),
            "replicas": g.min_workers, "minReplicas": g.min_workers, "maxReplicas": g.max_workers,
            # Ray's node labels and logical resources as the group's own fields (KubeRay >= 1.5 refuses
            # labels in rayStartParams): the same labels, and so the same pools, as every other target.
            "labels": dict(g.labels),
            "resources": {k: str(v) for k, v in g.ray_resources.items()},
            "idleTimeoutSeconds": int(d.idle_timeout_minutes * 60),
            "rayStartParams": {},
            "template": {"metadata": metadata, "spec": pod},
        })
    head_pod = _pod(_container(d, None), {CAPACITY_TYPE: "on-demand"}, who)
    if who.head_service_account:
        head_pod["serviceAccountName"] = who.head_service_account
    if api_keys:
        head_pod["volumes"].append({"name": "api-keys", "secret": {"secretName": f"elasticml-{d.name}-api-keys"}})
        head_pod["containers"][0]["volumeMounts"].append({"name": "api-keys", "mountPath": API_KEYS_MOUNT,
                                                          "readOnly": True})
    if api:
        head_pod["initContainers"] = [_tls_init(head_pod["containers"][0]["image"],
                                                (api_server.service_dns("$(POD_NAMESPACE)"),))]
    if api or scheduler:
        api_server.add_to_head(head_pod, token_secret=who.token_secret, pod_tls=POD_TLS,
                               scheduler_config=f"elasticml-{d.name}-scheduler", serve_api=api,
                               tenant_role=iam.tenant_role(d), ca_mount=CA_MOUNT, agent_mount=AGENT_MOUNT,
                               cluster=f"elasticml-{d.name}")
        if api:
            head_pod["volumes"].append(_agent_volume(who))  # the scheduler's node agent, which workers ask as
    if each_pod is not None:
        for pod in [head_pod] + [w["template"]["spec"] for w in workers]:
            each_pod(pod)
    return {
        "rayVersion": "2.60.0",
        # Token auth the way KubeRay runs it: the Secret's `auth_token` reaches Ray, the autoscaler
        # sidecar, the RayJob submitter and KubeRay's own dashboard client.
        "authOptions": {"mode": "token", "secretName": who.token_secret},
        "enableInTreeAutoscaling": True,
        # v2: the autoscaler that honours label selectors, which is how the scheduler places work. KubeRay
        # adds its sidecar to the head pod: it reaches the GCS with the head's certificate.
        "autoscalerOptions": {"version": "v2", "upscalingMode": "Default",
                              "idleTimeoutSeconds": int(d.idle_timeout_minutes * 60),
                              "env": [{"name": k, "value": v} for k, v in tls_env(POD_TLS).items()],
                              "volumeMounts": [{"name": "ray-tls", "mountPath": POD_TLS, "readOnly": True}]},
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                          "template": {"metadata": {"labels": dict(who.labels), "annotations": dict(DO_NOT_DISRUPT)},
                                       "spec": head_pod}},
        "workerGroupSpecs": workers,
    }


def scheduler_config(d: ClusterDefinition) -> str:
    """The cluster config the scheduler models on a KubeRay head: the AWS render's node types (the same
    pools, labels, instance types and region, which its prices come from) and nothing of the launcher's."""
    launcher = aws.launcher(d)
    types = {name: {k: v for k, v in body.items() if k in ("resources", "labels", "min_workers", "max_workers")}
                   | {"node_config": {"InstanceType": body["node_config"]["InstanceType"]}}
             for name, body in launcher["available_node_types"].items()}
    raw = {"cluster_name": launcher["cluster_name"], "max_workers": launcher["max_workers"],
           "idle_timeout_minutes": launcher["idle_timeout_minutes"],
           "provider": {"type": "aws", "region": d.region, "availability_zone": ",".join(d.zones)},
           "available_node_types": types, "head_node_type": launcher["head_node_type"]}
    return dump_yaml(raw, sort_keys=False, width=120)


def namespace(d: ClusterDefinition) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": d.namespace, "labels": dict(PART_OF)}}


def service_account_manifest(d: ClusterDefinition) -> dict[str, Any]:
    """The worker pods' identity on EKS (IRSA): the worker role, which reaches the bucket but not tenants'
    prefixes. The head pods have their own (`head_access.py`)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": service_account(d), "namespace": d.namespace, "labels": dict(PART_OF),
                         "annotations": {"eks.amazonaws.com/role-arn":
                                         f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-worker"}}}


def pod_monitor(d: ClusterDefinition) -> dict[str, Any]:
    """Prometheus Operator: scrape the metrics port KubeRay gives every Ray container (`metrics`, 8080),
    on every Ray pod of this definition's clusters (RayCluster, RayJob and RayService alike), where the
    platform's and Ray's metrics are, as `cluster prometheus-config` does locally."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": f"elasticml-{d.name}-ray", "namespace": d.namespace,
                     "labels": {**PART_OF, "release": "prometheus"}},
        "spec": {
            "jobLabel": "ray", "namespaceSelector": {"any": True},
            "selector": {"matchLabels": {"ray.io/is-ray-node": "yes", **POD_LABELS}},
            "podMetricsEndpoints": [{"port": "metrics", "interval": "15s", "relabelings": [
                {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"], "targetLabel": "ray_io_cluster"}]}],
        },
    }


def prometheus_rule(d: ClusterDefinition) -> dict[str, Any]:
    """Prometheus Operator: the platform's alerting rules (`observe/alerts.py`, the same groups as the
    plain rules file), picked up by the Prometheus that the PodMonitor's `release` label selects."""
    from elasticml.observe.alerts import groups

    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": {"name": f"elasticml-{d.name}-alerts", "namespace": d.namespace,
                     "labels": {**PART_OF, "release": "prometheus"}},
        "spec": {"groups": groups()},
    }


def meta(d: ClusterDefinition, kind: str) -> dict[str, Any]:
    return {"name": f"elasticml-{d.name}" + ("" if kind == "raycluster" else f"-{kind}"), "namespace": d.namespace,
            "labels": dict(PART_OF)}


def raycluster(d: ClusterDefinition) -> dict[str, Any]:
    """The platform's own cluster: the one whose head runs the API server beside its scheduler."""
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta(d, "raycluster"),
            "spec": raycluster_spec(d, api=True)}


def rayjob(d: ClusterDefinition) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": meta(d, "train"),
        "spec": {
            # A tenant's job keeps to its own prefix of the bucket (scheduler/tenant_storage.py).
            "entrypoint": (f"python jobs/train.py --data s3://{d.bucket}/tenants/research/corpus "
                           f"--storage-path s3://{d.bucket}/tenants/research/runs "
                           "--run-name nightly --tenant research --priority low"),
            # The image has elasticml and jobs/ installed at /home/ray/elasticml (Dockerfile).
            "runtimeEnvYAML": "working_dir: /home/ray/elasticml\n",
            "submissionMode": "K8sJobMode",
            "backoffLimit": 2,
            "activeDeadlineSeconds": 7 * 24 * 3600,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": raycluster_spec(d, scheduler=True),
        },
    }


def rayservice(d: ClusterDefinition) -> dict[str, Any]:
    serve_config = {
        "applications": [{
            "name": "completion", "route_prefix": "/", "import_path": "serve_apps.completion:app",
            # research's model, served as research's workload: the scheduler places it (base replicas on
            # reserved or on-demand capacity) and its checkpoints stay in research's prefix.
            "args": {"checkpoint": f"latest:s3://{d.bucket}/tenants/research/runs/nightly", "tenant": "research",
                     "priority": "high", "api_keys_file": f"{API_KEYS_MOUNT}/api_keys.json"},
        }]
    }
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": meta(d, "serve"),
        "spec": {"serveConfigV2": dump_yaml(serve_config, sort_keys=False),
                 # A new cluster per change: the old one serves until the new one is ready.
                 "upgradeStrategy": {"type": "NewCluster"},
                 "rayClusterConfig": raycluster_spec(d, api_keys=True, scheduler=True, disruptible_workers=True)},
    }


def serve_ingress(d: ClusterDefinition) -> dict[str, Any]:
    """HTTPS in front of the RayService (AWS Load Balancer Controller): an internal ALB that answers
    only HTTPS on 443 with the cluster's ACM certificate and a modern TLS policy; plain HTTP is
    never listened on. KubeRay names the RayService's Serve service `<rayservice>-serve-svc`."""
    service = f"{meta(d, 'serve')['name']}-serve-svc"
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": f"elasticml-{d.name}-serve", "namespace": d.namespace, "labels": dict(PART_OF),
                     "annotations": {
                         "alb.ingress.kubernetes.io/scheme": "internal",
                         "alb.ingress.kubernetes.io/target-type": "ip",
                         "alb.ingress.kubernetes.io/listen-ports": json.dumps([{"HTTPS": 443}]),
                         "alb.ingress.kubernetes.io/certificate-arn":
                             f"arn:aws:acm:{d.region}:{d.account_id}:certificate/{d.serve_certificate}",
                         "alb.ingress.kubernetes.io/ssl-policy": "ELBSecurityPolicy-TLS13-1-2-2021-06",
                         "alb.ingress.kubernetes.io/healthcheck-path": "/healthz",
                     }},
        "spec": {"ingressClassName": "alb", "rules": [{"http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": service, "port": {"number": 8000}}}}]}}]},
    }
