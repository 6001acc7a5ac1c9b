"""The raw results of a benchmark run, kept where the README's tables point.

Every script in benchmarks/ writes one JSON file a run, `benchmarks/results/<script>.json` unless
`--json PATH` names another (`--no-json` writes none, for smoke checks):

    command   the exact command line, as it would be typed from the repository root
    commit    `git rev-parse --short HEAD` when the run started; `dirty` is true when tracked files
              (outside benchmarks/results/) differed from it, so the figures may not be that commit's
    date      UTC start of the run (ISO 8601); `wall_s` how long it took
    cpus      the host's CPU count (os.cpu_count()); `python` and the versions of the heavy
              packages the run had imported (torch, ray, onnxruntime, ...)
    args      every parsed argument, defaults included
    samples   the raw measurements, round by round (what the summary was computed from)
    summary   what the script printed as its result

Provenance is taken when the run starts: a tree edited during a long run must not be credited
with figures it did not produce. The file is written whole or not at all (elasticml.atomic), so
an interrupted run leaves the previous results in place.

    parser = argparse.ArgumentParser()
    record.add_arguments(parser, __file__)
    args = parser.parse_args(argv)
    run = record.start(__file__, args, argv)
    ...
    run.write(samples=rounds, summary=summary)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elasticml.atomic import write_atomic

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SCHEMA = 1
# Reported when the run had them imported; importing them here would cost seconds for nothing.
PACKAGES = ("torch", "ray", "onnxruntime", "onnx", "torchao", "numpy", "httpx")


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of a measurement's rounds: how every table states a figure with its spread."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def default_path(script: str | Path) -> Path:
    return RESULTS / f"{Path(script).stem}.json"


def add_arguments(parser: argparse.ArgumentParser, script: str | Path) -> None:
    """`--json PATH` (default benchmarks/results/<script>.json) and `--no-json`."""
    parser.add_argument("--json", type=Path, default=default_path(script),
                        help="where the raw results go (default: %(default)s)")
    parser.add_argument("--no-json", action="store_true", help="write no raw results (a smoke check)")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=REPO, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def provenance(script: str | Path, argv: list[str] | None = None) -> dict[str, Any]:
    """command, commit, dirty, date, cpus, python: who ran what, where, at which code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path = Path(script).resolve()
    try:
        shown = str(path.relative_to(REPO))
    except ValueError:
        shown = str(path)
    sha = _git("rev-parse", "--short", "HEAD")
    # Untracked files are left out: a symlinked venv or a scratch file is not a change to the code.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {
        "schema": SCHEMA,
        "script": shown,
        "command": shlex.join(["python", shown, *argv]),
        "commit": sha.strip() if sha else "unknown",
        "dirty": bool(status.strip()) if status is not None else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Path):  # inside the repository, as the command would name it from its root
        return str(value.relative_to(REPO)) if value.is_absolute() and value.is_relative_to(REPO) else str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class Run:
    """One run's provenance, taken at its start; `write` adds the results."""

    path: Path | None
    header: dict[str, Any]
    args: dict[str, Any]
    started: float = field(default_factory=time.monotonic)

    def write(self, *, samples: Any, summary: Any = None, **extra: Any) -> Path | None:
        """The whole record, atomically; returns where it went (None under --no-json)."""
        if self.path is None:
            return None
        packages = {name: getattr(sys.modules[name], "__version__", None) for name in PACKAGES if name in sys.modules}
        body = {**self.header, "wall_s": round(time.monotonic() - self.started, 3), "packages": packages,
                "args": self.args, **_plain(extra), "samples": _plain(samples), "summary": _plain(summary)}
        # default=str: a value JSON has no type for (an enum, a dataclass) is kept as its text, not lost.
        write_atomic(self.path, json.dumps(body, indent=1, default=str) + "\n")
        print(f"raw results: {self.path}", file=sys.stderr)
        return self.path


def start(script: str | Path, args: argparse.Namespace | dict[str, Any], argv: list[str] | None = None) -> Run:
    """Begin a run of `script` with its parsed `args` (which carry --json / --no-json)."""
    values = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    path = None if values.get("no_json") else Path(values.get("json") or default_path(script))
    return Run(path=path, header=provenance(script, argv), args=_plain(values))
