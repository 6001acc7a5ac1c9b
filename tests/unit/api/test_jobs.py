"""The API server's jobs without Ray: what it submits for a tenant, and whose jobs a caller may see."""

from __future__ import annotations

import shlex
import stat
from pathlib import Path

import pytest

from elasticml.api.jobs import Jobs
from elasticml.errors import AccessDenied, ConfigError
from elasticml.yamlio import load_yaml

from tests.support.api_fakes import FakeJobClient


ACME = {"name": "acme", "role": "tenant"}
GLOBEX = {"name": "globex", "role": "tenant"}
ADMIN = {"name": "admin", "role": "admin"}
CONFIG = {"data": "/data/corpus", "storage_path": "/runs", "run_name": "tiny", "steps": 6}


def test_a_submission_runs_the_platforms_entrypoint_with_the_validated_config_as_its_tenant(tmp_path):
    client = FakeJobClient()
    jobs = Jobs(tmp_path, client)
    got = jobs.submit(ACME, "eml1.acme.secret", {"config": CONFIG, "priority": "low", "expected_hours": 0.5})
    (kw,) = client.submitted
    argv = shlex.split(kw["entrypoint"])
    assert argv[1].endswith("jobs/train.py") and argv[argv.index("--tenant") + 1] == "acme"
    assert "working_dir" not in kw["runtime_env"] and set(kw["runtime_env"]) == {"env_vars"}
    credential = Path(kw["runtime_env"]["env_vars"]["ELASTICML_CREDENTIAL_PATH"])
    assert credential.read_text().strip() == "eml1.acme.secret" and stat.S_IMODE(credential.stat().st_mode) == 0o600
    config = load_yaml(Path(argv[argv.index("--config") + 1]), source="config")
    assert config["steps"] == 6 and config["run_name"] == "tiny"
    assert got["workload"] == "acme/tiny" and kw["metadata"] == {"elasticml_tenant": "acme"}


@pytest.mark.parametrize("body, field", [
    ({"config": {**CONFIG, "model": "evil:make"}}, "config.model"),
    ({"config": {**CONFIG, "node_type": "gpu_reserved"}}, "config.node_type"),
    ({"config": {**CONFIG, "steps": -1}}, "steps"),
    ({"config": {**CONFIG, "run_name": "../../etc"}}, "run_name"),
    ({"config": CONFIG, "runtime_env": {"pip": ["evil"]}}, "body"),
    ({"config": CONFIG, "expected_hours": float("nan")}, "expected_hours"),
    ({"config": "data: /x"}, "config"),
])
def test_a_tenant_submits_no_code_no_environment_and_only_valid_configs(tmp_path, body, field):
    client = FakeJobClient()
    with pytest.raises(ConfigError) as err:
        Jobs(tmp_path, client).submit(ACME, "eml1.acme.secret", body)
    assert field in str(err.value) and client.submitted == []


def test_a_job_is_its_tenants_only_and_its_logs_keep_no_credential(tmp_path):
    client = FakeJobClient()
    jobs = Jobs(tmp_path, client)
    job_id = jobs.submit(ACME, "eml1.acme.secret", {"config": CONFIG})["submission_id"]
    for op in ("status", "logs", "stop"):
        with pytest.raises(AccessDenied, match="no job of this tenant"):
            getattr(jobs, op)(GLOBEX, {"submission_id": job_id})
        with pytest.raises(AccessDenied):
            getattr(jobs, op)(ACME, {"submission_id": "acme-tiny-00000000"})  # none such: the same answer
    assert jobs.status(ADMIN, {"submission_id": job_id})["status"] == "RUNNING"
    assert "SeCrEt" not in jobs.logs(ACME, {"submission_id": job_id})["logs"]
    assert jobs.list(GLOBEX, {}) == [] and len(jobs.list(ACME, {})) == 1
    with pytest.raises(ConfigError, match="submission_id"):
        jobs.status(ACME, {"submission_id": "x/../y"})
