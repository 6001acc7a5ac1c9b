"""Tenants' bucket prefixes, against an S3 and STS that check IAM (moto's server with IAM enforcement):
the rendered tenant roles and node policies, credentials the scheduler vends through its door,
and pyarrow reaching a tenant's prefix with them. Nothing here is mocked but AWS itself."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from elasticml.provision.definition import CLUSTERS
from elasticml.provision.render import definition_at_site
from tests.support.output import last_json

AT_SITE = {n: d if n == "local" else definition_at_site(n) for n, d in CLUSTERS.items()}
"""Each definition with the committed example's site values, as the committed files are rendered."""

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]
REPO = Path(__file__).resolve().parents[2]
D = AT_SITE["aws-cpu"]
SETUP_REQUESTS = 14
"""The requests `iam_world` makes before moto starts checking every signature and policy."""


def _policy(name: str) -> str:
    return (REPO / "cluster_configs" / "aws" / f"aws-cpu-{name}.json").read_text()


@pytest.fixture(scope="module")
def iam_world(tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).with_name("moto_server"))
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_REQUESTS), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    url = f"http://127.0.0.1:{port}"
    boot = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "boot", "aws_secret_access_key": "boot"}
    iam, s3 = boto3.client("iam", **boot), boto3.client("s3", **boot)
    keys = {}
    for user, policy in (("elasticml-head", "head-policy"), ("elasticml-worker", "worker-policy")):  # 6 requests
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="rendered", PolicyDocument=_policy(policy))
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    s3.create_bucket(Bucket=D.bucket)  # 1
    # The rendered trust policy names the head *role*; moto matches principals literally (it does not see
    # a role's sessions as the role), so here the head is a user and the trust names that user.
    trust = json.loads(_policy("tenant-trust"))
    trust["Statement"][0]["Principal"]["AWS"] = f"arn:aws:iam::{D.account_id}:user/elasticml-head"
    for tenant in ("research", "payments"):  # 4 requests
        iam.create_role(RoleName=f"elasticml-aws-cpu-tenant-{tenant}", AssumeRolePolicyDocument=json.dumps(trust))
        iam.put_role_policy(RoleName=f"elasticml-aws-cpu-tenant-{tenant}", PolicyName="rendered",
                            PolicyDocument=_policy(f"tenant-{tenant}-policy"))
    # "lab": research's rendered policy for its own prefix, less the s3:prefix condition on listing, which
    # moto cannot evaluate (it refuses every listing under it): what a training run needs to list.
    lab = json.loads(_policy("tenant-research-policy").replace("tenants/research/", "tenants/lab/"))
    for st in lab["Statement"]:
        st.pop("Condition", None) if st["Sid"] == "ListOwnPrefix" else None
    iam.create_role(RoleName="elasticml-aws-cpu-tenant-lab", AssumeRolePolicyDocument=json.dumps(trust))  # 2
    iam.put_role_policy(RoleName="elasticml-aws-cpu-tenant-lab", PolicyName="rendered", PolicyDocument=json.dumps(lab))
    s3.put_object(Bucket=D.bucket, Key="tenants/payments/ledger.csv", Body=b"payments' own data")  # 1
    yield {"url": url, "keys": keys}
    proc.terminate()
    proc.wait(10)


def _s3(world, access_key: str, secret: str, token: str | None = None):
    return boto3.client("s3", endpoint_url=world["url"], region_name="us-east-1", aws_access_key_id=access_key,
                        aws_secret_access_key=secret, aws_session_token=token)


def _denied(call) -> bool:
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"] in ("AccessDenied", "403")
    return False


