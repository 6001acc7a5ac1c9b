"""`python -m elasticml.scheduler.simulate`: one job, one trace, one policy; a JSON line out.

    python -m elasticml.scheduler.simulate --trace T.json --job-hours 48 --deadline-hours 52 \\
        --restart-hours 0.2 --price-ratio 3.0 [--start-hour 0] [--history-hours N] [--policy NAME] --json

Costs are in spot-hours: a spot hour costs 1, an on-demand hour `price_ratio`;
restart time is billed. Policies: on-demand, greedy, uniform-progress,
slack-reserve, stochastic-dp (ours, the default) and omniscient (the optimum,
future known). The job starts at --start-hour; policies also see up to
--history-hours of the trace before it (default: all of it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from elasticml.errors import ElasticMLError
from elasticml.scheduler.deadline import JobParams
from elasticml.scheduler.policies import DEFAULT_POLICY, NAMES, run_policy
from elasticml.scheduler.traces import load_trace


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m elasticml.scheduler.simulate", description=__doc__.splitlines()[0])
    p.add_argument("--trace", required=True, help="trace JSON: {\"metadata\": {\"gap_seconds\": G}, \"data\": [0/1, ...]}, 0 = spot available")
    p.add_argument("--job-hours", type=_finite, required=True)
    p.add_argument("--deadline-hours", type=_finite, required=True)
    p.add_argument("--restart-hours", type=_finite, required=True)
    p.add_argument("--price-ratio", type=_finite, required=True, help="on-demand price per hour / spot price per hour")
    p.add_argument("--start-hour", type=_finite, default=0.0, help="trace hour at which the job starts (default 0)")
    p.add_argument("--history-hours", type=_finite, default=None,
                   help="hours of the trace before --start-hour that the policy may see (default: all of them; 0: none)")
    p.add_argument("--policy", default=DEFAULT_POLICY, help=f"one of {', '.join(NAMES)} (default {DEFAULT_POLICY})")
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    args = p.parse_args(argv)
    try:
        availability, gap_h = load_trace(args.trace)
        skip = int(round(args.start_hour / gap_h))
        if args.start_hour < 0 or skip >= len(availability):
            raise ElasticMLError(f"--start-hour {args.start_hour} is outside the trace ({len(availability) * gap_h:.1f} h long)")
        if args.history_hours is not None and args.history_hours < 0:
            raise ElasticMLError(f"--history-hours must be >= 0, got {args.history_hours}")
        seen = skip if args.history_hours is None else min(skip, int(round(args.history_hours / gap_h)))
        params = JobParams(job_hours=args.job_hours, deadline_hours=args.deadline_hours,
                           restart_hours=args.restart_hours, price_ratio=args.price_ratio)
        result = run_policy(args.policy, availability[skip:], gap_h, params, history=availability[skip - seen: skip])
    except ElasticMLError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
