"""Render a ClusterDefinition for a target: local (Ray YAML), aws (Ray YAML), kuberay (manifests).

`render(target, cluster)` returns `{relative path: file text}`; `elasticml
cluster render` writes them, and `--check` (and the tests) compare them with
the committed files.

Security defaults, on purpose: token authentication on everywhere (the token
travels to nodes as a file mount / a Kubernetes Secret, never in the file, and
so does the checkpoint key, with `ELASTICML_CHECKPOINT_KEY_PATH` naming it); no
ingress from 0.0.0.0/0 (SSH and the API server's HTTPS only from the admin CIDR,
Ray's ports only inside the security group); nodes get an instance profile that
may only read and write the platform's checkpoint bucket (the head's adds what
the autoscaler needs). The head starts the scheduler and the API server after
Ray on every cloud target (`api_server.py`); tenants' own clusters are
`tenant.py`'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from elasticml.checkpoint_key import KEY_ENV, KEY_FILE
from elasticml.errors import ConfigError
from elasticml.provision import api_server
from elasticml.provision.definition import CLUSTERS, ClusterDefinition, NodeGroup
from elasticml.provision.tls import tls_env
from elasticml.yamlio import dump_yaml

TARGETS = ("local", "aws", "kuberay")
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
API_KEYS_MOUNT = "/etc/elasticml/api-keys"
"""Where the RayService head mounts the Secret `elasticml-<cluster>-api-keys` (key `api_keys.json`)."""
NODE_TLS = "$HOME/.elasticml/tls"
"""Where an AWS node keeps the Ray TLS certificate it makes at boot (elasticml.provision.tls)."""
RAY_ENV = "RAY_AUTH_MODE=token " + " ".join(f"{k}={v}" for k, v in tls_env(NODE_TLS).items())
"""Token auth and Ray's TLS, for every Ray process an AWS node starts (start commands, the watcher, ~/.bashrc)."""
WATCHER = (f"{RAY_ENV} nohup sh -c 'while true; do $HOME/venv/bin/python -m elasticml.provision.watcher; sleep 5; done' "
           ">> /tmp/elasticml-watcher.log 2>&1 &")
"""The spot watcher under a restart loop: if its process dies for any reason it is back 5 s later. It
calls the scheduler as the node agent (the agent credential, which every node has), never as admin."""


TENANT_ROLE_ENV = "ELASTICML_TENANT_ROLE_ARN"
"""Set for the head's Ray (and so its scheduler actor): the tenant roles it vends credentials of."""


def _tenant_role(d: ClusterDefinition) -> str:
    return f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-tenant-{{tenant}}"


def agent_file(d: ClusterDefinition) -> str:
    """The node agents' credential, on the launching machine and on every node (`elasticml cluster
    credentials elasticml-NAME` makes it); the admin's never leaves the head."""
    return f"~/.elasticml/credentials/elasticml-{d.name}/agent"


def ca_dir(d: ClusterDefinition) -> str:
    """The cluster's CA for Ray's TLS, made beside the agent credential and mounted likewise."""
    return f"~/.elasticml/credentials/elasticml-{d.name}/tls"


def key_file(d: ClusterDefinition) -> str:
    """The cluster's checkpoint key (elasticml.checkpoint_key), made beside the agent credential and
    mounted likewise: every node writes or loads checkpoints."""
    return f"~/.elasticml/credentials/elasticml-{d.name}/{KEY_FILE}"


def key_env(d: ClusterDefinition) -> str:
    """`ELASTICML_CHECKPOINT_KEY_PATH=...` for every Ray process of an AWS node, so its jobs and replicas."""
    return f"{KEY_ENV}={key_file(d).replace('~', '$HOME', 1)}"


