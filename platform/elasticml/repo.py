"""Files shipped beside the package in the repository: cluster configs, jobs, Serve apps."""

from __future__ import annotations

from pathlib import Path

# platform/elasticml/repo.py -> the repository root (an editable install keeps it there).
ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIGS = ROOT / "cluster_configs"
JOBS = ROOT / "jobs"
SERVE_APPS = ROOT / "serve_apps"
SITE_VALUES_EXAMPLE = CLUSTER_CONFIGS / "values.example.yaml"
"""The site values' example (provision/values.py), which sits beside the cluster configs but is not one."""


def cluster_yamls() -> list[Path]:
    """The Ray cluster configs committed under cluster_configs/ (local and the AWS launcher's)."""
    return sorted(p for p in CLUSTER_CONFIGS.glob("*.yaml") if p != SITE_VALUES_EXAMPLE)


def default_cluster_config() -> Path:
    """cluster_configs/local.yaml from the current directory if there, else from the repository."""
    here = Path("cluster_configs/local.yaml")
    return here if here.is_file() else CLUSTER_CONFIGS / "local.yaml"
