"""When a canary model version is promoted or rolled back: a pure function over measured numbers."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

Action = Literal["promote", "rollback", "wait"]


@dataclass(frozen=True, kw_only=True)
class VersionStats:
    nll_per_byte: float
    """Mean negative log-likelihood on the held-out text (nats/byte); lower is better."""
    ms_per_token: list[float]
    """Recent request latencies divided by the tokens generated."""

    @property
    def p50(self) -> float:
        return statistics.median(self.ms_per_token) if self.ms_per_token else float("nan")


@dataclass(frozen=True, kw_only=True)
class Verdict:
    action: Action
    reason: str


def judge(stable: VersionStats, canary: VersionStats, *, max_nll_increase: float, max_latency_ratio: float,
          min_latency_samples: int) -> Verdict:
    """Roll back when the canary's held-out loss or latency is worse than allowed; promote when neither is.

    Quality can be judged at once (both versions score the same text); latency waits for enough
    requests on each version, unless quality already condemns the canary.
    """
    worse = (canary.nll_per_byte - stable.nll_per_byte) / stable.nll_per_byte
    if worse > max_nll_increase:
        return Verdict(action="rollback", reason=f"held-out loss {canary.nll_per_byte:.4f} vs {stable.nll_per_byte:.4f} "
                       f"nats/byte: {worse:+.1%}, more than the allowed {max_nll_increase:.1%}")
    if min(len(stable.ms_per_token), len(canary.ms_per_token)) < min_latency_samples:
        return Verdict(action="wait", reason=f"quality ok ({worse:+.1%}); latency needs {min_latency_samples} "
                       f"requests on each version (have {len(stable.ms_per_token)} and {len(canary.ms_per_token)})")
    ratio = canary.p50 / stable.p50
    if ratio > max_latency_ratio:
        return Verdict(action="rollback", reason=f"p50 latency {canary.p50:.2f} vs {stable.p50:.2f} ms/token: "
                       f"{ratio:.2f}x, more than the allowed {max_latency_ratio:.2f}x")
    return Verdict(action="promote", reason=f"held-out loss {worse:+.1%} (allowed {max_nll_increase:+.1%}), "
                   f"p50 latency {ratio:.2f}x (allowed {max_latency_ratio:.2f}x)")
