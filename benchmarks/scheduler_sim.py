"""Deadline policies against the omniscient optimum: synthetic families and every real folder, each
real trace at its native tick and at 10 minutes.

    python benchmarks/scheduler_sim.py [--seeds 10] [--step-hours 12] [--workers 2] [--json OUT]
                                       [--folders validation,tuning] [--ticks native,600]

Every policy runs on the same cases; a cell is the mean cost / omniscient optimum (1.00 = optimal;
the optimum knows the future and is solved at the case's own tick), `worst` the largest ratio,
`misses` the deadlines missed. `per-case best` is, case by case, the cheapest of the baselines
(greedy, uniform progress, slack-reserve): what a policy that picked the right baseline for each
case in advance would pay. `dp <= 1.05 best` is the share of cases where stochastic-dp costs at most
1.05x that. `dp, future model` (real traces only) is a diagnostic, not a policy: stochastic-dp with
its run-length model fitted on the job's own window, i.e. on the future.

- synthetic: the families of elasticml.scheduler.traces, seeds 0.., job settings 48/52, 48/60,
  24/36, 48/72 hours; each trace has 48 h of history before the job starts, which policies may read.
- real: ../shared/spot-traces/<folder> (benchmarks/spot_traces.py says how each is read), a 48 h job
  with deadlines 52 h and 70 h, starts every `--step-hours` from hour 48, all the trace before the
  start as history. stochastic-dp's parameters were chosen on the tuning folder only
  (benchmarks/tune_spot_policy.py); the validation folder is for reporting only.

Restart 0.2 h, on-demand = 3x spot throughout. The summaries and every case's ratios go to
benchmarks/results/scheduler_sim.json (benchmarks/record.py; --json elsewhere).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor


import record  # benchmarks/record.py: a script's own folder is first on sys.path
from spot_traces import tuning_traces, validation_traces  # noqa: E402

from elasticml.scheduler.deadline import JobParams, simulate  # noqa: E402
from elasticml.scheduler.planner import StochasticDPPolicy  # noqa: E402
from elasticml.scheduler.policies import run_policy  # noqa: E402
from elasticml.scheduler.traces import FAMILIES, generate  # noqa: E402

POLICIES = ["on-demand", "greedy", "uniform-progress", "slack-reserve", "stochastic-dp"]
BASELINES = ["greedy", "uniform-progress", "slack-reserve"]
SYNTHETIC_SETTINGS = [(48, 52), (48, 60), (24, 36), (48, 72)]
REAL_DEADLINES = [52, 70]
JOB_H, RESTART_H, PRICE_RATIO, HISTORY_H = 48, 0.2, 3.0, 48
ORACLE = "dp, future model"
BEST = "per-case best"
FOLDERS = {"validation": validation_traces, "tuning": tuning_traces}


def _run_case(case: tuple) -> dict:
    group, column, av, gap, start, job_h, deadline_h = case
    params = JobParams(job_hours=job_h, deadline_hours=deadline_h, restart_hours=RESTART_H, price_ratio=PRICE_RATIO)
    best = run_policy("omniscient", av[start:], gap, params)
    assert best.finished_by_deadline
    out: dict = {}
    for pol in POLICIES:
        r = run_policy(pol, av[start:], gap, params, history=av[:start])
        out[pol] = (round(r.cost / best.cost, 5), r.finished_by_deadline)
    if group != "synthetic":
        # Diagnostic, not a policy: the same DP with its model fitted on the job's own window (the future).
        window = av[start: start + int(round(deadline_h / gap))]
        oracle = StochasticDPPolicy(model_history=window, resolve_growth=float("inf"))
        r = simulate(oracle, av[start:], gap, params, history=av[:start])
        out[ORACLE] = (round(r.cost / best.cost, 5), r.finished_by_deadline)
    return {"group": group, "column": column, "gap_s": round(gap * 3600, 3), "start_h": round(start * gap, 3),
            "deadline_h": deadline_h, "ratios": out}


def cases(seeds: int, step_hours: float, folders: list[str], ticks: list[str]) -> list[tuple]:
    out = []
    for family in FAMILIES:
        for seed in range(seeds):
            for job_h, deadline_h in SYNTHETIC_SETTINGS:
                trace = generate(family, hours=HISTORY_H + deadline_h + 48, seed=seed)
                gap = trace["metadata"]["gap_seconds"] / 3600
                av = [v == 0 for v in trace["data"]]
                out.append(("synthetic", family, av, gap, int(round(HISTORY_H / gap)), job_h, deadline_h))
    for folder in folders:
        for tick in ticks:
            group = f"{folder} @ {'native tick' if tick == 'native' else tick + ' s'}"
            for name, av, gap in FOLDERS[folder](None if tick == "native" else float(tick)):
                if tick != "native" and "native" in ticks and any(
                        n == name and abs(g - gap) < 1e-9 for n, _, g in FOLDERS[folder](None)):
                    continue  # already this tick natively: the native row has these cases
                for deadline_h in REAL_DEADLINES:
                    start = 48.0
                    while start + deadline_h <= len(av) * gap:
                        out.append((group, f"{name} D={deadline_h}", av, gap, int(round(start / gap)), JOB_H,
                                    deadline_h))
                        start += step_hours
    return out


def _table(group: str, results: list[dict]) -> dict:
    rows = [r for r in results if r["group"] == group]
    columns = list(dict.fromkeys(r["column"] for r in rows))
    summary: dict[str, dict] = {}
    extra = [ORACLE] if all(ORACLE in r["ratios"] for r in rows) else []

    def ratio(pol: str, r: dict) -> float:
        return min(r["ratios"][p][0] for p in BASELINES) if pol == BEST else r["ratios"][pol][0]

    for pol in [*POLICIES, BEST, *extra]:
        per_col = {c: statistics.mean(ratio(pol, r) for r in rows if r["column"] == c) for c in columns}
        all_r = [ratio(pol, r) for r in rows]
        misses = 0 if pol == BEST else sum(not r["ratios"][pol][1] for r in rows)
        summary[pol] = {"per_column": per_col, "mean": statistics.mean(all_r), "worst": max(all_r),
                        "misses": misses, "cases": len(all_r)}
    within = [ratio("stochastic-dp", r) <= 1.05 * ratio(BEST, r) + 1e-9 for r in rows]
    summary["stochastic-dp"]["within_1.05_of_per_case_best"] = sum(within) / len(within)
    short = len(columns) > 8
    width = 10 if short else max(14, *(len(c) + 2 for c in columns))
    shown = [] if short else columns
    print(f"{'policy':<18}" + "".join(f"{c:>{width}}" for c in shown) + f"{'mean':>8}{'worst':>8}{'misses':>8}")
    for pol, s in summary.items():
        print(f"{pol:<18}" + "".join(f"{s['per_column'][c]:>{width}.3f}" for c in shown)
              + f"{s['mean']:>8.4f}{s['worst']:>8.3f}{s['misses']:>8d}")
    print(f"stochastic-dp within 1.05x of the per-case best baseline: {sum(within)}/{len(within)} "
          f"({100 * sum(within) / len(within):.1f}%)")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="synthetic seeds per family (0: none)")
    p.add_argument("--step-hours", type=float, default=12.0, help="hours between a real trace's start hours")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--folders", default="validation,tuning", help="real folders: validation, tuning")
    p.add_argument("--ticks", default="native,600", help="'native' and/or seconds to resample real traces to")
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    folders = [f for f in args.folders.split(",") if f]
    if any(f not in FOLDERS for f in folders):
        p.error(f"--folders: choose from {', '.join(FOLDERS)}")
    ticks = [t for t in args.ticks.split(",") if t]
    if any(t != "native" and not t.isdigit() for t in ticks):
        p.error("--ticks: 'native' or whole seconds")
    run = record.start(__file__, args, argv)
    t0 = time.time()
    todo = cases(args.seeds, args.step_hours, folders, ticks)
    # The finest ticks first: their optima take longest, so the pool ends together.
    todo.sort(key=lambda c: c[3])
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(_run_case, todo, chunksize=1))
    print(f"{len(todo)} cases; restart {RESTART_H} h, on-demand/spot price ratio {PRICE_RATIO}; "
          f"cost / omniscient optimum ({time.time() - t0:.0f} s)")
    summaries = {}
    for group in dict.fromkeys(r["group"] for r in sorted(results, key=lambda r: r["group"] != "synthetic")):
        print(f"\n{group}:")
        summaries[group] = _table(group, results)
    run.write(samples=results, summary=summaries)
    for group, s in summaries.items():
        if group == "synthetic":
            continue
        ours = s["stochastic-dp"]
        base = min(s[b]["mean"] for b in BASELINES)
        print(f"{group}: stochastic-dp mean {ours['mean']:.4f} (goal <= 1.05; best baseline {base:.4f}), "
              f"worst {ours['worst']:.3f}, misses {ours['misses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
