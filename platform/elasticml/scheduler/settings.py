"""How the scheduler's controller runs: its tick, pace, move budget and signals (`ControllerConfig`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from elasticml.dataconf import check_number
from elasticml.errors import ConfigError


@dataclass(kw_only=True, frozen=True)
class ControllerConfig:
    tick_seconds: float = 10.0
    """How often the controller looks at every running workload."""
    seconds_per_hour: float = 3600.0
    """Wall seconds per scheduler hour: 3600 live; less when a spot market is replayed time-compressed."""
    max_moves_per_hour: float = 6.0
    """Voluntary moves (to cheaper capacity, back to spot) per workload per scheduler hour."""
    max_policy_ticks: int = 400
    """A deadline job's policy ticks at deadline / this, or the controller's tick if longer."""
    unfillable_seconds: float | None = 15.0
    """A pool whose launches have failed this long is treated as unavailable; None = never. A replayed
    market with notices turns it off: its notices say when spot goes and comes back, and failed launches
    would only echo them, late by the seconds this takes (hours of compressed time)."""
    live_prices_seconds: float | None = None
    """Refresh spot prices and placement scores from EC2 this often (`scheduler start --live-prices`); None = off."""
    market: str | None = None
    """A replayed spot market's file (`cluster up --spot-trace`): the clock, the pace, spot prices,
    the pool's history and the policy's tick then come from it."""

    def __post_init__(self) -> None:
        check_number(self.tick_seconds, field="tick_seconds", lo=0.05, hi=3600)
        check_number(self.seconds_per_hour, field="seconds_per_hour", lo=0.01, hi=3600)
        check_number(self.max_moves_per_hour, field="max_moves_per_hour", lo=0, hi=3600)
        check_number(self.max_policy_ticks, field="max_policy_ticks", lo=10, hi=5000, integer=True)
        if self.unfillable_seconds is not None:
            check_number(self.unfillable_seconds, field="unfillable_seconds", lo=0, hi=86400)
        if self.live_prices_seconds is not None:
            check_number(self.live_prices_seconds, field="live_prices_seconds", lo=10, hi=86400)

    @classmethod
    def from_env(cls) -> ControllerConfig:
        env = {"tick_seconds": "ELASTICML_CONTROLLER_TICK_S", "seconds_per_hour": "ELASTICML_SECONDS_PER_HOUR"}
        kwargs: dict[str, Any] = {}
        for key, var in env.items():
            if var in os.environ:
                try:
                    kwargs[key] = float(os.environ[var])
                except ValueError:
                    raise ConfigError(f"must be a number, got {os.environ[var][:40]!r}", field=var) from None
        return cls(**kwargs)