def test_the_nodes_roles_cannot_touch_tenants_data(iam_world):
    k = iam_world["keys"]["elasticml-worker"]
    worker = _s3(iam_world, k["AccessKeyId"], k["SecretAccessKey"])
    worker.put_object(Bucket=D.bucket, Key="runs/operator/x", Body=b"ok")  # the platform's own prefix
    worker.get_bucket_location(Bucket=D.bucket)  # what the residency check asks before anything is written
    assert _denied(lambda: worker.get_object(Bucket=D.bucket, Key="tenants/payments/ledger.csv"))
    assert _denied(lambda: worker.put_object(Bucket=D.bucket, Key="tenants/research/x", Body=b"no"))
    assert _denied(lambda: worker.delete_object(Bucket=D.bucket, Key="tenants/payments/ledger.csv"))


def test_vended_credentials_reach_the_tenants_prefix_and_nothing_else(iam_world, tmp_path, monkeypatch):
    from elasticml.cluster.config import load_cluster_spec
    from elasticml.errors import AccessDenied, PlacementRefused
    from elasticml.scheduler.identity import digest, new_token
    from elasticml.scheduler.principals import add_principal
    from elasticml.scheduler.shell import open_shell
    from elasticml.scheduler.tenant_storage import CredentialVendor
    from elasticml.storage import read_text, use_credentials, write_text_atomic

    head = iam_world["keys"]["elasticml-head"]
    for var, value in (("AWS_ACCESS_KEY_ID", head["AccessKeyId"]), ("AWS_SECRET_ACCESS_KEY", head["SecretAccessKey"]),
                       ("AWS_DEFAULT_REGION", "us-east-1"), ("ELASTICML_S3_ENDPOINT", iam_world["url"])):
        monkeypatch.setenv(var, value)  # the scheduler's process: the head's identity
    shell = open_shell(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"), tmp_path / "l.sqlite",
                       admin_digest=digest(new_token("admin")), audit_key_path=tmp_path / "keys" / "audit.key")
    state = shell.scheduler
    state.vendor = CredentialVendor(role_arn=f"arn:aws:iam::{D.account_id}:role/elasticml-aws-cpu-tenant-{{tenant}}",
                                    endpoint=iam_world["url"])
    tokens = {t: new_token(t) for t in ("research", "payments")}
    for t, token in tokens.items():
        add_principal(state, t, "tenant", digest(token))
    door = shell.door

    creds = door.call(tokens["research"], "storage_credentials", {"tenant": "research", "bucket": D.bucket, "hours": 1.0})
    assert creds.prefix == f"{D.bucket}/tenants/research/" and creds.expiration > time.time()
    assert creds.secret_access_key not in repr(creds) and creds.session_token not in repr(creds)
    with pytest.raises(AccessDenied, match="its own prefix only"):
        door.call(tokens["research"], "storage_credentials", {"tenant": "payments", "bucket": D.bucket, "hours": 1.0})
    research = _s3(iam_world, creds.access_key_id, creds.secret_access_key, creds.session_token)
    research.put_object(Bucket=D.bucket, Key="tenants/research/run/step-1", Body=b"mine")
    assert research.get_object(Bucket=D.bucket, Key="tenants/research/run/step-1")["Body"].read() == b"mine"
    assert _denied(lambda: research.get_object(Bucket=D.bucket, Key="tenants/payments/ledger.csv"))
    assert _denied(lambda: research.put_object(Bucket=D.bucket, Key="tenants/payments/ledger.csv", Body=b"x"))
    assert _denied(lambda: research.put_object(Bucket=D.bucket, Key="runs/elsewhere", Body=b"x"))
    # A job's own path (pyarrow, as training writes): installed, the prefix is reachable; outside it the
    # process falls back to its own (the head's) identity, which is denied tenants' data.
    use_credentials([creds])
    try:
        write_text_atomic(f"s3://{D.bucket}/tenants/research/run/meta.json", "{}")
        assert read_text(f"s3://{D.bucket}/tenants/research/run/meta.json") == "{}"
        with pytest.raises(OSError):
            read_text(f"s3://{D.bucket}/tenants/payments/ledger.csv")
    finally:
        use_credentials([])
    # Where prefixes are kept, a tenant's job outside its own is refused at the residency check, and audited.
    door.call(tokens["research"], "check_residency",
              {"tenant": "research", "region": "us-east-1", "what": f"s3://{D.bucket}/tenants/research/corpus"})
    with pytest.raises(PlacementRefused, match="tenants/research/"):
        door.call(tokens["research"], "check_residency",
                  {"tenant": "research", "region": "us-east-1", "what": f"s3://{D.bucket}/runs/corpus"})
    trail = state.audit.records()
    vended = [r for r in trail if r["action"] == "storage_credentials" and r["outcome"] == "done"]
    assert vended and "tenants/research/" in vended[0]["why"] and creds.secret_access_key not in json.dumps(trail)
    assert any(r["action"] == "storage_credentials" and r["outcome"] == "denied" for r in trail)
    assert any(r["action"] == "check_residency" and r["outcome"] == "failed" for r in trail)


