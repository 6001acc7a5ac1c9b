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
import math
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


MAX_TRACE_BYTES = 64 * 1024 * 1024
MAX_GAP_SECONDS = 86400.0


def load_trace(path: str | Path) -> tuple[list[bool], float]:
    """(availability per tick, gap in hours) from a trace file; a ConfigError naming the field otherwise.

    The format is one node's: `data` a list of the integers 0 (spot available)
    and 1 (not); `gap_seconds` finite, in (0, 86400]. A list of lists (several
    nodes) is refused rather than guessed at.
    """
    from elasticml.errors import ConfigError

    file = Path(path)
    try:
        if file.stat().st_size > MAX_TRACE_BYTES:
            raise ConfigError(f"larger than {MAX_TRACE_BYTES} bytes", source=str(path))
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError("no such trace file", source=str(path)) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid JSON: {exc}", source=str(path)) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("metadata"), dict) or "data" not in raw:
        raise ConfigError('expected {"metadata": {"gap_seconds": N}, "data": [...]}', source=str(path))
    gap = raw["metadata"].get("gap_seconds")
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or not 0 < gap <= MAX_GAP_SECONDS:
        raise ConfigError(f"must be a number of seconds in (0, {MAX_GAP_SECONDS:.0f}], got {gap!r}", field="metadata.gap_seconds", source=str(path))
    data = raw["data"]
    if not isinstance(data, list) or not data:
        raise ConfigError("must be a non-empty list of 0 (spot available) and 1 (not)", field="data", source=str(path))
    for i, v in enumerate(data):
        if type(v) is not int or v not in (0, 1):
            raise ConfigError(f"data[{i}] is {str(v)[:40]!r}; only 0 (spot available) and 1 (not) are allowed",
                              field="data", source=str(path))
    return [v == 0 for v in data], gap / 3600
