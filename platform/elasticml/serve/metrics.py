"""A replica's Prometheus metrics, exported by Ray's metrics agent on every node (ray_elasticml_serve_*)."""

from __future__ import annotations


class ServeMetrics:
    """Requests by tenant and cache outcome, and the response cache's hit rate."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self.requests = Counter("elasticml_serve_requests", description="completion requests",
                                tag_keys=("tenant", "cache"))
        self.hit_rate = Gauge("elasticml_serve_cache_hit_rate", description="response cache hit rate")

    def record(self, tenant: str | None, cached: bool, hit_rate: float) -> None:
        self.requests.inc(tags={"tenant": tenant or "-", "cache": "hit" if cached else "miss"})
        self.hit_rate.set(hit_rate)
