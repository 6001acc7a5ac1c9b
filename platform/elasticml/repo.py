"""Files shipped beside the package in the repository: cluster configs, jobs, Serve apps."""

from __future__ import annotations

from pathlib import Path

# platform/elasticml/repo.py -> the repository root (an editable install keeps it there).
ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIGS = ROOT / "cluster_configs"
JOBS = ROOT / "jobs"
SERVE_APPS = ROOT / "serve_apps"


def default_cluster_config() -> Path:
    """cluster_configs/local.yaml from the current directory if there, else from the repository."""
    here = Path("cluster_configs/local.yaml")
    return here if here.is_file() else CLUSTER_CONFIGS / "local.yaml"
