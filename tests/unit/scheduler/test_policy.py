"""The placement policy as pure functions over snapshots: no Ray."""

from pathlib import Path

import pytest
from elasticml import labels as L
from elasticml.cluster import load_cluster_spec
from elasticml.errors import ConfigError
from elasticml.repo import cluster_yamls
from elasticml.scheduler.capacity import Pool, Snapshot, pools_from_cluster
from elasticml.scheduler.catalog import PriceCatalog
from elasticml.scheduler.policy import place, rebalance, replace_interrupted
from elasticml.scheduler.spec import TenantPolicy, Tenants, WorkloadSpec
from ray.train import ScalingConfig

REPO = Path(__file__).resolve().parents[3]


def pool(node_type, market, n=2, price=None, region="us-east-1", risk=0.0001):
    price = price if price is not None else {"spot": 0.04, "on-demand": 0.10, "reserved": 0.06}[market]
    return Pool(node_type=node_type, market=market, instance_type="m7i.large", region=region,
                hourly_price=price, max_nodes=n, cpus_per_node=1.0, interruption_per_hour=risk if market == "spot" else 0)


POOLS = (pool("spot", "spot"), pool("od", "on-demand"), pool("res", "reserved"))


def snap(pools=POOLS, allocations=(), **kw):
    return Snapshot(now=0.0, pools=pools, allocations=tuple(allocations), **kw)


def spec(name, **kw):
    kw.setdefault("tenant", "t")
    return WorkloadSpec(name=name, **kw)


def run(snapshot, *specs_, running=None, tenants=None):
    return place(snapshot, list(specs_), running or {}, tenants)


def markets(decision):
    return [a.market for a in decision.allocations]


def test_critical_work_goes_to_reserved_and_never_to_spot():
    d = run(snap(), spec("c", priority="critical", max_workers=2))[0]
    assert d.action == "place" and markets(d) == ["reserved"]
    assert "spot" not in [p for p in d.fallback_node_types]
    # Reserved and on-demand full: critical work waits rather than take spot.
    full = run(snap(pools=(pool("spot", "spot"), pool("od", "on-demand", n=0), pool("res", "reserved", n=0))),
               spec("c", priority="critical"))[0]
    assert full.action == "queue" and "full" in full.reason


def test_reserved_is_filled_by_priority_first():
    ds = run(snap(), spec("low", priority="low", checkpoint_interval_hours=1, max_workers=2),
             spec("high", priority="high", checkpoint_interval_hours=1, max_workers=2))
    by = {d.workload: d for d in ds}
    assert markets(by["high"]) == ["reserved"]
    assert markets(by["low"]) == ["spot"]


def test_spot_needs_checkpoints_and_under_a_deadline_the_deadline_policy_decides():
    full_res = (pool("spot", "spot"), pool("od", "on-demand"), pool("res", "reserved", n=0))
    steered = run(snap(pools=full_res), spec("a", checkpoint_interval_hours=0.5, expected_hours=10, deadline_hours=14))[0]
    assert markets(steered) == ["spot"] and "deadline policy (stochastic-dp)" in steered.reason
    no_ckpt = run(snap(pools=full_res), spec("b", priority="preemptible", expected_hours=10, deadline_hours=14))[0]
    assert markets(no_ckpt) == ["on-demand"] and "no checkpoints" in no_ckpt.reason
    not_ckpt = run(snap(pools=full_res), spec("c"))[0]
    assert markets(not_ckpt) == ["on-demand"] and "not checkpointable" in not_ckpt.reason


def test_higher_priority_preempts_lower_from_reserved_and_the_victim_is_replaced():
    first = run(snap(), spec("low", priority="low", checkpoint_interval_hours=1, max_workers=2))[0]
    assert markets(first) == ["reserved"]
    running = {"low": spec("low", priority="low", checkpoint_interval_hours=1, max_workers=2)}
    ds = run(snap(allocations=first.allocations), spec("crit", priority="critical", max_workers=2), running=running)
    actions = [(d.workload, d.action) for d in ds]
    assert actions == [("crit", "place"), ("low", "preempt"), ("low", "place")]
    assert markets(ds[0]) == ["reserved"] and markets(ds[2]) == ["spot"]
    assert "critical > low" in ds[1].reason


