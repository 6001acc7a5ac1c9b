"""The replayed spot market's driver: a detached actor on the head that signals the scheduler.

It plays the part a spot node's IMDS watcher plays on a cloud: when the market's trace says an
outage began it gives the scheduler the interruption notice, and when it ends the pool back,
as a node agent (the agent credential). Level-triggered: a missed change is made up at the next look.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from elasticml.cluster.spot_market import SpotMarket


def _driver_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)
    class MarketDriver:
        """Gives the scheduler the market's signals: an interruption notice when an outage begins,
        the pool back when it ends. Level-triggered, so a missed change is made up at the next look."""

        def __init__(self, path: str, spot_node_types: list[str]) -> None:
            self.market = SpotMarket.load(path)
            self.spot_types = spot_node_types
            threading.Thread(target=self._forever, daemon=True, name="spot-market").start()

        def ping(self) -> str:
            return "ok"

        def _forever(self) -> None:
            from elasticml.scheduler.client import SchedulerClient

            sched, told, checked = None, None, 0.0
            while True:
                time.sleep(0.1)
                try:
                    sched = sched or SchedulerClient.connect(default="agent")
                    self.market.reload_clock()
                    up = self.market.available()
                    # At a change at once; otherwise compare with the scheduler's view now and then (it
                    # may have restarted, or a lost node may have marked the pool), without crowding its queue.
                    if up == told and time.monotonic() - checked < RESYNC_S:
                        continue
                    checked = time.monotonic()
                    interrupted = {p["node_type"] for p in sched.status()["pools"] if p["interrupted"]}
                    for node_type in self.spot_types:
                        if up and node_type in interrupted:
                            sched.clear_interruption(node_type)
                        elif not up and node_type not in interrupted:
                            sched.interrupt(node_type)
                    told = up
                except Exception:  # the scheduler restarting: it is looked up again next time
                    sched, told = None, None

    return MarketDriver


DRIVER_NAME = "elasticml-spot-market"
RESYNC_S = 2.0
"""How often the driver checks the scheduler's view of the pools when the market has not changed."""


def start_driver(path: Path, spot_node_types: list[str]) -> None:
    """The market's driver actor on the head (once per cluster; needs a Ray driver connection)."""
    import ray

    from elasticml.scheduler.actor import NAMESPACE

    handle = _driver_class().options(
        name=DRIVER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        resources={"node:__internal_head__": 0.001},
    ).remote(str(path), spot_node_types)
    ray.get(handle.ping.remote())
