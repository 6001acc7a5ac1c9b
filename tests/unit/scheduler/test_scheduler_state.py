"""The actor's state without Ray: the typed door, persistence, ledger durability, costs and the controller."""

import math
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from elasticml.cluster.config import load_cluster_spec
from elasticml.errors import ConfigError, PlacementRefused
from elasticml.scheduler.settings import ControllerConfig
from tests.support.scheduler import Sched as SchedulerState
from elasticml.scheduler.deadline import NONE, OD, SPOT, simulate
from elasticml.scheduler.store import Store
from elasticml.scheduler.policies import POLICIES
from elasticml.scheduler.spec import Placement, TenantPolicy, WorkloadSpec

REPO = Path(__file__).resolve().parents[3]
CONFIG = load_cluster_spec(REPO / "cluster_configs" / "local.yaml")


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spec(name: str, **kw) -> WorkloadSpec:
    return WorkloadSpec(name=name, tenant=kw.pop("tenant", "t"), **kw)


def test_a_new_incarnation_reloads_everything(tmp_path):
    db = str(tmp_path / "l.sqlite")
    s = SchedulerState(CONFIG, db)
    s.set_tenant(TenantPolicy(tenant="b", budget=100.0))
    s.place(spec("crit", tenant="a", priority="critical", max_workers=2))
    s.place(spec("r1", tenant="a", max_workers=2))
    s.place(spec("r2", tenant="b", max_workers=1))  # reserved and on-demand full: queued
    s.interrupt("cpu_spot")
    before = (s.status(), s.explain("crit"), s.ledger.intervals(), s.placement("r2"))
    again = SchedulerState(CONFIG, db)
    assert (again.status(), again.explain("crit"), again.ledger.intervals(), again.placement("r2")) == before
    assert again.queue == ["r2"] and again.interrupted == {"cpu_spot"}
    assert again.tenants.of("b").budget == 100.0


