"""The yardstick: the omniscient plan, the cheapest a job could have done knowing the whole trace.

A dynamic programme over (tick, instance, progress), counting progress in 30-s units whatever the
tick, replayed through the same engine as every policy (`PlanPolicy` in `deadline.simulate`), so
that a policy's cost over it is a ratio of like with like.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from elasticml.errors import ConfigError
from elasticml.scheduler.deadline import _EPS, NONE, OD, SPOT, Instance, JobParams, TickView

OMNISCIENT_MAX_BYTES = 1 << 30
"""The omniscient plan's tables may use this much memory, no more."""
OMNISCIENT_MAX_CELLS = 4e9
"""Nor take more than this many (tick, state, progress) updates (a few minutes)."""
OMNISCIENT_UNIT_SECONDS = 30.0
"""The omniscient plan counts progress in units of this many seconds (at least one a tick)."""


class PlanPolicy:
    """Replays a fixed per-tick plan (the omniscient one) through the same engine."""

    def __init__(self, name: str, plan: Sequence[Instance]) -> None:
        self.name = name
        self.plan = plan

    def decide(self, view: TickView) -> Instance:
        return self.plan[view.tick] if view.tick < len(self.plan) else OD


def omniscient_plan(
    availability: Sequence[bool], gap_hours: float, params: JobParams, *, resolution: int | None = None,
) -> list[Instance]:
    """The cheapest per-tick plan that meets the deadline, knowing the whole trace.

    Dynamic programming over (tick, instance and ticks since its launch,
    progress). Progress is counted in 1/resolution of a tick (None: units of
    `OMNISCIENT_UNIT_SECONDS`, so the precision in hours is the same at every
    tick) and each tick's gain is rounded *down*, so the plan, replayed exactly,
    finishes no later than the program believes. The state keeps the ticks
    since launch up to the point the restart overhead is paid off, which is all
    the past that matters for the future.

    Memory: the value table is kept only at every C-th tick; the back-pointers
    are rebuilt one stretch of C ticks at a time while the plan is walked back,
    so a 30-s trace over days fits where a full back-pointer table would not.
    """
    R = resolution if resolution is not None else max(1, round(gap_hours * 3600 / OMNISCIENT_UNIT_SECONDS))
    d_ticks = params.restart_hours / gap_hours
    K = math.ceil(d_ticks - _EPS) + 1  # ticks after which a run makes full progress
    gains = [0] + [math.floor(R * (max(0.0, k - d_ticks) - max(0.0, k - 1 - d_ticks)) + _EPS) for k in range(1, K + 1)]
    J = math.ceil(params.job_hours / gap_hours * R - _EPS)
    n_ticks = math.ceil(params.deadline_hours / gap_hours - _EPS)
    n_states = 1 + 2 * K
    back_dtype = np.int8 if n_states < 128 else np.int16
    itemsize = np.dtype(back_dtype).itemsize
    every = max(1, math.ceil(math.sqrt(n_ticks * itemsize / 8)))  # balances checkpoints against one stretch
    needed = (math.ceil(n_ticks / every) * 8 + every * itemsize + 4 * 8) * n_states * J
    work = n_ticks * n_states * J
    if needed > OMNISCIENT_MAX_BYTES or work > OMNISCIENT_MAX_CELLS:
        raise ConfigError(
            f"the omniscient plan over {n_ticks} ticks and {params.job_hours}h of work would need "
            f"{needed / 2**30:.1f} GiB and {work:.1e} cell updates (limits {OMNISCIENT_MAX_BYTES / 2**30:.0f} GiB, "
            f"{OMNISCIENT_MAX_CELLS:.0e}); use a shorter job or a coarser trace",
            field="job_hours",
        )
    last_fraction = params.deadline_hours / gap_hours - (n_ticks - 1)
    # States: 0..K-1 = spot run, 1..K ticks old; K = idle; K+1..2K = on-demand run, 1..K ticks old.
    # In this order the sources of every move are one contiguous block of states.
    IDLE = K
    kind = [SPOT] * K + [NONE] + [OD] * K
    age = list(range(1, K + 1)) + [0] + list(range(1, K + 1))
    # Where each (action, age after the tick) comes from: a new launch (age 1) from any other kind,
    # an older run from the same kind one tick younger (the paid-off age K also from itself).
    moves: list[tuple[Instance, int, int, int, int]] = []  # (action, target state, sources lo..hi, gain)
    for action, base in ((SPOT, 0), (OD, K + 1)):
        for k2 in range(1, K + 1):
            src = [s for s in range(n_states) if (min(age[s] + 1, K) if kind[s] == action else 1) == k2]
            assert src == list(range(src[0], src[-1] + 1))
            moves.append((action, base + k2 - 1, src[0], src[-1] + 1, gains[k2]))
    price = {NONE: 0.0, SPOT: gap_hours, OD: gap_hours * params.price_ratio}
    INF = np.inf

    def step(t: int, dp: np.ndarray, back: np.ndarray | None) -> tuple[np.ndarray, tuple[Any, ...] | None]:
        """Tick t from values `dp` (before it): the values after it, and its cheapest finish."""
        avail = t < len(availability) and bool(availability[t])
        new = np.full_like(dp, INF)
        finish = None
        for action, s2, lo_s, hi_s, g in ((NONE, IDLE, 0, n_states, 0), *moves):
            if action == SPOT and not avail:
                continue
            block = dp[lo_s:hi_s]
            j = None
            if hi_s - lo_s == 1:
                row = block[0]
            elif back is None:
                row = block.min(axis=0)
            else:
                j = block.argmin(axis=0)
                row = np.take_along_axis(block, j[None], axis=0)[0]
            if g < J:
                new[s2, g:] = row[: J - g] + price[action]
                if back is not None:
                    back[s2, g:] = lo_s if j is None else lo_s + j[: J - g]
            if g > 0 and action != NONE:
                # Finished within this tick: p + g >= J; bill only the part of the tick used.
                lo = max(0, J - g)
                used = ((R - g) + (J - np.arange(lo, J))) / R  # overhead part of the tick, then the work left
                fin_cost = row[lo:] + price[action] * used
                if t == n_ticks - 1:
                    fin_cost = np.where(used <= last_fraction + _EPS, fin_cost, INF)
                f = int(np.argmin(fin_cost))
                if np.isfinite(fin_cost[f]) and (finish is None or fin_cost[f] < finish[0] - _EPS):
                    src = lo_s + int(np.argmin(block[:, lo + f]))
                    finish = (float(fin_cost[f]), src, s2, lo + f)
        return new, finish

    dp = np.full((n_states, J), INF)
    dp[IDLE, 0] = 0.0
    checkpoints: dict[int, np.ndarray] = {}
    best = (INF, -1, -1, -1, -1)  # cost, tick, from-state, to-state, progress before
    for t in range(n_ticks):
        if t % every == 0:
            checkpoints[t] = dp
        dp, finish = step(t, dp, None)
        if finish is not None and finish[0] < best[0] - _EPS:
            best = (finish[0], t, finish[1], finish[2], finish[3])
    if best[1] < 0:
        return [OD] * n_ticks  # no plan meets the deadline; on-demand is as good as anything
    # Walk the predecessors back from the finishing move, one stretch of ticks at a time.
    _, t_fin, s, s_fin, p = best
    plan: list[Instance] = [kind[s_fin]]
    t = t_fin - 1
    while t >= 0:
        c = (t // every) * every
        back = np.zeros((t - c + 1, n_states, J), dtype=back_dtype)
        dp = checkpoints[c]
        for u in range(c, t + 1):
            dp, _ = step(u, dp, back[u - c])
        for u in range(t, c - 1, -1):
            plan.append(kind[s])
            prev = int(back[u - c, s, p])
            p -= gains[age[s]] if kind[s] != NONE else 0
            s = prev
        t = c - 1
    plan.reverse()
    return plan
