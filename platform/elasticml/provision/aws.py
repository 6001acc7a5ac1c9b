"""The AWS cluster-launcher YAMLs (`ray up`): node types, the nodes' set-up and start commands.

Every Ray process a node starts runs with token auth and Ray's TLS (`RAY_ENV`); secrets reach nodes as
file mounts from the launching machine, never in the file, and the CA's key reaches the head only
(`ca_dir`): the head certifies itself, a worker asks the head's API server (`node_certs.py`). Spot
nodes run the interruption watcher.
`launcher_docker` is the same cluster with Ray in the platform's image on every node.
"""

from __future__ import annotations

from typing import Any

from elasticml.checkpoint_key import KEY_ENV, KEY_FILE
from elasticml.errors import ConfigError
from elasticml.provision import api_server, iam
from elasticml.provision.definition import ClusterDefinition
from elasticml.provision.tls import tls_env

NODE_TLS = "$HOME/.elasticml/tls"
"""Where an AWS node keeps the Ray TLS certificate it makes at boot (elasticml.provision.tls)."""
RAY_ENV = "RAY_AUTH_MODE=token " + " ".join(f"{k}={v}" for k, v in tls_env(NODE_TLS).items())
"""Token auth and Ray's TLS, for every Ray process an AWS node starts (start commands, the watcher, ~/.bashrc)."""
WATCHER = (f"{RAY_ENV} nohup sh -c 'while true; do $HOME/venv/bin/python -m elasticml.provision.watcher; sleep 5; done' "
           ">> /tmp/elasticml-watcher.log 2>&1 &")
"""The spot watcher under a restart loop: if its process dies for any reason it is back 5 s later. It
calls the scheduler as the node agent (the agent credential, which every node has), never as admin."""


def agent_file(d: ClusterDefinition) -> str:
    """The node agents' credential, on the launching machine and on every node (`elasticml cluster
    credentials elasticml-NAME` makes it); the admin's never leaves the head."""
    return f"~/.elasticml/credentials/elasticml-{d.name}/agent"


def ca_dir(d: ClusterDefinition) -> str:
    """The cluster's CA for Ray's TLS, made beside the agent credential and mounted likewise; its key
    stays on the head.

    How: Ray's autoscaler syncs every file mount to a worker from the head's copy (the bootstrap
    config it runs from names each mount's path on the head), with the launcher's `rsync_filter`.
    Before Ray starts, the head writes HEAD_ONLY into this folder naming `ca.key`, so every sync the
    head sends skips the key (an rsync dir-merge filter is read on the sending side); the sync from
    your machine to the head has no such file and carries it. Workers get ca.crt only."""
    return f"~/.elasticml/credentials/elasticml-{d.name}/tls"


HEAD_ONLY = ".elasticml-head-only"
"""The rsync filter file (Ray's `rsync_filter`, exclude patterns) the head writes into `ca_dir`."""


def _head_tls(d: ClusterDefinition, python: str) -> list[str]:
    """The head, before Ray starts: keep the CA's key to itself, then certify its own addresses and name."""
    return [f"printf 'ca.key\\n' > {ca_dir(d)}/{HEAD_ONLY}",
            f"chmod 600 {ca_dir(d)}/ca.key",
            f"{python} -m elasticml.provision.tls node --ca-dir {ca_dir(d)} --out {NODE_TLS}"]


def _worker_tls(d: ClusterDefinition, python: str) -> list[str]:
    """A worker, before Ray starts: its own key, certified by the head's API server for its address, as the
    node agent. Ray exports RAY_HEAD_IP to a worker's setup commands; the request waits for the server."""
    return [f"{python} -m elasticml.provision.tls request --server https://$RAY_HEAD_IP:{api_server.API_PORT} "
            f"--ca-cert {ca_dir(d)}/ca.crt --credential {agent_file(d)} --out {NODE_TLS}"]


