"""The autoscaling benchmark's method, without Ray: pairing, order, held-out traces, the bootstrap, the verdicts.

benchmarks/serve_autoscale.py decides from these what a run's figures mean; the replays themselves
start Ray and Serve and are not run here.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    pytest.importorskip("ray")  # loadreplay imports ray.serve for its deployment; nothing is started
    sys.path.insert(0, str(BENCH))
    try:
        import serve_autoscale

        yield serve_autoscale
    finally:
        sys.path.remove(str(BENCH))


def test_the_bootstrap_is_seeded_and_brackets_the_mean(bench: Any) -> None:
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    xs = [-40.0, -55.0, -10.0, -70.0, -30.0]
    got = bench.bootstrap_ci(xs, mean, resamples=10_000, seed=3)
    assert got == bench.bootstrap_ci(xs, mean, resamples=10_000, seed=3)
    m, lo, hi = got
    assert m == pytest.approx(-41.0) and lo < m < hi < 0  # every pair below zero: so is the interval
    assert min(xs) <= lo and hi <= max(xs)
    narrower = bench.bootstrap_ci(xs, mean, resamples=10_000, confidence=0.5, seed=3)
    assert lo < narrower[1] <= narrower[2] < hi
    assert bench.bootstrap_ci([5.0] * 6, mean, resamples=500) == (5.0, 5.0, 5.0)
    m, lo, hi = bench.bootstrap_ci([-30.0, 25.0, -5.0, 40.0, -20.0], mean, resamples=10_000)
    assert lo < 0 < hi  # pairs either side: the interval includes zero
    with pytest.raises(ValueError):
        bench.bootstrap_ci([], mean)


def test_the_bootstrap_interval_matches_the_normal_one_on_many_samples(bench: Any) -> None:
    import random

    rng = random.Random(1)
    xs = [rng.gauss(10.0, 4.0) for _ in range(400)]
    _, lo, hi = bench.bootstrap_ci(xs, statistics.fmean, resamples=2000, seed=0)
    half = 1.96 * statistics.stdev(xs) / math.sqrt(len(xs))
    assert lo == pytest.approx(statistics.fmean(xs) - half, abs=0.1)
    assert hi == pytest.approx(statistics.fmean(xs) + half, abs=0.1)


def test_paired_statistics_difference_and_ratio_of_totals(bench: Any) -> None:
    got = bench.paired([10.0, 0.0, 30.0], [40.0, 20.0, 60.0], resamples=2000)
    assert got["diffs"] == [-30.0, -20.0, -30.0] and got["mean_diff"] == pytest.approx(-80 / 3)
    assert got["ratio"] == pytest.approx(40 / 120)
    assert got["ci"][1] < 0 and got["ratio_ci"][0] <= got["ratio"] <= got["ratio_ci"][1]
    assert bench.ratio(0, 0) == 1.0 and bench.ratio(3, 0) == math.inf
    with pytest.raises(ValueError):
        bench.paired([1.0], [1.0, 2.0])


def test_rounds_alternate_the_order_and_pair_the_same_trace_and_arrivals(bench: Any) -> None:
    calls: list[tuple[int, str, str, int, tuple[float, ...]]] = []

    def replay(policy: str, c: Any, seed: int) -> dict[str, Any]:
        calls.append((len(calls), c.name, policy, seed, tuple(c.rate(t) for t in range(0, 200, 7))))
        return {"over_slo": 1, "replica_s": 1.0}

    done: list[int] = []
    results = bench.run_rounds(["diurnal", "flat"], 4, 1.0, replay, lambda k, r: done.append(k))
    assert done == [0, 1, 2, 3]
    firsts = [row["order"][0] for row in results["diurnal"]]
    assert firsts == ["reactive", "predictive", "reactive", "predictive"]
    policies = [policy for _, name, policy, _, _ in calls if name == "diurnal"]
    assert policies == ["reactive", "predictive", "predictive", "reactive"] * 2
    pairs = {}
    for _, name, policy, seed, rates in calls:
        pairs.setdefault((name, seed), []).append(rates)
    assert len(pairs) == 8 and all(len(v) == 2 and v[0] == v[1] for v in pairs.values())  # same trace, same seed
    assert len({v[0] for (name, _), v in pairs.items() if name == "diurnal"}) == 4  # another draw each round
    assert [row["arrival_seed"] for row in results["flat"]] == [2000, 2001, 2002, 2003]


def test_the_evaluation_traces_are_not_the_ones_the_defaults_were_tuned_on(bench: Any) -> None:
    from elasticml.serve import loadreplay as lr

    tuned_day = lr.diurnal(60.0, 1.0, 28.0)
    tuned_ramp = lr.ramp(20.0, 30.0, 1.0, 28.0)
    for k in range(8):
        day = bench.case("diurnal", k)
        assert 70 <= day.season_s <= 90 and 0.3 <= day.params["rise"] <= 0.4
        assert day.duration_s == bench.DURATIONS["diurnal"]
        assert max(abs(day.rate(t) - tuned_day(t)) for t in range(0, 240, 3)) > 3.0
        up = bench.case("ramp", k)
        assert 15 <= up.params["length_s"] <= 40 and up.ramp == (up.params["start_s"], up.params["high"])
        assert max(abs(up.rate(t) - tuned_ramp(t)) for t in range(0, 90)) > 2.0
        assert 6 <= bench.case("flat", k).params["rate"] <= 16
    assert bench.TRACE_SEED0 > max(bench.TUNED_ON["arrival_seeds"]) and bench.ARRIVAL_SEED0 > bench.TRACE_SEED0
    assert bench.case("ramp", 3).params == bench.case("ramp", 3).params
    half = bench.case("ramp", 3, scale=0.5)
    assert half.params["start_s"] == pytest.approx(bench.case("ramp", 3).params["start_s"] / 2)
    with pytest.raises(ValueError, match="no trace family"):
        bench.case("sawtooth", 0)


def _stats(bench: Any, predictive: list[float], reactive: list[float]) -> dict[str, Any]:
    return bench.paired(predictive, reactive, resamples=2000)


def test_the_verdicts_are_the_goals_of_issue_30(bench: Any) -> None:
    halved = _stats(bench, [10, 5, 20, 0, 15], [60, 40, 70, 30, 50])
    cheaper = _stats(bench, [100, 98, 101, 97, 99], [101, 99, 100, 99, 100])
    dearer = _stats(bench, [120, 118, 121, 117, 119], [101, 99, 100, 99, 100])
    assert bench.verdict("diurnal", halved, cheaper)[0] is True
    assert bench.verdict("ramp", halved, dearer)[0] is False  # fewer misses, but at more replica-seconds
    fewer = _stats(bench, [40, 30, 50, 25, 45], [60, 40, 70, 30, 50])  # fewer, not half
    met, text = bench.verdict("diurnal", fewer, cheaper)
    assert met is False and "ratio 0.76" in text
    noisy = _stats(bench, [0, 90, 5, 80, 10], [60, 40, 70, 30, 50])  # half as many, but not beyond noise
    assert bench.verdict("ramp", noisy, cheaper)[0] is False
    none = _stats(bench, [0, 0, 0, 0, 0], [0, 0, 0, 0, 0])
    assert "nothing to halve" in bench.verdict("ramp", none, cheaper)[1]
    either_way = _stats(bench, [12, 30, 8, 25, 15], [20, 10, 18, 22, 16])
    assert bench.verdict("flat", either_way, cheaper)[0] is True
    assert bench.verdict("flat", either_way, dearer)[0] is False
    assert bench.verdict("flat", _stats(bench, [30, 40, 35, 45, 38], [10, 12, 9, 14, 11]), cheaper)[0] is False
    assert bench.verdict("spike", halved, cheaper) == (None, "not a goal trace")
    short = _stats(bench, [10, 5], [60, 40])
    assert "not a verdict" in bench.verdict("diurnal", short, _stats(bench, [1, 1], [2, 2]))[1]


def test_requests_over_the_slo_split_at_the_first_season_as_the_record_counts_them(bench: Any, tmp_path: Path,
                                                                                   capsys: Any) -> None:
    """A failed request counts as over the SLO, as in the run's own totals; the split is at each round's period."""
    def side(sent: list[float], latency: list[float], status: list[int]) -> dict[str, Any]:
        return {"over_slo": sum(1 for lat, code in zip(latency, status) if code != 200 or lat > bench.SLO_S),
                "raw": {"sent_at_s": sent, "latency_s": latency, "status": status}}

    rows = [{"params": {"period_s": 70.0},
             "reactive": side([1.0, 30.0, 69.9, 70.0, 150.0], [2.0, 0.3, 1.5, 3.0, 0.2], [200, 503, 200, 200, 200]),
             "predictive": side([1.0, 80.0], [0.2, 1.2], [200, 200])},
            {"params": {"period_s": 90.0},
             "reactive": side([80.0, 95.0], [1.1, 0.1], [200, 200]),
             "predictive": side([80.0, 95.0], [0.1, 5.0], [200, 200])}]
    split = bench.over_slo_by_season(rows)
    assert split == {"reactive": [4, 1], "predictive": [0, 2]}
    assert sum(split["reactive"]) == sum(r["reactive"]["over_slo"] for r in rows)  # the totals the verdict used
    record = tmp_path / "run.json"
    record.write_text(json.dumps({"script": "benchmarks/serve_autoscale.py",
                                  "command": "python benchmarks/serve_autoscale.py", "commit": "abc1234",
                                  "samples": {"diurnal": rows, "ramp": [{"params": {"start_s": 10.0}}]}}))
    bench.print_seasons(str(record))
    out = capsys.readouterr().out
    assert ("diurnal: requests over the SLO, reactive / predictive, first season 4 / 0 (x0.00), "
            "after it 1 / 2 (x2.00)") in out
    assert "ramp" not in out  # no season, no split
    # a record that is not this benchmark's: an error naming what is wrong, not a count or a traceback
    bad = dict(rows[0], params={"period_s": float("nan")})
    with pytest.raises(ValueError, match="round 1: .*period_s"):
        bench.over_slo_by_season([rows[0], bad])
    broken = dict(rows[0], predictive={"raw": {"sent_at_s": [1.0], "latency_s": [0.2], "status": ["200"]}})
    with pytest.raises(ValueError, match="round 0: .*not \\(sent_at_s"):
        bench.over_slo_by_season([broken])
    endless = dict(rows[0], reactive={"raw": {"sent_at_s": [1.0], "latency_s": [float("inf")], "status": [200]}})
    with pytest.raises(ValueError, match="round 0: .*reactive request"):
        bench.over_slo_by_season([endless])
    record.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a record of benchmarks/serve_autoscale.py"):
        bench.print_seasons(str(record))


def test_returns_to_target_counts_the_asks_that_restart_serves_downscale_delay(bench: Any, tmp_path: Path,
                                                                               capsys: Any) -> None:
    def ask(replicas: int, target: int, forecast: float, queued: float | None = 0.0) -> dict[str, Any]:
        return {"event": "decision", "replicas": replicas, "target": target, "forecast": forecast, "queued": queued}

    log = [ask(3, 3, 8.0), ask(2, 3, 5.0),
           ask(3, 3, 5.0),           # back at the target on a forecast that fits 2 replicas: the window's hold
           ask(2, 3, 5.5), ask(3, 3, 5.995),   # at the line, as logged (over it unrounded): the load's
           ask(2, 3, 4.0), ask(3, 3, 4.0, queued=2.0),   # requests waiting: the backlog rule's
           ask(2, 3, 4.0), ask(2, 2, 4.0),   # Serve applied the ask: a new target, no return
           {"event": "resumed"}, ask(1, 2, 2.0), ask(2, 2, 4.0, queued=None)]   # the load's again
    rows = [{"predictive": {"raw": {"decisions": log}}}]
    assert bench.returns_to_target(rows) == {"fewer": 5, "back": 4, "by_window": 1}
    record = tmp_path / "run.json"
    record.write_text(json.dumps({"script": "benchmarks/serve_autoscale.py", "command": "c", "commit": "abc1234",
                                  "samples": {"flat": rows}}))
    bench.print_returns(str(record))
    assert "flat: asks for fewer than the target 5, next ask back at it 4, of which by the window's hold 1" \
        in capsys.readouterr().out
    with pytest.raises(ValueError, match="round 1: "):
        bench.returns_to_target([rows[0], {"predictive": {"raw": {"decisions": [ask(1, 2, 1.0),
                                                                               {"event": "decision"}]}}}])


def test_served_per_replica_counts_each_window_from_the_raw_requests_and_replica_samples(bench: Any) -> None:
    side = {"raw": {"sent_at_s": [0.0, 0.5, 1.0, 2.5, 3.9], "latency_s": [0.25, 0.25, 1.5, 0.25, 0.5],
                    "replicas": [[0.0, 1], [1.5, 2]]}}
    first, second = bench.served_per_replica(side, until_s=4.0)
    assert first == {"t": 0.0, "sent_per_s": 1.5, "answered_per_s": 1.0, "running": 1, "in_flight": 1,
                     "answered_per_replica_s": 1.0}  # the third is answered at 2.5, in the next window
    assert second == {"t": 2.0, "sent_per_s": 1.0, "answered_per_s": 1.0, "running": 2, "in_flight": 1,
                      "answered_per_replica_s": 0.5}  # answered: the third (2.5) and the fourth (2.75); not 4.4


def test_the_docstring_states_the_setting_and_the_runtime_formula_the_code_uses(bench: Any) -> None:
    doc = bench.__doc__
    assert f"one of a replica's {bench.SLOTS} slots" in doc
    assert f"target ({bench.TARGET:g} in flight a replica)" in doc
    assert bench.estimate_s(bench.DEFAULT_TRACES.split(","), 5, 1.0) == 4200
    assert bench.estimate_s(bench.DEFAULT_TRACES.split(","), 5, 0.5) == 2250
    assert "5 x (780 + 60) s ~ 4,200 s" in doc and "5 x (390 + 60) s ~ 2,250 s" in doc
    assert bench.finite({"a": [math.inf, 1.0, math.nan]}) == {"a": [None, 1.0, None]}


@pytest.fixture(scope="module")
def sim(bench: Any) -> Iterator[Any]:
    sys.path.insert(0, str(BENCH))
    try:
        import autoscale_sim

        yield autoscale_sim
    finally:
        sys.path.remove(str(BENCH))


def test_the_simulator_serves_a_load_one_replica_carries_within_the_slo_on_one_replica(sim: Any, bench: Any) -> None:
    c = bench.Case(name="flat", rate=lambda t: 4.0, duration_s=30.0)  # 1 in flight: a third of the target
    run = sim.simulate(c, sim.Reactive(), arrival_seed=1, startup_seed=1)
    assert 90 <= run.requests <= 150 and run.answered == run.requests and run.over_slo == 0
    assert {n for _, n, _ in run.timeline} == {1} and run.replica_s == pytest.approx(30.0, abs=0.3)


def test_the_simulator_queues_what_the_replicas_cannot_hold_and_starts_replicas_late(sim: Any, bench: Any) -> None:
    # 30/s needs 7.5 slots: two replicas at least; one replica (16/s at most) falls behind while the others start.
    c = bench.Case(name="step", rate=lambda t: 2.0 if t < 10 else 30.0, duration_s=40.0)
    run = sim.simulate(c, sim.Reactive(), arrival_seed=2, startup_seed=2)
    assert run.over_slo > 30  # the queue of the start-up
    started = next(t for t, n, _ in run.timeline if n >= 2)
    assert started >= 10 + sim.STARTUP_S  # a replica serves only once started
    late = [n for t, n, _ in run.timeline if t >= 30]
    assert min(late) >= 3  # ceil(7.5 in flight / 3 a replica)
    assert run.answered == run.requests  # the backlog is served after the trace, as the live replayer waits


def test_the_simulator_applies_serves_delays_before_a_decision_takes_effect(sim: Any, bench: Any) -> None:
    # A scripted policy (3 replicas from 10 s to 30 s, 1 otherwise) on light load: only the delays move the target.
    def scripted(now: float, load: float, running: int, target: int, queued: float) -> int:
        return 3 if 10.0 <= now < 30.0 else 1

    c = bench.Case(name="light", rate=lambda t: 1.0, duration_s=50.0)
    run = sim.simulate(c, scripted, arrival_seed=4, startup_seed=4)
    target = {t: tg for t, _, tg in run.timeline}
    assert bench.DELAYS["upscale_delay_s"] == 0.5 and bench.DELAYS["downscale_delay_s"] == 8.0
    assert target[10.0] == 1 and target[11.0] == 3  # up after 0.5 s of asking
    assert target[37.0] == 3 and target[39.0] == 1  # down only after 8 s of asking
    running = {t: n for t, n, _ in run.timeline}
    assert running[11.0] == 1 and running[20.0] == 3  # replicas serve once started


def test_the_oracle_reference_knows_the_trace_and_beats_the_reactive_rule_on_a_ramp(sim: Any, bench: Any) -> None:
    c = bench.Case(name="ramp", rate=lambda t: 2.0 if t < 20 else min(26.0, 2.0 + (t - 20) * 1.5), duration_s=70.0)
    reactive = sim.simulate(c, sim.Reactive(), arrival_seed=3, startup_seed=3)
    oracle = sim.simulate(c, sim.Oracle(c.rate), arrival_seed=3, startup_seed=3)
    assert oracle.over_slo == 0 < reactive.over_slo
    needed_at = 20 + (bench.TARGET / bench.SERVICE_S - 2.0) / 1.5  # where one replica's target is passed
    # asked a whole start-up ahead: Serve's upscale delay and the longest start-up of one replica
    longest = bench.DELAYS["upscale_delay_s"] + sim.STARTUP_S + sim.STARTUP_PER_START_S + sim.STARTUP_JITTER_S
    asks = sim.Oracle(c.rate)
    first_ask = next(k * sim.TICK_S for k in range(1000) if asks(k * sim.TICK_S, 0.0, 1, 1, 0.0) >= 2)
    assert first_ask <= needed_at - longest + sim.TICK_S
    assert next(t for t, _, tg in reactive.timeline if tg >= 2) > needed_at


def test_the_simulator_drives_the_forecaster_as_serves_policy_does(sim: Any, bench: Any) -> None:
    # On a ramp the predictive side never has its second replica later than Serve's rule, in the same draw, and
    # sometimes earlier (on a draw whose rise stands out from the noise soon enough); fewer requests miss the SLO.
    c = bench.Case(name="ramp", rate=lambda t: 2.0 if t < 20 else min(26.0, 2.0 + (t - 20) * 1.0), duration_s=70.0)
    ahead, over = [], {"reactive": 0, "predictive": 0}
    for seed in range(10):
        reactive = sim.simulate(c, sim.Reactive(), arrival_seed=seed, startup_seed=seed)
        predictive = sim.simulate(c, sim.Predictive({}, None), arrival_seed=seed, startup_seed=seed)
        assert predictive.requests == reactive.requests
        first = {name: next(t for t, n, _ in r.timeline if t > 20 and n >= 2)
                 for name, r in (("reactive", reactive), ("predictive", predictive))}
        ahead.append(first["reactive"] - first["predictive"])
        over["reactive"] += reactive.over_slo
        over["predictive"] += predictive.over_slo
    assert min(ahead) >= 0 and max(ahead) > 0
    assert over["predictive"] < over["reactive"]


def test_in_the_simulator_the_served_signal_does_not_feed_on_the_queue_its_start_ups_cause(
        sim: Any, bench: Any) -> None:
    # 14/s is one replica's worth (16/s at 4 slots). A policy that asks for 8 replicas for 20 s: their start-ups
    # slow the serving replica (the fitted contention), requests queue behind it, and the policy is told so.
    def asks_eight(now: float, load: float, running: int, target: int, queued: float) -> int:
        seen.append((now, load, queued))
        return 8 if 10.0 <= now < 30.0 else 1

    seen: list[tuple[float, float, float]] = []
    sim.simulate(bench.Case(name="flat", rate=lambda t: 14.0, duration_s=40.0), asks_eight, 5, 5)
    before = [queued for t, _, queued in seen if t < 10.0]
    starting = [queued for t, _, queued in seen if 10.5 <= t < 16.0]  # before any of the 7 serves
    assert statistics.mean(starting) > 3 * statistics.mean(before) and max(starting) > max(before)

    # The forecast on each signal, on the same draws of a flat load one replica carries: following Serve's
    # in-flight count it asks for more replicas, and holds more, than following the requests served (rise_sigmas
    # off: it would hide a queue's rise on either signal, which is not what is compared here).
    flat = bench.Case(name="flat", rate=lambda t: 10.0, duration_s=60.0)
    runs = {signal: [sim.simulate(flat, sim.Predictive({"signal": signal, "rise_sigmas": 0.0}, None), arrival_seed=k,
                                  startup_seed=k)
                     for k in range(10)] for signal in ("running", "in_flight")}
    peak = {signal: sum(max(tg for _, _, tg in r.timeline) for r in rs) for signal, rs in runs.items()}
    assert peak["running"] < peak["in_flight"]
    assert sum(r.replica_s for r in runs["running"]) < sum(r.replica_s for r in runs["in_flight"])


def test_the_contention_fit_sets_the_models_reactive_totals_beside_the_live_ones(sim: Any, tmp_path: Path) -> None:
    live = {"script": "benchmarks/serve_autoscale.py", "args": {"scale": 1.0},
            "samples": {"flat": [{"round": 0, "trace_seed": 9001, "arrival_seed": 10001,
                                  "reactive": {"over_slo": 5, "replica_s": 61.5}}]}}
    path = tmp_path / "live.json"
    path.write_text(json.dumps(live))
    fit = sim.fit_contention(sim.live_records([str(path), str(path)]))  # a draw in two records counts twice, as live
    assert [tuple(e["contention"]) for e in fit] == list(sim.CONTENTION_CANDIDATES)
    assert all(e["flat"]["live_over_slo"] == 10 and e["flat"]["live_replica_s"] == 123.0 for e in fit)
    alone = sim.simulate(sim.case_seeded("flat", 9001), sim.Reactive(), 10001, 10001, contention=(0.0, 0.0))
    assert fit[0]["flat"]["sim_over_slo"] == 2 * alone.over_slo
    # A record whose draw the model would not reproduce is refused, not fitted to
    row = live["samples"]["flat"][0]
    assert sim.case_seeded("flat", 9001).params == sim.case("flat", 8001).params  # seeds from the base 1000
    drifted = {**live, "samples": {"flat": [{**row, "params": {"rate": 1.0}}]}}
    (tmp_path / "drifted.json").write_text(json.dumps(drifted))
    with pytest.raises(SystemExit, match="other parameters"):
        sim.fit_contention(sim.live_records([str(tmp_path / "drifted.json")]))
    (tmp_path / "other.json").write_text(json.dumps({**live, "script": "benchmarks/optimize.py"}))
    with pytest.raises(SystemExit, match="not a record of"):
        sim.live_records([str(tmp_path / "other.json")])


def test_the_fit_check_replays_the_predictive_side_with_each_records_own_policy(
        sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    side = {"over_slo": 3, "replica_s": 70.0}
    row = {"round": 0, "trace_seed": 9001, "arrival_seed": 10001, "reactive": side, "predictive": side}
    resolved = {"samples": {"flat": [row]}, "commit": "abc1234",
                "setting": {"forecast": {}, "forecast_resolved": {"rise_sigmas": 0.0, "serve_delay_s": 0.0}}}
    then = {"samples": {"flat": [row]}, "commit": "0e672bb", "dirty": False, "setting": {"forecast": {"alpha": 0.5}}}
    unknown = {"samples": {"flat": [row]}, "commit": "fffffff", "dirty": False, "setting": {"forecast": {}}}
    assert sim.record_policy(resolved) == {"rise_sigmas": 0.0, "serve_delay_s": 0.0}  # recorded: as it ran
    assert sim.record_policy(then) == {"serve_delay_s": None, "alpha": 0.5}  # that day's defaults and its own
    assert sim.record_policy(unknown) is None
    assert sim.record_policy({**then, "dirty": True}) is None  # a dirty tree's policy is not the commit's
    given: list[dict[str, Any]] = []
    real = sim.Predictive

    def predictive(settings: dict[str, Any], season_s: float | None) -> Any:
        given.append(settings)
        return real(settings, season_s)

    monkeypatch.setattr(sim, "Predictive", predictive)
    check = sim.check_predictive([resolved, unknown], (0.3, 0.15))
    assert given and all(s == {"rise_sigmas": 0.0, "serve_delay_s": 0.0} for s in given)  # the record's own
    assert check["skipped"] == ["fffffff"]
    flat = check["traces"]["flat"]
    assert flat["live_predictive_over_slo"] == 3 and flat["live_reactive_replica_s"] == 70.0  # one record counted
    c = sim.case_seeded("flat", 9001)
    runs = [sim.simulate(c, real({"rise_sigmas": 0.0, "serve_delay_s": 0.0}, None), 10001, 10001 + j,
                         contention=(0.3, 0.15)) for j in range(sim.FIT_STARTUP_DRAWS)]
    assert flat["sim_predictive_over_slo"] == pytest.approx(statistics.mean(r.over_slo for r in runs), abs=1e-3)
    assert flat["live_over_slo_ratio"] == 1.0


def test_live_start_ups_are_timed_from_serves_target_as_its_delay_logic_moves_it(sim: Any) -> None:
    decisions = [{"event": "decision", "t": 110.0, "replicas": 2, "running": 1},  # Serve's target 2 at 10.5
                 {"event": "decision", "t": 120.0, "replicas": 5, "running": 2},  # held 0.6 s: target 5 at 20.5,
                 {"event": "decision", "t": 120.6, "replicas": 2, "running": 2},  # then a dip shorter than 8 s
                 {"event": "decision", "t": 121.0, "replicas": 5, "running": 2},  # leaves it there
                 {"event": "decision", "t": 130.0, "replicas": 6, "running": 5},  # a flip shorter than 0.5 s
                 {"event": "decision", "t": 130.3, "replicas": 5, "running": 5},  # restarts the wait:
                 {"event": "decision", "t": 131.0, "replicas": 6, "running": 5},  # target 6 at 31.5
                 {"event": "decision", "t": 140.0, "replicas": 1, "running": 6},  # down only after 8 s
                 {"event": "resumed", "t": 99.0}]
    asks = [(e["t"] - 100.0, e["replicas"]) for e in decisions if e["event"] == "decision"]
    assert sim.serve_targets(asks, first=1) == [(-math.inf, 1), (10.5, 2), (20.5, 5), (31.5, 6), (48.0, 1)]
    # an ask that changes but stays on the same side keeps the wait; what applies is the ask then standing
    assert sim.serve_targets([(10.0, 3), (10.3, 4)], first=1) == [(-math.inf, 1), (10.5, 4)]
    assert sim.serve_targets([(0.0, 4), (1.0, 2), (5.0, 1), (9.0, 3)], first=4) == [(-math.inf, 4), (9.0, 1), (9.5, 3)]
    replicas = [[0.0, 1], [15.0, 2], [25.0, 3], [25.5, 5], [36.0, 6]]
    record = {"samples": {"ramp": [{"predictive": {"raw": {"started_at": 100.0, "decisions": decisions,
                                                           "replicas": replicas}}}]}}
    half = sim.SAMPLE_S / 2  # the sampler sees a replica half its interval late, on average
    took = sim.measured_startups([record])
    assert took == {1: [round(4.5 - half, 2), round(4.5 - half, 2)], 3: [round(4.5 - half, 2), round(5.0 - half, 2)]}
    assert sim.measured_startups([{"samples": {"ramp": [{"predictive": {"raw": {
        "started_at": None, "decisions": decisions, "replicas": replicas}}}]}}]) == {}


def test_start_ups_are_timed_from_the_samplers_starting_and_running_counts_for_either_side(sim: Any) -> None:
    def startups(pairs: list[tuple[float, int, int]]) -> dict[int, list[float]]:  # (t, running, starting)
        record = {"samples": {"flat": [{"reactive": {"raw": {"replicas": [[t, r] for t, r, _ in pairs],
                                                             "starting": [[t, s] for t, _, s in pairs]}},
                                        "predictive": {"raw": {"replicas": [[t, r] for t, r, _ in pairs]}}}]}}
        assert sim.sampled_startups([record], "predictive") == {}  # a record from before the sampler counted starts
        return sim.sampled_startups([record], "reactive")

    # 1 running; at 2.0 s three start at once, up at 6.5, 7.0 and 8.0 s; at 9.0 s one more alone, up at 13.5 s;
    # at 20.0 s a running one stops.
    assert startups([(0.0, 1, 0), (2.0, 1, 3), (6.5, 2, 2), (7.0, 3, 1), (8.0, 4, 0), (9.0, 4, 1), (13.5, 5, 0),
                     (20.0, 4, 0)]) == {1: [4.5], 3: [4.5, 5.0, 6.0]}
    # Overlapping: two start at 1.0 s, one comes up at 5.0 s as another starts (2 then starting, the newcomer
    # included), the first batch's second at 6.0 s, the newcomer at 9.5 s; five at once count as 4 or more.
    assert startups([(0.0, 1, 0), (1.0, 1, 2), (5.0, 2, 2), (6.0, 3, 1), (9.5, 4, 0), (10.0, 4, 5),
                     (15.0, 9, 0)]) == {2: [4.0, 5.0, 4.5], 4: [5.0] * 5}
    # Cancelled: five start, three come up, the other two are stopped by a downscale before they run; a later
    # single start is timed from its own start, not a cancelled one's.
    assert startups([(0.0, 1, 0), (1.0, 1, 5), (5.5, 4, 2), (7.0, 4, 0), (30.0, 4, 1), (34.5, 5, 0)]) == {
        1: [4.5], 4: [4.5, 4.5, 4.5]}
    # Which of those starting a downscale stopped is not known: the newest are taken to have gone.
    assert startups([(0.0, 1, 0), (1.0, 1, 1), (3.0, 1, 2), (4.0, 1, 1), (5.5, 2, 0)]) == {1: [4.5]}
    # A running replica stops as another starts: the start is seen (starting rose, running fell).
    assert startups([(0.0, 2, 0), (1.0, 1, 1), (5.5, 2, 0)]) == {1: [4.5]}
    # Already starting at the first sample: not timed, and no later start takes its end.
    assert startups([(0.0, 1, 1), (1.0, 1, 2), (3.0, 2, 1), (5.5, 3, 0)]) == {2: [4.5]}


def test_a_sweeps_margins_rank_the_settings_that_met_every_goal_by_the_nearest_one(sim: Any) -> None:
    def side(over: float, cost: float, verdict: str = "met") -> dict[str, Any]:
        return {"over_slo": {"ratio": over}, "replica_s": {"ratio": cost}, "verdict": verdict}

    settings = {"predictive": {"rise_sigmas": 0.0}, "compare": {"rise_sigmas": 2.0}, "compare2": {"rise_sigmas": 3.0},
                "compare3": {"beta": 0.1}, "oracle": sim.ORACLE}
    summary = {"diurnal": {"predictive": side(0.40, 0.98), "compare": side(0.45, 0.90), "compare2": side(0.30, 0.92),
                           "compare3": side(0.30, 0.90), "oracle": side(0.1, 0.9)},
               "ramp": {"predictive": side(0.10, 1.05, "NOT met"), "compare": side(0.10, 0.95),
                        "compare2": side(0.20, 0.90), "compare3": side(0.33, 0.90), "oracle": side(0.0, 0.9)},
               "flat": {label: side(1.0, 1.0) for label in settings},
               "spike": {label: side(2.0, 2.0, "not a goal trace") for label in settings}}  # ignored
    ranked = sim.margins({"model": {"settings": settings}, "summary": summary})
    assert [e["label"] for e in ranked] == ["compare2", "compare", "predictive", "compare3"]
    assert ranked[0]["margin"] == pytest.approx(0.08) and ranked[1]["margin"] == pytest.approx(0.05)
    assert not ranked[2]["met"] and ranked[3]["met"] and not ranked[3]["eligible"]  # its ramp beyond RAMP_CAP


def test_blocks_judge_each_run_of_k_rounds_as_the_live_benchmark_judges_its_run(sim: Any) -> None:
    """Four rounds: the first two halve reactive's misses at less cost (the goal met by themselves, however
    narrow the interval of two), the last two do not; a fifth round, an incomplete block, is left out."""
    def row(pred: float, react: float, cost: float = 90.0) -> dict[str, Any]:
        return {"predictive": {"over_slo": pred, "replica_s": cost},
                "reactive": {"over_slo": react, "replica_s": 100.0}}

    rows = [row(10, 40), row(12, 40), row(50, 40), row(45, 40, 120.0), row(0, 1000)]
    out = sim.blocks(rows, "diurnal", "predictive", 2)
    assert (out["size"], out["blocks"], out["met"]) == (2, 2, 1)
    spread = out["over_slo_ratio"]
    assert spread["min"] == pytest.approx(22 / 80) and spread["max"] == pytest.approx(95 / 80)
    assert spread["undefined"] == 0
    none = sim.blocks([row(5, 0), row(3, 0)], "diurnal", "predictive", 1)  # reactive had none: no ratio
    assert none["met"] == 0 and none["over_slo_ratio"] is None
    with pytest.raises(SystemExit):
        sim.main(["--rounds", "4", "--blocks", "3", "--no-json"])


@pytest.mark.parametrize("value", ["0.6", "nan", "0.001", "inf"])
def test_a_router_cap_an_app_could_not_set_is_refused_before_anything_runs(bench: Any, monkeypatch: Any, capsys: Any,
                                                                          value: str) -> None:
    monkeypatch.setattr(sys, "argv", ["serve_autoscale.py", "--router-max-backoff-s", value, "--no-json"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--router-max-backoff-s in [0.005, 0.5]" in capsys.readouterr().err


def test_the_replica_sampler_counts_running_and_starting_replicas_as_serve_reports_them(monkeypatch) -> None:
    from types import SimpleNamespace

    from ray.serve._private.common import ReplicaState

    from elasticml.serve import loadreplay

    states = {ReplicaState.RUNNING: 2, ReplicaState.STARTING: 3, ReplicaState.STOPPING: 1}
    status = SimpleNamespace(applications={"a": SimpleNamespace(deployments={"d": SimpleNamespace(
        replica_states=states)})})
    monkeypatch.setattr(loadreplay.serve, "status", lambda: status)
    sampler = loadreplay.ReplicaSampler({"ours": ("a", "d"), "gone": ("b", "d")}, every_s=0.05)

    async def sample() -> None:
        task = asyncio.create_task(sampler.run())
        await asyncio.sleep(0.12)
        sampler.stop()
        await task

    asyncio.run(sample())
    assert sampler.samples["ours"] and {n for _, n in sampler.samples["ours"]} == {2}
    assert [t for t, _ in sampler.starting["ours"]] == [t for t, _ in sampler.samples["ours"]]
    assert {n for _, n in sampler.starting["ours"]} == {3}  # stopping replicas are neither
    assert {n for _, n in sampler.starting["gone"]} == {n for _, n in sampler.samples["gone"]} == {0}
