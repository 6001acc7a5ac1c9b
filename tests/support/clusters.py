"""The local cluster a test module (or a package of them) runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def local_cluster_up(name: str) -> Iterator[object]:
    """A real local elastic cluster from cluster_configs/local.yaml, up for the caller's scope; down after,
    with every process it started gone."""
    from elasticml.cluster import LocalCluster, load_cluster_spec

    cluster = LocalCluster(name)
    info = cluster.up(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"))
    tree = [p for p in cluster.processes()]
    try:
        yield cluster
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if cluster.info() is not None:
            tree += cluster.processes()
            cluster.down()
        leftover = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not leftover, f"cluster {info.name} left processes behind: {leftover}"
