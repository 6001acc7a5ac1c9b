from pathlib import Path

import jsonschema
import pytest
import yaml
from elasticml import labels as L
from elasticml.cluster.config import (
    load_cluster_spec,
    parse_cluster_spec,
    ray_schema,
    render_local_autoscaling_config,
)
from elasticml.errors import ConfigError
from elasticml.repo import cluster_yamls

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "cluster_configs" / "local.yaml"


def local_raw():
    return yaml.safe_load(LOCAL.read_text())


def test_every_cluster_yaml_matches_ray_schema():
    paths = cluster_yamls()  # not the site values' example beside them (test_site_values.py)
    assert paths
    for path in paths:
        jsonschema.validate(yaml.safe_load(path.read_text()), ray_schema())
        load_cluster_spec(path)


def test_local_config_has_one_cpu_type_per_market():
    spec = load_cluster_spec(LOCAL)
    assert spec.is_local
    assert {t.market for t in spec.worker_types.values()} == {"spot", "on-demand", "reserved"}
    for t in spec.worker_types.values():
        assert t.min_workers == 0 and t.max_workers >= 1 and t.resources["CPU"] >= 1
    reserved = spec.types_in_market("reserved")[0]
    assert reserved.labels[L.MARKET_TYPE] == "on-demand" and reserved.labels[L.CAPACITY] == "reserved"
    assert spec.node_types[spec.head_node_type].resources["CPU"] == 0


def test_rendered_config_is_complete_and_still_valid():
    spec = load_cluster_spec(LOCAL)
    out = render_local_autoscaling_config(spec, gcs_address="10.0.0.1:7000")
    jsonschema.validate(out, ray_schema())
    assert out["provider"]["gcs_address"] == "10.0.0.1:7000"
    for key in ("cluster_synced_files", "setup_commands", "head_setup_commands", "rsync_filter"):
        assert key in out, key
    assert out["available_node_types"]["cpu_spot"]["labels"][L.NODE_TYPE] == "cpu_spot"
    # The spec's own YAML is left untouched.
    assert "gcs_address" not in spec.raw["provider"]


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda r: r["available_node_types"]["cpu_spot"]["labels"].pop(L.MARKET_TYPE), "cpu_spot.labels", "ray.io/market-type"),
        (lambda r: r["available_node_types"]["cpu_spot"]["labels"].update({L.MARKET_TYPE: "cheap"}), "cpu_spot.labels", "'cheap'"),
        (lambda r: r["available_node_types"]["cpu_spot"]["labels"].update({L.CAPACITY: "reserved"}), "cpu_spot.labels", "only be 'reserved'"),
        (lambda r: r.update({"head_node_type": "gpu_head"}), "head_node_type", "'gpu_head'"),
        (lambda r: r.update({"not_a_ray_key": 1}), "<top level>", "not_a_ray_key"),
        (lambda r: r["available_node_types"]["cpu_spot"].pop("resources"), "cpu_spot", "resources"),
        (lambda r: r["available_node_types"]["cpu_spot"].update({"min_workers": 3, "max_workers": 1}), "cpu_spot", "min_workers"),
        (lambda r: r.pop("head_node_type"), "", "head_node_type"),
    ],
)
def test_invalid_configs_are_refused_with_the_field_named(mutate, field, words):
    raw = local_raw()
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse_cluster_spec(raw, source="x.yaml")
    msg = str(err.value)
    assert msg.startswith("x.yaml: ")
    assert field in msg and words in msg, msg
    assert "\n" not in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_cluster_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\navailable_node_types: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_cluster_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_cluster_spec(scalar)


def test_unknown_node_type_lookup():
    spec = load_cluster_spec(LOCAL)
    with pytest.raises(ConfigError, match="unknown node type 'gpu_spot'.*cpu_spot"):
        spec.node_type("gpu_spot")


def test_cloud_provider_is_not_started_locally():
    raw = local_raw()
    raw["provider"] = {"type": "aws", "region": "us-east-1"}
    spec = parse_cluster_spec(raw, source="aws.yaml")
    assert not spec.is_local
    with pytest.raises(ConfigError, match="ray up"):
        render_local_autoscaling_config(spec, gcs_address="1.2.3.4:6379")


def test_market_selectors_round_trip():
    for market in L.MARKETS:
        sel = L.selector_for(market)
        node_labels = {k: v for k, v in sel.items() if not v.startswith("!")}
        assert L.market_of(node_labels) == market
