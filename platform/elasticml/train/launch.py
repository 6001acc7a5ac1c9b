"""`fit`: train a `TrainConfig` on the cluster, where its config says or where the scheduler places it.

The Python API's door to training (`eml.fit`). Without a tenant it runs the trainer as configured
(`elasticml.train.trainer`); with one it takes the same path as `jobs/train.py --tenant`
(`elasticml.train.follow.run_scheduled`): admitted and placed by the cluster's scheduler, moved by it
(checkpoint, stop, resume on the new pool) and finished when it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from elasticml.errors import ConfigError
from elasticml.train.config import TrainConfig
from elasticml.train.trainer import StopFlag, run_trainer, stop_flag

if TYPE_CHECKING:
    from ray.train import Result

__all__ = ["StopFlag", "fit", "stop_flag"]


def fit(cfg: TrainConfig, *, callbacks: list | None = None, stop: Any = None,
        started: Callable[[], float] | None = None, retries: bool = True,
        tenant: str | None = None, priority: str | None = None, expected_hours: float | None = None,
        deadline_hours: float | None = None, restart_hours: float | None = None, max_wait_s: float | None = None,
        spot_policy: str | None = None, settle_s: float | None = None) -> Result:
    """Train `cfg` (validated once, here at the door: workers get the typed value); Ray Train's Result.

    `stop`: a `StopFlag` actor; when it is raised the workers checkpoint at their next report point and
    end the run early. `started`: called by rank 0 once the run is up, before its first step; it
    returns seconds to wait first. `retries=False`: Ray Train does not restart lost workers itself (a
    lost worker or preempted node raises `ray.train.TrainingFailedError`).

    `tenant`: the scheduler places the run as this tenant's workload and steers it; `stop`, `started`
    and `retries` are then its own. The other scheduling options (`priority`, `expected_hours`,
    `deadline_hours`, `restart_hours`, `max_wait_s`, `spot_policy`, `settle_s`) are those of
    `elasticml.train.follow.Scheduling` (jobs/train.py's flags of the same names) and need a tenant.
    """
    given = {k: v for k, v in (("priority", priority), ("expected_hours", expected_hours),
                               ("deadline_hours", deadline_hours), ("restart_hours", restart_hours),
                               ("max_wait_s", max_wait_s), ("spot_policy", spot_policy), ("settle_s", settle_s))
             if v is not None}
    if tenant is None:
        if given:
            name = next(iter(given))
            raise ConfigError(f"is a scheduling option: it needs a tenant (fit(cfg, tenant=..., {name}=...))",
                              field=name)
        return run_trainer(cfg, callbacks=callbacks, stop=stop, started=started, retries=retries)
    for name, value, unset in (("stop", stop, None), ("started", started, None), ("retries", retries, True)):
        if value is not unset:
            raise ConfigError("with a tenant the scheduler's follower stops, starts and restarts the run",
                              field=name)
    from elasticml.train.follow import Scheduling, run_scheduled

    result, _ = run_scheduled(cfg, Scheduling(tenant=tenant, **given),  # type: ignore[arg-type]  # each value is its field's own type; the dict mixes them
                              callbacks=callbacks)
    return result