def render(target: str, cluster: str, *, image: str | None = None) -> dict[str, str]:
    """`image`: REPOSITORY:TAG of the platform's image (default: the definition's), for the manifests."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}", field="target")
    if cluster not in CLUSTERS:
        raise ConfigError(f"unknown cluster {cluster!r}; defined: {', '.join(CLUSTERS)}", field="cluster")
    d = CLUSTERS[cluster]
    if image is not None:
        d = replace(d, **render_image(image))
    if target == "local":
        if cluster != "local":
            raise ConfigError("only the 'local' definition renders for the local target", field="cluster")
        return {"cluster_configs/local.yaml": _yaml(_local(d), _header(d, "elasticml cluster up"))}
    if cluster == "local":  # Ray's fake provider on this machine: there is no cloud to render it for
        raise ConfigError(f"the 'local' definition is for this machine; render {target} for "
                          f"{' or '.join(c for c in CLUSTERS if c != 'local')}", field="cluster")
    if target == "aws":
        return {
            f"cluster_configs/{d.name}.yaml": _yaml(_aws(d), _header(d, f"ray up cluster_configs/{d.name}.yaml")),
            f"cluster_configs/{d.name}-docker.yaml": _yaml(_aws_docker(d), _header(
                d, f"ray up cluster_configs/{d.name}-docker.yaml (Ray in the platform's image: see Dockerfile)")),
            f"cluster_configs/aws/{d.name}-head-policy.json": _json(_head_policy(d)),
            f"cluster_configs/aws/{d.name}-worker-policy.json": _json(_worker_policy(d)),
            f"cluster_configs/aws/{d.name}-bucket-policy.json": _json(_bucket_policy(d)),
            f"cluster_configs/aws/{d.name}-bucket-encryption.json": _json(_bucket_encryption(d)),
            f"cluster_configs/aws/{d.name}-tenant-trust.json": _json(_tenant_trust(d)),
            **{f"cluster_configs/aws/{d.name}-tenant-{t}-policy.json": _json(_tenant_policy(d, t)) for t in d.tenants},
        }
    return {
        f"cluster_configs/kuberay/{d.name}-raycluster.yaml": _yaml(_raycluster(d), _header(d, "kubectl apply -f")),
        f"cluster_configs/kuberay/{d.name}-rayjob.yaml": _yaml(_rayjob(d), _header(d, "kubectl apply -f")),
        f"cluster_configs/kuberay/{d.name}-rayservice.yaml": _yaml(_rayservice(d), _header(d, "kubectl apply -f")),
        f"cluster_configs/kuberay/{d.name}-serve-ingress.yaml": _yaml(_serve_ingress(d), _header(d, "kubectl apply -f")),
        f"cluster_configs/kuberay/{d.name}-serviceaccount.yaml": _yaml(_service_account(d), _header(d, "kubectl apply -f")),
        f"cluster_configs/kuberay/{d.name}-api.yaml": _header(d, "kubectl apply -f (with the RayCluster: its API "
                                                                 "server's Service and the scheduler's config)")
        + _docs([api_server.service(namespace=d.namespace, raycluster=_meta(d, "raycluster")["name"], labels=PART_OF),
                 api_server.scheduler_config_map(name=f"elasticml-{d.name}-scheduler", namespace=d.namespace,
                                                 labels=PART_OF, config_yaml=scheduler_config(d))]),
        f"cluster_configs/kuberay/{d.name}-podmonitor.yaml": _yaml(_pod_monitor(d), _header(
            d, "kubectl apply -f (with the Prometheus Operator, e.g. kube-prometheus-stack)")),
        f"cluster_configs/kuberay/{d.name}-karpenter.yaml": _header(d, "kubectl apply -f (Karpenter >= 1.5, "
                                                                       "ReservedCapacity feature gate on)") + _karpenter(d),
        f"cluster_configs/kuberay/{d.name}-namespace.yaml": _yaml(_namespace(d), _header(d, "kubectl apply -f (first)")),
    }


def render_image(image: str) -> dict[str, str]:
    """REPOSITORY:TAG as a definition's `image` and `image_tag`; ConfigError naming `image` otherwise."""
    repo, _, tag = image.rpartition(":")
    if not repo or not tag or "/" in tag or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,254}", image):
        raise ConfigError(f"must be REPOSITORY:TAG, got {image[:80]!r}", field="image")
    return {"image": repo, "image_tag": tag}


def render_all() -> dict[str, str]:
    from elasticml.observe.dashboards import rendered

    files = render("local", "local") | rendered()
    for name in CLUSTERS:
        if name != "local":
            files |= render("aws", name) | render("kuberay", name)
    return files


