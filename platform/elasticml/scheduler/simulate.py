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

import json
import sys

import click

from elasticml.entrypoint import FINITE, as_help, run
from elasticml.errors import ElasticMLError
from elasticml.scheduler.deadline import JobParams
from elasticml.scheduler.policies import DEFAULT_POLICY, NAMES, run_policy
from elasticml.scheduler.traces import load_trace


@click.command("simulate", help=as_help(__doc__))
@click.option("--trace", required=True,
              help='Trace JSON: {"metadata": {"gap_seconds": G}, "data": [0/1, ...]}, 0 = spot available.')
@click.option("--job-hours", type=FINITE, required=True, help="Hours of work the job needs.")
@click.option("--deadline-hours", type=FINITE, required=True, help="Hours after the start it must be done by.")
@click.option("--restart-hours", type=FINITE, required=True, help="What each start costs the job, in hours.")
@click.option("--price-ratio", type=FINITE, required=True, help="On-demand price per hour / spot price per hour.")
@click.option("--start-hour", type=FINITE, default=0.0, show_default=True, help="Trace hour at which the job starts.")
@click.option("--history-hours", type=FINITE, default=None,
              help="Hours of the trace before --start-hour that the policy may see [default: all of them; 0: none].")
@click.option("--policy", default=DEFAULT_POLICY, show_default=True, help=f"One of {', '.join(NAMES)}.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the default output too).")
def command(trace: str, job_hours: float, deadline_hours: float, restart_hours: float, price_ratio: float,
            start_hour: float, history_hours: float | None, policy: str, as_json: bool) -> None:
    availability, gap_h = load_trace(trace)
    skip = int(round(start_hour / gap_h))
    if start_hour < 0 or skip >= len(availability):
        raise ElasticMLError(f"--start-hour {start_hour} is outside the trace ({len(availability) * gap_h:.1f} h long)")
    if history_hours is not None and history_hours < 0:
        raise ElasticMLError(f"--history-hours must be >= 0, got {history_hours}")
    seen = skip if history_hours is None else min(skip, int(round(history_hours / gap_h)))
    params = JobParams(job_hours=job_hours, deadline_hours=deadline_hours, restart_hours=restart_hours,
                       price_ratio=price_ratio)
    result = run_policy(policy, availability[skip:], gap_h, params, history=availability[skip - seen: skip])
    print(json.dumps(result.to_dict()))


def main(argv: list[str] | None = None) -> int:
    return run(command, argv, prog="simulate")


if __name__ == "__main__":
    sys.exit(main())
