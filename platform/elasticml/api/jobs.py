"""A tenant's training jobs through the API server: submit, follow, read logs, stop, list.

The server is the token holder, so it submits the job; what runs is the platform's own
entrypoint (`jobs/train.py`) with a config the server validated (`TrainConfig`, strictly), never
a tenant's code, working directory or runtime environment. The job acts as its tenant: it gets
the tenant's credential in a 0600 file on the head (its path in `ELASTICML_CREDENTIAL_PATH`, the
way `ray job submit` users give theirs), so the scheduler places it with the tenant's budget,
ceiling and residency, and its data and checkpoints pass the tenant's residency check. A job is
the tenant's whose submission says so (metadata only the server writes); another tenant's job
is answered as if it did not exist.
"""

from __future__ import annotations

import re
import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

from elasticml.atomic import write_atomic
from elasticml.dataconf import check_number, check_text
from elasticml.errors import AccessDenied, ConfigError
from elasticml.repo import JOBS

TENANT_KEY = "elasticml_tenant"
FORBIDDEN = {"model": "a tenant trains a reference model size (`model_size`), not its own module",
             "node_type": "the scheduler picks where a tenant's job runs",
             "market": "the scheduler picks where a tenant's job runs"}
FROM_OWN_JOB = ("teacher", "init_from")
"""Checkpoints a job may start from: `job:SUBMISSION_ID`, the newest of one of the tenant's own jobs."""
TUNE_FIELDS: dict[str, tuple[type, float, float]] = {
    "samples": (int, 1, 64), "steps": (int, 1, 1_000_000), "workers": (int, 1, 64), "concurrent": (int, 1, 16),
    "lr_min": (float, 1e-7, 10.0), "lr_max": (float, 1e-7, 10.0)}
"""A sweep's numbers (the rest of its fields are a TrainConfig's `data`, `storage_path`, `model_size`)."""
MAX_LOG_BYTES = 256 * 1024
SUBMISSION_ID = r"[A-Za-z0-9_-]{1,64}"
MAX_LIVE_JOBS_PER_TENANT = 20
"""Jobs of one tenant not yet ended: each is a driver process on the head."""
SHARED_DATA_ENV = "ELASTICML_SHARED_DATA"
"""Folders on the head (`:`-separated) every tenant's jobs may read data from, beside $ELASTICML_HOME/datasets."""


