"""The replayed spot market without Ray: its clock, holds, availability, and the scheduler reading it."""

import json
import time
from pathlib import Path

import pytest

from elasticml.cluster.config import load_cluster_spec
from elasticml.cluster.spot_market import MarketSettings, SpotMarket
from elasticml.errors import ConfigError, PlacementRefused
from elasticml.scheduler.settings import ControllerConfig
from tests.support.scheduler import Sched as SchedulerState
from elasticml.scheduler.spec import WorkloadSpec

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_cluster_spec(REPO / "cluster_configs" / "local.yaml")


def trace(tmp_path: Path, data: list[int], gap: int = 600) -> str:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"metadata": {"gap_seconds": gap}, "data": data}))
    return str(path)


def test_the_clock_maps_wall_time_to_trace_hours_and_stands_still_while_held(tmp_path):
    m = SpotMarket.create(tmp_path / "m.json", MarketSettings(trace=trace(tmp_path, [0, 0, 1, 1, 0]),
                                                              start_hour=0.1, seconds_per_hour=10), t0=1000.0)
    assert m.hour(1000.0) == pytest.approx(0.1) and m.hour(1010.0) == pytest.approx(1.1)
    assert m.available(0.1) and m.available(0.3) and not m.available(1 / 3) and not m.available(0.5)
    assert m.available(0.7) and not m.available(0.9)  # past the trace's end spot is not available
    assert m.history(0.5) == [True, True, False] and m.outage_began(0.6) == pytest.approx(1 / 3)
    assert m.outage_began(0.1) is None
    before = m.hour()
    m.hold()
    time.sleep(0.3)
    assert m.hour() == pytest.approx(before, abs=1e-3)  # held: no trace time passes
    other = SpotMarket.load(tmp_path / "m.json")  # another reader (the provider, the driver) sees the hold
    assert other.held() and other.hour() == pytest.approx(before, abs=1e-3)
    m.release()
    other.reload_clock()
    assert not other.held() and other.clock.held_s >= 0.3


@pytest.mark.parametrize("field,value", [("seconds_per_hour", 0.0), ("price_ratio", 0.5), ("start_hour", -1.0),
                                         ("notice_seconds", float("nan")), ("price_ratio", True)])
def test_bad_market_settings_name_the_field(tmp_path, field, value):
    with pytest.raises(ConfigError, match=field):
        MarketSettings(trace=trace(tmp_path, [0]), **{field: value})


def test_a_start_past_the_trace_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="past the trace's end"):
        SpotMarket(MarketSettings(trace=trace(tmp_path, [0, 1]), start_hour=1.0), clock=None)  # type: ignore[arg-type]


def test_the_scheduler_runs_on_the_markets_clock_prices_and_tick_and_holds_it_for_a_move(tmp_path):
    data = [1] * 6 + [0] * 60  # history: an hour down; then spot
    m = SpotMarket.create(tmp_path / "m.json", MarketSettings(trace=trace(tmp_path, data), start_hour=1.0,
                                                              seconds_per_hour=20, price_ratio=4.0))
    m.restart(held=True)
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), controller=ControllerConfig(market=str(tmp_path / "m.json")))
    spot = next(p for p in s.pools if p.node_type == "cpu_spot")
    od = next(p for p in s.pools if p.node_type == "cpu_on_demand")
    assert od.hourly_price / spot.hourly_price == pytest.approx(4.0)
    s.place(WorkloadSpec(name="hold", tenant="ops", priority="critical", max_workers=2))  # reserved taken
    p = s.place(WorkloadSpec(name="j", tenant="t", priority="low", expected_hours=1, deadline_hours=3,
                             restart_overhead_hours=0.1, checkpoint_interval_hours=0.1, spot_policy="greedy"))
    job = s.steppers["j"]
    # The trace's tick, and its history before the start (then the first tick, decided at admission).
    assert job.gap_hours == pytest.approx(1 / 6) and job.past == [False] * 6 + [True] and job.tick == 1
    assert job.params.price_ratio == pytest.approx(4.0)
    assert p.market == "spot" and SpotMarket.load(tmp_path / "m.json").held()  # the move holds the clock
    assert s.run_started("j", p.epoch - 1) == 0.0  # a stale run does not end the hold
    assert SpotMarket.load(tmp_path / "m.json").held()
    assert s.run_started("j", p.epoch) == pytest.approx(0.1 * 20)  # the restart's cost in wall seconds
    assert not SpotMarket.load(tmp_path / "m.json").held()


