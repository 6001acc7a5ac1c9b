"""The AWS launcher YAMLs against what EC2, IAM and Ray's AWS provider do with them: the nodes' set-up on
Canonical's image, the site's subnets and security groups, the spot launch's IAM, IMDSv2's hop limit.

(tests/integration/test_node_setup_bare_root.py runs the whole set-up on a bare Debian root.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from elasticml.provision import aws
from elasticml.provision.render import definition_at_site, render
from elasticml.errors import ConfigError
from elasticml.provision.values import SiteValues, load_values

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]
SGS = ("sg-0a1b2c3d4e5f60001", "sg-0a1b2c3d4e5f60002")


def _rendered(name: str, values=None) -> dict:
    files = render("aws", name, values=values)
    return {rel: (json.loads(text) if rel.endswith(".json") else yaml.safe_load(text)) for rel, text in files.items()}


def _with_site(name: str, **site) -> SiteValues:
    """The example's values with `name`'s site changed (checked again, as a values file would be)."""
    values = load_values()
    return replace(values, clusters={**values.clusters, name: replace(values.clusters[name], **site)})


# -- the nodes' set-up -------------------------------------------------------------------------------
def _bin(tmp_path: Path, *, ensurepip: bool) -> dict[str, str]:
    """A PATH whose python3 is this machine's, with or without ensurepip (as Canonical's image has it
    before python3-venv), and whose sudo records what it was asked and does nothing."""
    bin_dir, blocked = tmp_path / "bin", tmp_path / "no-ensurepip"
    bin_dir.mkdir(exist_ok=True)
    (blocked / "ensurepip").mkdir(parents=True, exist_ok=True)
    (blocked / "ensurepip" / "__init__.py").write_text("raise ImportError('python3-venv is not installed')\n")
    python = bin_dir / "python3"
    python.unlink(missing_ok=True)
    python.write_text(f"#!/bin/sh\n{'' if ensurepip else f'PYTHONPATH={blocked} '}exec {sys._base_executable} \"$@\"\n")
    (bin_dir / "sudo").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {tmp_path / 'sudo.log'}\n")
    for tool in (python, bin_dir / "sudo"):
        tool.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PIP_"))}
    return {**env, "HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}


def _sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)


def test_the_venv_package_is_installed_where_ensurepip_is_missing_though_venv_help_works(tmp_path):
    install = aws.python_venv_package()
    setup = _rendered("aws-cpu")["cluster_configs/aws-cpu.yaml"]["setup_commands"]
    assert setup[0] == install
    env = _bin(tmp_path, ensurepip=False)
    assert _sh("python3 -m venv --help", env).returncode == 0  # why asking `venv --help` proved nothing
    assert _sh(install, env).returncode == 0
    asked = (tmp_path / "sudo.log").read_text().splitlines()
    assert asked[-1].endswith("install -yq python3-venv"), asked
    # As the ssh user: never waiting for a password, and the variable through env (sudo refuses
    # VAR=value before the command without SETENV in sudoers).
    assert all(a.startswith("-n ") for a in asked) and "-n env DEBIAN_FRONTEND=noninteractive apt-get" in asked[-1]
    (tmp_path / "sudo.log").unlink()
    assert _sh(install, _bin(tmp_path, ensurepip=True)).returncode == 0
    assert not (tmp_path / "sudo.log").exists()  # where python3-venv is there, nothing is installed


@pytest.mark.parametrize("name", AWS)
def test_every_sudo_on_an_aws_node_is_non_interactive_and_sets_no_variable_itself(name):
    for variant in (name, f"{name}-docker"):
        raw = _rendered(name)[f"cluster_configs/{variant}.yaml"]
        commands = [c for key in ("initialization_commands", "setup_commands") for c in raw.get(key, [])]
        commands += [c for body in raw["available_node_types"].values() for c in body.get("worker_setup_commands", [])]
        sudos = [m for c in commands for m in re.findall(r"\bsudo\b[^&|;)]*", c)]
        assert sudos, variant
        for call in sudos:
            assert call.startswith("sudo -n "), call
            assert not re.match(r"sudo( -\w+)* [A-Z_]+=", call), call


def test_a_venv_left_without_pip_is_made_again_and_a_working_one_is_kept(tmp_path):
    env = _bin(tmp_path, ensurepip=True)
    make_venv = aws.setup_environment()[0]
    venv = Path(env["HOME"]) / "venv"
    # What a try before python3-venv leaves: bin/python, no pip.
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    assert _sh(f"{venv}/bin/python -m pip --version", env).returncode != 0
    made = _sh(make_venv, env)
    assert made.returncode == 0, made.stderr
    assert _sh(f"{venv}/bin/python -m pip --version", env).returncode == 0
    (venv / "kept").write_text("")
    assert _sh(make_venv, env).returncode == 0 and (venv / "kept").exists()  # `ray up` again: left as it is


# -- subnets and security groups from the site --------------------------------------------------------
@pytest.mark.parametrize("name", AWS)
def test_the_sites_subnets_reach_every_node_type_of_both_variants(name):
    site = load_values().clusters[name]
    assert site.subnets and site.security_groups
    files = _rendered(name)
    for variant in (name, f"{name}-docker"):
        raw = files[f"cluster_configs/{variant}.yaml"]
        for node_type, body in raw["available_node_types"].items():
            assert body["node_config"]["SubnetIds"] == list(site.subnets), (variant, node_type)
            assert body["node_config"]["SecurityGroupIds"] == list(site.security_groups), (variant, node_type)


@pytest.mark.parametrize("name", AWS)
def test_the_sites_group_admits_its_own_nodes_and_the_admin_network_only(name):
    site, admin = load_values().clusters[name], load_values().admin_cidr
    rules = _rendered(name)[f"cluster_configs/aws/{name}-security-group.json"]
    (own,) = [r for r in rules if "UserIdGroupPairs" in r]
    assert own["IpProtocol"] == "-1" and [p["GroupId"] for p in own["UserIdGroupPairs"]] == [site.security_groups[0]]
    outside = [r for r in rules if r is not own]
    assert sorted((r["FromPort"], r["ToPort"], r["IpProtocol"]) for r in outside) == [(22, 22, "tcp"), (8443, 8443, "tcp")]
    assert all([ip["CidrIp"] for ip in r["IpRanges"]] == [admin] and not r.get("Ipv6Ranges") for r in outside)


@pytest.mark.parametrize("name", AWS)
def test_without_the_sites_groups_the_aws_render_is_refused_naming_the_field(name):
    """A group Ray's launcher makes admits SSH from 0.0.0.0/0, whatever rules are rendered for it."""
    with pytest.raises(ConfigError) as err:
        render("aws", name, values=_with_site(name, security_groups=()))
    assert err.value.field == f"clusters.{name}.security_groups" and "0.0.0.0/0" in str(err.value)
    assert render("kuberay", name, values=_with_site(name, security_groups=()))  # Karpenter finds its own by tag


