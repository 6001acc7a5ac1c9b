"""Shared fixtures: an isolated ELASTICML_HOME with the local clusters' checkpoint key, and the real
local clusters the integration tests run on (tests/support/clusters.py)."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.clusters import SharedCluster, local_cluster_up

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def elasticml_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs against its own state folder, never the user's ~/.elasticml, and as a client of
    the local clusters: with the checkpoint key that `cluster up` makes for cluster_configs/local.yaml's
    `elasticml-local` and hands to every node and client (`cluster env`, `ClusterInfo.connect`), made
    by the same function. Checkpoints written here load on those clusters, and theirs here."""
    from elasticml.checkpoint_key import KEY_ENV, make_cluster_key

    home = tmp_path_factory.mktemp("elasticml-home")
    old = os.environ.get("ELASTICML_HOME")
    old_key = os.environ.get(KEY_ENV)
    os.environ["ELASTICML_HOME"] = str(home)
    os.environ[KEY_ENV] = str(make_cluster_key("elasticml-local"))
    # Report polls are what small runs wait on; see docs/developers.md.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("ELASTICML_CONTROLLER_TICK_S", "1")  # the scheduler's controller looks every second
    yield home
    for name, value in (("ELASTICML_HOME", old), (KEY_ENV, old_key)):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from elasticml.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus(out, num_shards=4, max_bytes=600_000)
    return out


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[SharedCluster]:
    shared = SharedCluster()
    yield shared
    shared.release()


@pytest.fixture(scope="module")
def local_cluster(request: pytest.FixtureRequest, shared_cluster: SharedCluster) -> Iterator[object]:
    """The shared cluster, or for a module marked `own_cluster` one of its own (the shared one goes down
    first). A package of modules may share one of its own: tests/integration/spot/."""
    if request.node.get_closest_marker("own_cluster") is None:
        yield shared_cluster.get()
        return
    shared_cluster.release()
    yield from local_cluster_up(request.module.__name__.rsplit(".", 1)[-1].replace("_", "-"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules on the shared cluster run after every other test, so it comes up once and never
    beside another cluster. Modules stay whole and otherwise in their order."""
    shared: set[str] = set()
    for item in items:
        module = item.getparent(pytest.Module)
        if module and "local_cluster" in item.fixturenames and not module.get_closest_marker("own_cluster"):
            shared.add(module.nodeid)
    order = {id(item): i for i, item in enumerate(items)}

    def key(item: pytest.Item) -> tuple[bool, int]:
        module = item.getparent(pytest.Module)
        return (module is not None and module.nodeid in shared), order[id(item)]

    items.sort(key=key)


class FakeIMDS(http.server.BaseHTTPRequestHandler):
    """AWS instance metadata (IMDSv2) on loopback: a PUT for a session token, then GETs that must carry it.

    `state["docs"]` maps paths to JSON documents (absent = 404); `state["delay"]` slows every GET;
    `state["raw"]` maps paths to bytes sent as they are, a byte at a time (`drip_s`), or cut off (`dies`).
    """

    state: dict = {}

    def do_PUT(self):  # noqa: N802
        if self.path != "/latest/api/token" or "X-aws-ec2-metadata-token-ttl-seconds" not in self.headers:
            return self._send(400, "")
        self.state["tokens"] += 1
        self._send(200, f"tok-{self.state['tokens']}")

    def do_GET(self):  # noqa: N802
        time.sleep(self.state["delay"])
        if not self.headers.get("X-aws-ec2-metadata-token", "").startswith("tok-"):
            return self._send(401, "")
        raw = self.state.get("raw", {}).get(self.path)
        if raw is not None:  # a service that lies (`data` as is), drips (`drip_s` a byte) or dies mid-body
            data, drip_s, dies = raw["data"], raw.get("drip_s", 0.0), raw.get("dies", False)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) * (2 if dies else 1)))
            self.end_headers()
            sent = self.state.setdefault("sent", {})
            sent[self.path] = 0
            for piece in ([data[i:i + 1] for i in range(len(data))] if drip_s else [data]):
                try:
                    self.wfile.write(piece)
                    self.wfile.flush()
                except OSError:  # the client gave up on it
                    return
                sent[self.path] += len(piece)
                time.sleep(drip_s)
            if dies:
                self.close_connection = True
                self.connection.shutdown(2)
            return
        body = self.state["docs"].get(self.path)
        if body is None:
            return self._send(404, "Not Found")
        self._send(200, json.dumps(body))

    def _send(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_imds():
    FakeIMDS.state = {"tokens": 0, "delay": 0.0, "docs": {}}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeIMDS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, FakeIMDS.state
    server.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (the real protocol for boto3 and pyarrow); yields its endpoint URL."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = str(Path(sys.executable).with_name("moto_server"))
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process and its children talk to the loopback S3 server."""
    env = {"ELASTICML_S3_ENDPOINT": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