# -- local ----------------------------------------------------------------------
def _local(d: ClusterDefinition) -> dict[str, Any]:
    types: dict[str, Any] = {"ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}}
    for g in d.groups:
        types[g.name] = {"resources": _resources(g), "labels": g.labels, "node_config": {"InstanceType": g.instance_type},
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


# -- AWS --------------------------------------------------------------------------
RAY_CLUSTER_TAG = "ray-cluster-name"
"""The tag Ray's AWS node provider puts on every instance it launches (ray.autoscaler.tags)."""
IMDS_V2 = {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1}
"""IMDSv2 only (no token-less GETs, the SSRF path to instance credentials), one hop: a container on the
node cannot reach it through the host (raise to 2 for a containerised Ray on the instance)."""


def _aws_docker(d: ClusterDefinition) -> dict[str, Any]:
    """The same cluster with Ray in the platform's image on every node (Ray's launcher `docker` option):
    nothing to install on the nodes but Docker itself. A container is a hop from the instance, so
    IMDSv2's hop limit is 2 here (the watcher in the container must reach it)."""
    cfg = _aws(d)
    cfg["docker"] = {"head_image": image_for(d, 0), "worker_image": image_for(d, 0), "container_name": "ray_container",
                     "pull_before_run": True, "run_options": ["--ulimit nofile=65536:65536"]}
    for name, body in cfg["available_node_types"].items():
        body["node_config"]["MetadataOptions"] = {**IMDS_V2, "HttpPutResponseHopLimit": 2}
        gpus = body["resources"].get("GPU", 0)
        if gpus:
            body["docker"] = {"worker_image": image_for(d, gpus), "worker_run_options": ["--gpus all"]}
        if "worker_setup_commands" in body:
            body["worker_setup_commands"] = [*_container_setup(d), WATCHER.replace("$HOME/venv/bin/python", "python")]
    # On the instance, before its container: Docker (the GPU AMI has it; Ubuntu's base does not).
    cfg["initialization_commands"] = [
        "command -v docker >/dev/null || (sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive "
        "apt-get install -yq docker.io && sudo usermod -aG docker $USER)"]
    cfg["setup_commands"] = _container_setup(d)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cfg[key] = [c.replace(f"{VENV}/bin/", "") for c in cfg[key]]  # the image's ray and elasticml
    return cfg


def _container_setup(d: ClusterDefinition) -> list[str]:
    """In the platform's image elasticml is installed already: the secrets' modes and this node's certificate."""
    return [
        f"chmod 600 ~/.ray/auth_token {agent_file(d)} {ca_dir(d)}/ca.key {key_file(d)}",
        f"grep -q RAY_USE_TLS ~/.bashrc || echo 'export {RAY_ENV}' >> ~/.bashrc",
        f"grep -q {KEY_ENV} ~/.bashrc || echo 'export {key_env(d)}' >> ~/.bashrc",
        f"python -m elasticml.provision.tls node --ca-dir {ca_dir(d)} --out {NODE_TLS}",
    ]


def _aws(d: ClusterDefinition) -> dict[str, Any]:
    head_profile = f"arn:aws:iam::{d.account_id}:instance-profile/elasticml-{d.name}-head"
    worker_profile = f"arn:aws:iam::{d.account_id}:instance-profile/elasticml-{d.name}-worker"
    types: dict[str, Any] = {
        "ray.head.default": {
            "resources": {"CPU": 0},  # the head coordinates; on-demand, never spot
            "node_config": {"InstanceType": d.head_instance_type, "ImageId": d.cpu_ami,
                            "IamInstanceProfile": {"Arn": head_profile}, "MetadataOptions": dict(IMDS_V2), **_disk(100)},
        }
    }
    for g in d.groups:
        node_config: dict[str, Any] = {"InstanceType": g.instance_type, "ImageId": d.gpu_ami if g.gpus else d.cpu_ami,
                                       "IamInstanceProfile": {"Arn": worker_profile}, "MetadataOptions": dict(IMDS_V2),
                                       **_disk(200 if g.gpus else 100)}
        if g.market == "spot":
            node_config["InstanceMarketOptions"] = {"MarketType": "spot",
                                                    "SpotOptions": {"InstanceInterruptionBehavior": "terminate"}}
        if g.market == "on-demand":
            # Without this an on-demand launch takes a matching open reservation, which reserved work needs.
            node_config["CapacityReservationSpecification"] = {"CapacityReservationPreference": "none"}
        if g.market == "reserved":
            node_config["CapacityReservationSpecification"] = {
                "CapacityReservationTarget": {"CapacityReservationResourceGroupArn":
                                              f"arn:aws:resource-groups:{d.region}:{d.account_id}:group/elasticml-{d.name}-{g.name}"}
            }
        body: dict[str, Any] = {"resources": _resources(g), "labels": g.labels, "node_config": node_config,
                                "min_workers": g.min_workers, "max_workers": g.max_workers}
        if g.market == "spot":
            # Spot nodes run the interruption watcher: IMDSv2 notices -> scheduler + Ray drain.
            body["worker_setup_commands"] = [*_setup_commands(d), WATCHER]
        types[g.name] = body
    return {
        "cluster_name": f"elasticml-{d.name}",
        "max_workers": sum(g.max_workers for g in d.groups),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": d.idle_timeout_minutes,
        "provider": {
            "type": "aws", "region": d.region, "availability_zone": ",".join(d.zones), "cache_stopped_nodes": False,
            "use_internal_ips": True,
            "security_group": {
                "GroupName": f"elasticml-{d.name}",
                "IpPermissions": [{"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp",
                                   "IpRanges": [{"CidrIp": d.admin_cidr, "Description": "SSH from the admin network only"}]},
                                  api_server.aws_ingress(d.admin_cidr)],
            },
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": types,
        "head_node_type": "ray.head.default",
        "file_mounts": {
            "~/elasticml": ".",
            # Token auth: `ray get-auth-token --generate` makes this file on your machine.
            "~/.ray/auth_token": "~/.ray/auth_token",
            agent_file(d): agent_file(d),
            ca_dir(d): ca_dir(d),
            key_file(d): key_file(d),
        },
        "rsync_exclude": [".venv", ".git", "**/__pycache__"],
        "setup_commands": _setup_commands(d),
        "head_start_ray_commands": [
            f"{VENV}/bin/ray stop",
            f"{RAY_ENV} {key_env(d)} RAY_enable_autoscaler_v2=1 {TENANT_ROLE_ENV}={_tenant_role(d)} {VENV}/bin/ray start --head --port=6379 --num-cpus=0 "
            "--dashboard-host=127.0.0.1 --autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats",
            # Once Ray is up: the scheduler, and the API server for tenants (HTTPS, the node's certificate).
            api_server.aws_start_command(ray_env=RAY_ENV, venv=VENV, node_tls=NODE_TLS),
        ],
        "worker_start_ray_commands": [
            f"{VENV}/bin/ray stop",
            f"{RAY_ENV} {key_env(d)} {VENV}/bin/ray start --address=$RAY_HEAD_IP:6379 --disable-usage-stats",
        ],
    }


VENV = "$HOME/venv"
"""The nodes' Python environment: Ubuntu 24.04's own Python is externally managed (PEP 668)."""


def setup_environment() -> list[str]:
    """A node's Python environment with elasticml (torch from the CPU index on CPU nodes would be
    smaller; one command set keeps every node alike). Also what a test runs in a fresh venv here."""
    return [
        f"test -x {VENV}/bin/python || python3 -m venv {VENV}",
        f"{VENV}/bin/python -m pip install -q --upgrade pip",
        f'{VENV}/bin/python -m pip install -q "torch==2.13.0" -e ~/elasticml',
    ]


def _setup_commands(d: ClusterDefinition) -> list[str]:
    return [
        "command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 || "
        "(sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -yq python3-venv)",
        *setup_environment(),
        f"grep -q {VENV}/bin ~/.bashrc || echo 'export PATH={VENV}/bin:$PATH' >> ~/.bashrc",
        f"chmod 600 ~/.ray/auth_token {agent_file(d)} {ca_dir(d)}/ca.key {key_file(d)}",
        f"grep -q RAY_USE_TLS ~/.bashrc || echo 'export {RAY_ENV}' >> ~/.bashrc",
        f"grep -q {KEY_ENV} ~/.bashrc || echo 'export {key_env(d)}' >> ~/.bashrc",
        # This node's own certificate for Ray's TLS, for every address it has, signed by the cluster's CA.
        f"{VENV}/bin/python -m elasticml.provision.tls node --ca-dir {ca_dir(d)} --out {NODE_TLS}",
    ]


def _disk(gib: int) -> dict[str, Any]:
    return {"BlockDeviceMappings": [{"DeviceName": "/dev/sda1",
                                     "Ebs": {"VolumeSize": gib, "VolumeType": "gp3", "Encrypted": True}}]}


def _resources(g: NodeGroup) -> dict[str, int]:
    out = {"CPU": g.cpus}
    if g.gpus:
        out["GPU"] = g.gpus
    return out


OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def _use_key(d: ClusterDefinition) -> dict[str, Any]:
    # Objects are encrypted with the cluster's KMS key (the bucket's default): reading and writing
    # them needs that key, and only that one.
    return {"Sid": "UseTheBucketsKey", "Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": f"arn:aws:kms:{d.region}:{d.account_id}:key/*",
            "Condition": {"ForAnyValue:StringEquals": {"kms:ResourceAliases": f"alias/elasticml-{d.name}"}}}


def _bucket_statements(d: ClusterDefinition) -> list[dict[str, Any]]:
    bucket = f"arn:aws:s3:::{d.bucket}"
    return [
        # GetBucketLocation: the residency check asks the bucket's region before anything is written.
        {"Sid": "ListCheckpointBucket", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
         "Resource": bucket},
        {"Sid": "ReadWriteCheckpoints", "Effect": "Allow", "Action": OBJECT_ACTIONS, "Resource": f"{bucket}/*"},
        # Tenants' prefixes are out of the nodes' reach (any code on a node has its role): a tenant's job
        # reaches its own prefix only with the credentials the scheduler vends for its role.
        {"Sid": "NotTenantsData", "Effect": "Deny", "Action": OBJECT_ACTIONS, "Resource": f"{bucket}/tenants/*"},
        {"Sid": "NotTenantsListing", "Effect": "Deny", "Action": ["s3:ListBucket"], "Resource": bucket,
         "Condition": {"StringLike": {"s3:prefix": ["tenants/*"]}}},
        _use_key(d),
    ]


def _tenant_policy(d: ClusterDefinition, tenant: str) -> dict[str, Any]:
    """Role `elasticml-<cluster>-tenant-<tenant>`: its own prefix of the bucket, and nothing else."""
    bucket, prefix = f"arn:aws:s3:::{d.bucket}", f"tenants/{tenant}/"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "OwnPrefix", "Effect": "Allow", "Action": OBJECT_ACTIONS, "Resource": f"{bucket}/{prefix}*"},
        {"Sid": "ListOwnPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket,
         "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
        {"Sid": "BucketRegion", "Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": bucket},
        _use_key(d),
    ]}


def _tenant_trust(d: ClusterDefinition) -> dict[str, Any]:
    """Every tenant role's trust policy: only the head (its scheduler) may assume it, for at most 12 h."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "TheSchedulerVends", "Effect": "Allow", "Action": "sts:AssumeRole",
         "Principal": {"AWS": f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-head"}}]}


def _kms_key(d: ClusterDefinition) -> str:
    return f"arn:aws:kms:{d.region}:{d.account_id}:alias/elasticml-{d.name}"


def _bucket_encryption(d: ClusterDefinition) -> dict[str, Any]:
    """`aws s3api put-bucket-encryption --bucket B --server-side-encryption-configuration file://...`: every
    object written is encrypted with the cluster's KMS key (pyarrow's S3 writes cannot ask for SSE
    themselves, so the bucket does it for them)."""
    return {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": _kms_key(d)},
                       "BucketKeyEnabled": True}]}


def _bucket_policy(d: ClusterDefinition) -> dict[str, Any]:
    """`aws s3api put-bucket-policy`: no request without TLS, and no object written with any encryption
    but the cluster's KMS key (a request that names none gets the bucket's default, which is that key)."""
    bucket = f"arn:aws:s3:::{d.bucket}"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "DenyWithoutTLS", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": [bucket, f"{bucket}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        {"Sid": "DenyOtherEncryption", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"{bucket}/*",
         "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption": "aws:kms"}}},
        {"Sid": "DenyOtherKeys", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"{bucket}/*",
         "Condition": {"StringNotEqualsIfExists": {"s3:x-amz-server-side-encryption-aws-kms-key-id": _kms_key(d)}}},
    ]}


def _worker_policy(d: ClusterDefinition) -> dict[str, Any]:
    """Workers may read and write the checkpoint bucket, and nothing more."""
    return {"Version": "2012-10-17", "Statement": _bucket_statements(d)}


def _head_policy(d: ClusterDefinition) -> dict[str, Any]:
    """The head: the bucket, plus what Ray's autoscaler and the scheduler's price adaptor need."""
    cluster = f"elasticml-{d.name}"
    return {"Version": "2012-10-17", "Statement": _bucket_statements(d) + [
        # Instances only with this cluster's tag (Ray's launcher puts ray-cluster-name on every instance it
        # launches), and only those may be stopped, terminated or re-tagged: the head cannot touch
        # another cluster's or anyone else's instances in the account.
        # The nodes' AMIs are public SSM parameters that EC2 resolves at launch (resolve:ssm:...).
        {"Sid": "ResolvePublicAmiParameters", "Effect": "Allow", "Action": ["ssm:GetParameters"],
         "Resource": f"arn:aws:ssm:{d.region}::parameter/aws/service/*"},
        {"Sid": "LaunchOnlyTaggedForThisCluster", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": f"arn:aws:ec2:{d.region}:{d.account_id}:instance/*",
         "Condition": {"StringEquals": {f"aws:RequestTag/{RAY_CLUSTER_TAG}": cluster}}},
        {"Sid": "LaunchWithTheseParts", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": [f"arn:aws:ec2:{d.region}:{d.account_id}:{kind}/*" for kind in
                      ("volume", "network-interface", "subnet", "security-group", "key-pair", "capacity-reservation")]
         + [f"arn:aws:ec2:{d.region}::image/*"]},
        {"Sid": "TagAtLaunch", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": f"arn:aws:ec2:{d.region}:{d.account_id}:instance/*",
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
        {"Sid": "ManageOnlyThisClustersInstances", "Effect": "Allow",
         "Action": ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances", "ec2:CreateTags"],
         "Resource": f"arn:aws:ec2:{d.region}:{d.account_id}:instance/*",
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{RAY_CLUSTER_TAG}": cluster}}},
        {"Sid": "Describe", "Effect": "Allow",  # EC2's Describe calls cannot be scoped to resources
         "Action": ["ec2:DescribeInstances", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeImages",
                    "ec2:DescribeCapacityReservations", "ec2:DescribeSpotPriceHistory", "ec2:GetSpotPlacementScores"],
         "Resource": "*", "Condition": {"StringEquals": {"aws:RequestedRegion": d.region}}},
        {"Sid": "PassWorkerRole", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-worker"},
        # The scheduler vends each tenant short-lived credentials of its own role (tenant_storage.py).
        {"Sid": "VendTenantCredentials", "Effect": "Allow", "Action": ["sts:AssumeRole"],
         "Resource": f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-tenant-*"},
    ]}


# -- KubeRay ------------------------------------------------------------------------
CAPACITY_TYPE = "karpenter.sh/capacity-type"
CA_MOUNT = "/etc/elasticml-ca"
"""Where the TLS init container mounts the Secret `elasticml-<cluster>-ca` (keys `ca.crt`, `ca.key`)."""
POD_TLS = "/etc/ray-tls"
"""The pod's own Ray TLS certificate, made by the init container into an in-memory volume."""
KEY_MOUNT = "/etc/elasticml/checkpoint-key"
"""Where every Ray pod mounts the Secret `elasticml-<cluster>-checkpoint-key` (key `checkpoint.key`)."""
IMAGE_GROUP = 100
"""The group of the image's user (rayproject/ray's `ray` is in `users`, gid 100)."""


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
    key_secret: str
    """The checkpoint key (key `checkpoint.key`)."""
    service_account: str | None
    """None: KubeRay's default (the head its autoscaler's own, workers the namespace's `default`)."""
    labels: dict[str, str]


