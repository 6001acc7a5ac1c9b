"""How soon Serve's router tries a queued request again: soon enough that a freed slot does not sit empty.

Serve's router (one in each HTTP proxy, one in each deployment handle) keeps the requests that found
no free slot in its queue and works through it with routing tasks, up to twice as many as there are
replicas (50 at most). A task tries two replicas picked at random; when both are full it tries again
at once, then after 25 ms, then after twice as long each time, up to `max_backoff_s` (Serve's default
0.5 s). Nothing wakes a sleeping task when a replica finishes a request (a finished request only
updates the router's cache of queue lengths), so a slot that frees while the tasks sleep stays empty
until one wakes. Under a queue the tasks sleep near the longest wait, and a replica with few slots is
fed far below what it can serve: the queue then drains slower than requests arrive, and it stays
until the load falls (benchmarks/README.md, "Serve's router under a queue", measures it side by side).

A short cap keeps the slots full. What it costs: while the sampled replicas are full, each try asks
them for their queue lengths, so the probes grow with the routers, the routing tasks and 1 / cap.

Every elasticml deployment that requests queue for takes its router settings from here; an app's
`router_max_backoff_s` (ServeConfig) sets the cap for its own deployments. Serve's environment
variable for the same (RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S, deprecated) does not reach them: a
deployment's own setting comes first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import RequestRouterConfig

ROUTER_MAX_BACKOFF_S = 0.05
"""The longest a routing task sleeps between tries (Serve's default: 0.5)."""
BOUNDS = (0.005, 0.5)
"""What an app may set: no shorter than 5 ms (each try probes replicas), no longer than Serve's own default."""


def router_config(max_backoff_s: float = ROUTER_MAX_BACKOFF_S) -> "RequestRouterConfig":
    """Serve's `request_router_config` for a deployment: its default router, waiting at most
    `max_backoff_s` between tries (Serve's first wait, 25 ms, is capped at it too)."""
    from ray.serve.config import RequestRouterConfig

    # Ray types the constructor's keywords as dicts (`**kwargs: dict[str, Any]`); they are its fields.
    settings: dict[str, Any] = {"max_backoff_s": max_backoff_s,
                                "initial_backoff_s": min(RequestRouterConfig().initial_backoff_s, max_backoff_s)}
    return RequestRouterConfig(**settings)
