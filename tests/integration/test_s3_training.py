"""Data and checkpoints on S3 (moto's server on 127.0.0.1): train from s3://, checkpoint to s3://, serve from it."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest
import torch

from elasticml.models import SIZES, build_model
from elasticml.storage import filesystem_for, list_files
from elasticml.train.checkpoint import latest_checkpoint, load_model, read_meta, remove_half_written, write_checkpoint
from tests.support.output import last_json

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_train_reads_s3_data_and_checkpoints_to_s3(local_cluster, corpus, s3_env, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from elasticml.train.checkpoint import resolve_checkpoint

    boto3.client("s3", endpoint_url=s3_env["ELASTICML_S3_ENDPOINT"]).create_bucket(Bucket="ml-data")
    fs, _ = filesystem_for("s3://ml-data/corpus")
    pafs.copy_files(str(corpus), "ml-data/corpus", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    info = local_cluster.require_info()
    info.connect()
    client = JobSubmissionClient(info.dashboard_url)
    job = client.submit_job(
        entrypoint="python jobs/train.py --data s3://ml-data/corpus --storage-path s3://ml-data/runs --run-name s3run "
                   "--steps 6 --workers 2 --global-batch 4 --report-every 3 --checkpoint-every 3",
        runtime_env={"working_dir": str(REPO), "env_vars": s3_env},
    )
    deadline = time.monotonic() + 300
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, client.get_job_logs(job)[-3000:]

    latest = latest_checkpoint("s3://ml-data/runs/s3run")
    assert isinstance(latest, str) and latest.startswith("s3://ml-data/runs/s3run/")
    assert read_meta(latest)["step"] == 6
    model, meta = load_model(latest)
    assert meta["model_size"] == "tiny" and model.config == SIZES["tiny"]
    assert resolve_checkpoint("latest:s3://ml-data/runs/s3run") == latest


def test_a_half_uploaded_checkpoint_on_s3_is_never_loaded_and_a_resume_deletes_it(s3_env, tmp_path):
    boto3.client("s3", endpoint_url=s3_env["ELASTICML_S3_ENDPOINT"]).create_bucket(Bucket="half-up")
    fs, _ = filesystem_for("s3://half-up")

    def upload(name: str, step: int) -> None:
        torch.manual_seed(step)
        write_checkpoint(tmp_path / name, model_state=build_model("tiny").state_dict(), optim_state={"s": step},
                         model_config=SIZES["tiny"], step=step)
        pafs.copy_files(str(tmp_path / name), f"half-up/run/{name}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)

    upload("checkpoint_05", 5)
    upload("checkpoint_1", 10)
    fs.delete_file("half-up/run/checkpoint_1/__0_0.distcp")  # the upload of step 10 died midway
    assert latest_checkpoint("s3://half-up/run") == "s3://half-up/run/checkpoint_05"
    upload("checkpoint_10", 8)  # complete, its key prefix starting with the half-upload's
    # the resumed run's rank 0 deletes the half-upload: every object under its prefix, and nothing else
    assert remove_half_written("s3://half-up/run", registered="s3://half-up/run/checkpoint_05") == \
        ["s3://half-up/run/checkpoint_1"]
    assert sorted(list_files("s3://half-up/run")) == sorted(
        f"{name}/{file}" for name in ("checkpoint_05", "checkpoint_10") for file in list_files(str(tmp_path / name)))
    assert latest_checkpoint("s3://half-up/run") == "s3://half-up/run/checkpoint_10"


def test_the_serve_app_answers_from_a_checkpoint_on_s3(local_cluster, s3_env, tmp_path):
    import httpx
    from ray import serve

    from elasticml.cluster.local import free_port
    from elasticml.serve.completion import build_app
    from elasticml.serve.generate import generate

    boto3.client("s3", endpoint_url=s3_env["ELASTICML_S3_ENDPOINT"]).create_bucket(Bucket="models")
    torch.manual_seed(11)
    model = build_model("tiny").eval()
    write_checkpoint(tmp_path / "c", model_state=model.state_dict(), optim_state=None, model_config=SIZES["tiny"],
                     step=3)
    fs, _ = filesystem_for("s3://models")
    pafs.copy_files(str(tmp_path / "c"), "models/run/checkpoint_3", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)
    local_cluster.require_info().connect()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({"checkpoint": "latest:s3://models/run", "precision": "fp32", "env_vars": s3_env}),
                  name="s3", route_prefix="/")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "def ", "max_tokens": 12},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["completion"] == generate(model, b"def ", max_tokens=12).decode("utf-8", errors="replace")
        assert r.json()["model_step"] == 3
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health").json()["checkpoint"] == "s3://models/run/checkpoint_3"
    finally:
        serve.shutdown()


def test_a_bucket_outside_the_tenants_regions_is_refused_before_anything_is_written(s3_env, s3_server, tmp_path):
    """Residency for data and checkpoints: the bucket's region (S3's GetBucketLocation, here moto's)
    against the tenant's regions, through the scheduler's door, refused and audited."""
    import boto3

    from elasticml.cluster.config import load_cluster_spec
    from elasticml.errors import PlacementRefused
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.identity import digest, new_token
    from elasticml.scheduler.principals import add_principal
    from elasticml.scheduler.shell import open_shell
    from elasticml.scheduler.spec import TenantPolicy
    from elasticml.storage import bucket_region

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="uae-runs", CreateBucketConfiguration={"LocationConstraint": "me-central-1"})
    s3.create_bucket(Bucket="eu-runs", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert bucket_region("s3://uae-runs/x") == "me-central-1" and bucket_region("/local/path") is None
    shell = open_shell(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"), tmp_path / "l.sqlite",
                       admin_digest=digest(new_token("admin")), audit_key_path=tmp_path / "keys" / "audit.key")
    state = shell.scheduler
    token = new_token("acme")
    add_principal(state, "acme", "tenant", digest(token))
    state.set_tenant(TenantPolicy(tenant="acme", regions=("me-central-1",)))

    # The client's own check, with the door in this process instead of the actor.
    client = SchedulerClient(lambda route, args, wait=True: shell.door.call(token, route, args))
    client.check_residency("acme", ["s3://uae-runs/corpus", "s3://uae-runs/runs", str(tmp_path)])
    with pytest.raises(PlacementRefused, match="s3://eu-runs/runs is in eu-west-1"):
        client.check_residency("acme", ["s3://uae-runs/corpus", "s3://eu-runs/runs"])
    assert s3.list_objects_v2(Bucket="eu-runs").get("KeyCount", 0) == 0
    refused = [r for r in state.audit.records() if r["outcome"] == "failed"]
    assert refused and refused[-1]["who"] == "tenant acme" and "eu-west-1" in refused[-1]["why"]


def test_a_tenants_sweep_and_serve_app_go_through_residency_and_cannot_pick_a_market(local_cluster, s3_env, tmp_path,
                                                                                    monkeypatch):
    """jobs/tune.py run with a tenant's credential: its buckets are checked against the tenant's
    regions before Tune starts anything (refused, audited, nothing written), and --market is refused."""
    import os
    import subprocess
    import sys

    from elasticml.home import home
    from elasticml.scheduler.audit import read_records
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import TenantPolicy

    s3 = boto3.client("s3", endpoint_url=s3_env["ELASTICML_S3_ENDPOINT"])
    s3.create_bucket(Bucket="eu-sweeps", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    info = local_cluster.require_info()
    info.connect()
    admin = SchedulerClient.connect()
    admin.add_principal("gulf", "tenant", tmp_path / "gulf.cred")
    admin.set_tenant(TenantPolicy(tenant="gulf", regions=("me-central-1",)))
    env = {**os.environ, **info.client_env(), **s3_env, "ELASTICML_CREDENTIAL_PATH": str(tmp_path / "gulf.cred"),
           "RAY_ADDRESS": info.gcs_address}  # a driver on the head, as `ray job submit` runs it

    def tune(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(REPO / "jobs" / "tune.py"), "--name", "gulf-sweep", *flags],
                              env=env, capture_output=True, text=True, timeout=300, cwd=REPO)

    proc = tune("--data", "s3://eu-sweeps/corpus", "--storage-path", "s3://eu-sweeps/runs")
    assert proc.returncode == 2, proc.stderr[-2000:]
    refused = last_json(proc.stdout)
    assert refused["event"] == "tune_refused" and "eu-west-1" in refused["error"]
    assert s3.list_objects_v2(Bucket="eu-sweeps").get("KeyCount", 0) == 0
    trail = read_records(home() / "scheduler" / local_cluster.name / "audit.jsonl")
    assert any(r["who"] == "tenant gulf" and r["outcome"] == "failed" and "eu-west-1" in r["why"] for r in trail)
    proc = tune("--data", str(tmp_path), "--storage-path", str(tmp_path), "--market", "on-demand")
    assert proc.returncode == 2 and "--market is for admins" in proc.stderr, proc.stderr[-2000:]
    assert admin.placement("gulf/gulf-sweep") is None  # nothing was placed
    # The tenant's Serve app: the checkpoint's bucket is checked before `latest:` lists it.
    from elasticml.errors import PlacementRefused
    from elasticml.serve.completion import build_app

    monkeypatch.setenv("ELASTICML_CREDENTIAL_PATH", str(tmp_path / "gulf.cred"))
    with pytest.raises(PlacementRefused, match="eu-west-1"):
        build_app({"checkpoint": "latest:s3://eu-sweeps/runs/nightly", "tenant": "gulf", "name": "gulf-serve"})
    assert admin.placement("gulf/gulf-serve") is None