def platform_pods(d: ClusterDefinition) -> PodIdentity:
    return PodIdentity(token_secret=f"elasticml-{d.name}-token", ca_secret=f"elasticml-{d.name}-ca",
                       key_secret=f"elasticml-{d.name}-checkpoint-key", service_account=service_account(d),
                       labels=dict(POD_LABELS))


def image_for(d: ClusterDefinition, gpus: int) -> str:
    """The platform's image (Dockerfile: the matching rayproject/ray tag with elasticml installed)."""
    return f"{d.image}:{d.image_tag}-{'gpu' if gpus else 'cpu'}"


def _container(d: ClusterDefinition, g: NodeGroup | None) -> dict[str, Any]:
    gpus = g.gpus if g else 0
    cpus = g.cpus if g else 2
    mem = f"{(g.memory_gib if g else 8) * 7 // 8}Gi"  # leave room for the kubelet
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": mem}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {
        "name": "ray-head" if g is None else "ray-worker",
        "image": image_for(d, gpus),
        # The Ray token comes from authOptions (KubeRay gives it to Ray, its autoscaler and the job
        # submitter alike); Ray's TLS from the pod's own certificate; the checkpoint key from its Secret.
        "env": [{"name": k, "value": v} for k, v in tls_env(POD_TLS).items()]
        + [{"name": KEY_ENV, "value": f"{KEY_MOUNT}/{KEY_FILE}"}],
        "volumeMounts": [{"name": "ray-tls", "mountPath": POD_TLS, "readOnly": True},
                         {"name": "checkpoint-key", "mountPath": KEY_MOUNT, "readOnly": True}],
        "resources": {"requests": dict(limits), "limits": limits},
    }


