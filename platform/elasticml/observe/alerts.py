"""The alerts an operator of the platform acts on, from one list of rules rendered two ways.

`groups(Thresholds())` is a list of Prometheus rule groups. `elasticml cluster render` writes it as a
plain rules file, `cluster_configs/prometheus/elasticml-rules.yaml` (a `rule_files:` entry of any
Prometheus; `cluster prometheus-config --rules` adds it locally), and as the `spec.groups` of a
PrometheusRule per cloud definition (`provision/kuberay.py`), the same groups both ways.

The rules read the metrics the platform exports (`ray_elasticml_scheduler_*`, scheduler/metrics.py;
`ray_elasticml_train_*`, train/loop.py) and Ray Serve's own HTTP metrics (`ray_serve_num_http_*`,
`ray_serve_http_request_latency_ms`, ray/serve/_private/request_ingress_metrics.py). Each alert is
per Ray cluster (`ray_io_cluster`, which the PodMonitor and the local scrape config set), so one
Prometheus watching several clusters tells them apart, and each carries `for:`, a `severity`
(`critical`: someone acts now; `warning`: within the working day) and a summary, a description and
a runbook hint (what to run first, and where docs/observability.md explains it).

Serving has two objectives, availability (requests not answered 5xx) and latency (requests answered
within a bound), alerted on by multi-window burn rate (the Google SRE workbook's): a fast burn spends
2% of a 30-day error budget in an hour (14.4 times the allowed rate, over 1 h and over 5 m, so it
stops soon after the burn does) and pages; a slow burn spends 5% in 6 hours (6 times, over 6 h and
30 m) and opens a ticket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elasticml.dataconf import check_number
from elasticml.errors import ConfigError
from elasticml.yamlio import dump_yaml

RULES_FILE = "cluster_configs/prometheus/elasticml-rules.yaml"
RUNBOOK = "docs/observability.md#alerts"

RAY_LATENCY_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 60000, 120000,
                          300000, 600000)
"""Ray Serve's default request-latency bucket bounds (`DEFAULT_LATENCY_BUCKET_MS`, Ray 2.60): a
latency objective is counted from one bucket, so its bound must be one of them."""

BURN_WINDOWS = (
    # (long window, short window, burn rate, for, severity)
    ("1h", "5m", 14.4, "2m", "critical"),
    ("6h", "30m", 6.0, "15m", "warning"),
)
"""Multi-window burn-rate alerts, fast then slow (SRE workbook, "Alerting on SLOs", table 5-8)."""

SERVED = 'route!~"/-/.*", application!=""'
"""Requests to an application, not Serve's own health and routes probes (Ray's own dashboards filter the same)."""


@dataclass(kw_only=True, frozen=True)
class Thresholds:
    """When an alert fires. The rendered files use the defaults; another site renders its own."""

    budget_hours_left: float = 24.0
    """Warn when, at its current spend rate, a tenant reaches its budget within this many hours."""
    pool_unavailable_minutes: int = 30
    """A pool that takes no work for this long (interrupted or unfillable) is worth a look."""
    queued_minutes: int = 30
    """The longest a workload may wait in the scheduler's queue before someone is told."""
    checkpoint_age_minutes: int = 60
    """A run still making steps whose last checkpoint is older than this puts that much work at risk."""
    availability_objective: float = 0.995
    """Share of served requests not answered 5xx, over 30 days."""
    latency_objective: float = 0.99
    """Share of served requests answered within `latency_ms`, over 30 days."""
    latency_ms: int = 2000
    """The latency bound; one of Ray Serve's bucket bounds (RAY_LATENCY_BUCKETS_MS)."""

    def __post_init__(self) -> None:
        check_number(self.budget_hours_left, field="budget_hours_left", lo=0.1, hi=24 * 365)
        check_number(self.pool_unavailable_minutes, field="pool_unavailable_minutes", lo=1, hi=7 * 24 * 60, integer=True)
        check_number(self.queued_minutes, field="queued_minutes", lo=1, hi=7 * 24 * 60, integer=True)
        check_number(self.checkpoint_age_minutes, field="checkpoint_age_minutes", lo=1, hi=7 * 24 * 60, integer=True)
        # Below 0.9 the fast burn's threshold (14.4 times the budget) passes 100% and can never fire.
        check_number(self.availability_objective, field="availability_objective", lo=0.9, hi=0.9999)
        check_number(self.latency_objective, field="latency_objective", lo=0.9, hi=0.9999)
        check_number(self.latency_ms, field="latency_ms", lo=1, hi=600000, integer=True)
        if self.latency_ms not in RAY_LATENCY_BUCKETS_MS:
            raise ConfigError(f"must be one of Ray Serve's latency bucket bounds "
                              f"({', '.join(map(str, RAY_LATENCY_BUCKETS_MS))}), got {self.latency_ms}",
                              field="latency_ms")


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str
    """What to run or read first."""

    def rule(self) -> dict[str, Any]:
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": {"severity": self.severity},
                "annotations": {"summary": self.summary, "description": self.description,
                                "runbook": f"{self.runbook} (see {RUNBOOK})"}}


