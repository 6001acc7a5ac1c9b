"""`python -m elasticml.scheduler.simulate`: one job, one trace, one policy; a JSON line out.

    python -m elasticml.scheduler.simulate --trace T.json --job-hours 48 --deadline-hours 52 \\
        --restart-hours 0.2 --price-ratio 3.0 [--start-hour 0] [--policy NAME] --json

Costs are in spot-hours: a spot hour costs 1, an on-demand hour `price_ratio`;
restart time is billed. Policies: on-demand, greedy, uniform-progress,
slack-reserve (ours, the default) and omniscient (the optimum, future known).
"""

from __future__ import annotations

import argparse
import json
import sys

from elasticml.errors import ElasticMLError
from elasticml.scheduler.deadline import DEFAULT_POLICY, JobParams, run_policy
from elasticml.scheduler.traces import load_trace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m elasticml.scheduler.simulate", description=__doc__.splitlines()[0])
    p.add_argument("--trace", required=True)
    p.add_argument("--job-hours", type=float, required=True)
    p.add_argument("--deadline-hours", type=float, required=True)
    p.add_argument("--restart-hours", type=float, required=True)
    p.add_argument("--price-ratio", type=float, required=True)
    p.add_argument("--start-hour", type=float, default=0.0)
    p.add_argument("--policy", default=DEFAULT_POLICY)
    p.add_argument("--json", action="store_true", help="print one JSON object (the default output too)")
    args = p.parse_args(argv)
    try:
        availability, gap_h = load_trace(args.trace)
        skip = int(round(args.start_hour / gap_h))
        if args.start_hour < 0 or skip >= len(availability):
            raise ElasticMLError(f"--start-hour {args.start_hour} is outside the trace ({len(availability) * gap_h:.1f} h long)")
        params = JobParams(job_hours=args.job_hours, deadline_hours=args.deadline_hours,
                           restart_hours=args.restart_hours, price_ratio=args.price_ratio)
        result = run_policy(args.policy, availability[skip:], gap_h, params)
    except ElasticMLError as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