def _tls_init(image: str, extra_dns: tuple[str, ...] = ()) -> dict[str, Any]:
    """The init container that makes the pod's Ray TLS certificate (its IP, and any service name in
    its namespace, as KubeRay's head service is dialled) from the CA Secret, before Ray starts.
    `extra_dns`: more names (the API server's Service, whose short name the wildcard does not cover)."""
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


def _tls_volumes(who: PodIdentity) -> list[dict[str, Any]]:
    return [{"name": "ray-ca", "secret": {"secretName": who.ca_secret, "defaultMode": 0o400}},
            {"name": "ray-tls", "emptyDir": {"medium": "Memory"}}]


def _key_volume(who: PodIdentity) -> dict[str, Any]:
    return {"name": "checkpoint-key", "secret": {"secretName": who.key_secret, "defaultMode": 0o400}}


def service_account(d: ClusterDefinition) -> str:
    return f"elasticml-{d.name}"


def _pod(container: dict[str, Any], node_selector: dict[str, str], who: PodIdentity) -> dict[str, Any]:
    pod: dict[str, Any] = {"serviceAccountName": who.service_account} if who.service_account else {}
    return pod | {"nodeSelector": node_selector,
                  # Secret files are root's, and the image runs as `ray`: the pod's group may read them
                  # (Kubernetes makes a read-only Secret's files 0440 for fsGroup), nobody else.
                  "securityContext": {"fsGroup": IMAGE_GROUP},
                  "initContainers": [_tls_init(container["image"])], "containers": [container],
                  "volumes": [*_tls_volumes(who), _key_volume(who)]}


