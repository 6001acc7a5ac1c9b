"""Node labels that every elasticml node carries, locally and in the cloud.

Ray owns the `ray.io/` prefix: `ray.io/market-type` is its own label for
spot vs on-demand capacity (it is what Ray's autoscaler and KubeRay set). Ray
rejects custom keys under `ray.io/`, so capacity that is already paid for
(reserved instances, capacity reservations, savings plans) is marked with a
label of ours on top of `ray.io/market-type: on-demand`.

Glossary
    market    where a node's capacity comes from: "spot", "on-demand" or "reserved".
"""

from __future__ import annotations

from typing import Literal, get_args

MARKET_TYPE = "ray.io/market-type"
"""Ray's own label: "spot" or "on-demand"."""

CAPACITY = "elasticml.io/capacity"
"""Ours: "reserved" on nodes whose capacity is committed and already paid for."""

NODE_TYPE = "elasticml.io/node-type"
"""Ours: the cluster config's node type name, so a placement can name a pool."""

Market = Literal["spot", "on-demand", "reserved"]
MARKETS: tuple[str, ...] = get_args(Market)

RAY_MARKET_TYPES = ("spot", "on-demand")
RESERVED = "reserved"


def market_of(labels: dict[str, str]) -> Market | None:
    """The market a node belongs to, read from its labels; None if unlabelled."""
    if labels.get(CAPACITY) == RESERVED:
        return "reserved"
    value = labels.get(MARKET_TYPE)
    if value == "spot":
        return "spot"
    if value == "on-demand":
        return "on-demand"
    return None


def selector_for(market: Market) -> dict[str, str]:
    """A Ray `label_selector` that matches exactly the nodes of one market."""
    if market == "reserved":
        return {CAPACITY: RESERVED}
    if market == "on-demand":
        # On-demand proper: Ray's label says on-demand and ours says not reserved.
        return {MARKET_TYPE: "on-demand", CAPACITY: f"!{RESERVED}"}
    return {MARKET_TYPE: "spot"}
