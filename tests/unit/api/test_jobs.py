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
CONFIG = {"data": "/data/corpus", "run_name": "tiny", "steps": 6}
SHARED = [Path("/data")]
"""The shared-data folder the tests' jobs read from."""


def test_a_submission_runs_the_platforms_entrypoint_with_the_validated_config_as_its_tenant(tmp_path):
    client = FakeJobClient()
    jobs = Jobs(tmp_path, client, shared_data=SHARED)
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
        Jobs(tmp_path, client, shared_data=SHARED).submit(ACME, "eml1.acme.secret", body)
    assert field in str(err.value) and client.submitted == []


def test_a_job_is_its_tenants_only_and_its_logs_keep_no_credential(tmp_path):
    client = FakeJobClient()
    jobs = Jobs(tmp_path, client, shared_data=SHARED)
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


def test_a_distillation_or_fine_tune_starts_only_from_the_tenants_own_job(tmp_path):
    client = FakeJobClient()
    jobs = Jobs(tmp_path, client, shared_data=SHARED)
    teacher = jobs.submit(ACME, "eml1.acme.secret", {"config": CONFIG})["submission_id"]
    other = jobs.submit(GLOBEX, "eml1.globex.secret", {"config": CONFIG})["submission_id"]
    got = jobs.submit(ACME, "eml1.acme.secret", {"config": {**CONFIG, "run_name": "student", "teacher": f"job:{teacher}",
                                                            "init_from": f"job:{teacher}"}})
    argv = shlex.split(client.submitted[-1]["entrypoint"])
    assert argv[1].endswith("jobs/distill.py") and got["workload"] == "acme/student"
    config = load_yaml(Path(argv[argv.index("--config") + 1]), source="config")
    assert config["teacher"] == config["init_from"] == f"latest:{tmp_path / 'tenants' / 'acme' / 'runs' / 'tiny'}"
    with pytest.raises(AccessDenied, match="no job of this tenant"):
        jobs.submit(ACME, "eml1.acme.secret", {"config": {**CONFIG, "teacher": f"job:{other}"}})
    for bad in ("/runs/globex/tiny", "latest:/runs/tiny", "s3://b/tenants/acme/x", "job:../../x"):
        with pytest.raises(ConfigError, match="config.teacher"):
            jobs.submit(ACME, "eml1.acme.secret", {"config": {**CONFIG, "teacher": bad}})
    assert len(client.submitted) == 3


def test_a_sweep_runs_the_platforms_tune_entrypoint_with_checked_numbers(tmp_path):
    client = FakeJobClient()
    jobs = Jobs(tmp_path, client, shared_data=SHARED)
    sweep = {"data": "/data/corpus", "name": "lr", "samples": 3, "steps": 20,
             "lrs": [0.001, 0.003], "workers": 1, "concurrent": 2}
    got = jobs.submit(ACME, "eml1.acme.secret", {"kind": "tune", "config": sweep})
    argv = shlex.split(client.submitted[-1]["entrypoint"])
    assert argv[1].endswith("jobs/tune.py") and got == {**got, "workload": "acme/lr", "kind": "tune"}
    assert argv[argv.index("--tenant") + 1] == "acme" and argv[argv.index("--priority") + 1] == "low"
    assert argv[argv.index("--lrs") + 1] == "0.001,0.003" and argv[argv.index("--samples") + 1] == "3"
    assert "--expected-hours" not in argv  # the entrypoint's default
    jobs.submit(ACME, "eml1.acme.secret", {"kind": "tune", "config": sweep, "expected_hours": 0.25})
    argv = shlex.split(client.submitted[-1]["entrypoint"])  # sized for the sweep: its credentials' life too
    assert argv[argv.index("--expected-hours") + 1] == "0.25"
    for bad, field in (({"samples": 10**9}, "config.samples"), ({"lrs": [float("nan")]}, "config.lrs"),
                       ({"lrs": "1,2"}, "config.lrs"), ({"concurrent": 2.5}, "config.concurrent"),
                       ({"name": "../x"}, "config.name"), ({"script": "evil.py"}, "config"),
                       ({"model_size": "galactic"}, "model_size")):
        with pytest.raises(ConfigError) as err:
            jobs.submit(ACME, "eml1.acme.secret", {"kind": "tune", "config": {**sweep, **bad}})
        assert field in str(err.value), (bad, err.value)
    for body, field in (({"expected_hours": -1}, "expected_hours"), ({"deadline_hours": 2}, "deadline_hours"),
                        ({"kind": "shell"}, "kind")):
        with pytest.raises(ConfigError) as err:
            jobs.submit(ACME, "eml1.acme.secret", {"kind": "tune", "config": sweep, **body})
        assert field in str(err.value), (body, err.value)
    assert len(client.submitted) == 2
