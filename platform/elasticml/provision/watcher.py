"""The spot interruption watcher: `python -m elasticml.provision.watcher` on every spot node.

It polls the instance metadata service (IMDSv2: `PUT /latest/api/token`, then
`GET /latest/meta-data/spot/instance-action` and
`/latest/meta-data/events/recommendations/rebalance` with the token) and, on a
notice, tells the scheduler (`interrupt(node type)`, which re-places the
pool's work and drains its nodes as preempted, so Ray Train checkpoints) — once
per notice. A metadata service that is slow, down or lying is retried with
backoff and logged; the watcher never dies of it.

Sequence: token (cached until near expiry) -> instance-action (404 = none) ->
rebalance (404 = none) -> on a new notice: callback; the notice counts as
reported only once the callback returns (the scheduler took it) -> keep
polling (a later, different notice is reported again). Every poll round has
one deadline and every body a size cap; a document that is not what IMDS sends
is logged and ignored. The launcher runs it under a restart loop
(`provision/render.py`), so even a crash of the process is not the end of it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

import httpx

log = logging.getLogger("elasticml.watcher")
IMDS_URL = "http://169.254.169.254"
TOKEN_TTL_S = 21600


@dataclass(frozen=True)
class Notice:
    kind: str
    """"interruption" (two-minute notice) or "rebalance" (elevated risk)."""
    action: str | None
    """stop / terminate / hibernate for interruptions."""
    time: str
    """When AWS will act (interruption) or noticed the risk (rebalance), ISO 8601."""


MAX_BODY_BYTES = 64 * 1024
"""An instance-action document is under 100 bytes; anything past this is not the metadata service."""
ACTIONS = ("stop", "terminate", "hibernate")


class Watcher:
    """Polls IMDSv2; never hangs (a total deadline per poll round, however slowly the bytes come),
    never dies (every failure is logged and the next round tries again), and reports a notice until
    the callback has taken it (a failed delivery is retried at the next round)."""

    def __init__(self, *, on_notice: Callable[[Notice], None], imds_url: str = IMDS_URL,
                 timeout_s: float = 2.0, transport: httpx.BaseTransport | None = None) -> None:
        self.on_notice = on_notice
        self.timeout_s = timeout_s
        """The whole poll round's deadline: token, instance action and rebalance together."""
        self.client = httpx.Client(base_url=imds_url, timeout=timeout_s, transport=transport)
        self._token: str | None = None
        self._token_expiry = 0.0
        self._reported: set[Notice] = set()
        self._deadline = 0.0
        self.errors = 0
        self.skipped = 0
        """Documents that were not what IMDS sends (not JSON, not an object, wrong fields): logged, ignored."""

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpx.ReadTimeout(f"the poll round's {self.timeout_s}s deadline passed before {path}")
        body = bytearray()
        with self.client.stream(method, path, headers=headers, timeout=left) as r:
            for chunk in r.iter_raw():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise ValueError(f"{path} sent more than {MAX_BODY_BYTES} bytes")
                if time.monotonic() > self._deadline:  # a slow drip: each read is quick, the whole is not
                    raise httpx.ReadTimeout(f"{path} took longer than the poll round's {self.timeout_s}s")
            return r.status_code, bytes(body)

    def _get_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expiry:
            status, body = self._request("PUT", "/latest/api/token",
                                         {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
            token = body.decode("ascii", errors="replace").strip()
            if status != 200 or not token or len(token) > 1024:
                raise httpx.HTTPError(f"no IMDSv2 session token (HTTP {status})")
            self._token = token
            self._token_expiry = time.monotonic() + TOKEN_TTL_S - 60
        return self._token

    def _get(self, path: str) -> dict[str, Any] | None:
        status, body = self._request("GET", path, {"X-aws-ec2-metadata-token": self._get_token()})
        if status == 401:  # token expired early or was revoked: fetch a new one next time
            self._token = None
            raise httpx.HTTPError(f"{path}: HTTP 401, the session token was refused")
        if status == 404:
            return None
        if status != 200:
            raise httpx.HTTPError(f"{path}: HTTP {status}")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            self.skipped += 1
            log.warning("%s answered something that is not a JSON object (%d bytes); ignored", path, len(body))
            return None
        return doc

    def poll_once(self) -> Notice | None:
        """One round; the notice delivered this round, if any. Raises on IMDS errors and failed deliveries."""
        self._deadline = time.monotonic() + self.timeout_s
        notice = None
        action = self._get("/latest/meta-data/spot/instance-action")
        if action is not None:
            kind, when = action.get("action"), action.get("time")
            if kind in ACTIONS and isinstance(when, str) and len(when) <= 64:
                notice = Notice(kind="interruption", action=kind, time=when)
            else:
                self.skipped += 1
                log.warning("instance-action without a known action and time; ignored: %.200r", action)
        if notice is None:
            rebalance = self._get("/latest/meta-data/events/recommendations/rebalance")
            when = rebalance.get("noticeTime") if rebalance is not None else None
            if isinstance(when, str) and len(when) <= 64:
                notice = Notice(kind="rebalance", action=None, time=when)
            elif rebalance is not None:
                self.skipped += 1
                log.warning("rebalance recommendation without a noticeTime; ignored: %.200r", rebalance)
        if notice is None or notice in self._reported:
            return None
        self.on_notice(notice)  # raises if the scheduler did not take it: reported again next round
        self._reported.add(notice)
        return notice

    def run(self, *, interval_s: float = 5.0, max_backoff_s: float = 60.0, stop: Callable[[], bool] = lambda: False) -> None:
        backoff = interval_s
        while not stop():
            try:
                self.poll_once()
                backoff = interval_s
            except Exception as exc:  # IMDS down or lying, the scheduler unreachable: log, back off, go on
                self.errors += 1
                log.warning("poll failed (%s: %.300s); retrying in %.0fs", type(exc).__name__, exc, backoff)
                time.sleep(backoff)
                backoff = min(max_backoff_s, backoff * 2)
                continue
            time.sleep(interval_s)


def notify_scheduler(notice: Notice) -> None:
    """The production callback on a spot node: its own node type's notice, via `report_to_scheduler`."""
    import ray

    node_type = os.environ.get("RAY_NODE_TYPE_NAME")
    if not ray.is_initialized():
        ray.init(address="auto", logging_level=logging.ERROR)
    if node_type is None:
        node_type = ray.get_runtime_context().get_node_labels().get("elasticml.io/node-type")  # type: ignore[assignment]  # Ray annotates label values list[str]; they are str
    if node_type is None:
        log.error("spot %s notice, but this node's type is unknown; nothing re-placed", notice.kind)
        return
    report_to_scheduler(node_type, notice)


def report_to_scheduler(node_type: str, notice: Notice) -> None:
    """Tell this Ray cluster's scheduler, as the node agent, that `node_type` is being interrupted: it
    re-places the pool's work and drains its nodes as preempted. A rebalance recommendation is only
    logged. Raises when the scheduler did not take it (the caller reports it again). The Kubernetes
    watcher (`k8s_watcher.py`) calls this too, with the node type of the pods on a tainted node."""
    import ray

    from elasticml.scheduler.client import SchedulerClient

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", logging_level=logging.ERROR)
    if notice.kind == "rebalance":
        log.warning("rebalance recommendation for %s at %s: no action until an interruption notice", node_type, notice.time)
        return
    result = SchedulerClient.connect(default="agent").interrupt(node_type)
    log.warning("interruption notice for %s (%s at %s): %d workloads re-placed, %d nodes drained", node_type,
                notice.action, notice.time, len(result["decisions"]), len(result["drained_nodes"]))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    watcher = Watcher(on_notice=notify_scheduler, imds_url=os.environ.get("ELASTICML_IMDS_URL", IMDS_URL))
    watcher.run(interval_s=float(os.environ.get("ELASTICML_WATCH_INTERVAL_S", "5")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