def key_file(d: ClusterDefinition) -> str:
    """The cluster's checkpoint key (elasticml.checkpoint_key), made beside the agent credential and
    mounted likewise: every node writes or loads checkpoints."""
    return f"~/.elasticml/credentials/elasticml-{d.name}/{KEY_FILE}"


def key_env(d: ClusterDefinition) -> str:
    """`ELASTICML_CHECKPOINT_KEY_PATH=...` for every Ray process of an AWS node, so its jobs and replicas."""
    return f"{KEY_ENV}={key_file(d).replace('~', '$HOME', 1)}"


IMDS_V2 = {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1}
"""IMDSv2 only (no token-less GETs, the SSRF path to instance credentials), hop limit 1 on the plain configs:
a container on the node cannot reach it through the host. The `-docker` configs use `DOCKER_HOP_LIMIT`."""
DOCKER_HOP_LIMIT = 2
"""IMDSv2's hop limit where Ray runs in a container (`launcher_docker`): the container's bridge is one more
hop, and the spot watcher in it must reach the metadata service."""


def launcher_docker(d: ClusterDefinition) -> dict[str, Any]:
    """The same cluster with Ray in the platform's image on every node (Ray's launcher `docker` option):
    nothing to install on the nodes but Docker itself. A container is a hop from the instance, so
    IMDSv2's hop limit is `DOCKER_HOP_LIMIT` (2) here: the watcher in the container must reach it."""
    cfg = launcher(d)
    cfg["docker"] = {"head_image": d.image_for(0), "worker_image": d.image_for(0), "container_name": "ray_container",
                     "pull_before_run": True, "run_options": ["--ulimit nofile=65536:65536"]}
    for name, body in cfg["available_node_types"].items():
        body["node_config"]["MetadataOptions"] = {**IMDS_V2, "HttpPutResponseHopLimit": DOCKER_HOP_LIMIT}
        gpus = body["resources"].get("GPU", 0)
        if gpus:
            body["docker"] = {"worker_image": d.image_for(gpus), "worker_run_options": ["--gpus all"]}
        if "worker_setup_commands" in body:
            body["worker_setup_commands"] = [*_container_setup(d), *_worker_tls(d, "python"),
                                             WATCHER.replace("$HOME/venv/bin/python", "python")]
    # On the instance, before its container: Docker (the GPU AMI has it; Ubuntu's base does not).
    cfg["initialization_commands"] = [
        f"command -v docker >/dev/null || ({apt_install('docker.io')} && sudo -n usermod -aG docker $(id -un))"]
    cfg["setup_commands"] = _container_setup(d)
    cfg["head_setup_commands"], cfg["worker_setup_commands"] = _head_tls(d, "python"), _worker_tls(d, "python")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        cfg[key] = [c.replace(f"{VENV}/bin/", "") for c in cfg[key]]  # the image's ray and elasticml
    return cfg


def _container_setup(d: ClusterDefinition) -> list[str]:
    """In the platform's image elasticml is installed already: the secrets' modes (the certificate: `_head_tls`,
    `_worker_tls`)."""
    return [
        f"chmod 600 ~/.ray/auth_token {agent_file(d)} {key_file(d)}",
        f"grep -q RAY_USE_TLS ~/.bashrc || echo 'export {RAY_ENV}' >> ~/.bashrc",
        f"grep -q {KEY_ENV} ~/.bashrc || echo 'export {key_env(d)}' >> ~/.bashrc",
    ]