def test_place_answers_with_the_callers_own_placement_even_when_it_preempts_another(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    low = s.place(spec("nightly", priority="low", max_workers=2, checkpoint_interval_hours=0.1))
    assert low.placed and low.market == "reserved"
    crit = s.place(spec("fraud", tenant="p", priority="critical", max_workers=2))
    # The victim's re-placement is the last decision taken, but the answer is fraud's own.
    assert isinstance(crit, Placement) and crit.workload == "fraud" and crit.market == "reserved"
    assert crit.scaling_config == {"num_workers": 2, "label_selector": {"elasticml.io/node-type": "cpu_reserved"}}
    assert [d["action"] for d in s.explain("nightly")][-2:] == ["preempt", "place"]
    moved = s.placement("nightly")
    assert moved.placed and moved.market != "reserved" and moved.epoch == 3  # placed, preempted, placed


def test_finishing_frees_capacity_for_the_queue(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    s.place(spec("a", max_workers=2))
    s.place(spec("b", max_workers=2))
    q = s.place(spec("c", max_workers=1))
    assert q.state == "queued" and not q.placed and q.allocations == ()
    s.finish("a")
    assert s.placement("c").placed and s.queue == []
    assert s.placement("a") is None
    closed = [i for i in s.ledger.intervals() if i["workload"] == "a"]
    assert closed and all(i["end"] is not None for i in closed)


def test_a_refusal_raises_with_the_reason_and_leaves_nothing_behind(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    with pytest.raises(PlacementRefused, match="data residency") as info:
        s.place(spec("gdpr", regions=("eu-west-1",)))
    assert info.value.workload == "gdpr" and "eu-west-1" in info.value.reason
    assert s.placement("gdpr") is None and s.status()["running"] == {}


@pytest.mark.parametrize("field,value,match", [
    ("max_workers", True, "integer"),
    ("max_workers", 2.5, "integer"),
    ("max_workers", "two", "integer"),
    ("expected_hours", math.nan, r"\[0, 8760\]"),
    ("expected_hours", math.inf, r"\[0, 8760\]"),
    ("deadline_hours", math.nan, r"\[0, 8760\]"),
    ("tenant", 123, "string"),
    ("name", "x" * 100_000, "1 to 127"),
    ("name", "x" * 64, "1 to 63"),
    ("name", "other/w", "tenant's, t/"),
    ("name", "a b", "must match"),
    ("budget", -1.0, r"\[0, 1e\+09\]"),
    ("cpus_per_worker", 1e9, r"\[0, 1024\]"),
    ("spot_policy", "yolo", "spot_policy"),
    ("regions", ("us east",), "must match"),
])
def test_hostile_specs_are_refused_naming_the_field(field, value, match):
    raw = {"name": "w", "tenant": "t", field: value}
    with pytest.raises(ConfigError, match=match) as info:
        WorkloadSpec.from_dict(raw)
    assert field in str(info.value)
    assert len(str(info.value)) < 400  # a huge value is not echoed back


def test_the_door_takes_typed_values_only(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    with pytest.raises(ConfigError, match="WorkloadSpec"):
        s.place({"name": "x", "tenant": "t"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="node_type"):
        s.interrupt("cpu_reserved")  # not a spot pool: nothing to interrupt
    with pytest.raises(ConfigError, match="fraction"):
        s.report_progress("x", math.nan)
    assert s.status()["running"] == {} and s.ledger.intervals() == []


def test_pools_are_the_node_types_of_the_config_it_was_started_with(tmp_path):
    gpu = load_cluster_spec(REPO / "cluster_configs" / "aws-gpu.yaml")
    s = SchedulerState(gpu, str(tmp_path / "l.sqlite"))
    assert {p.node_type for p in s.pools} == set(gpu.worker_types) == {
        "cpu_spot", "cpu_on_demand", "gpu_spot", "gpu_on_demand", "gpu_reserved"}
    assert s.status()["config"].endswith("aws-gpu.yaml")
    assert s.place(spec("g", gpus_per_worker=1, cpus_per_worker=4, priority="critical")).node_type == "gpu_reserved"


def test_the_running_cluster_config_comes_from_the_launchers_bootstrap_file(tmp_path, monkeypatch):
    from elasticml.scheduler.client import running_cluster_config

    monkeypatch.delenv("ELASTICML_CLUSTER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="--config"):
        running_cluster_config()
    (tmp_path / "ray_bootstrap_config.yaml").write_text((REPO / "cluster_configs" / "aws-gpu.yaml").read_text())
    assert running_cluster_config() == tmp_path / "ray_bootstrap_config.yaml"
    monkeypatch.setenv("ELASTICML_CLUSTER_CONFIG", "/x.yaml")
    assert running_cluster_config() == Path("/x.yaml")
    assert running_cluster_config("/y.yaml") == Path("/y.yaml")


def _trace(n: int, seed: int) -> list[bool]:
    """Spot up and down in runs of random length: long outages and short flapping windows."""
    rng, out, up = random.Random(seed), [], True
    while len(out) < n:
        out += [up] * rng.choice([1, 2, 3, 8, 20, 40])
        up = not up
    return out[:n]


@pytest.mark.parametrize("policy", ["stochastic-dp", "uniform-progress", "slack-reserve"])
def test_the_live_controller_takes_the_simulators_decisions_on_the_same_availability(tmp_path, policy):
    clock = Clock()
    cfg = ControllerConfig(tick_seconds=54, seconds_per_hour=3600, max_moves_per_hour=3600)
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), controller=cfg, clock=clock)
    job = spec("j", expected_hours=2, deadline_hours=8, restart_overhead_hours=0.05, checkpoint_interval_hours=0.1,
               spot_policy=policy)
    trace = _trace(400, seed=8)  # one on which stochastic-dp waits, runs on spot and on on-demand
    live: list[str] = []

    def live_instance() -> str:
        p = s.placement("j")
        return NONE if not p.placed else SPOT if p.market == "spot" else OD

    def set_spot(up: bool) -> None:
        if up and "cpu_spot" in s.interrupted:
            s.clear_interruption("cpu_spot")
        elif not up and "cpu_spot" not in s.interrupted:
            s.interrupt("cpu_spot")

    set_spot(trace[0])
    s.place(job)
    stepper = s.steppers["j"]
    gap_s = stepper.gap_hours * 3600
    live.append(live_instance())
    for k in range(1, len(trace)):
        if stepper.done:
            break
        set_spot(trace[k])
        clock.t += gap_s
        s.controller_tick()
        live.append(live_instance())
    sim: list[str] = []
    simulate(POLICIES[policy](), trace, stepper.gap_hours, stepper.params, decisions=sim)
    assert len(set(live)) == 3 or policy != "stochastic-dp"  # it waited, ran on spot and on on-demand
    assert live == sim[:len(live)]
    # Every change of instance was carried out as a move (or a pause), and charged where it ran.
    markets = [i["market"] for i in s.ledger.intervals("j")]
    assert len(markets) == sum(1 for a, b in zip(live, live[1:]) if a != b and b != NONE) + (live[0] != NONE)


def test_the_ledger_charges_where_ray_runs_the_workers_not_the_advice(tmp_path):
    clock = Clock()
    seen: dict[str, tuple[int, int]] = {}
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), clock=clock, observer=lambda job_id: dict(seen))
    placed = s.place(spec("j", max_workers=2, checkpoint_interval_hours=0.1), attach="0a000000")
    assert placed.placed and s.ledger.intervals("j") == []  # nothing runs yet: nothing is charged
    clock.t += 60
    seen.update({"cpu_spot": (2, 2)})
    s.controller_tick()
    clock.t += 3600
    seen.clear()
    seen.update({"cpu_spot": (1, 1), "cpu_on_demand": (1, 1)})  # half moved
    s.controller_tick()
    clock.t += 1800
    seen.clear()
    s.controller_tick()  # workers gone (between runs): charged what it holds, not nothing
    rows = [(i["node_type"], i["workers"], i["end"] - i["start"]) for i in s.ledger.intervals("j") if i["end"]]
    assert sorted(rows) == [("cpu_on_demand", 1, 1800), ("cpu_spot", 1, 1800), ("cpu_spot", 2, 3600)]
    held = [(i["node_type"], i["workers"]) for i in s.ledger.intervals("j") if i["end"] is None]
    assert held == [(a.node_type, a.workers) for a in placed.allocations]
    assert [r["action"] for r in s.explain("j")].count("charge") == 3


def test_a_forged_attach_that_ray_never_runs_is_charged_its_allocation_and_counts_against_the_budget(tmp_path):
    clock = Clock()
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), clock=clock, observer=lambda job_id: {})
    s.set_tenant(TenantPolicy(tenant="t", budget=1.0))
    placed = s.place(spec("j", max_workers=2, checkpoint_interval_hours=0.1), attach="abcdef0123")  # no such job
    s.controller_tick()
    clock.t += 10 * 3600
    s.controller_tick()
    cost = s.cost_report()["total"]["cost"]
    assert cost == pytest.approx(10 * placed.hourly_cost) and cost > 1.0
    with pytest.raises(PlacementRefused, match="budget"):
        s.place(spec("next", max_workers=1))