@pytest.mark.parametrize("name", AWS)
def test_with_the_sites_security_groups_every_node_has_them_and_ray_makes_none(name):
    from ray.autoscaler._private.aws import config as ray_aws

    files = _rendered(name, _with_site(name, security_groups=SGS))
    for variant in (name, f"{name}-docker"):
        raw = files[f"cluster_configs/{variant}.yaml"]
        for node_type, body in raw["available_node_types"].items():
            assert body["node_config"]["SecurityGroupIds"] == list(SGS), (variant, node_type)
        # Ray reads `security_group` only to make a group; with every node type's given it makes none
        # (and calls no AWS API to find out), so no block is rendered that would never apply.
        assert "security_group" not in raw["provider"]
        assert ray_aws._configure_security_group(raw) == raw


def test_without_subnets_ray_picks_them_and_the_yaml_names_none():
    files = _rendered("aws-cpu", _with_site("aws-cpu", subnets=()))
    for body in files["cluster_configs/aws-cpu.yaml"]["available_node_types"].values():
        assert "SubnetIds" not in body["node_config"]


def test_ray_opens_ssh_to_the_world_in_a_group_it_makes_as_docs_cloud_md_says():
    """If Ray stops adding its own SSH rule, docs/cloud.md's advice to list the site's groups changes."""
    from ray.autoscaler._private.aws import config as ray_aws

    rules = ray_aws._create_default_inbound_rules({SGS[0]}, aws.ingress(definition_at_site("aws-cpu")))
    assert any(ip["CidrIp"] == "0.0.0.0/0" for r in rules if r["FromPort"] == 22 for ip in r.get("IpRanges", []))
    cloud = (REPO / "docs" / "cloud.md").read_text()
    assert "0.0.0.0/0" in cloud and "security_groups" in cloud


