"""Choose the stochastic-dp policy's parameters on the *tuning* traces only.

    python benchmarks/tune_spot_policy.py [--step-hours 48] [--workers 2] [--json OUT]

Every grid point runs on the same cases (each tuning trace, start hours from 48 h on every
`--step-hours`, deadlines 52 h and 70 h for a 48 h job, restart 0.2 h, price ratio 3); the
score is the mean cost / omniscient optimum over all cases, and a grid point with any missed
deadline is out. Prints the table and the winner; the winner is what `StochasticDPPolicy`'s
defaults are set to. The validation traces are never read here. Every grid point's ratio on every
case goes to benchmarks/results/tune_spot_policy.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor


import record  # benchmarks/record.py: a script's own folder is first on sys.path
from spot_traces import tuning_traces  # noqa: E402

from elasticml.scheduler.deadline import JobParams, simulate  # noqa: E402
from elasticml.scheduler.planner import StochasticDPPolicy  # noqa: E402
from elasticml.scheduler.policies import run_policy  # noqa: E402

JOB_H, DEADLINES, RESTART_H, PRICE_RATIO = 48.0, (52.0, 70.0), 0.2, 3.0
GRID = {
    "prior_weight": [0.5, 2.0, 8.0],
    "max_age_hours": [2.0, 4.0, 8.0],
    "prior_mean_hours": [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0)],
}


def cases(step_hours: float) -> list[tuple[str, list[bool], float, int, JobParams]]:
    out = []
    for name, av, gap in tuning_traces(600):
        for deadline in DEADLINES:
            params = JobParams(job_hours=JOB_H, deadline_hours=deadline, restart_hours=RESTART_H, price_ratio=PRICE_RATIO)
            start = 48.0
            while start + deadline <= len(av) * gap:
                out.append((name, av, gap, int(round(start / gap)), params))
                start += step_hours
    return out


def _optimum(case: tuple) -> float:
    _, av, gap, s, params = case
    return run_policy("omniscient", av[s:], gap, params).cost


def _score(args: tuple[dict, list]) -> tuple[dict, float, float, int, list[tuple[float, bool]]]:
    point, work = args
    ratios, misses, per_case = [], 0, []
    for (_, av, gap, s, params), best in work:
        r = simulate(StochasticDPPolicy(**point), av[s:], gap, params, history=av[:s])
        ratios.append(r.cost / best)
        misses += not r.finished_by_deadline
        per_case.append((round(r.cost / best, 5), r.finished_by_deadline))
    return point, statistics.mean(ratios), max(ratios), misses, per_case


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--step-hours", type=float, default=48.0)
    p.add_argument("--workers", type=int, default=2)
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    run = record.start(__file__, args, argv)
    grid = GRID
    t0 = time.time()
    work_cases = cases(args.step_hours)
    with ProcessPoolExecutor(args.workers) as pool:
        optima = list(pool.map(_optimum, work_cases, chunksize=8))
        work = list(zip(work_cases, optima))
        points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        results = list(pool.map(_score, [(pt, work) for pt in points]))
    print(f"{len(work)} tuning cases, {len(points)} grid points ({time.time() - t0:.0f} s)\n")
    print(f"{'prior_weight':>12} {'max_age_h':>9} {'prior_means_h':>14} {'mean':>7} {'worst':>6} {'misses':>6}")
    for point, mean, worst, misses, _ in sorted(results, key=lambda r: r[1]):
        print(f"{point['prior_weight']:>12} {point['max_age_hours']:>9} {str(point['prior_mean_hours']):>14} "
              f"{mean:>7.4f} {worst:>6.3f} {misses:>6}")
    ok = [r for r in results if r[3] == 0]
    best = min(ok, key=lambda r: r[1])
    print(f"\nchosen (lowest mean, no misses): {best[0]}  mean {best[1]:.4f}")
    cases_seen = [{"trace": name, "gap_s": round(gap * 3600, 3), "start_h": round(s * gap, 3),
                   "deadline_h": params.deadline_hours, "optimum_cost": round(opt, 5)}
                  for (name, _, gap, s, params), opt in work]
    run.write(samples={"cases": cases_seen,
                       "points": [{"point": point, "mean": mean, "worst": worst, "misses": misses,
                                   "per_case": per_case} for point, mean, worst, misses, per_case in results]},
              summary={"chosen": best[0], "mean": best[1], "worst": best[2], "grid_points": len(points),
                       "cases": len(work)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
