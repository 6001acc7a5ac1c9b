"""Grafana dashboards for cost, the scheduler, training and serving, built from one list of panels.

Each panel is a title, a unit and PromQL expressions over the metrics the platform exports through
Ray's metrics agents (`ray_elasticml_*`, see scheduler/metrics.py, train/loop.py, serve/metrics.py)
and Ray Serve's own. `elasticml cluster render` writes them to `cluster_configs/grafana/` (import
them into Grafana beside Ray's own dashboards); a test evaluates every expression against a real
Prometheus scraping a real local cluster. Hand-built JSON: a dashboard here is a handful of
timeseries panels, less than a library's model.

One Prometheus often scrapes several Ray clusters (the PodMonitor selects every Ray pod of the
platform: its own RayCluster, each RayJob's and RayService's), and a sum over all of them means
nothing. So every dashboard has two variables, `$datasource` (any Prometheus data source) and
`$cluster` (one value of the `ray_io_cluster` label, which the PodMonitor copies from KubeRay's pod
label and the local scrape config below sets to the local cluster's name), and every selector of
every query is narrowed to `ray_io_cluster=~"$cluster"` (`scoped`), so the panels below are written
without it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CLUSTER_LABEL = "ray_io_cluster"
"""The label naming the Ray cluster a series came from (KubeRay's pod label `ray.io/cluster`)."""
CLUSTER_FILTER = f'{CLUSTER_LABEL}=~"$cluster"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CLUSTER_VALUES = f"label_values(up, {CLUSTER_LABEL})"
"""`up` exists for every target Prometheus scrapes, before any Ray or elasticml metric has been
set, and carries the target's labels: the list of clusters is there as soon as a cluster is scraped."""

# A metric name the way the panels write them (every series here is Ray's, `ray_...`), with its
# label matchers if any; not the label `ray_io_cluster` itself.
_SELECTOR = re.compile(r"\b(ray_(?!io_cluster\b)[A-Za-z0-9_:]*)(\{([^}]*)\})?")


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
        Panel("Longest wait in the queue", "s", ("max(ray_elasticml_scheduler_oldest_queued_seconds)",), ""),
    )),
    "training": ("elasticml: training", (
        Panel("Loss", "short", ("max by (run) (ray_elasticml_train_loss)",), "{{run}}"),
        Panel("Tokens per second", "short", ("sum by (run) (ray_elasticml_train_tokens_per_s)",), "{{run}}"),
        Panel("Model FLOPs utilisation", "percentunit", ("max by (run) (ray_elasticml_train_mfu)",), "{{run}}"),
        Panel("Step", "short", ("max by (run) (ray_elasticml_train_step)",), "{{run}}"),
        Panel("Checkpoint time", "s", ("max by (run) (ray_elasticml_train_checkpoint_seconds)",), "{{run}}"),
        Panel("Since the last checkpoint", "s", (
            "time() - max by (run) (ray_elasticml_train_last_checkpoint_timestamp_seconds)",), "{{run}}"),
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


def scoped(expr: str, matcher: str = CLUSTER_FILTER) -> str:
    """`expr` with `matcher` added to every selector of a Ray metric in it."""
    def narrow(m: re.Match[str]) -> str:
        inner = (m.group(3) or "").strip()
        return f"{m.group(1)}{{{matcher}{', ' + inner if inner else ''}}}"

    return _SELECTOR.sub(narrow, expr)


def exprs() -> list[str]:
    """Every PromQL expression of every panel, as its dashboard runs it (with `$cluster` in it)."""
    return [scoped(e) for _, panels in DASHBOARDS.values() for p in panels for e in p.exprs]


def variables() -> list[dict[str, Any]]:
    """`$datasource`, then `$cluster`: one cluster at a time (no "All", whose sums would mix clusters
    again), the first of them when the dashboard opens."""
    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": ""},
        {"name": "cluster", "label": "Ray cluster", "type": "query", "datasource": DATASOURCE,
         "definition": CLUSTER_VALUES, "query": {"query": CLUSTER_VALUES, "refId": "PrometheusVariableQueryEditor"},
         "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [],
         "refresh": 2, "regex": "", "sort": 1,  # 2: on every time-range change, as clusters come and go
         "description": f"The Ray cluster the series come from (its `{CLUSTER_LABEL}` label)."},
    ]


def dashboard(key: str) -> dict[str, Any]:
    title, panels = DASHBOARDS[key]
    return {
        "uid": f"elasticml-{key}", "title": title, "tags": ["elasticml"], "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s", "timezone": "browser",
        "templating": {"list": variables()},
        "panels": [{
            "id": i + 1, "type": "timeseries", "title": p.title, "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": scoped(e),
                         "legendFormat": p.legend} for j, e in enumerate(p.exprs)],
        } for i, p in enumerate(panels)],
    }


def rendered() -> dict[str, str]:
    """{path: JSON} of every dashboard, for `elasticml cluster render`."""
    return {f"cluster_configs/grafana/{key}.json": json.dumps(dashboard(key), indent=2) + "\n" for key in DASHBOARDS}


def prometheus_config(session_dir: str, *, cluster: str, interval_s: int = 10,
                      rule_files: tuple[str, ...] = ()) -> str:
    """A Prometheus config that scrapes every node of a Ray cluster: Ray keeps the list of its nodes'
    metrics agents in the session's service-discovery file, which Prometheus re-reads as nodes come
    and go. Every target gets `ray_io_cluster: <cluster>`, as the PodMonitor gives KubeRay's pods, so
    the dashboards' `$cluster` and the alerts work the same here. `rule_files`: alerting rules to
    load (`cluster_configs/prometheus/elasticml-rules.yaml`)."""
    import yaml

    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
    }
    if rule_files:
        config["rule_files"] = list(rule_files)
    config["scrape_configs"] = [{
        "job_name": "ray",
        "file_sd_configs": [{"files": [f"{session_dir.rstrip('/')}/prom_metrics_service_discovery.json"]}],
        "relabel_configs": [{"target_label": CLUSTER_LABEL, "replacement": cluster}],
    }]
    return yaml.safe_dump(config, sort_keys=False)
