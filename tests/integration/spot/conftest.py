"""Losing spot capacity under training, three ways (a node, a notice, the run's own controller), on one
cluster of the package's own: each test starts by telling the scheduler the spot pool is back,
so what an earlier one took away does not decide where the next one runs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.clusters import SharedCluster, local_cluster_up


@pytest.fixture(scope="package")
def local_cluster(shared_cluster: SharedCluster) -> Iterator[object]:
    shared_cluster.release()
    yield from local_cluster_up("spot-loss")