def _by(labels: str, agg: str, expr: str) -> str:
    return f"{agg} by (ray_io_cluster{', ' + labels if labels else ''}) ({expr})"


def cost(t: Thresholds) -> list[Alert]:
    budget = _by("tenant", "max", "ray_elasticml_scheduler_budget_dollars")
    spent = _by("tenant", "sum", "ray_elasticml_scheduler_cost_dollars")
    rate = _by("tenant", "sum", "ray_elasticml_scheduler_spend_rate_dollars_per_hour")
    return [
        Alert("ElasticmlTenantBudgetRunningOut",
              # Hours left at today's rate; no spend gives +Inf or NaN, which never compares true, and a
              # budget already spent is the next alert's.
              f"({budget} - {spent}) / {rate} < {t.budget_hours_left:g} > 0", "15m", "warning",
              "Tenant {{ $labels.tenant }} reaches its budget in {{ $value | humanize }} hours "
              "({{ $labels.ray_io_cluster }})",
              f"At the rate its running work costs now, tenant {{{{ $labels.tenant }}}} spends the rest of its budget "
              f"within {t.budget_hours_left:g} hours; then the scheduler pauses its work.",
              "elasticml cost report (who spends it), then raise the budget or stop work"),
        Alert("ElasticmlTenantOverBudget", f"{spent} >= {budget}", "5m", "warning",
              "Tenant {{ $labels.tenant }} has spent its budget ({{ $labels.ray_io_cluster }})",
              "The scheduler has paused the tenant's running work and refuses new placements until an admin "
              "raises its budget.",
              "elasticml cost report; elasticml scheduler explain NAME shows the pause"),
    ]


def scheduler(t: Thresholds) -> list[Alert]:
    queued = "ray_elasticml_scheduler_queued_workloads"
    return [
        Alert("ElasticmlSchedulerDown",
              # A cluster that exported the scheduler's metrics in the last 6 hours exports them no more:
              # its scheduler (or its head's metrics agent) is gone. A cluster taken down on purpose: silence it.
              f"count by (ray_io_cluster) (max_over_time({queued}[6h])) unless count by (ray_io_cluster) ({queued})",
              "5m", "critical", "The scheduler of {{ $labels.ray_io_cluster }} exports no metrics",
              "While the scheduler is down nothing is placed or moved, the queue waits and budgets are not held.",
              "elasticml scheduler status; the head's logs (the scheduler runs there)"),
        Alert("ElasticmlSchedulerAbsent", f"absent({queued})", "15m", "critical",
              "No cluster this Prometheus scrapes exports the scheduler's metrics",
              "The scheduler never started, or Prometheus scrapes none of the platform's clusters "
              "(check its targets: the PodMonitor, or the local scrape config).",
              "elasticml scheduler status; Prometheus' /targets page"),
        Alert("ElasticmlRayNodeScrapeFailing", 'up{ray_io_cluster!=""} == 0', "10m", "warning",
              "A Ray node's metrics agent does not answer ({{ $labels.ray_io_cluster }}, {{ $labels.instance }})",
              "Prometheus cannot scrape this node; if it is the platform cluster's head, the scheduler's "
              "metrics are gone with it and ElasticmlSchedulerDown follows.",
              "ray status on the cluster; the node's dashboard agent logs"),
        Alert("ElasticmlPoolUnavailable",
              _by("node_type, market", "max", "ray_elasticml_scheduler_pool_available") + " == 0",
              f"{t.pool_unavailable_minutes}m", "warning",
              "Pool {{ $labels.node_type }} ({{ $labels.market }}) takes no work ({{ $labels.ray_io_cluster }})",
              f"The scheduler has seen the pool interrupted or unfillable for {t.pool_unavailable_minutes} minutes; "
              "its work runs elsewhere, maybe dearer, or waits.",
              "elasticml scheduler status (the pool's reason); the cloud's capacity for that instance type"),
        Alert("ElasticmlPlacementQueuedTooLong",
              _by("", "max", "ray_elasticml_scheduler_oldest_queued_seconds") + f" > {t.queued_minutes * 60}",
              "5m", "warning",
              "A workload has waited {{ $value | humanizeDuration }} for capacity ({{ $labels.ray_io_cluster }})",
              f"The oldest queued workload has waited more than {t.queued_minutes} minutes; no pool it may use "
              "has room (quota, residency, markets, or pools unavailable).",
              "elasticml scheduler explain NAME (why it waits)"),
    ]


