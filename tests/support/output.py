"""Reading what a job printed."""
from __future__ import annotations

import json
from typing import Any


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of a job's stdout that is a JSON object.

    Ray's driver prints autoscaler and worker log lines to the same stdout whenever they arrive, so
    the job's one-line result is not always the last line.
    """
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise AssertionError(f"no JSON object in the job's output: {stdout[-2000:]!r}")