@pytest.fixture(scope="module")
def confined_cluster(iam_world, request):
    """A local cluster whose nodes have the head's identity (denied tenants/*) and whose scheduler vends
    tenants' credentials: a cloud cluster's storage, on loopback."""
    import os

    head = iam_world["keys"]["elasticml-head"]
    env = {"AWS_ACCESS_KEY_ID": head["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": head["SecretAccessKey"],
           "AWS_DEFAULT_REGION": "us-east-1", "ELASTICML_S3_ENDPOINT": iam_world["url"],
           "ELASTICML_TENANT_ROLE_ARN": f"arn:aws:iam::{D.account_id}:role/elasticml-aws-cpu-tenant-{{tenant}}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # before the cluster starts: its raylets, and so every node process, inherit it
    try:
        yield request.getfixturevalue("local_cluster")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_tenants_training_job_reaches_its_prefix_only_with_vended_credentials(confined_cluster, iam_world, corpus,
                                                                                 tmp_path):
    """jobs/train.py as tenant lab: its corpus and checkpoints under tenants/lab/, which the nodes' own
    identity cannot touch; the run succeeds only because the driver, Ray Train's controller and every
    worker use the credentials the scheduler vended."""
    import os

    import pyarrow.fs as pafs

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.storage import filesystem_for, use_credentials
    from elasticml.train.checkpoint import read_meta

    info = confined_cluster.require_info()
    info.connect()
    admin = SchedulerClient.connect()
    admin.add_principal("lab", "tenant", tmp_path / "lab.cred")
    creds = admin.storage_credentials("lab", D.bucket, 1.0)
    assert creds is not None  # this cluster vends
    use_credentials([creds])
    try:
        fs, _ = filesystem_for(f"s3://{D.bucket}/tenants/lab/corpus")
        pafs.copy_files(str(corpus), f"{D.bucket}/tenants/lab/corpus", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    finally:
        use_credentials([])
    env = {**os.environ, **info.client_env(), "RAY_ADDRESS": info.gcs_address,
           "ELASTICML_CREDENTIAL_PATH": str(tmp_path / "lab.cred")}
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), "--data", f"s3://{D.bucket}/tenants/lab/corpus",
                           "--storage-path", f"s3://{D.bucket}/tenants/lab/runs", "--run-name", "confined", "--steps", "4",
                           "--workers", "2", "--global-batch", "4", "--report-every", "2", "--checkpoint-every", "2"],
                          env=env, capture_output=True, text=True, timeout=420, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = last_json(proc.stdout)
    assert summary["error"] is None and summary["checkpoint"].startswith(f"{D.bucket}/tenants/lab/runs/confined")
    use_credentials([admin.storage_credentials("lab", D.bucket, 1.0)])
    try:
        assert read_meta(f"s3://{summary['checkpoint']}")["step"] == 4
    finally:
        use_credentials([])
    k = iam_world["keys"]["elasticml-worker"]
    worker = _s3(iam_world, k["AccessKeyId"], k["SecretAccessKey"])
    assert _denied(lambda: worker.get_object(Bucket=D.bucket, Key=f"{summary['checkpoint'].split('/', 1)[1]}/meta.json"))