def training(t: Thresholds) -> list[Alert]:
    last = _by("run", "max", "ray_elasticml_train_last_checkpoint_timestamp_seconds")
    stepping = _by("run", "max", "delta(ray_elasticml_train_step[15m])")
    return [
        Alert("ElasticmlCheckpointTooOld",
              # Only while the run makes steps: a finished or stopped run's last checkpoint ages harmlessly.
              f"(time() - {last} > {t.checkpoint_age_minutes * 60}) and on (ray_io_cluster, run) ({stepping} > 0)",
              "10m", "warning",
              "Run {{ $labels.run }} has not checkpointed for {{ $value | humanizeDuration }} "
              "({{ $labels.ray_io_cluster }})",
              f"The run makes steps but its last checkpoint is over {t.checkpoint_age_minutes} minutes old: a "
              "preemption now loses everything since.",
              "elasticml train report RUN_DIR; the run's checkpoint_every and its storage's health"),
    ]


def _ratio(bad: str, total: str, window: str) -> str:
    return (f"{_by('application', 'sum', f'rate({bad}[{window}])')} / "
            f"{_by('application', 'sum', f'rate({total}[{window}])')}")


def serving(t: Thresholds) -> list[Alert]:
    errors = f'ray_serve_num_http_error_requests_total{{error_code=~"5..", {SERVED}}}'
    requests = f"ray_serve_num_http_requests_total{{{SERVED}}}"
    # A bucket's `le` is written "2000.0" by Ray's exporter and normalised so by Prometheus 3; both match.
    fast = f'ray_serve_http_request_latency_ms_bucket{{le=~"{t.latency_ms}(\\\\.0)?", {SERVED}}}'
    count = f"ray_serve_http_request_latency_ms_count{{{SERVED}}}"
    out = []
    for objective, kind, ratio in (
            (t.availability_objective, "Error", lambda w: _ratio(errors, requests, w)),
            (t.latency_objective, "Latency", lambda w: f"1 - ({_ratio(fast, count, w)})")):
        budget = round(1 - objective, 6)
        what = ("answered 5xx" if kind == "Error" else f"slower than {t.latency_ms} ms")
        for long, short, burn, for_, severity in BURN_WINDOWS:
            speed = "Fast" if severity == "critical" else "Slow"
            out.append(Alert(
                f"ElasticmlServe{kind}BudgetBurn{speed}",
                f"({ratio(long)}) > {burn:g} * {budget:g} and ({ratio(short)}) > {burn:g} * {budget:g}",
                for_, severity,
                f"{{{{ $labels.application }}}} burns its {kind.lower()} budget {burn:g}x too fast "
                "({{ $labels.ray_io_cluster }})",
                f"Over the last {long} and {short}, more than {100 * burn * budget:g}% of requests were {what} "
                f"(the objective allows {100 * budget:g}% over 30 days): at this rate the month's budget is gone "
                f"in {30 * 24 / burn:g} hours.",
                "Serve's dashboard and logs for the application; elasticml's serving dashboard (replicas, batches, "
                "queue)"))
    return out


def groups(t: Thresholds | None = None) -> list[dict[str, Any]]:
    """The rule groups, as Prometheus reads them (a rules file's `groups`, a PrometheusRule's `spec.groups`)."""
    t = t or Thresholds()
    return [{"name": f"elasticml-{name}", "rules": [a.rule() for a in alerts(t)]}
            for name, alerts in (("cost", cost), ("scheduler", scheduler), ("training", training),
                                 ("serving", serving))]


def rendered(t: Thresholds | None = None) -> dict[str, str]:
    """{path: YAML} of the plain rules file, for `elasticml cluster render`."""
    head = ("# GENERATED by `elasticml cluster render` from elasticml.observe.alerts: edit that, not this file.\n"
            "# Use: a `rule_files:` entry of Prometheus (locally: elasticml cluster prometheus-config --rules "
            f"{RULES_FILE});\n# on Kubernetes the PrometheusRule in cluster_configs/kuberay/ holds the same groups.\n")
    return {RULES_FILE: head + dump_yaml({"groups": groups(t)}, sort_keys=False, width=120)}