def launcher(d: ClusterDefinition) -> dict[str, Any]:
    head_profile, worker_profile = iam.instance_profile(d, "head"), iam.instance_profile(d, "worker")
    types: dict[str, Any] = {
        "ray.head.default": {
            "resources": {"CPU": 0},  # the head coordinates; on-demand, never spot
            "node_config": {"InstanceType": d.head_instance_type, "ImageId": d.cpu_ami,
                            "IamInstanceProfile": {"Arn": head_profile}, "MetadataOptions": dict(IMDS_V2), **_disk(100),
                            **_network(d)},
        }
    }
    for g in d.groups:
        node_config: dict[str, Any] = {"InstanceType": g.instance_type, "ImageId": d.gpu_ami if g.gpus else d.cpu_ami,
                                       "IamInstanceProfile": {"Arn": worker_profile}, "MetadataOptions": dict(IMDS_V2),
                                       **_disk(200 if g.gpus else 100), **_network(d)}
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
        body: dict[str, Any] = {"resources": g.ray_resources, "labels": g.labels, "node_config": node_config,
                                "min_workers": g.min_workers, "max_workers": g.max_workers}
        if g.market == "spot":
            # Spot nodes run the interruption watcher: IMDSv2 notices -> scheduler + Ray drain.
            body["worker_setup_commands"] = [*setup_commands(d), *_worker_tls(d, f"{VENV}/bin/python"), WATCHER]
        types[g.name] = body
    return {
        "cluster_name": f"elasticml-{d.name}",
        "max_workers": sum(g.max_workers for g in d.groups),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": d.idle_timeout_minutes,
        "provider": _provider(d),
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
        "rsync_filter": [HEAD_ONLY],  # what the head never passes on to a worker (`ca_dir`)
        "setup_commands": setup_commands(d),
        "head_setup_commands": _head_tls(d, f"{VENV}/bin/python"),
        "worker_setup_commands": _worker_tls(d, f"{VENV}/bin/python"),
        "head_start_ray_commands": [
            f"{VENV}/bin/ray stop",
            f"{RAY_ENV} {key_env(d)} RAY_enable_autoscaler_v2=1 {iam.TENANT_ROLE_ENV}={iam.tenant_role(d)} {VENV}/bin/ray start --head --port=6379 --num-cpus=0 "
            "--dashboard-host=127.0.0.1 --autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats",
            # Once Ray is up: the scheduler, and the API server for tenants (HTTPS, the node's certificate).
            api_server.aws_start_command(ray_env=RAY_ENV, venv=VENV, node_tls=NODE_TLS, node_ca=ca_dir(d)),
        ],
        "worker_start_ray_commands": [
            f"{VENV}/bin/ray stop",
            f"{RAY_ENV} {key_env(d)} {VENV}/bin/ray start --address=$RAY_HEAD_IP:6379 --disable-usage-stats",
        ],
    }


VENV = "$HOME/venv"
"""The nodes' Python environment: Ubuntu 24.04's own Python is externally managed (PEP 668)."""
APT_LOCK_WAIT_S = 300
"""How long apt waits for the dpkg lock: on a fresh instance cloud-init or unattended-upgrades may hold it."""


def apt_install(package: str) -> str:
    """Install a Debian package as the ssh user (`ubuntu`, passwordless sudo on Canonical's images).

    `sudo -n` fails at once where a password would be asked (a launcher has no terminal to type it
    in); the variable goes through `env` because sudo refuses `VAR=value` without SETENV in sudoers."""
    apt = f"apt-get -o DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"
    return f"sudo -n {apt} update -q && sudo -n env DEBIAN_FRONTEND=noninteractive {apt} install -yq {package}"


def python_venv_package() -> str:
    """Debian and Ubuntu ship `venv` in the stdlib but `ensurepip` (which `python3 -m venv` needs to put
    pip in) in python3-venv, which Canonical's image lacks: `venv --help` works without it, so ask for
    what the venv needs."""
    return f"python3 -c 'import ensurepip' >/dev/null 2>&1 || ({apt_install('python3-venv')})"


def setup_environment() -> list[str]:
    """A node's Python environment with elasticml (torch from the CPU index on CPU nodes would be
    smaller; one command set keeps every node alike). Also what a test runs in a fresh venv here.

    A venv counts as made when its pip runs: an earlier try without ensurepip leaves `bin/python`
    behind with no pip, and `--clear` makes it afresh."""
    return [
        f"{VENV}/bin/python -m pip --version >/dev/null 2>&1 || python3 -m venv --clear {VENV}",
        f"{VENV}/bin/python -m pip install -q --upgrade pip",
        f'{VENV}/bin/python -m pip install -q "torch==2.13.0" -e ~/elasticml',
    ]