def test_voluntary_moves_are_bounded_per_hour(tmp_path):
    clock = Clock()
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), clock=clock,
                       controller=ControllerConfig(max_moves_per_hour=1))
    s.place(spec("a", max_workers=2, checkpoint_interval_hours=0.1))
    s.place(spec("w", max_workers=1, checkpoint_interval_hours=0.1))  # reserved full: spot
    s.interrupt("cpu_spot")  # forced: w moves to on-demand whatever the budget
    assert s.placement("w").market == "on-demand"
    s.clear_interruption("cpu_spot")  # spot is back and cheaper: one voluntary move
    assert s.placement("w").market == "spot"
    s.interrupt("cpu_spot")
    s.clear_interruption("cpu_spot")  # a second voluntary move within the hour: refused
    assert s.placement("w").market == "on-demand"
    clock.t += 3601
    s.controller_tick()
    assert s.placement("w").market == "spot"


def test_costs_and_savings_add_up(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    ledger = store.ledger
    t0 = 1_000_000.0
    with store.command():
        ledger.open(workload="w", tenant="t", node_type="cpu_spot", market="spot", workers=2, nodes=2,
                    hourly_cost=0.08, on_demand_hourly_cost=0.2, at=t0)
        ledger.close("w", at=t0 + 1800)
        ledger.open(workload="w", tenant="t", node_type="cpu_on_demand", market="on-demand", workers=2, nodes=2,
                    hourly_cost=0.2, on_demand_hourly_cost=0.2, at=t0 + 1800)
    rows = {r.key: r for r in ledger.costs_by("market", now=t0 + 3600)}
    assert rows["spot"].cost == pytest.approx(0.04) and rows["on-demand"].cost == pytest.approx(0.1)
    (tenant,) = ledger.costs_by("tenant", now=t0 + 3600)
    assert tenant.on_demand_cost == pytest.approx(0.2) and tenant.savings == pytest.approx(0.06)
    assert tenant.hours == pytest.approx(2.0)


def test_a_crash_mid_write_leaves_the_ledger_as_it_was(tmp_path):
    path = tmp_path / "l.sqlite"
    store = Store(path)
    with store.command():
        store.ledger.open(workload="kept", tenant="t", node_type="n", market="spot", workers=1, nodes=1, hourly_cost=1,
                          on_demand_hourly_cost=2, at=1_000_000.0)
    # Another process starts a write and dies (SIGKILL-like) before committing it.
    code = (
        "import os, sqlite3; db = sqlite3.connect(%r, isolation_level=None); db.execute('BEGIN');"
        "db.execute(\"INSERT INTO intervals (workload, tenant, node_type, market, workers, hourly_cost,"
        " on_demand_hourly_cost, start) VALUES ('lost','t','n','spot',1,1,2,0)\");"
        "db.execute(\"UPDATE intervals SET end = 1 WHERE workload = 'kept'\"); os._exit(9)" % str(path)
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 9
    after = Store(path).ledger.intervals()
    assert [i["workload"] for i in after] == ["kept"] and after[0]["end"] is None
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_serve_app_is_charged_by_its_replicas_and_finished_when_they_are_gone(tmp_path):
    from elasticml.scheduler.controller import SERVE_GONE_S
    from elasticml.scheduler.ray_view import serve_attachment

    clock = Clock()
    seen: dict[str, dict[str, tuple[int, int]]] = {}
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), clock=clock, observer=lambda a: dict(seen.get(a, {})))
    s.place(spec("endpoint", kind="serving", priority="high", max_workers=1), attach=serve_attachment("endpoint"))
    clock.t += 5
    s.controller_tick()  # not up yet: charged what it holds, and not finished either
    assert s.placement("endpoint").placed
    assert [(i["node_type"], i["workers"]) for i in s.ledger.intervals("endpoint")] == [("cpu_reserved", 1)]
    clock.t += SERVE_GONE_S * 2
    seen["serve:endpoint"] = {"cpu_reserved": (1, 1), "cpu_spot": (2, 2)}
    s.controller_tick()
    assert {(i["node_type"], i["workers"]) for i in s.ledger.intervals("endpoint") if i["end"] is None} == {
        ("cpu_reserved", 1), ("cpu_spot", 2)}
    seen.clear()  # `serve delete`
    clock.t += 1
    s.controller_tick()
    assert s.placement("endpoint") is not None  # a replica restart is not a deletion
    clock.t += SERVE_GONE_S
    s.controller_tick()
    assert s.placement("endpoint") is None and s.status()["running"] == {}
    assert all(i["end"] is not None for i in s.ledger.intervals("endpoint"))
    assert "deleted" in s.explain("endpoint")[-1]["reason"]
    with pytest.raises(ConfigError, match="attach"):
        s.place(spec("x"), attach="serve:../etc")


