"""Live spot prices and placement scores into the scheduler's pools: the one way a price feed reaches it.

Prices come from EC2 through `aws_prices.LiveSpotPrices` (or any object with its two methods)
and are kept in the pools' records, so a restart keeps the last ones the feed gave. A price
that could not be real is ignored, never believed: a broken feed must not make spot look free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from elasticml.scheduler.core import Scheduler


def refresh_prices(s: Scheduler, spot_prices: Mapping[str, float], scores: Mapping[str, int] | None = None) -> None:
    """Live spot prices ($/node-hour) and placement scores (1-10) per spot pool, from the cloud.

    A price that is not a finite number above 0 and below 10x the pool's on-demand price is
    ignored (a broken feed must not make spot look free); so is a score outside 1..10.
    """
    scores = scores or {}
    with s.command():
        for p in s.pools:
            if p.market != "spot":
                continue
            price, score = spot_prices.get(p.node_type), scores.get(p.node_type)
            ceiling = 10 * (s.catalog.hourly(p.instance_type, "on-demand", p.region)
                            if (p.instance_type, p.region) in s.catalog else p.hourly_price)
            new_price, new_score = p.hourly_price, p.placement_score
            if price is not None and type(price) in (int, float) and math.isfinite(price) and 0 < price < ceiling:
                new_price = float(price)
            if type(score) is int and 1 <= score <= 10:
                new_score = score
            s.store.put_pool(replace(s.store.pool(p.node_type), price=new_price, score=new_score))


def refresh_live_prices(s: Scheduler, live: Any) -> None:
    """Ask a `LiveSpotPrices` (EC2 through boto3) for every spot pool's price and placement score."""
    spot = [p for p in s.pools if p.market == "spot"]
    prices: dict[str, float] = {}
    scores: dict[str, int] = {}
    for region in sorted({p.region for p in spot}):
        here = [p for p in spot if p.region == region]
        zones = live.spot_prices(sorted({p.instance_type for p in here}), region)
        for p in here:
            if zones.get(p.instance_type):
                prices[p.node_type] = min(zones[p.instance_type].values())
            got = live.placement_scores([p.instance_type], region, max(1, p.max_nodes))
            if got:
                scores[p.node_type] = max(got.values())
    refresh_prices(s, prices, scores)
