"""The Kubernetes interruption watcher against a fake API server on loopback that speaks the real protocol:
a paged node list, a node watch streaming JSON lines, pods by field and label selector, HTTPS with a CA."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
import urllib.parse
from typing import ClassVar

import httpx
import pytest
from elasticml.errors import ConfigError
from elasticml.provision.k8s_watcher import (
    DISRUPTED,
    NTH_REBALANCE,
    NTH_SPOT,
    _Expired,
    KubeAPI,
    NodeWatcher,
    Target,
    notice_of,
)
from elasticml.provision.watcher import Notice

NS, CLUSTER = "elasticml-aws-cpu", "elasticml-aws-cpu"


def node(name: str, *taints: str, market: str = "spot", rv: str = "1") -> dict:
    return {"kind": "Node", "metadata": {"name": name, "resourceVersion": rv,
                                         "labels": {"karpenter.sh/capacity-type": market}},
            "spec": {"taints": [{"key": t, "effect": "NoSchedule", "timeAdded": "2026-12-05T12:00:00Z"} for t in taints]}}


def pod(name: str, on: str, *, group: str = "spot-cpu", kind: str = "worker", cluster: str = CLUSTER,
        platform: bool = True) -> dict:
    labels = {"ray.io/node-type": kind, "ray.io/group": group, "ray.io/cluster": cluster}
    if platform:
        labels["app.kubernetes.io/part-of"] = "elasticml"
    return {"metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": {"nodeName": on},
            "status": {"phase": "Running"}}


class FakeKube(http.server.BaseHTTPRequestHandler):
    state: ClassVar[dict] = {}

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        st = self.state
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        st["auth"].append(self.headers.get("Authorization"))
        if url.path == "/api/v1/nodes" and q.get("watch") == "1":
            st["watches"] += 1
            st["timeouts"].append(q["timeoutSeconds"])
            batch = st["batches"].pop(0) if st["batches"] else []
            if isinstance(batch, int):  # an HTTP status instead of a stream
                return self._send(batch, b'{"kind": "Status"}')
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            for line in batch:  # then the server ends the watch, as at its timeoutSeconds
                self.wfile.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")
                self.wfile.flush()
            time.sleep(0.02)
            return
        if url.path == "/api/v1/nodes":
            st["lists"] += 1
            if st["list_raw"]:
                return self._send(200, st["list_raw"].pop(0))
            items = list(st["nodes"].values())
            start = int(q.get("continue") or 0)
            limit = int(q.get("limit", "500"))
            page = items[start:start + limit]
            more = str(start + limit) if start + limit < len(items) else ""
            return self._send(200, json.dumps({"kind": "NodeList", "items": page, "metadata": {
                "resourceVersion": str(st["rv"]), **({"continue": more} if more else {})}}).encode())
        if url.path == f"/api/v1/namespaces/{NS}/pods":
            st["pod_lists"] += 1
            on = q["fieldSelector"].removeprefix("spec.nodeName=")
            wanted = dict(kv.split("=", 1) for kv in q["labelSelector"].split(","))
            items = [p for p in st["pods"] if p["spec"]["nodeName"] == on
                     and wanted.items() <= p["metadata"]["labels"].items()]
            return self._send(200, json.dumps({"kind": "PodList", "items": items, "metadata": {}}).encode())
        self._send(404, b'{"kind": "Status", "code": 404}')


@pytest.fixture
def kube():
    FakeKube.state = {"nodes": {}, "pods": [], "batches": [], "list_raw": [], "rv": 10, "auth": [], "watches": 0,
                      "timeouts": [], "lists": 0, "pod_lists": 0}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKube)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", FakeKube.state
    server.shutdown()


def watcher(url: str, seen: list, **kw) -> NodeWatcher:
    def record(node_type: str, notice: Notice) -> None:
        seen.append((node_type, notice))

    return NodeWatcher(api=KubeAPI(url, timeout_s=2.0), target=Target(namespace=NS, cluster=CLUSTER),
                       on_notice=kw.pop("on_notice", record), watch_s=kw.pop("watch_s", 1), **kw)


INTERRUPTION = Notice(kind="interruption", action="terminate", time="2026-12-05T12:00:00Z")


def test_a_tainted_spot_node_yields_exactly_one_notice_for_its_group(kube):
    url, st = kube
    st["nodes"] = {"n1": node("n1", DISRUPTED)}
    st["pods"] = [pod("w1", "n1"), pod("w2", "n1"), pod("w3", "n1", group="gpu-spot"),
                  pod("head", "n1", kind="head", group="headgroup"),       # the head is not a pool
                  pod("other", "n1", group="ondemand-cpu", cluster="elasticml-aws-cpu-serve-x1"),  # another cluster's
                  pod("tenant", "n1", group="ondemand-cpu", platform=False)]  # a tenant's pod
    seen: list = []
    w = watcher(url, seen)
    assert w.resync() == "10"
    assert seen == [("spot_cpu", INTERRUPTION), ("gpu_spot", INTERRUPTION)]
    w.resync()
    st["batches"] = [[{"type": "MODIFIED", "object": node("n1", DISRUPTED, rv="11")}]]
    assert w.watch_once("10") == "11"
    assert len(seen) == 2  # once per (node, kind, group), however often the node is seen
    assert st["pod_lists"] == 1  # and its pods are listed once: no Ray pod lands on a tainted node


@pytest.mark.parametrize("n, pods", [
    (node("n1"), [pod("w1", "n1")]),                                     # untainted
    (node("n1", DISRUPTED, market="on-demand"), [pod("w1", "n1")]),      # Karpenter's own choice, not a spot notice
    (node("n1", "node.kubernetes.io/unschedulable"), [pod("w1", "n1")]),  # a cordon
    (node("n1", NTH_SPOT), []),                                          # no Ray pod on it
    (node("n1", NTH_SPOT), [pod("w1", "n2")]),                           # Ray pods elsewhere
], ids=["untainted", "on-demand-disrupted", "cordoned", "no-ray-pods", "pods-elsewhere"])
def test_an_untainted_or_non_ray_node_yields_nothing(kube, n, pods):
    url, st = kube
    st["nodes"], st["pods"] = {"n1": n}, pods
    seen: list = []
    w = watcher(url, seen)
    w.resync()
    assert seen == [] and w.pending == {}


def test_a_rebalance_then_an_interruption_are_each_reported_once(kube):
    url, st = kube
    st["pods"] = [pod("w1", "n1")]
    seen: list = []
    w = watcher(url, seen)
    st["batches"] = [[{"type": "MODIFIED", "object": node("n1", NTH_REBALANCE, rv="11")},
                      {"type": "MODIFIED", "object": node("n1", NTH_REBALANCE, rv="12")},
                      {"type": "MODIFIED", "object": node("n1", NTH_REBALANCE, NTH_SPOT, rv="13")},
                      {"type": "BOOKMARK", "object": {"kind": "Node", "metadata": {"resourceVersion": "14"}}}]]
    assert w.watch_once("10") == "14"
    assert [(t, n.kind) for t, n in seen] == [("spot_cpu", "rebalance"), ("spot_cpu", "interruption")]


def test_a_node_untainted_or_deleted_is_forgotten_and_a_new_taint_reported_again(kube):
    url, st = kube
    st["pods"] = [pod("w1", "n1")]
    seen: list = []
    w = watcher(url, seen)
    st["batches"] = [[{"type": "ADDED", "object": node("n1", NTH_SPOT)},
                      {"type": "MODIFIED", "object": node("n1")},
                      {"type": "MODIFIED", "object": node("n1", NTH_SPOT)},
                      {"type": "DELETED", "object": node("n1", NTH_SPOT)},
                      {"type": "ADDED", "object": node("n1", NTH_SPOT)}]]
    w.watch_once("10")
    assert len(seen) == 3 and w.delivered == {"n1": {("interruption", "spot_cpu"), ("*", "interruption")}}


@pytest.mark.parametrize("line", [b"{not json\n", b"[1, 2]\n", b'{"type": "EXPLODED", "object": {}}\n',
                                  b'{"type": "MODIFIED", "object": "n1"}\n', b"\xff\xfe\n",
                                  b'{"type": "MODIFIED", "object": {"metadata": {"name": "../../x"}}}\n'],
                         ids=["broken", "list", "unknown-type", "object-not-a-mapping", "binary", "bad-name"])
def test_a_garbage_watch_line_is_logged_and_skipped(kube, line):
    url, st = kube
    st["pods"] = [pod("w1", "n1")]
    seen: list = []
    w = watcher(url, seen)
    st["batches"] = [[line, {"type": "MODIFIED", "object": node("n1", NTH_SPOT, rv="12")}]]
    assert w.watch_once("10") == "12"
    assert w.skipped == 1 and seen == [("spot_cpu", INTERRUPTION)]  # the next event still counts


def test_an_oversize_watch_event_ends_the_watch_and_the_loop_lists_again(kube):
    url, st = kube
    st["nodes"], st["pods"] = {"n1": node("n1", NTH_SPOT)}, [pod("w1", "n1")]
    seen: list = []
    w = watcher(url, seen)
    st["batches"] = [[b'{"type": "MODIFIED", "object": {"x": "' + b"x" * (3 * 1024 * 1024)]]
    with pytest.raises(ValueError, match="longer than"):
        w.watch_once("10")
    st["batches"] = [[b'{"type": "MODIFIED", "object": {"x": "' + b"x" * (3 * 1024 * 1024)]]
    rounds = iter(range(2))
    w.run(min_backoff_s=0.01, max_backoff_s=0.01, stop=lambda: next(rounds, None) is None)
    assert w.errors == 1 and st["lists"] == 2 and seen == [("spot_cpu", INTERRUPTION)]


@pytest.mark.parametrize("body, words", [(b"<html>proxy error</html>", "not a JSON object"),
                                         (b'{"items": "nope", "metadata": {}}', "without items"),
                                         (b'{"items": [], "metadata": {}}', "without a resourceVersion"),
                                         (b'{"items": [' + b'"x",' * (5 * 1024 * 1024) + b'"x"]}', "more than")],
                         ids=["html", "items-not-a-list", "no-version", "oversize"])
def test_a_garbage_or_oversize_list_is_logged_and_the_loop_goes_on(kube, body, words):
    url, st = kube
    st["nodes"], st["pods"] = {"n1": node("n1", NTH_SPOT)}, [pod("w1", "n1")]
    st["list_raw"] = [body]
    seen: list = []
    w = watcher(url, seen)
    with pytest.raises(ValueError, match=words):
        w.resync()
    st["list_raw"] = [body]
    rounds = iter(range(2))
    w.run(min_backoff_s=0.01, max_backoff_s=0.01, stop=lambda: next(rounds, None) is None)
    assert w.errors == 1 and seen == [("spot_cpu", INTERRUPTION)]  # the next list is read, the node reported


def test_the_watch_is_taken_up_again_after_the_server_drops_it(kube):
    url, st = kube
    st["pods"] = [pod("w1", "n1")]
    st["batches"] = [[], [b'{"type": "MODIFIED", "obj'],  # an empty watch, then one cut mid-event
                     [{"type": "MODIFIED", "object": node("n1", NTH_SPOT, rv="20")}]]
    seen: list = []
    w = watcher(url, seen)
    rounds = iter(range(3))
    w.run(min_backoff_s=0.01, max_backoff_s=0.01, stop=lambda: next(rounds, None) is None)
    assert st["watches"] == 3 and st["lists"] == 1 and w.skipped == 1
    assert seen == [("spot_cpu", INTERRUPTION)]


@pytest.mark.parametrize("gone", [410, [{"type": "ERROR", "object": {"kind": "Status", "code": 410}}]],
                         ids=["http-410", "error-event"])
def test_an_expired_version_lists_again(kube, gone):
    url, st = kube
    st["nodes"], st["pods"] = {"n1": node("n1", NTH_SPOT)}, [pod("w1", "n1")]
    st["batches"] = [gone, []]
    seen: list = []
    w = watcher(url, seen)
    with pytest.raises(_Expired):
        w.watch_once("1")
    st["batches"] = [gone, []]
    rounds = iter(range(2))
    w.run(min_backoff_s=0.01, max_backoff_s=0.01, stop=lambda: next(rounds, None) is None)
    assert st["lists"] == 2 and w.errors == 0 and len(seen) == 1


def test_a_notice_the_scheduler_did_not_take_is_delivered_again_once(kube):
    url, st = kube
    st["pods"] = [pod("w1", "n1")]
    attempts: list = []

    def flaky(node_type: str, notice: Notice) -> None:
        attempts.append(node_type)
        if len(attempts) < 2:
            raise RuntimeError("the scheduler is restarting")

    w = watcher(url, [], on_notice=flaky, watch_s=60)
    st["batches"] = [[{"type": "MODIFIED", "object": node("n1", NTH_SPOT, rv="11")}], [], []]
    w.watch_once("10")
    assert attempts == ["spot_cpu"] and "n1" in w.pending and w.errors == 1
    w.watch_once("11")  # while a delivery is owed the watch is short: tried again within seconds
    w.retry_pending()
    w.retry_pending()
    w.watch_once("11")
    assert attempts == ["spot_cpu", "spot_cpu"] and w.pending == {}
    assert st["timeouts"] == ["60", "5", "60"]


def test_https_with_the_clusters_ca_and_the_pods_token(tmp_path):
    from elasticml.provision.tls import make_ca, make_node_cert

    make_ca(tmp_path / "ca", "kube")
    make_node_cert(tmp_path / "ca", tmp_path, ips=["127.0.0.1"], names=["localhost"])
    FakeKube.state = {"nodes": {"n1": node("n1", NTH_SPOT)}, "pods": [pod("w1", "n1")], "batches": [], "list_raw": [],
                      "rv": 5, "auth": [], "watches": 0, "timeouts": [], "lists": 0, "pod_lists": 0}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKube)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "node.crt", tmp_path / "node.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = tmp_path / "token"
        token.write_text("projected-token\n")
        seen: list = []
        api = KubeAPI(f"https://127.0.0.1:{server.server_port}", ca_file=str(tmp_path / "ca" / "ca.crt"),
                      token_file=str(token), timeout_s=2.0)
        w = NodeWatcher(api=api, target=Target(namespace=NS, cluster=CLUSTER),
                        on_notice=lambda t, n: seen.append(t), watch_s=1)
        assert w.resync() == "5" and seen == ["spot_cpu"]
        assert set(FakeKube.state["auth"]) == {"Bearer projected-token"}
        untrusted = KubeAPI(f"https://127.0.0.1:{server.server_port}", timeout_s=2.0)  # the system's CAs only
        with pytest.raises(httpx.ConnectError):
            untrusted.get("/api/v1/nodes", {})
    finally:
        server.shutdown()


def test_plain_http_beyond_loopback_and_bad_targets_are_refused():
    with pytest.raises(ConfigError) as info:
        KubeAPI("http://10.0.0.1:6443")
    assert info.value.field == "api_url"
    for field, kw in (("cluster", {"namespace": NS, "cluster": ""}), ("namespace", {"namespace": "a/b", "cluster": "c"})):
        with pytest.raises(ConfigError) as info:
            Target(**kw)
        assert info.value.field == field


def test_taints_give_notices_as_the_glossary_says():
    assert notice_of(node("n", NTH_SPOT, market="on-demand")).kind == "interruption"
    assert notice_of(node("n", DISRUPTED)).kind == "interruption"
    assert notice_of(node("n", DISRUPTED, market="on-demand")) is None
    assert notice_of(node("n", NTH_REBALANCE)).kind == "rebalance"
    assert notice_of(node("n", "aws-node-termination-handler/scheduled-maintenance")) is None
    assert notice_of({"spec": {"taints": "nope"}}) is None and notice_of({}) is None


def test_the_memory_of_tainted_nodes_is_bounded(kube, monkeypatch):
    from elasticml.provision import k8s_watcher

    url, st = kube
    monkeypatch.setattr(k8s_watcher, "MAX_TRACKED", 3)
    st["pods"] = [pod(f"w{i}", f"n{i}") for i in range(6)]
    seen: list = []
    w = watcher(url, seen)
    st["batches"] = [[{"type": "MODIFIED", "object": node(f"n{i}", NTH_SPOT)} for i in range(6)]]
    w.watch_once("10")
    assert len(seen) == 6 and list(w.delivered) == ["n3", "n4", "n5"]  # the oldest forgotten first
