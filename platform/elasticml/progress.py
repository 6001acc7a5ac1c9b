"""Progress bars for long work people wait on, on a terminal only.

A bar draws on stderr when stderr is a terminal and is silent otherwise (a pipe, a log file, a Ray
worker, `--json` output read by a program), so stdout stays what the command prints.
`ELASTICML_PROGRESS=0` turns bars off on a terminal too; `ELASTICML_PROGRESS=1` draws them on any
stderr (a recording of a session, or a test).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def _disable() -> bool | None:
    flag = os.environ.get("ELASTICML_PROGRESS", "").strip()
    if flag == "0":
        return True
    if flag == "1":
        return False
    return None  # tqdm: on exactly when the stream is a terminal


def bar(desc: str, *, total: float | None, iterable: Iterable[Any] | None = None, unit: str = "it",
        in_bytes: bool = False, **kwargs: Any) -> tqdm:
    """A bar for `total` units of work (None: a counter with a rate), or over `iterable`; close it, use it
    as a context, or iterate it."""
    if in_bytes:
        kwargs.update(unit="B", unit_scale=True, unit_divisor=1024)
    else:
        kwargs.setdefault("unit", unit)
    # The size is taken once: a terminal that reports none (a fresh pty) counts as 80x24, where
    # tqdm's own sizing would draw nothing.
    size = shutil.get_terminal_size()
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=_disable(), ncols=size.columns,
                nrows=size.lines, leave=False, **kwargs)


def say(line: str) -> None:
    """Print a line on stdout above any live bar (a plain print would be drawn over)."""
    tqdm.write(line, file=sys.stdout)
