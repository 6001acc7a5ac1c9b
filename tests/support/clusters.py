"""The local clusters the integration tests run on: one shared by every module that leaves the cluster
as it found it, and clusters of their own for the modules that take nodes away or change the
cluster's environment (marked `own_cluster`)."""

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


class SharedCluster:
    """One cluster for the session, up on first use; `release()` takes it down (with the same check that
    nothing is left behind) before a module brings up a cluster of its own, since two clusters at once
    would share 2 cores. tests/conftest.py orders the modules so that it comes up once."""

    def __init__(self, name: str = "shared") -> None:
        self.name = name
        self._running: Iterator[object] | None = None
        self._cluster: object | None = None

    def get(self) -> object:
        if self._running is None:
            self._running = local_cluster_up(self.name)
            self._cluster = next(self._running)
        return self._cluster

    def release(self) -> None:
        running, self._running, self._cluster = self._running, None, None
        if running is not None:
            for _ in running:  # runs local_cluster_up's `finally`: down, and nothing left behind
                pass