class Jobs:
    def __init__(self, folder: Path, client: Any, *, tenants_root: Path | None = None,
                 shared_data: list[Path] | None = None) -> None:
        """`client`: a `ray.job_submission.JobSubmissionClient` (the server's, with the Ray token).
        On the head's disk a tenant's runs live under `tenants_root/TENANT/runs` and its data under
        `tenants_root/TENANT/` or a shared-data folder; any other local path could be another's."""
        self.folder = folder
        self.client = client
        self.tenants_root = tenants_root or folder / "tenants"
        self.shared_data = shared_data if shared_data is not None else []

    def tenant_root(self, tenant: str) -> Path:
        return self.tenants_root / tenant

    def submit(self, who: dict[str, str], token: str, body: Any) -> dict[str, Any]:
        """A training job (with `teacher`, a distillation; `init_from`, a fine-tune) or, with
        `"kind": "tune"`, a learning-rate sweep: the platform's entrypoint with a checked config."""
        if type(body) is not dict:
            raise ConfigError('the body is {"config": {...}, "priority": ..., "expected_hours": ...}', field="body")
        unknown = set(body) - {"kind", "config", "priority", "expected_hours", "deadline_hours"}
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))[:200]}", field="body")
        kind = body.get("kind", "train")
        if kind not in ("train", "tune"):
            raise ConfigError("must be train (with a teacher: distillation) or tune", field="kind")
        if type(body.get("config")) is not dict:
            raise ConfigError("the body is {\"config\": {TrainConfig fields}, \"priority\": ..., "
                              "\"expected_hours\": ...}", field="config")
        priority = body.get("priority", "normal" if kind == "train" else "low")
        check_text(priority, field="priority", max_len=20, pattern=r"[a-z]+")
        tenant = who["name"]
        self._check_live(tenant)
        if kind == "tune" and body.get("deadline_hours") is not None:
            raise ConfigError("a sweep has no deadline (it runs at low priority until its trials end)",
                              field="deadline_hours")
        args, name, config = self._train(who, body) if kind == "train" else (*self._tune(who, body["config"]), None)
        args += ["--tenant", tenant, "--priority", priority]
        if "expected_hours" in body:  # both kinds: the scheduler's estimate and the storage credentials' life
            check_number(body["expected_hours"], field="expected_hours", lo=0.001, hi=8760)
            args += ["--expected-hours", str(float(body["expected_hours"]))]
        submission_id = f"{tenant}-{name}-{secrets.token_hex(4)}"
        folder = self.folder / submission_id
        folder.mkdir(parents=True, exist_ok=False)
        credential = folder / "credential"
        write_atomic(credential, token + "\n", mode=0o600)
        if config is not None:
            config_file = folder / "config.yaml"
            write_atomic(config_file, _yaml(config), mode=0o600)
            args = [*args[:1], "--config", str(config_file), *args[1:]]
        self.client.submit_job(entrypoint=shlex.join([sys.executable, *args]), submission_id=submission_id,
                               metadata={TENANT_KEY: tenant},
                               runtime_env={"env_vars": {"ELASTICML_CREDENTIAL_PATH": str(credential)}})
        return {"submission_id": submission_id, "workload": f"{tenant}/{name}", "kind": kind}

    def _train(self, who: dict[str, str], body: dict[str, Any]) -> tuple[list[str], str, dict[str, Any]]:
        """jobs/train.py's arguments (jobs/distill.py with a teacher), the run's name and its checked config."""
        from elasticml.train.config import TrainConfig

        raw = dict(body["config"])
        for name, why in FORBIDDEN.items():
            if raw.get(name) is not None:
                raise ConfigError(why, field=f"config.{name}")
        for name in FROM_OWN_JOB:  # a checkpoint of the tenant's own, never a path that may be another's
            if raw.get(name) is not None:
                check_text(raw[name], field=f"config.{name}", max_len=100, pattern=rf"job:{SUBMISSION_ID}")
                raw[name] = f"latest:{self.run_dir(who, {'submission_id': raw[name].removeprefix('job:')})}"
        self._confine(who["name"], raw)
        cfg = TrainConfig.from_dict(raw, source="config")  # every field checked, strictly
        check_text(cfg.run_name, field="config.run_name", max_len=63, pattern=r"[A-Za-z0-9][A-Za-z0-9_-]*")
        entry = "distill.py" if cfg.teacher else "train.py"
        args = [str(JOBS / entry)]
        if body.get("deadline_hours") is not None:
            check_number(body["deadline_hours"], field="deadline_hours", lo=0.001, hi=8760)
            args += ["--deadline-hours", str(float(body["deadline_hours"]))]
        return args, cfg.run_name, cfg.to_dict()

    def _tune(self, who: dict[str, str], raw: dict[str, Any]) -> tuple[list[str], str]:
        """jobs/tune.py's arguments from a sweep's fields, each checked here."""
        from elasticml.train.config import TrainConfig

        raw = dict(raw)
        self._confine(who["name"], raw)
        unknown = set(raw) - {"data", "storage_path", "name", "model_size", "lrs", *TUNE_FIELDS}
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))[:200]}", field="config")
        name = raw.get("name", "sweep")
        check_text(name, field="config.name", max_len=63, pattern=r"[A-Za-z0-9][A-Za-z0-9_-]*")
        # The sweep's base run, checked as any training job's (data and storage, the model size).
        TrainConfig.from_dict({k: raw[k] for k in ("data", "storage_path", "model_size") if k in raw} | {"run_name": name},
                              source="config")
        args = [str(JOBS / "tune.py"), "--data", str(raw["data"]), "--storage-path", str(raw["storage_path"]),
                "--name", name, "--size", str(raw.get("model_size", "tiny"))]
        for field, (kind, lo, hi) in TUNE_FIELDS.items():
            if field in raw:
                check_number(raw[field], field=f"config.{field}", lo=lo, hi=hi, integer=kind is int)
                args += [f"--{field.replace('_', '-')}", str(kind(raw[field]))]
        if "lrs" in raw:
            lrs = raw["lrs"]
            if type(lrs) is not list or not 1 <= len(lrs) <= 32:
                raise ConfigError("must be a list of 1 to 32 learning rates", field="config.lrs")
            for lr in lrs:
                check_number(lr, field="config.lrs", lo=1e-7, hi=10.0)
            args += ["--lrs", ",".join(str(float(lr)) for lr in lrs)]
        return args, name

    def _confine(self, tenant: str, raw: dict[str, Any]) -> None:
        """The job's storage and data held to the tenant's own: its S3 prefix, or on the head's disk its
        own folder (the runs' default) and, for data, the shared-data folders."""
        from elasticml.scheduler.tenant_storage import check_confined

        root = self.tenant_root(tenant)
        raw.setdefault("storage_path", str(root / "runs"))
        for name, allowed in (("storage_path", [root]), ("data", [root, *self.shared_data])):
            value = raw.get(name)
            if type(value) is not str:
                continue  # TrainConfig names what is wrong with it
            if value.startswith("s3://"):
                check_confined(tenant, value)
            elif "://" in value or not value.startswith("/"):
                raise ConfigError("an absolute path on the cluster or an s3:// URI in the tenant's prefix",
                                  field=f"config.{name}")
            elif not any(_within(Path(value), folder) for folder in allowed):
                raise ConfigError(f"a tenant's {'runs' if name == 'storage_path' else 'data'} on the head live under "
                                  f"{root}" + (" or a shared-data folder" if name == "data" else "") +
                                  " (or in its S3 prefix)", field=f"config.{name}")

    def _check_live(self, tenant: str) -> None:
        live = [i for i in self.client.list_jobs() if (i.metadata or {}).get(TENANT_KEY) == tenant
                and str(i.status) not in ("SUCCEEDED", "FAILED", "STOPPED")]
        if len(live) >= MAX_LIVE_JOBS_PER_TENANT:
            raise ConfigError(f"a tenant has at most {MAX_LIVE_JOBS_PER_TENANT} jobs running or waiting; stop one "
                              "or wait for one to end", field="body")

    def _own(self, who: dict[str, str], body: Any) -> str:
        job_id = body.get("submission_id") if type(body) is dict else None
        check_text(job_id, field="submission_id", max_len=64, pattern=SUBMISSION_ID)
        try:
            info = self.client.get_job_info(job_id)
        except Exception:  # RuntimeError when Ray knows no such job
            info = None
        tenant = (getattr(info, "metadata", None) or {}).get(TENANT_KEY) if info is not None else None
        if info is None or (who["role"] != "admin" and tenant != who["name"]):
            raise AccessDenied(f"{who['role']} {who['name']}", f"read job {job_id}",
                               "no job of this tenant has that id")
        return str(job_id)

    def run_dir(self, who: dict[str, str], body: Any) -> str:
        """Where the caller's own job writes its checkpoints (what `latest:` reads)."""
        from elasticml.yamlio import load_yaml

        job_id = self._own(who, body)
        config_file = self.folder / job_id / "config.yaml"
        if not config_file.is_file():  # a job of this tenant's that the server did not submit
            raise ConfigError(f"job {job_id} was not submitted through this server", field="submission_id")
        config = load_yaml(config_file, source=str(config_file))
        storage, run = str(config["storage_path"]), str(config["run_name"])
        return f"{storage.rstrip('/')}/{run}" if "://" in storage else str(Path(storage) / run)

    def status(self, who: dict[str, str], body: Any) -> dict[str, Any]:
        job_id = self._own(who, body)
        info = self.client.get_job_info(job_id)
        return {"submission_id": job_id, "status": str(info.status), "message": (info.message or "")[:2000]}

    def logs(self, who: dict[str, str], body: Any) -> dict[str, Any]:
        job_id = self._own(who, body)
        text = self.client.get_job_logs(job_id)
        return {"submission_id": job_id, "logs": _redacted(text[-MAX_LOG_BYTES:])}

    def stop(self, who: dict[str, str], body: Any) -> dict[str, Any]:
        job_id = self._own(who, body)
        return {"submission_id": job_id, "stopped": bool(self.client.stop_job(job_id))}

    def list(self, who: dict[str, str], body: Any) -> list[dict[str, Any]]:
        out = []
        for info in self.client.list_jobs():
            tenant = (info.metadata or {}).get(TENANT_KEY)
            if info.submission_id and tenant and (who["role"] == "admin" or tenant == who["name"]):
                out.append({"submission_id": info.submission_id, "tenant": tenant, "status": str(info.status)})
        return out


