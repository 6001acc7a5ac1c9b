"""Synthetic spot-availability traces, in the trace format the simulator reads.

A trace is `{"metadata": {"gap_seconds": N, ...}, "data": [0/1, ...]}`;
`data[i] == 0` means spot capacity was available during tick i, 1 that it was
not. Each family below is a two-state Markov chain (available / unavailable)
whose mean sojourn times set its character; some add a daily cycle.

Families and their statistics (gap 10 min; availability = long-run share of
available ticks, outage = mean unavailable run):

| family         | availability | mean outage | what it models                                   |
|----------------|--------------|-------------|--------------------------------------------------|
| mostly-up      | ~90%         | 1 h         | a deep spot pool: rare, short interruptions      |
| long-outages   | ~70%         | 8 h         | a pool that dries up for a working day at a time |
| diurnal        | ~60%         | varies      | available at night, scarce 09:00-18:00           |
| bursty         | ~75%         | 20 min      | bursts of back-to-back preemptions               |
| mostly-down    | ~25%         | 6 h         | a contested zone, spot only now and then         |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GAP_SECONDS = 600


@dataclass(frozen=True)
class Family:
    name: str
    up_hours: float
    """Mean length of an available run."""
    down_hours: float
    """Mean length of an outage."""
    diurnal: bool = False


FAMILIES = {
    f.name: f
    for f in [
        Family("mostly-up", up_hours=9.0, down_hours=1.0),
        Family("long-outages", up_hours=18.0, down_hours=8.0),
        Family("diurnal", up_hours=6.0, down_hours=3.0, diurnal=True),
        Family("bursty", up_hours=1.0, down_hours=1 / 3),
        Family("mostly-down", up_hours=2.0, down_hours=6.0),
    ]
}


def generate(family: str, *, hours: float = 96.0, seed: int = 0, gap_seconds: int = GAP_SECONDS) -> dict[str, object]:
    f = FAMILIES[family]
    rng = np.random.default_rng(seed)
    gap_h = gap_seconds / 3600
    n = int(hours / gap_h)
    data = np.zeros(n, dtype=int)
    up = rng.random() < f.up_hours / (f.up_hours + f.down_hours)
    for i in range(n):
        hour_of_day = (i * gap_h) % 24
        down_h, up_h = f.down_hours, f.up_hours
        if f.diurnal and 9 <= hour_of_day < 18:
            up_h, down_h = up_h / 4, down_h * 3  # business hours: spot is scarce
        # Leave the current state with probability gap / mean sojourn.
        if up and rng.random() < gap_h / up_h:
            up = False
        elif not up and rng.random() < gap_h / down_h:
            up = True
        data[i] = 0 if up else 1
    return {
        "metadata": {"gap_seconds": gap_seconds, "family": family, "seed": seed, "generator": "elasticml.scheduler.traces"},
        "data": data.tolist(),
    }


def load_trace(path: str | Path) -> tuple[list[bool], float]:
    """(availability per tick, gap in hours) from a trace file."""
    from elasticml.errors import ConfigError

    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError("no such trace file", source=str(path)) from None
    except ValueError as exc:
        raise ConfigError(f"not valid JSON: {exc}", source=str(path)) from None
    try:
        gap = float(raw["metadata"]["gap_seconds"])
        data = raw["data"]
    except (KeyError, TypeError):
        raise ConfigError('expected {"metadata": {"gap_seconds": N}, "data": [...]}', source=str(path)) from None
    if data and isinstance(data[0], list):
        data = data[0]  # several nodes: the simulator's job runs on the first
    if gap <= 0 or not data or any(v not in (0, 1) for v in data):
        raise ConfigError("gap_seconds must be > 0 and data a non-empty list of 0/1", source=str(path))
    return [v == 0 for v in data], gap / 3600
