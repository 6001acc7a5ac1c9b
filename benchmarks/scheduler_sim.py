"""Deadline policies against the omniscient optimum: synthetic families and the real validation traces.

    python benchmarks/scheduler_sim.py [--seeds 10] [--step-hours 12] [--workers 2] [--json out.json]

Every policy runs on the same cases; a cell is the mean cost / omniscient optimum (1.00 = optimal;
the optimum knows the future), `worst` the largest ratio, `misses` the deadlines missed.
`per-case best` is, case by case, the cheapest of the online policies: a bound on what one
policy that picked the right baseline for each case in advance could do. `dp, future model`
(real traces only) is a diagnostic, not a policy: stochastic-dp with its run-length model fitted
on the job's own window, i.e. on the future: what a perfectly fitted model of this kind is worth.

- synthetic: the families of elasticml.scheduler.traces, seeds 0.. (the old parameters were
  chosen on seeds 100-103), job settings 48/52, 48/60, 24/36, 48/72 hours; each trace has 48 h of
  history before the job starts, which policies may read.
- real: ../shared/spot-traces/validation (4 zones, 649 h, 10-minute ticks; benchmarks/spot_traces.py),
  a 48 h job with deadlines 52 h and 70 h, starts every `--step-hours` from hour 48 on, all the
  trace before the start as history. stochastic-dp's parameters were chosen on the tuning folder
  only (benchmarks/tune_spot_policy.py); nothing here was tuned on these traces.

Restart 0.2 h, on-demand = 3x spot throughout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spot_traces import validation_traces  # noqa: E402

from elasticml.scheduler.deadline import JobParams, simulate  # noqa: E402
from elasticml.scheduler.planner import StochasticDPPolicy  # noqa: E402
from elasticml.scheduler.policies import run_policy  # noqa: E402
from elasticml.scheduler.traces import FAMILIES, generate  # noqa: E402

POLICIES = ["on-demand", "greedy", "uniform-progress", "slack-reserve", "stochastic-dp"]
ONLINE = ["greedy", "uniform-progress", "slack-reserve", "stochastic-dp"]
SYNTHETIC_SETTINGS = [(48, 52), (48, 60), (24, 36), (48, 72)]
REAL_DEADLINES = [52, 70]
JOB_H, RESTART_H, PRICE_RATIO, HISTORY_H = 48, 0.2, 3.0, 48
ORACLE = "dp, future model"


def _run_case(case: tuple) -> tuple[str, str, dict[str, tuple[float, bool]]]:
    group, column, av, gap, start, job_h, deadline_h = case
    params = JobParams(job_hours=job_h, deadline_hours=deadline_h, restart_hours=RESTART_H, price_ratio=PRICE_RATIO)
    best = run_policy("omniscient", av[start:], gap, params)
    assert best.finished_by_deadline
    out = {}
    for pol in POLICIES:
        r = run_policy(pol, av[start:], gap, params, history=av[:start])
        out[pol] = (r.cost / best.cost, r.finished_by_deadline)
    if group == "real":
        # Diagnostic, not a policy: the same DP with its model fitted on the job's own window (the future).
        window = av[start: start + int(round(deadline_h / gap))]
        oracle = StochasticDPPolicy(model_history=window, resolve_growth=float("inf"))
        r = simulate(oracle, av[start:], gap, params, history=av[:start])
        out[ORACLE] = (r.cost / best.cost, r.finished_by_deadline)
    return group, column, out


def cases(seeds: int, step_hours: float) -> list[tuple]:
    out = []
    for family in FAMILIES:
        for seed in range(seeds):
            for job_h, deadline_h in SYNTHETIC_SETTINGS:
                trace = generate(family, hours=HISTORY_H + deadline_h + 48, seed=seed)
                gap = trace["metadata"]["gap_seconds"] / 3600
                av = [v == 0 for v in trace["data"]]
                out.append(("synthetic", family, av, gap, int(round(HISTORY_H / gap)), job_h, deadline_h))
    for name, av, gap in validation_traces():
        for deadline_h in REAL_DEADLINES:
            start = 48.0
            while start + deadline_h <= len(av) * gap:
                out.append(("real", f"{name} D={deadline_h}", av, gap, int(round(start / gap)), JOB_H, deadline_h))
                start += step_hours
    return out


def _table(group: str, results: list[tuple[str, str, dict]]) -> dict:
    rows = [(col, out) for g, col, out in results if g == group]
    columns = sorted({col for col, _ in rows}, key=lambda c: [col for col, _ in rows].index(c))
    summary: dict[str, dict] = {}
    extra = [ORACLE] if all(ORACLE in out for _, out in rows) else []
    for pol in [*POLICIES, "per-case best", *extra]:
        def ratio(out: dict) -> float:
            return min(out[p][0] for p in ONLINE) if pol == "per-case best" else out[pol][0]
        per_col = {c: statistics.mean(ratio(out) for col, out in rows if col == c) for c in columns}
        all_r = [ratio(out) for _, out in rows]
        misses = 0 if pol == "per-case best" else sum(not out[pol][1] for _, out in rows)
        summary[pol] = {"per_column": per_col, "mean": statistics.mean(all_r), "worst": max(all_r), "misses": misses,
                        "cases": len(all_r)}
    width = max(14, *(len(c) + 2 for c in columns))
    print(f"{'policy':<18}" + "".join(f"{c:>{width}}" for c in columns) + f"{'mean':>8}{'worst':>8}{'misses':>8}")
    for pol, s in summary.items():
        print(f"{pol:<18}" + "".join(f"{s['per_column'][c]:>{width}.3f}" for c in columns)
              + f"{s['mean']:>8.4f}{s['worst']:>8.3f}{s['misses']:>8d}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--step-hours", type=float, default=12.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    t0 = time.time()
    todo = cases(args.seeds, args.step_hours)
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_run_case, todo, chunksize=4))
    print(f"{len(todo)} cases; restart {RESTART_H} h, on-demand/spot price ratio {PRICE_RATIO}; "
          f"cost / omniscient optimum ({time.time() - t0:.0f} s)\n")
    print(f"synthetic ({args.seeds} seeds x {len(SYNTHETIC_SETTINGS)} job settings per family, {HISTORY_H} h history):")
    synthetic = _table("synthetic", results)
    print(f"\nreal validation traces (48 h job, start every {args.step_hours:g} h from hour 48, history = the trace before):")
    real = _table("real", results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"synthetic": synthetic, "real": real}, indent=2))
    ours = real["stochastic-dp"]
    print(f"\nreal traces, stochastic-dp: mean {ours['mean']:.4f} (goal <= 1.05), misses {ours['misses']} "
          f"(everywhere: {ours['misses'] + synthetic['stochastic-dp']['misses']}); "
          f"greedy {real['greedy']['mean']:.4f}, uniform-progress {real['uniform-progress']['mean']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
