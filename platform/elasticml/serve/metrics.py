"""A replica's Prometheus metrics, exported by Ray's metrics agent on every node (ray_elasticml_serve_*)."""

from __future__ import annotations


BATCH_SIZES: list[float] = [1, 2, 4, 8, 16, 32, 64]


class ServeMetrics:
    """Requests by tenant and cache outcome, the response cache's hit rate, the batches the model ran
    (their sizes and how long each took) and the requests waiting for a batch."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.requests = Counter("elasticml_serve_requests", description="completion requests",
                                tag_keys=("tenant", "cache"))
        self.hit_rate = Gauge("elasticml_serve_cache_hit_rate", description="response cache hit rate")
        self.batch_size = Histogram("elasticml_serve_batch_size", description="requests per batch the model ran",
                                    boundaries=BATCH_SIZES)
        self.batch_seconds = Histogram("elasticml_serve_batch_seconds", description="how long a batch took",
                                       boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
        self.queued = Gauge("elasticml_serve_queued_requests", description="requests waiting for the next batch")

    def batch(self, size: int, seconds: float, queued: int) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.queued.set(queued)

    def record(self, tenant: str | None, cached: bool, hit_rate: float) -> None:
        self.requests.inc(tags={"tenant": tenant or "-", "cache": "hit" if cached else "miss"})
        self.hit_rate.set(hit_rate)
