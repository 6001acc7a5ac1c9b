"""Spot policies by name, and one entry point that runs any of them on a trace.

Registered: the baselines of `deadline` (on-demand, greedy, the published
uniform progress, slack-reserve), the default `stochastic-dp` of `planner`, and
`omniscient` (the optimum with the future known: a yardstick, not a policy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from elasticml.errors import ConfigError
from elasticml.scheduler.deadline import (
    GreedyPolicy, JobParams, OnDemandPolicy, Policy, SimResult, SlackReservePolicy, UniformProgressPolicy, simulate,
)
from elasticml.scheduler.omniscient import PlanPolicy, omniscient_plan
from elasticml.scheduler.planner import StochasticDPPolicy

POLICIES: dict[str, Callable[[], Policy]] = {
    "on-demand": OnDemandPolicy,
    "greedy": GreedyPolicy,
    "uniform-progress": UniformProgressPolicy,
    "slack-reserve": SlackReservePolicy,
    "stochastic-dp": StochasticDPPolicy,
}
DEFAULT_POLICY = "stochastic-dp"
NAMES = [*POLICIES, "omniscient"]


def run_policy(
    name: str, availability: Sequence[bool], gap_hours: float, params: JobParams, *, history: Sequence[bool] = (),
) -> SimResult:
    """Simulate policy `name` on a trace; `history` is the zone's availability before the start."""
    if name == "omniscient":
        plan = omniscient_plan(availability, gap_hours, params)
        return simulate(PlanPolicy("omniscient", plan), availability, gap_hours, params)
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(NAMES)}", field="policy")
    return simulate(POLICIES[name](), availability, gap_hours, params, history=history)
