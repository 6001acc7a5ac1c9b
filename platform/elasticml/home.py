"""Where elasticml keeps its state on this machine.

`ELASTICML_HOME` (default `~/.elasticml`) holds one folder per local cluster
(its token, rendered config, supervisor PID and logs) and the default run
storage. Ray's own temp dir is kept elsewhere, under a short path, because Ray
puts Unix sockets in it and a socket path may not exceed 107 bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("ELASTICML_HOME", Path.home() / ".elasticml")).expanduser().resolve()


def cluster_dir(name: str) -> Path:
    return home() / "clusters" / name


def ray_temp_dir(name: str) -> Path:
    """A short, per-cluster folder for Ray's sessions and sockets."""
    digest = hashlib.sha1(str(cluster_dir(name)).encode()).hexdigest()[:8]
    return Path(tempfile.gettempdir()) / f"eml-{digest}"


def default_storage_path() -> Path:
    return home() / "runs"