def test_a_deadline_that_on_demand_cannot_meet_is_refused_with_the_numbers(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    with pytest.raises(PlacementRefused, match=r"deadline 2.2h leaves no room for 2h of work plus one 0.5h restart"):
        s.place(WorkloadSpec(name="late", tenant="t", expected_hours=2, deadline_hours=2.2, restart_overhead_hours=0.5,
                             checkpoint_interval_hours=0.1))
    assert s.placement("late") is None


def test_the_clock_runs_again_only_when_every_move_under_way_is_carried_out(tmp_path):
    m = SpotMarket.create(tmp_path / "m.json", MarketSettings(trace=trace(tmp_path, [0] * 60), seconds_per_hour=20))
    m.restart(held=False)
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), controller=ControllerConfig(market=str(tmp_path / "m.json")))
    job = {"tenant": "t", "priority": "low", "expected_hours": 1, "deadline_hours": 4, "restart_overhead_hours": 0.1,
           "checkpoint_interval_hours": 0.1, "spot_policy": "greedy"}
    a = s.place(WorkloadSpec(name="a", **job))
    b = s.place(WorkloadSpec(name="b", **job))
    held = lambda: SpotMarket.load(tmp_path / "m.json").held()  # noqa: E731
    assert held()
    s.run_started("a", a.epoch)
    assert held()  # b's move is still under way
    s.run_started("b", b.epoch)
    assert not held()


def test_a_new_cluster_under_the_same_name_forgets_what_the_old_one_ran_but_keeps_its_costs(tmp_path):
    import time as _time

    db = str(tmp_path / "l.sqlite")
    old = SchedulerState(CONFIG, db, incarnation="gcs:1/session_a")
    old.place(WorkloadSpec(name="w", tenant="t", max_workers=2))
    _time.sleep(0.05)
    again = SchedulerState(CONFIG, db, incarnation="gcs:1/session_a")  # the actor restarted: same cluster
    assert again.placement("w") is not None
    new = SchedulerState(CONFIG, db, incarnation="gcs:1/session_b")  # `cluster down`, `cluster up`
    assert new.placement("w") is None and new.status()["running"] == {} and new.queue == []
    rows = new.ledger.intervals("w")
    last_heard = old.explain("w")[-1]["at"]
    assert rows and all(r["end"] == last_heard for r in rows)  # charged until the last thing heard of it
    assert "forgot 1 workload" in new.explain("_events")[-1]["why"]


def test_on_a_replayed_market_every_interval_is_on_the_markets_clock(tmp_path):
    """Closing at wall time would add every second the clock was held to the last interval."""
    m = SpotMarket.create(tmp_path / "m.json", MarketSettings(trace=trace(tmp_path, [0] * 60), seconds_per_hour=20))
    m.restart(held=True)
    time.sleep(0.3)  # held: 0.3 s of wall time that is not market time
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"), controller=ControllerConfig(market=str(tmp_path / "m.json")))
    before = SpotMarket.load(tmp_path / "m.json").now()
    s.place(WorkloadSpec(name="w", tenant="t", max_workers=1))
    s.finish("w")
    after = SpotMarket.load(tmp_path / "m.json").now()
    (row,) = s.ledger.intervals("w")
    # Opened and closed on the market's clock: inside what it read around the two calls, however long
    # the wall clock ran (a close at wall time lies far outside).
    assert before - 1e-6 <= row["start"] <= row["end"] <= after + 1e-6