def test_a_pool_whose_launches_keep_failing_is_unavailable_until_they_stop(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    s.place(spec("hold", priority="critical", max_workers=2))
    assert s.place(spec("b", kind="batch", priority="low", checkpoint_interval_hours=0.1)).market == "spot"
    s.set_unfillable({"cpu_spot": 5.0})  # failing, but not for long yet
    assert s.placement("b").market == "spot"
    s.set_unfillable({"cpu_spot": 20.0})
    moved = s.placement("b")
    assert moved.market == "on-demand" and "could not be launched for 20s" in moved.reason
    assert next(p for p in s.status()["pools"] if p["node_type"] == "cpu_spot")["unfillable"]
    again = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))  # a restart keeps the verdict
    assert again.unfillable == {"cpu_spot"}
    s.set_unfillable({})  # launches stopped failing: spot is cheaper again
    assert s.placement("b").market == "spot"


def test_live_prices_and_placement_scores_steer_spot_and_garbage_is_ignored(tmp_path):
    gpu = load_cluster_spec(REPO / "cluster_configs" / "aws-gpu.yaml")
    s = SchedulerState(gpu, str(tmp_path / "l.sqlite"))
    before = {p.node_type: p.hourly_price for p in s.pools}
    s.refresh_prices({"cpu_spot": 0.05, "gpu_spot": math.nan}, {"cpu_spot": 7, "gpu_spot": 99})
    pools = {p.node_type: p for p in s.pools}
    assert pools["cpu_spot"].hourly_price == 0.05 and pools["cpu_spot"].placement_score == 7
    assert pools["gpu_spot"].hourly_price == before["gpu_spot"] and pools["gpu_spot"].placement_score is None
    s.refresh_prices({"cpu_spot": -1.0, "gpu_spot": 1e9})  # refused: not a price spot could have
    assert {p.node_type: p.hourly_price for p in s.pools}["cpu_spot"] == 0.05
    assert SchedulerState(gpu, str(tmp_path / "l.sqlite")).pools == s.pools  # kept across a restart