PodHook = Callable[[dict[str, Any]], None]
"""Changes every pod of a RayCluster spec once built (a tenant's cluster adds its endpoint and credential)."""


def raycluster_spec(d: ClusterDefinition, who: PodIdentity | None = None, *, api_keys: bool = False,
                    api: bool = False, each_pod: PodHook | None = None) -> dict[str, Any]:
    """`who`: whose pods (default the platform's); `api_keys`: the head mounts the serving API keys'
    Secret (the Serve app is built there); `api`: the head runs the scheduler and the API server
    (`api_server.py`), for the platform's own RayCluster only."""
    who = who or platform_pods(d)
    workers = []
    for g in d.groups:
        capacity = {"spot": "spot", "on-demand": "on-demand", "reserved": "reserved"}[g.market]
        pod = _pod(_container(d, g), {CAPACITY_TYPE: capacity, "node.kubernetes.io/instance-type": g.instance_type}, who)
        if g.market == "spot":
            pod["tolerations"] = [{"key": CAPACITY_TYPE, "operator": "Equal", "value": "spot", "effect": "NoSchedule"}]
        if g.gpus:
            pod.setdefault("tolerations", []).append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
        workers.append({
            "groupName": g.name.replace("_", "-"),
            "replicas": g.min_workers, "minReplicas": g.min_workers, "maxReplicas": g.max_workers,
            # Ray's node labels and logical resources as the group's own fields (KubeRay >= 1.5 refuses
            # labels in rayStartParams): the same labels, and so the same pools, as every other target.
            "labels": dict(g.labels),
            "resources": {k: str(v) for k, v in _resources(g).items()},
            "idleTimeoutSeconds": int(d.idle_timeout_minutes * 60),
            "rayStartParams": {},
            "template": {"metadata": {"labels": dict(who.labels)}, "spec": pod},
        })
    head_pod = _pod(_container(d, None), {CAPACITY_TYPE: "on-demand"}, who)
    if api_keys:
        head_pod["volumes"].append({"name": "api-keys", "secret": {"secretName": f"elasticml-{d.name}-api-keys"}})
        head_pod["containers"][0]["volumeMounts"].append({"name": "api-keys", "mountPath": API_KEYS_MOUNT,
                                                          "readOnly": True})
    if api:
        head_pod["initContainers"] = [_tls_init(head_pod["containers"][0]["image"],
                                                (api_server.service_dns("$(POD_NAMESPACE)"),))]
        api_server.add_to_head(head_pod, token_secret=who.token_secret, pod_tls=POD_TLS,
                               scheduler_config=f"elasticml-{d.name}-scheduler")
    if each_pod is not None:
        for pod in [head_pod] + [w["template"]["spec"] for w in workers]:
            each_pod(pod)
    return {
        "rayVersion": "2.60.0",
        # Token auth the way KubeRay runs it: the Secret's `auth_token` reaches Ray, the autoscaler
        # sidecar, the RayJob submitter and KubeRay's own dashboard client.
        "authOptions": {"mode": "token", "secretName": who.token_secret},
        "enableInTreeAutoscaling": True,
        # v2: the autoscaler that honours label selectors, which is how the scheduler places work.
        "autoscalerOptions": {"version": "v2", "upscalingMode": "Default",
                              "idleTimeoutSeconds": int(d.idle_timeout_minutes * 60)},
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                          "template": {"metadata": {"labels": dict(who.labels)}, "spec": head_pod}},
        "workerGroupSpecs": workers,
    }


