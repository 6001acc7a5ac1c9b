"""The scheduler without Ray, as one object for tests: its commands and its controller's calls."""

from __future__ import annotations

from typing import Any

from elasticml.scheduler.controller import open_scheduler


class Sched:
    """`Scheduler` (core.py) with the controller's `tick` and `run_started` beside it."""

    def __init__(self, cluster: Any, path: str, *, controller: Any = None, clock: Any = None, observer: Any = None,
                 incarnation: str | None = None, on_write: Any = None) -> None:
        self.scheduler, self.controller = open_scheduler(cluster, path, config=controller, clock=clock, observer=observer,
                                                         incarnation=incarnation, on_write=on_write)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scheduler, name)

    @property
    def ledger(self) -> Any:
        return self.scheduler.store.ledger

    def controller_tick(self) -> list[dict[str, Any]]:
        return self.controller.tick()

    def run_started(self, name: str, epoch: int) -> float:
        return self.controller.run_started(name, epoch)

    def refresh_prices(self, *args: Any) -> None:
        from elasticml.scheduler.prices import refresh_prices

        refresh_prices(self.scheduler, *args)

    def refresh_live_prices(self, live: Any) -> None:
        from elasticml.scheduler.prices import refresh_live_prices

        refresh_live_prices(self.scheduler, live)

    @property
    def steppers(self) -> dict[str, Any]:
        return {n: self.controller.stepper(w) for n, w in self.scheduler.store.workloads.items() if w.stepper}
