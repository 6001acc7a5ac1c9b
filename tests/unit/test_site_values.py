"""Site values (elasticml.provision.values): every bad field is refused naming it, through `load_values`
and through `elasticml cluster render --values FILE`, and other values render other files."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from elasticml.errors import ConfigError
from elasticml.provision.values import EXAMPLE, MAX_IDS, load_values

EXAMPLE_RAW = yaml.safe_load(EXAMPLE.read_text())
ELASTICML = str(Path(sys.executable).with_name("elasticml"))


def _values_file(tmp_path: Path, change) -> Path:
    raw = copy.deepcopy(EXAMPLE_RAW)
    change(raw)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cpu(**fields):
    return lambda raw: raw["clusters"]["aws-cpu"].update(fields)


WIDE_OR_MALFORMED = {
    "1.2.3.4/0": "host bits",  # a host address with a /0 prefix: not a network at all
    "::/0": "IPv4",  # EC2's CidrIp is IPv4 only
    "2001:db8::/32": "IPv4",
    "0.0.0.0/0": "open to the world",
    "10.0.0.0/7": "too much",
    "10.0.0.1/16": "host bits",
    "not-a-cidr": "must be an IPv4 network",
}


@pytest.mark.parametrize("cidr", sorted(WIDE_OR_MALFORMED))
def test_an_admin_cidr_open_to_the_world_too_wide_or_malformed_is_refused_naming_it(tmp_path, cidr):
    path = _values_file(tmp_path, lambda raw: raw.update(admin_cidr=cidr))
    with pytest.raises(ConfigError, match=f"admin_cidr: .*{WIDE_OR_MALFORMED[cidr]}"):
        load_values(path)
    out = subprocess.run([ELASTICML, "cluster", "render", "--values", str(path), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "admin_cidr" in out.stderr and cidr in out.stderr, out.stderr
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "192.168.10.0/24", "203.0.113.7/32"])
def test_an_admin_network_of_prefix_8_or_narrower_is_taken(tmp_path, cidr):
    assert load_values(_values_file(tmp_path, lambda raw: raw.update(admin_cidr=cidr))).admin_cidr == cidr


BAD = [
    ("unknown field", lambda raw: raw.update(acount_id="123456789012"), "unknown field(s) acount_id"),
    ("unknown cluster field", _cpu(subnet=["subnet-0a1b2c3d4e5f60001"]), "clusters.aws-cpu: unknown field(s) subnet"),
    ("missing field", lambda raw: raw.pop("bucket"), "'bucket'"),
    ("account id as a number", lambda raw: raw.update(account_id=123456789012), "account_id: must be a string"),
    ("account id of 11 digits", lambda raw: raw.update(account_id="12345678901"), "account_id: must match"),
    ("account id with letters", lambda raw: raw.update(account_id="12345678901a"), "account_id: must match"),
    ("admin cidr as a number", lambda raw: raw.update(admin_cidr=10), "admin_cidr: must be a string"),
    ("bucket not S3's shape", lambda raw: raw.update(bucket="Checkpoints_Bucket"), "bucket: must match"),
    ("image without a tag", lambda raw: raw.update(image="ghcr.io/elasticml/elasticml"), "image: must be REPOSITORY:TAG"),
    ("certificate not a UUID", lambda raw: raw.update(serve_certificate="arn:aws:acm:x"), "serve_certificate: must match"),
    ("clusters as a list", lambda raw: raw.update(clusters=["aws-cpu"]), "clusters: must be a mapping"),
    ("a cluster as a list", lambda raw: raw["clusters"].update({"aws-cpu": ["us-east-1"]}),
     "clusters.aws-cpu: expected a mapping"),
    ("region as a number", _cpu(region=1), "clusters.aws-cpu: region: must be a string"),
    ("region not AWS's shape", _cpu(region="US-East-1"), "clusters.aws-cpu: region: must match"),
    ("zone outside the region", _cpu(zones=["us-east-1a", "us-west-2a"]),
     "clusters.aws-cpu: zones: must be one or more zones of us-east-1"),
    ("no zones", _cpu(zones=[]), "clusters.aws-cpu: zones: must be one or more"),
    ("zones as text", _cpu(zones="us-east-1a"), "clusters.aws-cpu: zones: must be a list"),
    ("subnet id not AWS's shape", _cpu(subnets=["subnet-0a1b2c3d4e5f60001", "subnet-xyz"]),
     "clusters.aws-cpu: subnets[1]: must match"),
    ("subnet id as a number", _cpu(subnets=[12345678]), "clusters.aws-cpu: subnets[0]: must be a string"),
    ("a subnet twice", _cpu(subnets=["subnet-0a1b2c3d4e5f60001"] * 2), "clusters.aws-cpu: subnets: lists an entry twice"),
    ("security group id not AWS's shape", _cpu(security_groups=["sg-1"]), "clusters.aws-cpu: security_groups[0]: must match"),
    ("more than 16 subnets", _cpu(subnets=[f"subnet-{i:017x}" for i in range(MAX_IDS + 1)]),
     "clusters.aws-cpu: subnets: at most 16 entries, got 17"),
    ("more than 16 security groups", _cpu(security_groups=[f"sg-{i:017x}" for i in range(MAX_IDS + 1)]),
     "clusters.aws-cpu: security_groups: at most 16"),
    ("more than 16 tenants", _cpu(tenants=[f"t{i}" for i in range(MAX_IDS + 1)]), "clusters.aws-cpu: tenants: at most 16"),
    ("a tenant not a role name part", _cpu(tenants=["Research Team"]), "clusters.aws-cpu: tenants[0]: must match"),
]


@pytest.mark.parametrize(("what", "change", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_site_values_are_refused_naming_the_field(tmp_path, what, change, words):
    path = _values_file(tmp_path, change)
    with pytest.raises(ConfigError) as caught:
        load_values(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and words in message, message


def test_the_cli_refuses_bad_values_with_exit_2_naming_the_field(tmp_path):
    path = _values_file(tmp_path, _cpu(zones=["us-west-2a"]))
    out = subprocess.run([ELASTICML, "cluster", "render", "--values", str(path), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "clusters.aws-cpu: zones" in out.stderr, out.stderr


def test_other_site_values_render_other_accounts_buckets_and_subnets(tmp_path):
    subnets = ["subnet-00000000000000aa1", "subnet-00000000000000aa2"]
    path = _values_file(tmp_path, lambda raw: (raw.update(account_id="210987654321", bucket="acme-ml-checkpoints"),
                                               raw["clusters"]["aws-cpu"].update(subnets=subnets)))
    out = tmp_path / "out"
    done = subprocess.run([ELASTICML, "cluster", "render", "--values", str(path), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for variant in ("aws-cpu", "aws-cpu-docker"):
        launcher = yaml.safe_load((out / f"cluster_configs/{variant}.yaml").read_text())
        for node_type, body in launcher["available_node_types"].items():
            assert body["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::210987654321:"), node_type
            assert body["node_config"]["SubnetIds"] == subnets, (variant, node_type)
    head = json.loads((out / "cluster_configs/aws/aws-cpu-head-policy.json").read_text())
    text = json.dumps(head)
    assert "arn:aws:s3:::acme-ml-checkpoints" in text and "123456789012" not in text and "elasticml-checkpoints" not in text
    # The committed files (the example's values) are untouched by a render elsewhere.
    repo = Path(__file__).resolve().parents[2]
    assert "123456789012" in (repo / "cluster_configs/aws-cpu.yaml").read_text()
