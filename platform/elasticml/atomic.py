"""Write then rename, the one way: a reader sees the old file or the new one, never a part.

A temporary file in the target's folder (same filesystem, so the rename is atomic),
written, flushed and fsynced, created with the final mode (a secret is never
readable by others, even for a moment), then renamed over the target. A crash at any
point leaves the old file and at most a stray temporary, never a torn target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes, *, mode: int = 0o644) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
