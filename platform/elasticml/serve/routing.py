"""How often Serve's router retries a queued request: often enough that a freed slot does not sit empty.

When every replica of a deployment holds `max_ongoing_requests`, Serve's router (in each HTTP proxy and
each deployment handle) keeps the requests waiting in its queue, at most two routing tasks a replica
working through it. A task that finds every replica full sleeps, 25 ms and then twice as long each
time, up to `max_backoff_s` (Serve's default 0.5 s), and nothing wakes it when a replica finishes a
request: a slot that frees while every task sleeps stays empty until one wakes. Under a queue the
tasks sit near the longest sleep, so a replica with few slots is fed far below what it can serve,
and a queue that formed during a surge drains slowly or not at all. Capping the sleep short keeps the
slots full; what it costs is more queue-length probes from the router while every replica is full
(benchmarks/serve_router.py measures both, with Serve's default side by side).

Every elasticml deployment that requests can queue for takes its router settings from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import RequestRouterConfig

ROUTER_MAX_BACKOFF_S = 0.05
"""The longest a routing task sleeps between tries while every replica is full (Serve's default: 0.5)."""
BOUNDS = (0.005, 5.0)


def router_config(max_backoff_s: float = ROUTER_MAX_BACKOFF_S) -> "RequestRouterConfig":
    """Serve's `request_router_config` for a deployment: its default router, retrying at most every
    `max_backoff_s` while every replica is full (Serve's own first retry, 25 ms, caps at it too)."""
    from ray.serve.config import RequestRouterConfig

    # Ray types the constructor's keywords as dicts (`**kwargs: dict[str, Any]`); they are its fields.
    settings: dict[str, Any] = {"max_backoff_s": max_backoff_s,
                                "initial_backoff_s": min(RequestRouterConfig().initial_backoff_s, max_backoff_s)}
    return RequestRouterConfig(**settings)