def test_equal_priority_does_not_preempt():
    first = run(snap(), spec("a", priority="high", max_workers=2))[0]
    d = run(snap(allocations=first.allocations), spec("b", priority="high", max_workers=2),
            running={"a": spec("a", priority="high", max_workers=2)})[0]
    assert d.action == "place" and markets(d) == ["on-demand"]


def test_residency_is_never_violated():
    pools = (pool("eu-spot", "spot", region="eu-west-1"), pool("us-od", "on-demand", region="us-east-1"))
    d = run(snap(pools=pools), spec("a", regions=("eu-west-1",), checkpoint_interval_hours=1))[0]
    assert [a.node_type for a in d.allocations] == ["eu-spot"]
    assert "us-od" not in d.fallback_node_types
    refused = run(snap(pools=pools), spec("b", regions=("ap-south-1",)))[0]
    assert refused.action == "refuse" and "residency" in refused.reason


def test_over_budget_is_refused_with_the_numbers_and_quota_queues():
    tenants = Tenants(policies={"t": TenantPolicy(tenant="t", budget=1.0, max_cpus=1)})
    d = run(snap(tenant_spend={"t": 0.95}), spec("a", expected_hours=10), tenants=tenants)[0]
    assert d.action == "refuse" and "over budget" in d.reason and "$0.95 of $1.00" in d.reason
    own = run(snap(), spec("c", expected_hours=100, budget=1.0))[0]
    assert own.action == "refuse" and "above this workload's $1.00" in own.reason
    q = run(snap(), spec("b", min_workers=2, max_workers=2), tenants=tenants)[0]
    assert q.action == "queue" and "quota" in q.reason


def test_serving_base_on_reserved_and_overflow_on_spot_over_provisioned():
    pools = (pool("spot", "spot", n=4), pool("od", "on-demand"), pool("res", "reserved"))
    d = run(snap(pools=pools), spec("web", kind="serving", min_workers=2, max_workers=4))[0]
    by_market = {a.market: a.workers for a in d.allocations}
    assert by_market["reserved"] == 2
    assert by_market["spot"] == 3  # 2 asked + 1 spare (50% over-provisioning)
    assert d.ray_options()["label_selector"] == {L.NODE_TYPE: "res"}
    assert {L.NODE_TYPE: "spot"} in [f["label_selector"] for f in d.ray_options()["fallback_strategy"]]


def test_work_moves_back_to_cheaper_capacity_when_it_frees_up():
    res_full = run(snap(), spec("crit", priority="critical", max_workers=2))[0]
    s = spec("batch", priority="normal", max_workers=1)
    d = run(snap(allocations=res_full.allocations), s)[0]
    assert markets(d) == ["on-demand"]
    # The critical job finishes: reserved is free, and cheaper than on-demand.
    moves = rebalance(snap(allocations=d.allocations), {"batch": s})
    assert [(m.workload, m.action, markets(m)) for m in moves] == [("batch", "move", ["reserved"])]
    assert "cheaper capacity" in moves[0].reason


def test_interrupted_spot_pool_work_is_replaced_elsewhere():
    s = spec("train", kind="training", priority="low", checkpoint_interval_hours=0.5)
    pools = (pool("spot", "spot"), pool("od", "on-demand"), pool("res", "reserved", n=0))
    d = run(snap(pools=pools), s)[0]
    assert markets(d) == ["spot"]
    moved = replace_interrupted(snap(pools=pools, allocations=d.allocations), "spot", {"train": s})
    assert [(m.action, markets(m)) for m in moved] == [("move", ["on-demand"])]
    assert "checkpoint now" in moved[0].reason
    # Nothing new goes to an interrupted pool.
    again = run(snap(pools=pools, interrupted_pools=frozenset({"spot"})), spec("x", checkpoint_interval_hours=1))[0]
    assert markets(again) == ["on-demand"]


