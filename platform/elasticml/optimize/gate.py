"""The release gate: a candidate passes only within a quality budget and with a real gain.

Pure policy over measurements (elasticml.optimize.measure): the same numbers always give the same
verdict, and the verdict says why in words.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from elasticml.dataconf import check_number
from elasticml.optimize.measure import Measurement


@dataclass(kw_only=True, frozen=True)
class GateConfig:
    quality_budget: float = 0.01
    """The candidate's held-out loss may exceed the teacher's by at most this share (0.01 = 1%)."""
    min_speedup: float = 1.1
    """A gain is this many times the teacher's tokens/s, or"""
    max_size_ratio: float = 0.9
    """at most this share of the teacher's bytes."""

    def __post_init__(self) -> None:
        check_number(self.quality_budget, field="quality_budget", lo=0.0, hi=1.0)
        check_number(self.min_speedup, field="min_speedup", lo=1.0, hi=1000)
        check_number(self.max_size_ratio, field="max_size_ratio", lo=0.001, hi=1.0)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    speedup: float
    """The median of the rounds' speed-ups (the candidate's bytes/s over the teacher's in the same round)."""
    size_ratio: float
    loss_ratio: float
    reasons: list[str] = field(default_factory=list)
    speedup_range: tuple[float, float] = (0.0, 0.0)
    """The least and the greatest of the rounds' speed-ups."""

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "speedup": round(self.speedup, 3), "speedup_min": round(self.speedup_range[0], 3),
                "speedup_max": round(self.speedup_range[1], 3), "size_ratio": round(self.size_ratio, 3),
                "loss_ratio": round(self.loss_ratio, 4), "reasons": self.reasons}


def judge(teacher: Measurement, candidate: Measurement, cfg: GateConfig) -> Verdict:
    ratios = candidate.speedups(teacher)
    speedup = statistics.median(ratios)
    size_ratio = candidate.size_bytes / teacher.size_bytes
    loss_ratio = candidate.loss / teacher.loss
    reasons = []
    if loss_ratio > 1 + cfg.quality_budget:
        reasons.append(f"held-out loss {candidate.loss:.4f} is {100 * (loss_ratio - 1):.2f}% above the teacher's "
                       f"{teacher.loss:.4f} (budget {100 * cfg.quality_budget:g}%)")
    if speedup < cfg.min_speedup and size_ratio > cfg.max_size_ratio:
        reasons.append(f"no gain: {speedup:.2f}x the teacher's tokens/s (needs {cfg.min_speedup:g}x) and "
                       f"{size_ratio:.2f}x its size (needs at most {cfg.max_size_ratio:g}x)")
    return Verdict(passed=not reasons, speedup=speedup, size_ratio=size_ratio, loss_ratio=loss_ratio, reasons=reasons,
                   speedup_range=(min(ratios), max(ratios)))


def choose(verdicts: dict[str, Verdict]) -> str | None:
    """The passing candidate to release: the fastest by its median speed-up (then the smallest); None if none
    passed."""
    passing = [(v.speedup, -v.size_ratio, name) for name, v in verdicts.items() if v.passed]
    return max(passing)[2] if passing else None