def scheduler_config(d: ClusterDefinition) -> str:
    """The cluster config the scheduler models on a KubeRay head: the AWS render's node types (the same
    pools, labels, instance types and region, which its prices come from) and nothing of the launcher's."""
    aws = _aws(d)
    types = {name: {k: v for k, v in body.items() if k in ("resources", "labels", "min_workers", "max_workers")}
                   | {"node_config": {"InstanceType": body["node_config"]["InstanceType"]}}
             for name, body in aws["available_node_types"].items()}
    raw = {"cluster_name": aws["cluster_name"], "max_workers": aws["max_workers"],
           "idle_timeout_minutes": aws["idle_timeout_minutes"],
           "provider": {"type": "aws", "region": d.region, "availability_zone": ",".join(d.zones)},
           "available_node_types": types, "head_node_type": aws["head_node_type"]}
    return dump_yaml(raw, sort_keys=False, width=120)


def _namespace(d: ClusterDefinition) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": d.namespace, "labels": dict(PART_OF)}}


def _service_account(d: ClusterDefinition) -> dict[str, Any]:
    """The pods' identity on EKS (IRSA): the worker role, which reaches the bucket but not tenants' prefixes."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": service_account(d), "namespace": d.namespace, "labels": dict(PART_OF),
                         "annotations": {"eks.amazonaws.com/role-arn":
                                         f"arn:aws:iam::{d.account_id}:role/elasticml-{d.name}-worker"}}}


def _pod_monitor(d: ClusterDefinition) -> dict[str, Any]:
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


def _nodeclass(d: ClusterDefinition) -> dict[str, Any]:
    discovery = {"karpenter.sh/discovery": f"elasticml-{d.name}"}
    return {
        "apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass", "metadata": {"name": f"elasticml-{d.name}"},
        "spec": {
            "amiSelectorTerms": [{"alias": "al2023@latest"}],
            "role": f"elasticml-{d.name}-karpenter-node",
            "subnetSelectorTerms": [{"tags": discovery}], "securityGroupSelectorTerms": [{"tags": discovery}],
            # Reserved capacity: the cluster's capacity reservations, found by their tag.
            "capacityReservationSelectorTerms": [{"tags": {"elasticml/cluster": d.name}}],
            "metadataOptions": {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1,
                                "httpProtocolIPv6": "disabled"},
            "blockDeviceMappings": [{"deviceName": "/dev/xvda",
                                     "ebs": {"volumeSize": "100Gi", "volumeType": "gp3", "encrypted": True}}],
        },
    }


def _nodepool(d: ClusterDefinition, market: str) -> dict[str, Any]:
    """One NodePool per market, for the instance types the definition's groups of that market use."""
    groups = [g for g in d.groups if g.market == market]
    spec: dict[str, Any] = {
        "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": f"elasticml-{d.name}"},
        "requirements": [
            {"key": CAPACITY_TYPE, "operator": "In", "values": [market]},
            {"key": "node.kubernetes.io/instance-type", "operator": "In",
             "values": sorted({g.instance_type for g in groups})},
        ],
    }
    if market == "spot":  # only pods that tolerate losing their node land here (the spot worker groups)
        spec["taints"] = [{"key": CAPACITY_TYPE, "value": "spot", "effect": "NoSchedule"}]
    return {
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": f"elasticml-{d.name}-{market}"},
        "spec": {"template": {"spec": spec},
                 "limits": {"cpu": str(sum(g.cpus * g.max_workers for g in groups))},
                 "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "60s"}},
    }


def _karpenter(d: ClusterDefinition) -> str:
    markets = [m for m in ("spot", "on-demand", "reserved") if any(g.market == m for g in d.groups)]
    return _docs([_nodeclass(d)] + [_nodepool(d, m) for m in markets])


def _meta(d: ClusterDefinition, kind: str) -> dict[str, Any]:
    return {"name": f"elasticml-{d.name}" + ("" if kind == "raycluster" else f"-{kind}"), "namespace": d.namespace,
            "labels": dict(PART_OF)}


def _raycluster(d: ClusterDefinition) -> dict[str, Any]:
    """The platform's own cluster: the one whose head runs the scheduler and the API server."""
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": _meta(d, "raycluster"),
            "spec": raycluster_spec(d, api=True)}