def test_every_decision_has_a_reason_and_ray_options_fit_ray():
    ds = run(snap(), spec("a", priority="critical"), spec("b", checkpoint_interval_hours=1, max_workers=2),
             spec("c", kind="serving", min_workers=1, max_workers=2))
    for d in ds:
        assert d.reason
        if d.action == "place":
            ScalingConfig(num_workers=d.workers, label_selector=d.scaling_config_kwargs()["label_selector"])
            assert set(d.ray_options()) <= {"label_selector", "fallback_strategy"}


def test_pools_come_from_the_cluster_config_priced_from_the_catalog():
    catalog = PriceCatalog.load()
    pools = {p.node_type: p for p in pools_from_cluster(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"), catalog)}
    assert {p.market for p in pools.values()} == {"spot", "on-demand", "reserved"}
    assert pools["cpu_spot"].hourly_price < pools["cpu_reserved"].hourly_price < pools["cpu_on_demand"].hourly_price
    assert pools["cpu_reserved"].max_nodes == 2


def test_catalog_prices_every_instance_type_our_configs_use_and_refuses_unknown_ones():
    import yaml

    catalog = PriceCatalog.load()
    assert catalog.version == "2026-11-01"
    for path in cluster_yamls():
        raw = yaml.safe_load(path.read_text())
        region = raw["provider"].get("region", "us-east-1")
        for name, body in raw["available_node_types"].items():
            itype = body.get("node_config", {}).get("InstanceType")
            if itype:
                assert (itype, region) in catalog, (path.name, name, itype)
    with pytest.raises(ConfigError, match="no price for x1.huge"):
        catalog.hourly("x1.huge", "spot", "us-east-1")


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"tenant": "t"}, "required field(s) missing: name"),
        ({"name": "a", "tenant": "t", "priority": "urgent"}, "critical > high > normal > low > preemptible"),
        ({"name": "a", "tenant": "t", "min_workers": 3, "max_workers": 2}, "min_workers"),
        ({"name": "a", "tenant": "t", "expected_hours": 5, "deadline_hours": 2}, "deadline"),
        ({"name": "a", "tenant": "t", "regions": "eu-west-1"}, "list of region names"),
        ({"name": "a", "tenant": "t", "gpus": 1}, "unknown field(s) gpus"),
        ({"name": "a b", "tenant": "t"}, "name"),
        ("just text", "mapping"),
    ],
)
def test_malformed_specs_get_clear_errors(raw, words):
    with pytest.raises(ConfigError) as err:
        WorkloadSpec.from_dict(raw, source="w.yaml")
    assert words in str(err.value) and str(err.value).startswith("w.yaml")


def test_memory_gpus_and_cpus_each_limit_workers_per_node():
    p = Pool(node_type="g", market="on-demand", instance_type="g5.12xlarge", region="us-east-1", hourly_price=5.0,
             max_nodes=1, cpus_per_node=48, gpus_per_node=4, memory_gb_per_node=192)
    assert p.workers_per_node(4, 1) == 4            # GPUs decide
    assert p.workers_per_node(4, 0, 64) == 3        # memory decides
    assert p.workers_per_node(16, 0) == 3           # CPUs decide
    d = run(snap(pools=(p,)), spec("big", cpus_per_worker=4, memory_gb_per_worker=100, min_workers=2, max_workers=2))[0]
    assert d.action == "queue"                      # 2 x 100 GB does not fit in one 192 GB node


def test_placement_scores_pick_among_spot_pools():
    from dataclasses import replace

    cheap_risky = replace(pool("spot-a", "spot", price=0.03), placement_score=2)  # $0.15 expected
    dearer_safe = replace(pool("spot-b", "spot", price=0.05), placement_score=9)  # $0.056 expected
    pools = (cheap_risky, dearer_safe, pool("od", "on-demand"), pool("res", "reserved", n=0))
    d = run(snap(pools=pools), spec("b", kind="batch", priority="low", checkpoint_interval_hours=0.1))[0]
    assert [a.node_type for a in d.allocations] == ["spot-b"]
    unknown = replace(cheap_risky, placement_score=None)  # no score: its price alone
    d = run(snap(pools=(unknown, dearer_safe, pool("od", "on-demand"))), spec("b", kind="batch", priority="low",
                                                                            checkpoint_interval_hours=0.1))[0]
    assert [a.node_type for a in d.allocations] == ["spot-a"]
