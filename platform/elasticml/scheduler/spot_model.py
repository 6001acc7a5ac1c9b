"""How long spot stays up, and how long it stays away: a run-length model fitted from a zone's history.

Spot availability is a sequence of *runs*: up for a while, down for a while.
Real zones are not memoryless (the longer an outage has lasted, the longer it
tends to go on), so the model is semi-Markov: for each state (up, down) and
each age k (ticks the current run has lasted, the current tick included) it
keeps the hazard h(k) = P(the run ends after exactly k ticks | it lasted k).

The hazards are Kaplan-Meier estimates from the history (the last run, still
going, counts as censored), shrunk toward a memoryless prior with
`prior_weight` pseudo-observations per age, so a short history gives a
cautious model rather than a wild one. Ages from `max_age` on share one tail
hazard.

Glossary
    age      ticks the current run has lasted, this tick included (>= 1).
    hazard   chance that a run of that age ends after this tick.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

UP, DOWN = 1, 0


@dataclass(frozen=True)
class RunLengthModel:
    gap_hours: float
    max_age: int
    hazard: np.ndarray
    """Shape (2, max_age): hazard[state, k - 1] for ages 1..max_age; the last entry is the tail's."""

    def continue_probability(self) -> np.ndarray:
        """(2, max_age): chance that a run of each state and age goes on one more tick."""
        return 1.0 - self.hazard


def runs(history: Sequence[bool]) -> list[tuple[bool, int]]:
    """(value, length) of each run of equal values, in order."""
    out: list[tuple[bool, int]] = []
    for v in history:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((bool(v), 1))
    return out


def current_age(history: Sequence[bool], available: bool) -> int:
    """Age of the run the current tick belongs to: 1 + the equal ticks just before it."""
    age = 1
    for v in reversed(history):
        if bool(v) != available:
            break
        age += 1
    return age


def on_grid(observed: Sequence[tuple[bool, int]], gap_hours: float, step_hours: float) -> list[tuple[bool, int]]:
    """Runs measured in ticks of `gap_hours`, re-measured in steps of `step_hours` (at least one step each).

    A run's length in hours is what it is whatever the trace's tick, so a model fitted on the
    re-measured runs is the same for a trace and the same trace read at a finer tick."""
    return [(v, max(1, round(n * gap_hours / step_hours))) for v, n in observed]


def age_on_grid(age_ticks: int, gap_hours: float, step_hours: float) -> int:
    """A run's age in ticks as an age in steps: the step the current tick falls in, counted from 1."""
    return max(1, math.ceil(age_ticks * gap_hours / step_hours - 1e-9))


def fit(
    history: Sequence[bool],
    gap_hours: float,
    *,
    max_age: int,
    prior_mean_hours: tuple[float, float],
    prior_weight: float,
    observed: Sequence[tuple[bool, int]] | None = None,
) -> RunLengthModel:
    """Kaplan-Meier hazards by age for down (row 0) and up (row 1) runs, shrunk toward a geometric prior.

    `prior_mean_hours` is (mean outage, mean spot run) of the memoryless prior. `observed`, when
    given, is the runs to fit in ticks of `gap_hours` instead of `runs(history)`.
    """
    at_risk = np.zeros((2, max_age))
    ended = np.zeros((2, max_age))
    observed = runs(history) if observed is None else list(observed)
    for i, (value, length) in enumerate(observed):
        row = UP if value else DOWN
        censored = i == len(observed) - 1
        capped = min(length, max_age)
        at_risk[row, : capped - 1] += 1
        # Ages from max_age on are pooled into the tail entry.
        at_risk[row, capped - 1] += length - capped + 1
        if not censored:
            ended[row, capped - 1] += 1
    prior = np.array([min(1.0, gap_hours / max(m, gap_hours)) for m in prior_mean_hours])[:, None]
    seen = at_risk + prior_weight
    hazard = np.where(seen > 0, (ended + prior_weight * prior) / np.maximum(seen, 1e-12), prior)
    return RunLengthModel(gap_hours=gap_hours, max_age=max_age, hazard=np.clip(hazard, 1e-6, 1.0))
