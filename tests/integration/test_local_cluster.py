"""The local elastic cluster: a head that fails to start is started once more, label-driven autoscaling
up and down, token auth, clean shutdown."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from elasticml import labels as L
from elasticml.cluster import LocalCluster
from elasticml.errors import ClusterAlreadyRunning

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]
REPO = Path(__file__).resolve().parents[2]
ELASTICML = str(Path(sys.executable).with_name("elasticml"))


HEAD_START: dict = {}
"""What bringing this module's cluster up took: the commands `up` ran and what it printed on stderr."""


@pytest.fixture(scope="module")
def local_cluster(shared_cluster):
    """The module's own cluster, whose first head exits while starting the way Ray's does when its own
    start-up times out on a loaded machine: `up` starts it once more, and every test here runs on that
    second head. The fake failure uses up `up`'s one retry: a real timeout of the second head fails the
    module's set-up, as it would fail any cluster's second try."""
    import elasticml.cluster.local as local
    from tests.support.clusters import local_cluster_up

    real_popen, commands = subprocess.Popen, []

    class FirstHeadDies(real_popen):  # a class still: other code may subclass subprocess.Popen meanwhile
        def __init__(self, cmd, **kwargs):
            commands.append(cmd)
            if len(commands) == 1:  # a real process that fails the way Ray's head did
                cmd = [sys.executable, "-c", "import sys; print('RuntimeError: Timed out waiting for node info'); "
                       "sys.exit(1)"]
            super().__init__(cmd, **kwargs)

    shared_cluster.release()
    running = local_cluster_up("local-cluster")
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(io.StringIO()) as err:
        patch.setattr(local.subprocess, "Popen", FirstHeadDies)
        try:
            cluster = next(running)
        except BaseException:  # the second head failed too: what `up` said goes into the report
            sys.__stderr__.write(err.getvalue())
            raise
    HEAD_START.update(commands=commands, stderr=err.getvalue())
    yield cluster
    for _ in running:  # down, and nothing left behind
        pass


def worker_nodes(cluster: LocalCluster) -> list[dict]:
    return [n for n in cluster.nodes() if not n.get("is_head_node")]


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_a_head_that_exits_while_starting_is_started_once_more(local_cluster):
    heads = [c for c in HEAD_START["commands"] if "elasticml.cluster.supervisor" in c]
    assert len(heads) == 2  # (the other command is `scheduler start`, once the head is up)
    assert "exited while starting; trying once more" in HEAD_START["stderr"]
    # The state `up` saved names the second head's supervisor, running.
    assert psutil.Process(local_cluster.require_info().pid).cmdline() == heads[1]


def test_starts_with_only_the_head(local_cluster):
    proc = subprocess.run(
        [ELASTICML, "cluster", "status", "--name", local_cluster.name, "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    nodes = json.loads(proc.stdout)["nodes"]
    assert [n["node_type"] for n in nodes] == ["head"]


def test_dashboard_refuses_requests_without_the_token(local_cluster):
    info = local_cluster.require_info()
    assert httpx.get(f"{info.dashboard_url}/api/jobs/", timeout=10).status_code in (401, 403)
    bad = {"Authorization": "Bearer " + "0" * 64}
    assert httpx.get(f"{info.dashboard_url}/api/jobs/", headers=bad, timeout=10).status_code in (401, 403)
    assert Path(info.token_path).stat().st_mode & 0o777 == 0o600


def test_label_demand_brings_up_matching_nodes_which_go_away_when_idle(local_cluster):
    import ray

    local_cluster.require_info().connect()

    @ray.remote(num_cpus=1)
    def where() -> dict[str, str]:
        return dict(ray.get_runtime_context().get_node_labels())

    t0 = time.monotonic()
    on_spot = ray.get(where.options(label_selector=L.selector_for("spot")).remote(), timeout=120)
    on_reserved = ray.get(where.options(label_selector=L.selector_for("reserved")).remote(), timeout=120)
    up_s = time.monotonic() - t0
    assert on_spot[L.NODE_TYPE] == "cpu_spot" and on_spot[L.MARKET_TYPE] == "spot"
    assert on_reserved[L.NODE_TYPE] == "cpu_reserved" and on_reserved[L.CAPACITY] == "reserved"
    types = sorted(n["labels"][L.NODE_TYPE] for n in worker_nodes(local_cluster))
    assert types == ["cpu_reserved", "cpu_spot"], types  # exactly what was asked for, nothing else
    print(f"spot and reserved nodes up and ran their tasks in {up_s:.1f}s")

    # idle_timeout_minutes is 0.25 in local.yaml; the autoscaler runs every 5 s.
    wait_for(lambda: not worker_nodes(local_cluster), 120, "idle worker nodes to be removed")


def test_on_demand_selector_excludes_reserved_nodes(local_cluster):
    import ray

    local_cluster.require_info().connect()

    @ray.remote(num_cpus=1, label_selector=L.selector_for("on-demand"))
    def where() -> dict[str, str]:
        return dict(ray.get_runtime_context().get_node_labels())

    labels = ray.get(where.remote(), timeout=120)
    assert labels[L.NODE_TYPE] == "cpu_on_demand" and L.CAPACITY not in labels


def test_second_up_on_the_same_name_is_refused(local_cluster):
    from elasticml.cluster import load_cluster_spec

    with pytest.raises(ClusterAlreadyRunning, match="already up"):
        local_cluster.up(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"))


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cli_up_and_down_leave_no_process_behind(tmp_path):
    name = "updown"
    up = subprocess.run([ELASTICML, "cluster", "up", "--name", name, "--port", "0", "--dashboard-port", "0"],
                        capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    cluster = LocalCluster(name)
    try:
        info = cluster.require_info()
        # Bring up a worker node too, so the tree holds autoscaler-launched processes.
        env = {**info.client_env(), "RAY_ADDRESS": info.gcs_address}
        script = (
            "import ray; ray.init(logging_level='ERROR');"
            "f = ray.remote(num_cpus=1, label_selector={'ray.io/market-type': 'spot'})(lambda: 1);"
            "print(ray.get(f.remote(), timeout=120))"
        )
        subprocess.run([sys.executable, "-c", script], env={**__import__("os").environ, **env}, check=True, timeout=180)
        tree = cluster.processes()
        names = [_name(p) for p in tree]  # an idle Ray worker may exit while the tree is read
        assert "raylet" in names and "gcs_server" in names
        assert names.count("raylet") == 2  # the head's and the spot node's
    except BaseException:
        cluster.down()  # a failed check must not leave a Ray instance behind for the next tests
        raise

    down = subprocess.run([ELASTICML, "cluster", "down", "--name", name], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    # `down` returns once it has signalled the tree; the last processes may take a moment to be reaped.
    wait_for(lambda: not [p for p in tree if _alive(p)], 30, f"the cluster's processes to exit: {tree}")
    assert cluster.info() is None
