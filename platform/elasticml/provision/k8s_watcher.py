"""The interruption watcher on Kubernetes: `python -m elasticml.provision.k8s_watcher` in a head pod.

On EKS a spot notice reaches Kubernetes, not the pods: Karpenter (from its interruption queue) or the
AWS Node Termination Handler (from the node's metadata) taints the node that is going away. This
watcher turns such a taint into what the AWS watcher (`watcher.py`) turns an IMDS notice into: the
scheduler's `interrupt(node type)`, through the same callback (`watcher.report_to_scheduler`, as the
node agent), once per notice.

Who runs it: every platform head pod (the RayCluster's, a RayJob's, a RayService's; `api_server.py`),
a container beside Ray, as the head's ServiceAccount, whose RBAC (`head_access.py`) allows nodes
get/list/watch and pods list in the platform's namespace, nothing else. Each Ray cluster has its own
scheduler, so each watcher reports only its own cluster's worker pods (`ray.io/cluster` =
$ELASTICML_RAY_CLUSTER, the head pod's own label, given by the downward API).

Sequence: list nodes (paged; the list's resourceVersion) -> check every node -> watch from that
version (the server ends it after WATCH_S) -> check each ADDED/MODIFIED node, forget a DELETED one,
follow BOOKMARKs -> watch again from the last version; an expired version (410, or an ERROR event)
lists again. Any failure: logged, a backoff that doubles to a cap, then a fresh list; `run` never
returns until told to stop.

Checking a node: its taints give a notice (glossary below) -> the platform's worker pods of this
cluster on it (`spec.nodeName`) give node types (`ray.io/group`, '-' -> '_', as `kuberay.py` names
groups) -> each (node, notice kind, node type) not yet delivered goes to the callback, and counts as
delivered once it returns; a failed delivery is tried again before the next watch, which lasts only
RETRY_S while one is owed. A node that loses its taints, or is deleted, is forgotten (a later taint
is a new notice).

Taints (glossary):
- `karpenter.sh/disrupted`: Karpenter is removing the node: an interruption when the node is spot
  (`karpenter.sh/capacity-type: spot`); on other capacity it is Karpenter's own choice (consolidation,
  drift, expiry), which KubeRay and Ray see as a lost worker, not an interrupted pool.
- `aws-node-termination-handler/spot-itn`: the spot two-minute notice: an interruption.
- `aws-node-termination-handler/rebalance-recommendation`: elevated risk: a rebalance notice.
  NTH's `scheduled-maintenance` and `asg-lifecycle-termination` are not a spot market's and are not reported.

Configuration: the pod's own (KUBERNETES_SERVICE_HOST/PORT, the ServiceAccount's token and CA); for
tests $ELASTICML_K8S_API and $ELASTICML_K8S_CA, or `KubeAPI(base_url, ca_file=..., token_file=...)`.

Bounds: every list page, and every line of a watch, has a size cap; a watch has a total deadline however
slowly its bytes come; a line that is not a JSON watch event is logged and skipped; strings read from
objects are length-checked.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from elasticml.errors import ConfigError
from elasticml.provision.watcher import Notice

log = logging.getLogger("elasticml.k8s_watcher")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""The pod's ServiceAccount token and the cluster's CA, mounted by Kubernetes."""
API_ENV, CA_ENV, CLUSTER_ENV, NAMESPACE_ENV = ("ELASTICML_K8S_API", "ELASTICML_K8S_CA", "ELASTICML_RAY_CLUSTER",
                                               "ELASTICML_NAMESPACE")
DISRUPTED = "karpenter.sh/disrupted"
NTH_SPOT = "aws-node-termination-handler/spot-itn"
NTH_REBALANCE = "aws-node-termination-handler/rebalance-recommendation"
CAPACITY_TYPE = "karpenter.sh/capacity-type"
PLATFORM_LABEL = "app.kubernetes.io/part-of=elasticml"
"""kuberay.POD_LABELS as a selector: the platform's Ray pods, never a tenant's."""
WATCH_S = 300
RETRY_S = 5
"""A watch's length while a delivery is owed, so that it is tried again within seconds: a spot notice
gives two minutes."""
MAX_PAGE_BYTES = 16 * 1024 * 1024
"""One page of a list (PAGE_LIMIT objects; a node with its image list is tens of KB)."""
PAGE_LIMIT = 250
MAX_PAGES = 400
MAX_LINE_BYTES = 2 * 1024 * 1024
"""One watch event: one node."""
MAX_TOKEN_BYTES = 64 * 1024
MAX_TAINTS = 256
MAX_TRACKED = 20_000
"""Tainted nodes remembered; past it the oldest are forgotten, never memory without end."""
GROUP = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(frozen=True)
class Target:
    """Where the watcher reports from: this Ray cluster's worker pods in the platform's namespace."""

    namespace: str
    cluster: str

    def __post_init__(self) -> None:
        for name, value in (("namespace", self.namespace), ("cluster", self.cluster)):
            if not (isinstance(value, str) and len(value) <= 63 and GROUP.fullmatch(value)):
                raise ConfigError(f"must be a DNS label, got {str(value)[:70]!r}", field=name)


