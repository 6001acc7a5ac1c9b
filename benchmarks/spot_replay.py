"""Live vs simulated: real spot traces replayed on the local cluster, a real job steered through each.

    python benchmarks/spot_replay.py [--cases NAME,...] [--seconds-per-hour 15] [--job-hours 4] [--deadline-hours 6]
        [--json OUT]

For each case it writes one node's 0/1 trace, picks the first start hour (after
a day of history) whose deadline window holds an outage, and runs
`python -m elasticml.scheduler.replay` on it: the local cluster replays the
trace (spot launches fail in outages, spot nodes get a notice and are taken
away), the scheduler's controller steers a paced training job, and the
simulator runs the same policy on the same trace. Printed side by side: live
and simulated cost (spot-hours), spot and on-demand hours, restarts, whether
the deadline was met, and live / simulated cost. Cases: synthetic families
(long outages, short flapping windows, mostly down) and the shared tuning
traces (16-node group read as one node, 1-node preemption records). Each
case's full replay result goes to benchmarks/results/spot_replay.json
(benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


import record  # benchmarks/record.py: a script's own folder is first on sys.path
from spot_traces import tuning_traces  # noqa: E402

from elasticml.scheduler import traces  # noqa: E402

HISTORY_HOURS = 24.0


def cases(native_tick: bool = False) -> dict[str, tuple[list[bool], float]]:
    out = {}
    for family, seed in (("long-outages", 3), ("bursty", 1), ("mostly-down", 2)):
        raw = traces.generate(family, hours=96, seed=seed)
        out[f"synthetic/{family}"] = ([v == 0 for v in raw["data"]], raw["metadata"]["gap_seconds"] / 3600)
    real = {name: (avail, gap) for name, avail, gap in tuning_traces(None if native_tick else 600)}
    for name in ("16node-all/us-west-2a_v100_1", "preempt-1node/aws-04-19-2023/us-east-1c_intel_64",
                 "preempt-4node/4-node-aws-08-03-2023/us-east-1f_v100_1"):
        if name in real:
            out[f"tuning/{name}"] = real[name]
    return out


def window(avail: list[bool], gap_h: float, deadline_h: float) -> float:
    """The first start hour after a day of history whose deadline window has an outage and some spot."""
    first = int(HISTORY_HOURS / gap_h)
    span = int(deadline_h / gap_h)
    for i in range(first, len(avail) - span):
        seg = avail[i: i + span]
        if avail[i] and not all(seg) and sum(seg) >= len(seg) // 4:
            return i * gap_h
    return first * gap_h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--seconds-per-hour", type=float, default=15.0)
    p.add_argument("--job-hours", type=float, default=4.0)
    p.add_argument("--deadline-hours", type=float, default=6.0)
    p.add_argument("--restart-hours", type=float, default=0.1)
    p.add_argument("--price-ratio", type=float, default=3.0)
    p.add_argument("--native-tick", action="store_true",
                   help="tuning traces at their own tick (300 s, 32-34 s) instead of 10 minutes; a tick must "
                        "last 2 s on the wall clock, so a 34-s tick needs --seconds-per-hour >= 212")
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    run = record.start(__file__, args, argv)
    todo = cases(args.native_tick)
    if args.cases:
        todo = {k: v for k, v in todo.items() if k in args.cases.split(",")}
    tmp = Path(tempfile.mkdtemp(prefix="spot-replay-"))
    rows, failed = [], []
    for i, (name, (avail, gap_h)) in enumerate(todo.items()):
        path = tmp / f"case{i}.json"
        path.write_text(json.dumps({"metadata": {"gap_seconds": round(gap_h * 3600)}, "data": [0 if a else 1 for a in avail]}))
        start = window(avail, gap_h, args.deadline_hours)
        cmd = [sys.executable, "-m", "elasticml.scheduler.replay", "--trace", str(path), "--start-hour", f"{start:g}",
               "--job-hours", str(args.job_hours), "--deadline-hours", str(args.deadline_hours),
               "--restart-hours", str(args.restart_hours), "--price-ratio", str(args.price_ratio),
               "--seconds-per-hour", str(args.seconds_per_hour), "--name", f"bench-replay-{i}", "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: failed: {proc.stderr.strip()[-800:]}", flush=True)
            failed.append({"case": name, "start_hour": start, "stderr_tail": proc.stderr.strip()[-800:]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["case"], r["start_hour"] = name, start
        rows.append(r)
        print(json.dumps(r), flush=True)
    print()
    print(f"{'case':<52} {'start':>6} {'live $':>7} {'sim $':>7} {'ratio':>6} {'live spot/od h':>15} "
          f"{'sim spot/od h':>14} {'restarts l/s':>12} {'met':>4} {'lost':>5}")
    for r in rows:
        lv, sm = r["live"], r["simulated"]
        print(f"{r['case']:<52} {r['start_hour']:>6g} {lv['cost']:>7.2f} {sm['cost']:>7.2f} {r['cost_ratio']:>6.3f} "
              f"{lv['spot_hours']:>7.2f}/{lv['on_demand_hours']:<7.2f} {sm['spot_hours']:>6.2f}/{sm['on_demand_hours']:<7.2f} "
              f"{lv['restarts']:>5}/{sm['restarts']:<6} {str(r['finished_by_deadline'])[0]:>4} {r['steps_lost']:>5}")
    within = sum(1 for r in rows if r["cost_ratio"] is not None and abs(r["cost_ratio"] - 1) <= 0.15)
    met = sum(r["finished_by_deadline"] for r in rows)
    print(f"within 15% of the simulator: {within}/{len(rows)}; deadline met: {met}/{len(rows)} (of {len(todo)} cases)")
    run.write(samples=rows, summary={"cases": len(todo), "replayed": len(rows), "within_15_percent": within,
                                     "deadline_met": met}, failed=failed)
    return 0 if len(rows) == len(todo) else 1


if __name__ == "__main__":
    sys.exit(main())
