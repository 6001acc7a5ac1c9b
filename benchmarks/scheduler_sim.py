"""Deadline policies against the omniscient optimum on synthetic spot traces.

    python benchmarks/scheduler_sim.py [--seeds 10] [--json out.json]

For every trace family (elasticml.scheduler.traces) x seed x job setting, each
policy runs on the same trace; the table gives, per policy, the mean cost
relative to the omniscient optimum (1.00 = optimal), the worst case, and the
deadline misses. Seeds 0.. are used here; the policy's two parameters were
chosen on seeds 100-103, so this is held-out data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from elasticml.scheduler.deadline import JobParams, run_policy
from elasticml.scheduler.traces import FAMILIES, generate

POLICIES = ["on-demand", "greedy", "uniform-progress", "slack-reserve"]
# (job hours, deadline hours): the 48/52 and looser deadlines.
SETTINGS = [(48, 52), (48, 60), (24, 36), (48, 72)]
RESTART_H, PRICE_RATIO = 0.2, 3.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--json", dest="json_out")
    args = p.parse_args(argv)
    t0 = time.time()
    ratios: dict[str, dict[str, list[float]]] = {pol: {f: [] for f in FAMILIES} for pol in POLICIES}
    misses = {pol: 0 for pol in POLICIES}
    runs = 0
    for family in FAMILIES:
        for seed in range(args.seeds):
            for job_h, deadline_h in SETTINGS:
                trace = generate(family, hours=deadline_h + 48, seed=seed)
                avail = [v == 0 for v in trace["data"]]
                gap_h = trace["metadata"]["gap_seconds"] / 3600
                params = JobParams(job_hours=job_h, deadline_hours=deadline_h, restart_hours=RESTART_H, price_ratio=PRICE_RATIO)
                best = run_policy("omniscient", avail, gap_h, params)
                assert best.finished_by_deadline
                runs += 1
                for pol in POLICIES:
                    r = run_policy(pol, avail, gap_h, params)
                    ratios[pol][family].append(r.cost / best.cost)
                    misses[pol] += not r.finished_by_deadline
    print(f"{runs} runs ({len(FAMILIES)} families x {args.seeds} seeds x {len(SETTINGS)} job settings), "
          f"restart {RESTART_H} h, on-demand/spot price ratio {PRICE_RATIO}; cost / omniscient optimum\n")
    header = f"{'policy':<18}" + "".join(f"{f:>14}" for f in FAMILIES) + f"{'mean':>8}{'worst':>8}{'misses':>8}"
    print(header)
    summary = {}
    for pol in POLICIES:
        all_r = [x for f in FAMILIES for x in ratios[pol][f]]
        row = {f: statistics.mean(ratios[pol][f]) for f in FAMILIES}
        summary[pol] = {"per_family": row, "mean": statistics.mean(all_r), "worst": max(all_r), "misses": misses[pol]}
        print(f"{pol:<18}" + "".join(f"{row[f]:>14.3f}" for f in FAMILIES)
              + f"{summary[pol]['mean']:>8.4f}{summary[pol]['worst']:>8.3f}{misses[pol]:>8d}")
    print(f"\n(took {time.time() - t0:.0f}s)")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(summary, fh, indent=2)
    ours, up = summary["slack-reserve"], summary["uniform-progress"]
    ok = ours["misses"] == 0 and ours["mean"] <= 1.10 and ours["mean"] < up["mean"]
    print("target (zero misses, within 10% of optimum, ahead of uniform progress):", "MET" if ok else "NOT MET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
