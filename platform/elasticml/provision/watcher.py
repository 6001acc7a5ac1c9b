"""The spot interruption watcher: `python -m elasticml.provision.watcher` on every spot node.

It polls the instance metadata service (IMDSv2: `PUT /latest/api/token`, then
`GET /latest/meta-data/spot/instance-action` and
`/latest/meta-data/events/recommendations/rebalance` with the token) and, on a
notice, tells the scheduler (`interrupt(node type)`, which re-places the
pool's work and drains its nodes as preempted, so Ray Train checkpoints) — once
per notice. A metadata service that is slow or down is retried with backoff
and logged; the watcher never dies of it.

Sequence: token (cached until near expiry) -> instance-action (404 = none) ->
rebalance (404 = none) -> on the first notice: callback -> keep polling (a
later, different notice is reported again).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
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


class Watcher:
    def __init__(self, *, on_notice: Callable[[Notice], None], imds_url: str = IMDS_URL,
                 timeout_s: float = 2.0, transport: httpx.BaseTransport | None = None) -> None:
        self.on_notice = on_notice
        self.client = httpx.Client(base_url=imds_url, timeout=timeout_s, transport=transport)
        self._token: str | None = None
        self._token_expiry = 0.0
        self._reported: set[Notice] = set()
        self.errors = 0

    def _get_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expiry:
            r = self.client.put("/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
            r.raise_for_status()
            self._token = r.text
            self._token_expiry = time.monotonic() + TOKEN_TTL_S - 60
        return self._token

    def _get(self, path: str) -> dict | None:
        r = self.client.get(path, headers={"X-aws-ec2-metadata-token": self._get_token()})
        if r.status_code == 401:  # token expired early or was revoked: fetch a new one next time
            self._token = None
            r.raise_for_status()
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def poll_once(self) -> Notice | None:
        """One round; the notice reported this round, if any. Raises on IMDS errors."""
        action = self._get("/latest/meta-data/spot/instance-action")
        notice = None
        if action is not None:
            notice = Notice(kind="interruption", action=action.get("action"), time=action.get("time", ""))
        else:
            rebalance = self._get("/latest/meta-data/events/recommendations/rebalance")
            if rebalance is not None:
                notice = Notice(kind="rebalance", action=None, time=rebalance.get("noticeTime", ""))
        if notice is None or notice in self._reported:
            return None
        self._reported.add(notice)
        self.on_notice(notice)
        return notice

    def run(self, *, interval_s: float = 5.0, max_backoff_s: float = 60.0, stop: Callable[[], bool] = lambda: False) -> None:
        backoff = interval_s
        while not stop():
            try:
                self.poll_once()
                backoff = interval_s
            except (httpx.HTTPError, ValueError) as exc:
                self.errors += 1
                log.warning("instance metadata unavailable (%s); retrying in %.0fs", exc, backoff)
                time.sleep(backoff)
                backoff = min(max_backoff_s, backoff * 2)
                continue
            time.sleep(interval_s)


def notify_scheduler(notice: Notice) -> None:
    """The production callback: re-place this node type's work and drain it, via the scheduler actor."""
    import ray

    from elasticml.scheduler.client import SchedulerClient

    node_type = os.environ.get("RAY_NODE_TYPE_NAME")
    if not ray.is_initialized():
        ray.init(address="auto", logging_level="ERROR")
    if node_type is None:
        node_type = ray.get_runtime_context().get_node_labels().get("elasticml.io/node-type")
    if node_type is None:
        log.error("spot %s notice, but this node's type is unknown; nothing re-placed", notice.kind)
        return
    if notice.kind == "rebalance":
        log.warning("rebalance recommendation for %s at %s: no action until an interruption notice", node_type, notice.time)
        return
    result = SchedulerClient.connect().interrupt(node_type)
    log.warning("interruption notice (%s at %s): %d workloads re-placed, %d nodes drained", notice.action, notice.time,
                len(result["decisions"]), len(result["drained_nodes"]))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    watcher = Watcher(on_notice=notify_scheduler, imds_url=os.environ.get("ELASTICML_IMDS_URL", IMDS_URL))
    watcher.run(interval_s=float(os.environ.get("ELASTICML_WATCH_INTERVAL_S", "5")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