def _within(path: Path, folder: Path) -> bool:
    """Whether `path`, its links and `..` followed, lies inside `folder`."""
    return path.resolve().is_relative_to(folder.resolve())


def _yaml(raw: dict[str, Any]) -> str:
    from elasticml.yamlio import dump_yaml

    return dump_yaml({k: v for k, v in raw.items() if v is not None})


def _redacted(text: str) -> str:
    """A job's logs with anything shaped like a credential removed (they are the tenant's to read,
    but a log is where secrets leak to)."""
    return re.sub(r"eml1\.[a-z0-9-]+\.[A-Za-z0-9_-]+", "eml1.[redacted]", text)


def server_jobs(folder: Path | None = None) -> Jobs:
    """The API server's jobs, through the Ray dashboard's job API on the head (with the Ray token).
    The dashboard's address is read from the GCS when the first job call comes, so the server starts
    even while the dashboard does not answer yet."""
    import os

    from elasticml.home import home

    shared = [home() / "datasets", *(Path(p) for p in os.environ.get(SHARED_DATA_ENV, "").split(":") if p)]
    return Jobs(folder or home() / "api" / "jobs", _LazyJobClient(), tenants_root=home() / "tenants", shared_data=shared)


class _LazyJobClient:
    def __init__(self) -> None:
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            from ray._private import ray_constants
            from ray.experimental.internal_kv import _internal_kv_get
            from ray.job_submission import JobSubmissionClient

            address = _internal_kv_get(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
            if not address:
                from elasticml.errors import SchedulerError

                raise SchedulerError("the cluster's dashboard (its job API) is not up yet; try again")
            url = address.decode() if isinstance(address, bytes) else str(address)
            self._client = JobSubmissionClient(url if url.startswith("http") else f"http://{url}")
        return getattr(self._client, name)