def test_a_deadline_without_slack_gets_on_demand_from_its_policy_and_a_roomy_one_spot(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    s.place(spec("hold", priority="critical", max_workers=2))  # reserved taken
    ckpt = {"checkpoint_interval_hours": 0.5, "restart_overhead_hours": 0.05, "priority": "low"}
    tight = s.place(spec("tight", expected_hours=10, deadline_hours=10.06, **ckpt))  # slack < one tick
    roomy = s.place(spec("roomy", expected_hours=10, deadline_hours=14, **ckpt))
    assert tight.market == "on-demand" and "stochastic-dp at 0h" in tight.reason
    assert roomy.market == "spot" and "stochastic-dp at 0h" in roomy.reason


def test_a_serving_workload_that_preempts_another_gets_its_own_placement(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    s.place(spec("nightly", priority="low", max_workers=2, checkpoint_interval_hours=0.1))  # takes reserved
    served = s.place(spec("endpoint", tenant="shop", kind="serving", priority="critical", min_workers=2, max_workers=2))
    # The victim is re-placed after the endpoint (the last decision taken), but the answer is the endpoint's.
    assert served.workload == "endpoint" and served.market == "reserved" and served.workers == 2
    assert s.explain("endpoint")[-1]["action"] == "place"
    assert [d["action"] for d in s.explain("nightly")][-2:] == ["preempt", "place"]
    assert s.placement("nightly").market != "reserved"


def test_a_job_is_done_when_it_reports_all_its_work_and_that_is_recorded_once(tmp_path):
    clock = Clock()
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), clock=clock)
    s.place(spec("j", max_workers=1, checkpoint_interval_hours=0.1))
    s.report_progress("j", 0.5)
    clock.t += 10
    s.report_progress("j", 1.0)
    clock.t += 10
    s.report_progress("j", 1.0)  # a repeated report is not a second finish
    done = [r for r in s.explain("j") if r["action"] == "done"]
    assert len(done) == 1 and done[0]["at"] == 1_000_010.0


def test_a_lost_nodes_interruption_is_tried_again_later_but_a_notice_lasts_until_cleared(tmp_path):
    clock = Clock()
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), clock=clock)
    s.place(spec("hold", priority="critical", max_workers=2))
    s.place(spec("b", kind="batch", priority="low", checkpoint_interval_hours=0.1))
    s.interrupt("cpu_spot", lasts_s=120, why="spot node 1234abcd of cpu_spot was lost (unexpected termination)")
    assert s.placement("b").market == "on-demand"
    assert "was lost (unexpected termination)" in s.explain("b")[-1]["reason"]  # kept as recorded, not patched after
    clock.t += 119
    s.controller_tick()
    assert "cpu_spot" in s.interrupted
    clock.t += 2
    s.controller_tick()
    assert "cpu_spot" not in s.interrupted and s.placement("b").market == "spot"
    assert s.explain("_events")[-1]["event"] == "spot pool tried again"
    s.interrupt("cpu_spot", lasts_s=120)
    s.interrupt("cpu_spot")  # then a real notice: it lasts until its source clears it
    clock.t += 10_000
    s.controller_tick()
    assert "cpu_spot" in s.interrupted