def setup_commands(d: ClusterDefinition) -> list[str]:
    """The set-up of a node off Canonical's (or AWS's Deep Learning) Ubuntu 24.04 image, as the ssh
    user: Python's venv package, the venv with the platform, the secrets' modes, this node's
    certificate. Each command may run again on a node that has run it (`ray up` reruns them)."""
    return [
        python_venv_package(),
        *setup_environment(),
        f"grep -q {VENV}/bin ~/.bashrc || echo 'export PATH={VENV}/bin:$PATH' >> ~/.bashrc",
        f"chmod 600 ~/.ray/auth_token {agent_file(d)} {key_file(d)}",
        f"grep -q RAY_USE_TLS ~/.bashrc || echo 'export {RAY_ENV}' >> ~/.bashrc",
        f"grep -q {KEY_ENV} ~/.bashrc || echo 'export {key_env(d)}' >> ~/.bashrc",
        # This node's own certificate for Ray's TLS comes after these: `_head_tls`, `_worker_tls`.
    ]


def _network(d: ClusterDefinition) -> dict[str, Any]:
    """The site's subnets and security groups, for every node type (Ray's launcher picks its own for any
    node type without them: subnets from the first VPC it finds, a group it makes)."""
    out: dict[str, Any] = {}
    if d.subnets:
        out["SubnetIds"] = list(d.subnets)
    if d.security_groups:
        out["SecurityGroupIds"] = list(d.security_groups)
    return out


def _provider(d: ClusterDefinition) -> dict[str, Any]:
    """Ray's AWS provider, with no `security_group` block: the site's groups are on every node type, so
    Ray makes none and reads no rules (`security_group_rules` are what the site's group admits)."""
    return {"type": "aws", "region": d.region, "availability_zone": ",".join(d.zones),
            "cache_stopped_nodes": False, "use_internal_ips": True}


def require_security_groups(d: ClusterDefinition) -> None:
    """The AWS target needs the site's own groups. A group Ray's launcher makes gets, beside any rules
    rendered for it, all traffic within the group and SSH from 0.0.0.0/0
    (ray.autoscaler._private.aws.config `_create_default_ssh_inbound_rules`), which no setting removes."""
    if not d.security_groups:
        raise ConfigError(f"list the security group(s) of {d.name!r}'s nodes (sg-...): a group Ray's launcher makes "
                          "admits SSH from 0.0.0.0/0; create one with `security_group_rules` "
                          f"(cluster_configs/aws/{d.name}-security-group.json, docs/cloud.md), or render "
                          "--target kuberay only", field=f"clusters.{d.name}.security_groups")


def security_group_rules(d: ClusterDefinition) -> list[dict[str, Any]]:
    """What the site's first group admits (`aws ec2 authorize-security-group-ingress --group-id SG
    --ip-permissions file://...`): every protocol from the group itself (Ray's ports between nodes),
    SSH and the API server's HTTPS from `admin_cidr`; nothing from anywhere else."""
    own = d.security_groups[0]
    return [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": own, "Description": "Ray between the cluster's nodes"}]},
            *ingress(d)]


def ingress(d: ClusterDefinition) -> list[dict[str, Any]]:
    """What the cluster admits from outside itself: SSH and the API server's HTTPS, from `admin_cidr` only."""
    return [{"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp",
             "IpRanges": [{"CidrIp": d.admin_cidr, "Description": "SSH from the admin network only"}]},
            api_server.aws_ingress(d.admin_cidr)]


def _disk(gib: int) -> dict[str, Any]:
    return {"BlockDeviceMappings": [{"DeviceName": "/dev/sda1",
                                     "Ebs": {"VolumeSize": gib, "VolumeType": "gp3", "Encrypted": True}}]}
