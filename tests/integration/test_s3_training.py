"""Data and checkpoints on S3 (moto's server on 127.0.0.1): train from s3://, checkpoint to s3://, serve from it."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pytest
import torch

from elasticml.models import SIZES, build_model
from elasticml.storage import filesystem_for
from elasticml.train.checkpoint import latest_checkpoint, load_model, read_meta, write_checkpoint

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_train_reads_s3_data_and_checkpoints_to_s3(local_cluster, corpus, s3_env, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from elasticml.serve.completion import resolve_checkpoint

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


def test_a_half_uploaded_checkpoint_on_s3_is_never_loaded(s3_env, tmp_path):
    boto3.client("s3", endpoint_url=s3_env["ELASTICML_S3_ENDPOINT"]).create_bucket(Bucket="half-up")
    fs, _ = filesystem_for("s3://half-up")
    for step in (5, 10):
        local = tmp_path / f"checkpoint_{step}"
        torch.manual_seed(step)
        write_checkpoint(local, model_state=build_model("tiny").state_dict(), optim_state={"s": step},
                         model_config=SIZES["tiny"], step=step)
        pafs.copy_files(str(local), f"half-up/run/checkpoint_{step}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
    fs.delete_file("half-up/run/checkpoint_10/__0_0.distcp")  # the upload of step 10 died midway
    assert latest_checkpoint("s3://half-up/run") == "s3://half-up/run/checkpoint_5"
