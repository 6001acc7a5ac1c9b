"""Build the Ray Train V2 `TorchTrainer` for a `TrainConfig` and run it, where the config says.

The runner under `elasticml.train.launch.fit` (which adds the scheduler's placement) and under
`elasticml.train.follow` (which restarts it where the scheduler moves the job)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray

from elasticml.train.config import TrainConfig

if TYPE_CHECKING:
    from ray.train import Result

log = logging.getLogger(__name__)


def run_trainer(cfg: TrainConfig, *, callbacks: list | None = None, stop: Any = None,
                started: Callable[[], float] | None = None, retries: bool = True) -> Result:
    """Train `cfg` (validated once, here at the door: workers get the typed value).

    `stop`: a `StopFlag` actor; when it is raised the workers checkpoint at their next
    report point and end the run early (the scheduler moved the job: it resumes
    from that checkpoint on its new placement). `started`: called by rank 0 once
    the run is up, before its first step; it returns seconds to wait first.
    `retries=False`: Ray Train does not restart lost workers itself (a lost worker or
    preempted node raises `ray.train.TrainingFailedError`): the caller restarts the run
    where the scheduler says, since Ray Train's own retry would keep the old placement.
    """
    # Each report waits for the controller's poll (2 s by default); a shorter
    # interval keeps small runs from idling. An explicit setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from elasticml.storage import filesystem_for, installed_credentials, is_remote
    from elasticml.train.loop import train_loop_per_worker
    from elasticml.train.preflight import preflight

    preflight(cfg)  # a bad data or storage path fails here, in a second, not in every worker

    storage_fs, storage_path = None, cfg.storage_path
    if is_remote(cfg.storage_path):
        # Ray Train writes through this pyarrow filesystem (endpoint configurable for S3-compatible stores).
        storage_fs, storage_path = filesystem_for(cfg.storage_path)

    def trainer() -> TorchTrainer:
        return TorchTrainer(
            train_loop_per_worker,
            # A tenant's storage credentials (installed in this driver by its job) travel to the workers in
            # the task arguments, like the scheduler client: never in an environment variable or a log.
            train_loop_config={"config": cfg, "stop": stop, "started": started, "s3_credentials": installed_credentials()},
            torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                # Elastic on spot: Ray Train runs with what it can get between the two bounds.
                num_workers=(cfg.min_workers, cfg.num_workers) if cfg.min_workers else cfg.num_workers,  # type: ignore[arg-type]  # Train V2 takes a range; mypy resolves ray.train's V1 ScalingConfig
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})},
                label_selector=cfg.label_selector(),  # type: ignore[call-arg]  # a Train V2 field, as above
            ),
            run_config=RunConfig(
                name=cfg.run_name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=FailureConfig(max_failures=cfg.max_failures) if retries
                else FailureConfig(max_failures=0, max_preemption_failures=0),  # type: ignore[call-arg]  # a Train V2 field; mypy sees V1's FailureConfig
                callbacks=callbacks or [],
            ),
        )

    # The controller runs beside this driver; if its process dies (killed, crashed), Ray ends its workers
    # and placement group with it. A new controller resumes the run from its last checkpoint, within the
    # same failure budget as lost workers.
    lost = 0
    while True:
        try:
            return trainer().fit()
        except ray.exceptions.ActorDiedError as exc:
            if lost >= cfg.max_failures:
                raise
            lost += 1
            log.warning("the run's controller died (%s); restarting it from the last checkpoint (%d/%d)",
                        str(exc).splitlines()[0][:200], lost, cfg.max_failures)


@ray.remote(num_cpus=0, max_restarts=0)
class StopFlag:
    """Raised by the job's driver when the scheduler moves it; read by rank 0 at report points."""

    def __init__(self) -> None:
        self._reason: str | None = None

    def request(self, reason: str) -> None:
        self._reason = reason

    def clear(self) -> None:
        self._reason = None

    def reason(self) -> str | None:
        return self._reason


def stop_flag() -> Any:
    """A StopFlag on the head node, which no spot interruption takes away."""
    return StopFlag.options(resources={"node:__internal_head__": 0.001}).remote()  # type: ignore[attr-defined]  # mypy keeps a decorated class's own type; ray.remote made it an ActorClass
