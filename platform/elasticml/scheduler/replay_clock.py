"""The scheduler's clock on a replayed spot market (`cluster.spot_market`): held while a steered job moves.

Who owns what: the market file owns the clock (its t0 and held seconds); this wrapper is how
the scheduler reads it and holds it. While any steered job's move is being carried out
(from the decision that places it until its run reports itself up), the market's clock
stops: the seconds a real restart takes would be hours of compressed market time. The
restart is charged as the job's restart hours instead (`Controller.run_started`).
"""

from __future__ import annotations

from dataclasses import replace

from elasticml.cluster.spot_market import SpotMarket
from elasticml.scheduler.capacity import Pool


class ReplayClock:
    def __init__(self, market_file: str) -> None:
        self.market = SpotMarket.load(market_file)
        self.seconds_per_hour = self.market.settings.seconds_per_hour
        self.price_ratio = self.market.settings.price_ratio
        self.holders: set[str] = set()
        """The workloads whose moves hold the clock (until their runs are up)."""

    def now(self) -> float:
        self.market.reload_clock()
        return self.market.now()

    def hour(self, now: float) -> float:
        return self.market.hour(now)

    def hold_for(self, name: str, *, moving: bool) -> None:
        """A steered job's decision: a placement holds the clock until its run is up; anything else
        (waiting for spot, queued) has nothing to carry out, so it holds nothing."""
        if moving:
            self.holders.add(name)
            self.market.reload_clock()
            self.market.hold()
        else:
            self.done(name)

    def done(self, name: str) -> None:
        """`name`'s move is carried out (or it is gone); the clock runs again once no move is under way."""
        self.holders.discard(name)
        if not self.holders:
            self.market.reload_clock()
            self.market.release()


def priced_by_market(pools: tuple[Pool, ...], price_ratio: float) -> tuple[Pool, ...]:
    """Spot pools priced at the replayed market's ratio to on-demand for the same instance."""
    od = {(p.instance_type, p.region): p.hourly_price for p in pools if p.market == "on-demand"}
    return tuple(replace(p, hourly_price=od.get((p.instance_type, p.region), p.hourly_price * price_ratio) / price_ratio)
                 if p.market == "spot" else p for p in pools)
