"""elasticml: a Ray-based elastic compute platform for ML teams.

The Python API, the same code the `elasticml` command and the jobs run:

    import elasticml as eml

    cluster = eml.LocalCluster("local")                        # a local elastic cluster
    cluster.up(eml.load_cluster_spec("cluster_configs/local.yaml"))
    cluster.require_info().connect()                           # this process as its Ray driver

    sched = eml.SchedulerClient.connect()                      # the cost-aware scheduler
    placement = sched.place(eml.WorkloadSpec(name="nightly", tenant="research", priority="low"))

    cfg = eml.TrainConfig(data=..., storage_path=..., run_name="nightly", steps=100)
    result = eml.fit(cfg)                                      # where cfg.market / node_type say
    result = eml.fit(cfg, tenant="research", priority="low", expected_hours=2)   # or: the scheduler's
    app = eml.build_app({"checkpoint": f"latest:{storage_path}/nightly"})   # for serve.run

`fit` with a `tenant` takes the path of `jobs/train.py --tenant`: residency and the tenant's
storage credentials, preflight, then the scheduler places the run (its workload is in `status` and
`explain`), moves it (checkpoint, stop, resume on the new pool) and finishes it when it ends. The
other scheduling options (`priority`, `expected_hours`, `deadline_hours`, `restart_hours`,
`max_wait_s`, `spot_policy`, `settle_s`) are keyword-only and need a tenant; without one `fit` runs
where the config says, as before.

Packages: `cluster` (local elastic cluster from cluster YAMLs), `scheduler` (placement, the
ledger, identities, the audit trail), `data` (Parquet corpora), `models`, `train` (Ray Train
loop, checkpoints), `serve` (the completion app), `provision` (cloud configs), `observe`
(dashboards, reports). Errors live in `errors`. Names below are imported on first use, so
`import elasticml` does not import Ray or torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from elasticml.errors import (
    AccessDenied,
    AuthError,
    CheckpointError,
    ClusterAlreadyRunning,
    ClusterError,
    ClusterNotRunning,
    ConfigError,
    DataError,
    ElasticMLError,
    PlacementRefused,
    SchedulerError,
)

__version__ = "0.1.0"

_LAZY = {
    "LocalCluster": "elasticml.cluster.local",
    "ClusterSpec": "elasticml.cluster.config",
    "load_cluster_spec": "elasticml.cluster.config",
    "SchedulerClient": "elasticml.scheduler.client",
    "WorkloadSpec": "elasticml.scheduler.spec",
    "TenantPolicy": "elasticml.scheduler.spec",
    "Placement": "elasticml.scheduler.spec",
    "TrainConfig": "elasticml.train.config",
    "fit": "elasticml.train.launch",
    "ServeConfig": "elasticml.serve.config",
    "build_app": "elasticml.serve.completion",
    "build_corpus": "elasticml.data.corpus",
    "latest_checkpoint": "elasticml.train.checkpoint",
    "load_model": "elasticml.train.checkpoint",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'elasticml' has no attribute {name!r}")


__all__ = [
    "__version__",
    *_LAZY,
    "ElasticMLError",
    "ConfigError",
    "ClusterError",
    "ClusterAlreadyRunning",
    "ClusterNotRunning",
    "AuthError",
    "DataError",
    "CheckpointError",
    "SchedulerError",
    "PlacementRefused",
    "AccessDenied",
]