def _rayjob(d: ClusterDefinition) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(d, "train"),
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
            "rayClusterSpec": raycluster_spec(d),
        },
    }


def _rayservice(d: ClusterDefinition) -> dict[str, Any]:
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
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": _meta(d, "serve"),
        "spec": {"serveConfigV2": dump_yaml(serve_config, sort_keys=False),
                 # A new cluster per change: the old one serves until the new one is ready.
                 "upgradeStrategy": {"type": "NewCluster"},
                 "rayClusterConfig": raycluster_spec(d, api_keys=True)},
    }


def _serve_ingress(d: ClusterDefinition) -> dict[str, Any]:
    """HTTPS in front of the RayService (AWS Load Balancer Controller): an internal ALB that answers
    only HTTPS on 443 with the cluster's ACM certificate and a modern TLS policy; plain HTTP is
    never listened on. KubeRay names the RayService's Serve service `<rayservice>-serve-svc`."""
    service = f"{_meta(d, 'serve')['name']}-serve-svc"
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


# -- files --------------------------------------------------------------------------
def _header(d: ClusterDefinition, use: str) -> str:
    return (f"# GENERATED by `elasticml cluster render` from elasticml.provision.definition ({d.name}): "
            f"edit the definition, not this file.\n# {d.description}\n# Use: {use}\n")


def _yaml(obj: Any, header: str) -> str:
    return header + dump_yaml(obj, sort_keys=False, width=120)


def _docs(docs: list[dict[str, Any]]) -> str:
    """Several manifests in one file."""
    return "---\n".join(dump_yaml(doc, sort_keys=False, width=120) for doc in docs)


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"
