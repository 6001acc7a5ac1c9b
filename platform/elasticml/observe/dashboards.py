"""Grafana dashboards for cost, the scheduler, training and serving, built from one list of panels.

Each panel is a title, a unit and PromQL expressions over the metrics the platform exports through
Ray's metrics agents (`ray_elasticml_*`, see scheduler/metrics.py, train/loop.py, serve/metrics.py)
and Ray Serve's own. `elasticml cluster render` writes them to `cluster_configs/grafana/` (import
them into Grafana beside Ray's own dashboards, with a Prometheus data source named `prometheus`);
a test evaluates every expression against a real Prometheus scraping a real local cluster.
Hand-built JSON: a dashboard here is a handful of timeseries panels, less than a library's model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    exprs: tuple[str, ...]
    legend: str = ""


DASHBOARDS: dict[str, tuple[str, tuple[Panel, ...]]] = {
    "cost": ("elasticml: cost", (
        Panel("Spend rate by market", "currencyUSD", (
            "sum by (market) (ray_elasticml_scheduler_spend_rate_dollars_per_hour)",), "{{market}}"),
        Panel("Spend rate by tenant", "currencyUSD", (
            "sum by (tenant) (ray_elasticml_scheduler_spend_rate_dollars_per_hour)",), "{{tenant}}"),
        Panel("Cost so far by tenant and market", "currencyUSD", (
            "sum by (tenant, market) (ray_elasticml_scheduler_cost_dollars)",), "{{tenant}} {{market}}"),
        Panel("Savings against all on-demand", "currencyUSD", (
            "sum(ray_elasticml_scheduler_savings_dollars)",
            "sum(ray_elasticml_scheduler_on_demand_cost_dollars)"), ""),
    )),
    "scheduler": ("elasticml: scheduler", (
        Panel("Decisions per minute", "short", (
            "sum by (action) (rate(ray_elasticml_scheduler_decisions_total[1m])) * 60",), "{{action}}"),
        Panel("Workers by market", "short", (
            "sum by (market) (ray_elasticml_scheduler_allocated_workers)",), "{{market}}"),
        Panel("Pools taking work", "short", (
            "max by (node_type) (ray_elasticml_scheduler_pool_available)",), "{{node_type}}"),
        Panel("Pool prices", "currencyUSD", (
            "max by (node_type) (ray_elasticml_scheduler_pool_price_dollars_per_hour)",), "{{node_type}}"),
        Panel("Queued workloads", "short", ("max(ray_elasticml_scheduler_queued_workloads)",), ""),
    )),
    "training": ("elasticml: training", (
        Panel("Loss", "short", ("max by (run) (ray_elasticml_train_loss)",), "{{run}}"),
        Panel("Tokens per second", "short", ("sum by (run) (ray_elasticml_train_tokens_per_s)",), "{{run}}"),
        Panel("Model FLOPs utilisation", "percentunit", ("max by (run) (ray_elasticml_train_mfu)",), "{{run}}"),
        Panel("Step", "short", ("max by (run) (ray_elasticml_train_step)",), "{{run}}"),
        Panel("Checkpoint time", "s", ("max by (run) (ray_elasticml_train_checkpoint_seconds)",), "{{run}}"),
    )),
    "serving": ("elasticml: serving", (
        Panel("Requests per second by tenant", "reqps", (
            "sum by (tenant) (rate(ray_elasticml_serve_requests_total[1m]))",), "{{tenant}}"),
        Panel("Cache hit rate", "percentunit", ("max(ray_elasticml_serve_cache_hit_rate)",), ""),
        Panel("Request latency p50 / p99", "ms", (
            "histogram_quantile(0.5, sum by (le) (rate(ray_serve_http_request_latency_ms_bucket[1m])))",
            "histogram_quantile(0.99, sum by (le) (rate(ray_serve_http_request_latency_ms_bucket[1m])))"), ""),
        Panel("Batch size p50 / p99 (requests)", "short", (
            "histogram_quantile(0.5, sum by (le) (rate(ray_elasticml_serve_batch_size_bucket[1m])))",
            "histogram_quantile(0.99, sum by (le) (rate(ray_elasticml_serve_batch_size_bucket[1m])))"), ""),
        Panel("Requests waiting for a batch", "short", ("sum(ray_elasticml_serve_queued_requests)",), ""),
        Panel("Replicas by deployment", "short", (
            "sum by (deployment) (ray_serve_deployment_replica_healthy)",), "{{deployment}}"),
    )),
}


def exprs() -> list[str]:
    """Every PromQL expression of every panel."""
    return [e for _, panels in DASHBOARDS.values() for p in panels for e in p.exprs]


def dashboard(key: str) -> dict[str, Any]:
    title, panels = DASHBOARDS[key]
    source = {"type": "prometheus", "uid": "prometheus"}
    return {
        "uid": f"elasticml-{key}", "title": title, "tags": ["elasticml"], "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "timezone": "browser",
        "panels": [{
            "id": i + 1, "type": "timeseries", "title": p.title, "datasource": source,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "datasource": source, "expr": e, "legendFormat": p.legend}
                        for j, e in enumerate(p.exprs)],
        } for i, p in enumerate(panels)],
    }


def rendered() -> dict[str, str]:
    """{path: JSON} of every dashboard, for `elasticml cluster render`."""
    return {f"cluster_configs/grafana/{key}.json": json.dumps(dashboard(key), indent=2) + "\n" for key in DASHBOARDS}


def prometheus_config(session_dir: str, *, interval_s: int = 10) -> str:
    """A Prometheus config that scrapes every node of a Ray cluster: Ray keeps the list of its nodes'
    metrics agents in the session's service-discovery file, which Prometheus re-reads as nodes come
    and go."""
    import yaml

    return yaml.safe_dump({
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "scrape_configs": [{"job_name": "ray", "file_sd_configs": [
            {"files": [f"{session_dir.rstrip('/')}/prom_metrics_service_discovery.json"]}]}],
    }, sort_keys=False)
