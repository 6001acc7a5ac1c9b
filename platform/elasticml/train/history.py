"""A run's numbers at every report point, kept beside its checkpoints for `elasticml train report`.

Rank 0 writes one small JSON object per report, `<storage>/<run>/history/step-NNNNNNNNN.json`
(local or s3://; one PUT each, so nothing is appended in place), with the step, loss, tokens/s,
workers, the wall time and, on a run's first report, the step it resumed from.
"""

from __future__ import annotations

import json
import time
from typing import Any

FOLDER = "history"


def record(storage_path: str, run_name: str, metrics: dict[str, Any], *, resumed_from: int | None) -> None:
    from elasticml.storage import write_text_atomic

    row: dict[str, Any] = {k: metrics[k] for k in ("step", "loss", "tokens_per_s", "world_size") if k in metrics}
    row["at"] = time.time()
    if resumed_from is not None:
        row["resumed_from"] = resumed_from
    write_text_atomic(f"{storage_path.rstrip('/')}/{run_name}/{FOLDER}/step-{int(metrics['step']):09d}.json",
                      json.dumps(row))


def read_history(run_dir: str) -> list[dict[str, Any]]:
    """Every report of a run, by step (a step reported twice, by a run and its resumption: the later)."""
    import pyarrow.fs as pafs

    from elasticml.storage import filesystem_for

    fs, root = filesystem_for(f"{run_dir.rstrip('/')}/{FOLDER}")
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    rows: dict[int, dict[str, Any]] = {}
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".json") or info.size > 4096:
            continue
        with fs.open_input_stream(info.path) as fh:
            try:
                row = json.loads(fh.read().decode())
            except ValueError:
                continue
        if isinstance(row, dict) and type(row.get("step")) is int:
            if row["step"] not in rows or row.get("at", 0) >= rows[row["step"]].get("at", 0):
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
