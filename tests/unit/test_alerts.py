"""The operators' view: alerting rules Prometheus accepts and that fire when, and only when, they
should (promtool's own checks and unit tests), the same rules on Kubernetes, and dashboards that
show one cluster at a time from any Prometheus data source."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from elasticml.errors import ConfigError
from elasticml.observe import alerts, dashboards

REPO = Path(__file__).resolve().parents[2]
AWS = ["aws-cpu", "aws-gpu"]
RULES = REPO / alerts.RULES_FILE
RULE_TESTS = REPO / "tests/fixtures/prometheus/elasticml-rules.test.yaml"
PROMTOOL = shutil.which("promtool") or next((p for p in ("/usr/bin/promtool",) if Path(p).is_file()), None)
# CI (`./dev setup` as root installs Debian's prometheus) must run these checks; elsewhere they may skip.
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not os.environ.get("CI"),
                                    reason="promtool is not installed: `apt-get install prometheus` "
                                    "(./dev setup installs it where it may)")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], check=False, capture_output=True, text=True, timeout=120)


def every_alert(groups: list[dict]) -> list[dict]:
    return [r for g in groups for r in g["rules"]]


def test_the_committed_rules_file_is_what_the_rules_render():
    assert RULES.read_text() == alerts.rendered()[alerts.RULES_FILE], "run `elasticml cluster render`"


@needs_promtool
def test_promtool_accepts_the_rules_file(tmp_path):
    out = promtool("check", "rules", RULES)
    assert out.returncode == 0 and "SUCCESS: 12 rules found" in out.stdout, out.stdout + out.stderr


@needs_promtool
def test_each_alert_fires_on_trouble_and_stays_quiet_on_health():
    """tests/fixtures/prometheus/elasticml-rules.test.yaml: synthetic series per alert, troubled and healthy."""
    out = promtool("test", "rules", RULE_TESTS)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {r["alert"] for r in every_alert(alerts.groups())}, "every alert has its promtool cases"


def test_every_alert_says_how_bad_how_long_and_what_to_do():
    rules = every_alert(alerts.groups())
    assert len({r["alert"] for r in rules}) == len(rules) == 12
    for r in rules:
        assert re.fullmatch(r"\d+[mh]", r["for"]), r["alert"]
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert set(r["annotations"]) == {"summary", "description", "runbook"}, r["alert"]
        assert alerts.RUNBOOK in r["annotations"]["runbook"]
        # Per cluster: one Prometheus may watch several (absent() has no cluster to name).
        assert "ray_io_cluster" in r["expr"] or r["expr"].startswith("absent("), r["alert"]
    anchor = alerts.RUNBOOK.split("#")[1]
    assert f"## {anchor.capitalize()}" in (REPO / "docs/observability.md").read_text()


@pytest.mark.parametrize("name", AWS)
def test_the_prometheusrule_holds_the_plain_files_groups(name, tmp_path):
    from elasticml.provision.render import definition_at_site

    rule = yaml.safe_load((REPO / f"cluster_configs/kuberay/{name}-prometheusrule.yaml").read_text())
    monitor = yaml.safe_load((REPO / f"cluster_configs/kuberay/{name}-podmonitor.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == definition_at_site(name).namespace == monitor["metadata"]["namespace"]
    # The label kube-prometheus-stack's Prometheus selects rules (and monitors) by.
    assert rule["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"] == "prometheus"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    if PROMTOOL is not None:
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(rule["spec"]))
        out = promtool("check", "rules", tmp_path / "spec.yaml")
        assert out.returncode == 0, out.stdout + out.stderr


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(ray_[a-z0-9_]+)\b", expr)) - {"ray_io_cluster"}  # the only label named ray_
    return {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in names}


def test_the_rules_and_dashboards_read_only_metrics_that_are_exported():
    """The platform's metric names from its own definitions, Ray Serve's from the installed Ray."""
    platform = REPO / "platform/elasticml"
    ours = "".join((platform / f).read_text() for f in ("scheduler/metrics.py", "serve/metrics.py"))
    train = (platform / "train/loop.py").read_text()
    ray_dir = Path(importlib.util.find_spec("ray").origin).parent  # type: ignore[union-attr, arg-type]
    serve = (ray_dir / "serve/_private/request_ingress_metrics.py").read_text().replace("{protocol_name}", "http")
    serve += (ray_dir / "serve/_private/deployment_state.py").read_text()
    used = set().union(*map(_metric_names, [r["expr"] for r in every_alert(alerts.groups())] + dashboards.exprs()))
    assert used, "no metric found"
    for name in sorted(used):
        bare = name.removeprefix("ray_")
        if bare.startswith("elasticml_train_"):
            assert f'("{bare.removeprefix("elasticml_train_")}", "' in train, name
        elif bare.startswith("elasticml_"):
            assert re.search(rf'"{bare}(_total)?"', ours), name
        else:
            assert f'"{bare}"' in serve or f'f"{bare}"' in serve, f"{name}: not in the installed Ray Serve"


def test_every_dashboard_query_is_narrowed_to_the_chosen_cluster_from_the_chosen_source():
    for path in sorted((REPO / "cluster_configs/grafana").glob("*.json")):
        board = json.loads(path.read_text())
        assert board == dashboards.dashboard(path.stem), f"run `elasticml cluster render`: {path.name}"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        cluster = variables["cluster"]
        assert cluster["type"] == "query" and cluster["datasource"]["uid"] == "${datasource}"
        assert cluster["query"]["query"] == "label_values(up, ray_io_cluster)"
        assert not cluster["includeAll"] and not cluster["multi"]  # a sum over "All" would mix clusters again
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"], panel["title"]
                expr = target["expr"]
                # Every selector of a Ray metric, bare or with matchers, carries the filter.
                selectors = re.findall(r"\b(ray_(?!io_cluster\b)[a-z0-9_]+)(\{[^}]*\})?", expr)
                assert selectors, expr
                for metric, matchers in selectors:
                    assert 'ray_io_cluster=~"$cluster"' in matchers, (panel["title"], metric, expr)


def test_the_cluster_filter_joins_the_matchers_a_selector_has():
    assert dashboards.scoped('sum by (ray_io_cluster) (rate(ray_a_total{x="1"}[5m])) / ray_b') == (
        'sum by (ray_io_cluster) (rate(ray_a_total{ray_io_cluster=~"$cluster", x="1"}[5m])) / '
        'ray_b{ray_io_cluster=~"$cluster"}')


def test_the_local_scrape_config_labels_its_targets_with_the_cluster_and_loads_rules():
    config = yaml.safe_load(dashboards.prometheus_config("/tmp/ray/session_latest/", cluster="dev",
                                                         rule_files=("/x/elasticml-rules.yaml",)))
    job = config["scrape_configs"][0]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/session_latest/prom_metrics_service_discovery.json"]
    assert job["relabel_configs"] == [{"target_label": "ray_io_cluster", "replacement": "dev"}]
    assert config["rule_files"] == ["/x/elasticml-rules.yaml"]
    assert "rule_files" not in yaml.safe_load(dashboards.prometheus_config("/s", cluster="dev"))


@needs_promtool
def test_promtool_accepts_the_local_scrape_config(tmp_path):
    (tmp_path / "prometheus.yml").write_text(dashboards.prometheus_config(str(tmp_path), cluster="dev",
                                                                          rule_files=(str(RULES),)))
    out = promtool("check", "config", tmp_path / "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("field, value, words", [
    ("latency_ms", 1500, "bucket bounds"),
    ("availability_objective", 0.5, "must be in"),
    ("queued_minutes", 0, "must be in"),
    ("budget_hours_left", True, "must be a number"),
])
def test_a_bad_threshold_is_refused_naming_the_field(field, value, words):
    with pytest.raises(ConfigError) as caught:
        alerts.Thresholds(**{field: value})
    assert caught.value.field == field and words in str(caught.value)


def test_other_thresholds_render_other_rules():
    rules = {r["alert"]: r for r in every_alert(alerts.groups(alerts.Thresholds(latency_ms=1000, queued_minutes=10)))}
    assert 'le=~"1000(\\\\.0)?"' in rules["ElasticmlServeLatencyBudgetBurnFast"]["expr"]
    assert rules["ElasticmlPlacementQueuedTooLong"]["expr"].endswith("> 600")