# -- IAM for spot launches and the nodes' roles --------------------------------------------------------
@pytest.mark.parametrize("name", AWS)
def test_the_head_may_launch_spot_instances(name):
    files = _rendered(name)
    head = files[f"cluster_configs/aws/{name}-head-policy.json"]["Statement"]
    account, region = load_values().account_id, load_values().clusters[name].region
    parts = next(st for st in head if st["Sid"] == "LaunchWithTheseParts")
    assert f"arn:aws:ec2:{region}:{account}:spot-instances-request/*" in parts["Resource"]
    assert "Condition" not in parts  # a spot request carries no tag of Ray's
    linked = [st for st in head if "iam:CreateServiceLinkedRole" in st["Action"]]
    assert linked == [{
        "Sid": "SpotServiceLinkedRole", "Effect": "Allow", "Action": ["iam:CreateServiceLinkedRole"],
        "Resource": f"arn:aws:iam::{account}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
        "Condition": {"StringLike": {"iam:AWSServiceName": "spot.amazonaws.com"}}}]
    assert "AWSServiceRoleForEC2Spot" in (REPO / "docs" / "cloud.md").read_text()


@pytest.mark.parametrize("name", AWS)
def test_instance_profiles_and_the_roles_the_policies_name_are_one_name_each(name):
    files = _rendered(name)
    raw = files[f"cluster_configs/{name}.yaml"]
    profiles = {t: body["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
                for t, body in raw["available_node_types"].items()}
    head_profile = profiles.pop(raw["head_node_type"])
    assert set(profiles.values()) == {f"elasticml-{name}-worker"} and head_profile == f"elasticml-{name}-head"
    head = files[f"cluster_configs/aws/{name}-head-policy.json"]["Statement"]
    passed = [st for st in head if "iam:PassRole" in st["Action"]]
    assert len(passed) == 1 and passed[0]["Resource"].endswith(f":role/elasticml-{name}-worker")
    assert passed[0]["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    trust = files[f"cluster_configs/aws/{name}-tenant-trust.json"]["Statement"][0]["Principal"]["AWS"]
    assert trust.endswith(f":role/{head_profile}")


# -- IMDSv2's hop limit ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", AWS)
def test_the_hop_limit_is_1_on_the_instance_and_2_where_ray_runs_in_a_container_as_documented(name):
    files = _rendered(name)
    for variant, hops in ((name, 1), (f"{name}-docker", aws.DOCKER_HOP_LIMIT)):
        for node_type, body in files[f"cluster_configs/{variant}.yaml"]["available_node_types"].items():
            assert body["node_config"]["MetadataOptions"]["HttpPutResponseHopLimit"] == hops, (variant, node_type)
    assert aws.IMDS_V2["HttpPutResponseHopLimit"] == 1 and aws.DOCKER_HOP_LIMIT == 2
    for page in ("docs/cloud.md", "docs/security.md"):
        text = " ".join((REPO / page).read_text().split())
        assert re.search(r"hop limit (of )?1\b", text) and re.search(r"\b2\b[^.]{0,80}container", text), page
