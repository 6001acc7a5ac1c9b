"""The real spot traces in ../shared/spot-traces, as 0/1 availability for one node, at their native
tick or resampled to a coarser one.

    tuning_traces(gap_seconds=None)      -> [(name, availability, gap_hours)]   choose parameters on these only
    validation_traces(gap_seconds=None)  -> [(name, availability, gap_hours)]   report on these; never tune on them

    python benchmarks/spot_traces.py [--ticks native,600] [--json OUT]   # what each trace holds, as read

`gap_seconds=None` keeps each file's own tick (600 s validation, 300 s 16-node and 4-node, 30-34 s
1-node preemption); a number resamples every trace to it (600: the validation set's tick).

How each folder is turned into one node's availability (read off the data):
- validation/availability-1-node-*: already the simulator's format (0 = spot available), 600 s ticks.
- tuning/availability-16-node-*: a count 0..16 per 300 s tick; 0 is by far the most common value
  and 16 the next, so the count is read as the nodes of the 16 that could *not* be had. One node is
  available when fewer than 16 were missing (`any`), and, as a second, harsher trace of the same
  zone, only when none was missing (`all`).
- tuning/preemption/ (1-node, 0/1, ~30 s ticks): every file starts with one 0 and GCP's run
  almost only 1s for 46 h, so these record a running instance: 1 = up, 0 = preempted or
  relaunching. Inverted. The 4-node files (counts 0..4, 300 s) likewise count nodes up: one node
  is available when at least one is up.
- Resampled to a coarser tick, a tick is available only when every sub-tick in it was (a
  preemption inside a tick loses the tick). Traces shorter than 150 h (GCP's 46 h files) are
  left out: a 48 h job with a 70 h deadline and history before it does not fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


import record  # benchmarks/record.py: a script's own folder is first on sys.path

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "spot-traces"
MIN_HOURS = 150


def _resample(available: list[bool], gap_seconds: float, to_seconds: float | None) -> tuple[list[bool], float]:
    if to_seconds is None or to_seconds <= gap_seconds:
        return available, gap_seconds
    per = to_seconds / gap_seconds
    n = int(len(available) / per)
    return [all(available[int(i * per): max(int(i * per) + 1, int((i + 1) * per))]) for i in range(n)], to_seconds


def _load(path: Path) -> tuple[list, float]:
    raw = json.loads(path.read_text())
    return raw["data"], float(raw["metadata"]["gap_seconds"])


def _keep(name: str, trace: tuple[list[bool], float], out: list[tuple[str, list[bool], float]]) -> None:
    available, gap_seconds = trace
    if len(available) * gap_seconds / 3600 >= MIN_HOURS:
        out.append((name, available, gap_seconds / 3600))


def tuning_traces(gap_seconds: float | None = None, root: Path = TRACES) -> list[tuple[str, list[bool], float]]:
    out: list[tuple[str, list[bool], float]] = []
    for path in sorted((root / "tuning").glob("availability-16-node-*/*.json")):
        data, gap = _load(path)
        _keep(f"16node-any/{path.stem}", _resample([v < 16 for v in data], gap, gap_seconds), out)
        _keep(f"16node-all/{path.stem}", _resample([v == 0 for v in data], gap, gap_seconds), out)
    for path in sorted((root / "tuning" / "preemption").glob("*/*.json")):
        data, gap = _load(path)
        kind = "4node" if path.parent.name.startswith("4-node") else "1node"
        _keep(f"preempt-{kind}/{path.parent.name}/{path.stem}", _resample([v > 0 for v in data], gap, gap_seconds), out)
    return out


def validation_traces(gap_seconds: float | None = None, root: Path = TRACES) -> list[tuple[str, list[bool], float]]:
    out: list[tuple[str, list[bool], float]] = []
    for path in sorted((root / "validation").glob("*/*.json")):
        data, gap = _load(path)
        _keep(path.stem, _resample([v == 0 for v in data], gap, gap_seconds), out)
    return out


def describe(name: str, available: list[bool], gap_hours: float) -> dict:
    """One trace as the simulator reads it: its tick, length, share of ticks with spot, outages."""
    outages = sum(1 for i, up in enumerate(available) if not up and (i == 0 or available[i - 1]))
    return {"trace": name, "tick_s": round(gap_hours * 3600, 3), "hours": round(len(available) * gap_hours, 2),
            "spot_share": round(sum(available) / len(available), 4) if available else 0.0, "outages": outages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="What each real spot trace holds, as the benchmarks read it.")
    p.add_argument("--ticks", default="native,600", help="'native' and/or seconds to resample to")
    p.add_argument("--root", type=Path, default=TRACES)
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    run = record.start(__file__, args, argv)
    rows = []
    for folder, read in (("validation", validation_traces), ("tuning", tuning_traces)):
        for tick in [t for t in args.ticks.split(",") if t]:
            for name, available, gap in read(None if tick == "native" else float(tick), root=args.root):
                rows.append({"folder": folder, "tick": tick, **describe(name, available, gap)})
    print(f"{'folder':<11}{'tick':>7}  {'trace':<58}{'tick s':>8}{'hours':>9}{'spot':>7}{'outages':>8}")
    for r in rows:
        print(f"{r['folder']:<11}{r['tick']:>7}  {r['trace']:<58}{r['tick_s']:>8g}{r['hours']:>9g}"
              f"{r['spot_share']:>7.3f}{r['outages']:>8}")
    summary = {f"{folder} @ {tick}": len([r for r in rows if r["folder"] == folder and r["tick"] == tick])
               for folder, tick in dict.fromkeys((r["folder"], r["tick"]) for r in rows)}
    print(f"traces: {summary}")
    run.write(samples=rows, summary={"traces": summary, "root": str(args.root)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