class KubeAPI:
    """GETs to the Kubernetes API server as the pod's ServiceAccount: JSON documents with a size cap,
    and watch streams line by line with a cap per line and a total deadline."""

    def __init__(self, base_url: str, *, ca_file: str | None = None, token_file: str | None = None,
                 timeout_s: float = 10.0, transport: httpx.BaseTransport | None = None) -> None:
        url = httpx.URL(base_url)
        if url.scheme != "https" and not (url.scheme == "http" and _loopback(url.host)):
            raise ConfigError("must be https://, or http:// on loopback only (tests)", field="api_url")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self.client = httpx.Client(base_url=base_url, verify=verify, timeout=timeout_s, transport=transport)
        self.token_file = token_file
        self.timeout_s = timeout_s

    @classmethod
    def in_cluster(cls) -> KubeAPI:
        """The API server the pod's environment names ($ELASTICML_K8S_API overrides it), with the pod's token."""
        base = os.environ.get(API_ENV)
        if not base:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ConfigError(f"not in a pod: KUBERNETES_SERVICE_HOST is unset (or set {API_ENV})", field="api_url")
            base = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        token = SA_DIR / "token"
        return cls(base, ca_file=os.environ.get(CA_ENV) or str(SA_DIR / "ca.crt"),
                   token_file=str(token) if token.is_file() else None)

    def _headers(self) -> dict[str, str]:
        # Read on every request: the kubelet rotates the projected token in place.
        if self.token_file is None:
            return {}
        with open(self.token_file, "rb") as f:
            token = f.read(MAX_TOKEN_BYTES + 1)
        if len(token) > MAX_TOKEN_BYTES:
            raise ConfigError(f"{self.token_file} is larger than {MAX_TOKEN_BYTES} bytes", field="token")
        return {"Authorization": f"Bearer {token.decode('ascii', errors='replace').strip()}"}

    def get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """A JSON object; HTTPError on a status other than 200, ValueError on an oversize or non-object body."""
        body = bytearray()
        deadline = time.monotonic() + self.timeout_s * 3
        with self.client.stream("GET", path, params=params, headers=self._headers()) as r:
            for chunk in r.iter_raw():
                body += chunk
                if len(body) > MAX_PAGE_BYTES:
                    raise ValueError(f"{path} sent more than {MAX_PAGE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"{path} took longer than {self.timeout_s * 3:.0f}s")
            if r.status_code != 200:
                raise httpx.HTTPStatusError(f"{path}: HTTP {r.status_code}: {bytes(body[:200])!r}",
                                            request=r.request, response=r)
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ValueError(f"{path} answered something that is not a JSON object ({len(body)} bytes)")
        return doc

    def lines(self, path: str, params: dict[str, str], *, deadline_s: float) -> Iterator[bytes]:
        """The lines of a streamed answer (a watch), until the server ends it; _Expired on 410."""
        deadline = time.monotonic() + deadline_s
        timeout = httpx.Timeout(self.timeout_s, read=deadline_s)
        with self.client.stream("GET", path, params=params, headers=self._headers(), timeout=timeout) as r:
            if r.status_code == 410:
                raise _Expired(path)
            if r.status_code != 200:
                raise httpx.HTTPStatusError(f"{path}: HTTP {r.status_code}", request=r.request, response=r)
            buf = bytearray()
            for chunk in r.iter_raw():
                buf += chunk
                while (end := buf.find(b"\n")) >= 0:
                    line, buf = bytes(buf[:end]), buf[end + 1:]
                    if line.strip():
                        yield line
                if len(buf) > MAX_LINE_BYTES:
                    raise ValueError(f"{path}: a watch event longer than {MAX_LINE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout(f"{path}: the watch outlived its {deadline_s:.0f}s deadline")
            if buf.strip():
                yield bytes(buf)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _text(value: Any, limit: int = 253) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit else None


def notice_of(node: dict[str, Any]) -> Notice | None:
    """The notice a node's taints give, if any (see the glossary); an interruption over a rebalance."""
    spec, meta = node.get("spec"), node.get("metadata")
    taints = spec.get("taints") if isinstance(spec, dict) else None
    if not isinstance(taints, list):
        return None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    spot = isinstance(labels, dict) and labels.get(CAPACITY_TYPE) == "spot"
    found: Notice | None = None
    for taint in taints[:MAX_TAINTS]:
        if not isinstance(taint, dict):
            continue
        key, when = taint.get("key"), _text(taint.get("timeAdded"), 64) or ""
        if key == NTH_SPOT or (key == DISRUPTED and spot):
            return Notice(kind="interruption", action="terminate", time=when)
        if key == NTH_REBALANCE:
            found = Notice(kind="rebalance", action=None, time=when)
    return found


class NodeWatcher:
    """Watches Nodes and reports each tainted node's notice for this cluster's groups on it (module docstring)."""

    def __init__(self, *, api: KubeAPI, target: Target, on_notice: Callable[[str, Notice], None],
                 watch_s: int = WATCH_S) -> None:
        self.api = api
        self.target = target
        self.on_notice = on_notice
        """(node type, notice): `watcher.report_to_scheduler` in production; raises if not taken."""
        self.watch_s = watch_s
        self.delivered: dict[str, set[tuple[str, str]]] = {}
        """By node, oldest first: the (notice kind, node type) the callback took; a kind of "*" with no node
        type means every group on the node took that kind (no Ray pod lands on a tainted node, so it is
        not listed again)."""
        self.pending: dict[str, dict[str, Any]] = {}
        """Tainted nodes with a delivery still owed, by name: checked again before each watch."""
        self.errors = 0
        self.skipped = 0
        """Watch lines or objects that were not what the API server sends: logged, ignored."""

    # -- one node -----------------------------------------------------------------------
    def check(self, node: Any) -> list[tuple[str, Notice]]:
        """Deliver this node's notice for each of this cluster's groups on it not yet told; what was delivered."""
        meta = node.get("metadata") if isinstance(node, dict) else None
        name = _text(meta.get("name")) if isinstance(meta, dict) else None
        if name is None or not NODE_NAME.fullmatch(name):
            self.skipped += 1
            log.warning("a node without a valid name; ignored")
            return []
        notice = notice_of(node)
        if notice is None:
            self.forget(name)
            return []
        if name not in self.delivered:
            while len(self.delivered) >= MAX_TRACKED:  # the oldest node's memory goes first
                self.forget(next(iter(self.delivered)))
        told = self.delivered.setdefault(name, set())
        if ("*", notice.kind) in told:
            return []
        self.pending[name] = node
        done = []
        for node_type in self.node_types_on(name):
            if (notice.kind, node_type) in told:
                continue
            self.on_notice(node_type, notice)  # raises if the scheduler did not take it: tried again later
            told.add((notice.kind, node_type))
            done.append((node_type, notice))
        del self.pending[name]
        told.add(("*", notice.kind))
        return done

    def forget(self, name: str) -> None:
        self.pending.pop(name, None)
        self.delivered.pop(name, None)

    def node_types_on(self, node: str) -> list[str]:
        """The node types of this cluster's live worker pods on `node`, from their `ray.io/group` label."""
        selector = f"ray.io/node-type=worker,{PLATFORM_LABEL},ray.io/cluster={self.target.cluster}"
        doc = self.api.get(f"/api/v1/namespaces/{self.target.namespace}/pods",
                           {"fieldSelector": f"spec.nodeName={node}", "labelSelector": selector, "limit": "500"})
        items = doc.get("items")
        types: list[str] = []
        for pod in items if isinstance(items, list) else []:
            meta = pod.get("metadata") if isinstance(pod, dict) else None
            labels = meta.get("labels") if isinstance(meta, dict) else None
            status = pod.get("status") if isinstance(pod, dict) else None
            if not isinstance(labels, dict) or labels.get("ray.io/cluster") != self.target.cluster \
                    or labels.get("ray.io/node-type") != "worker":
                continue  # a server that ignored the selector: only this cluster's workers count
            if isinstance(status, dict) and status.get("phase") in ("Succeeded", "Failed"):
                continue
            group = labels.get("ray.io/group")
            if not (isinstance(group, str) and GROUP.fullmatch(group)):
                self.skipped += 1
                log.warning("a worker pod on %s without a valid ray.io/group label; ignored", node)
                continue
            if group.replace("-", "_") not in types:
                types.append(group.replace("-", "_"))
        return types

    # -- the list and the watch ------------------------------------------------------------
    def resync(self) -> str:
        """List every node (paged), check each; the resourceVersion to watch from."""
        params = {"limit": str(PAGE_LIMIT)}
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self.api.get("/api/v1/nodes", params)
            items, meta = page.get("items"), page.get("metadata")
            if not isinstance(items, list) or not isinstance(meta, dict):
                raise ValueError("a node list without items and metadata")
            for node in items:
                self._check_logged(node)
                name = node.get("metadata", {}).get("name") if isinstance(node, dict) else None
                if isinstance(name, str):
                    seen.add(name)
            more = _text(meta.get("continue"), 4096)
            if not more:
                version = _text(meta.get("resourceVersion"), 64)
                if not version:
                    raise ValueError("a node list without a resourceVersion")
                for name in (set(self.delivered) | set(self.pending)) - seen:  # gone while no watch ran
                    self.forget(name)
                return version
            params = {"limit": str(PAGE_LIMIT), "continue": more}
        raise ValueError(f"the node list went on past {MAX_PAGES} pages")

    def watch_once(self, version: str) -> str:
        """One watch from `version` until the server ends it; the last version seen. _Expired: list again."""
        length = min(self.watch_s, RETRY_S) if self.pending else self.watch_s
        params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(length)}
        for line in self.api.lines("/api/v1/nodes", params, deadline_s=length + 30):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            kind = event.get("type") if isinstance(event, dict) else None
            obj = event.get("object") if isinstance(event, dict) else None
            if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR") or not isinstance(obj, dict):
                self.skipped += 1
                log.warning("a watch line that is not a watch event (%d bytes); ignored", len(line))
                continue
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired("the node watch's resourceVersion expired")
                raise httpx.HTTPError(f"the node watch ended in an error: {str(obj.get('message'))[:200]}")
            meta = obj.get("metadata")
            new = _text(meta.get("resourceVersion"), 64) if isinstance(meta, dict) else None
            if kind == "DELETED":
                name = meta.get("name") if isinstance(meta, dict) else None
                if isinstance(name, str):
                    self.forget(name)
            elif kind != "BOOKMARK":
                self._check_logged(obj)
            version = new or version
        return version

    def _check_logged(self, node: Any) -> None:
        try:
            self.check(node)
        except Exception as exc:  # the pod list or the delivery: the node stays pending, the watch goes on
            self.errors += 1
            log.warning("a tainted node's notice was not delivered (%s: %.300s); trying again later",
                        type(exc).__name__, exc)

    def retry_pending(self) -> None:
        for node in list(self.pending.values()):
            self._check_logged(node)

    def run(self, *, min_backoff_s: float = 1.0, max_backoff_s: float = 60.0,
            stop: Callable[[], bool] = lambda: False) -> None:
        version: str | None = None
        backoff = min_backoff_s
        while not stop():
            try:
                if version is None:
                    version = self.resync()
                self.retry_pending()
                version = self.watch_once(version)
                backoff = min_backoff_s
            except _Expired:  # list again, after a pause should the server keep answering so
                version = None
                time.sleep(min_backoff_s)
            except Exception as exc:  # the API server down, slow or lying: log, back off, list again
                self.errors += 1
                version = None
                log.warning("watching nodes failed (%s: %.300s); listing again in %.0fs", type(exc).__name__, exc,
                            backoff)
                time.sleep(backoff)
                backoff = min(max_backoff_s, backoff * 2)


def main() -> int:
    from elasticml.provision.watcher import report_to_scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    target = Target(namespace=os.environ.get(NAMESPACE_ENV, ""), cluster=os.environ.get(CLUSTER_ENV, ""))
    NodeWatcher(api=KubeAPI.in_cluster(), target=target, on_notice=report_to_scheduler).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
