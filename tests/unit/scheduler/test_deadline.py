import itertools
import json
import subprocess
import sys

import pytest

from elasticml.errors import ConfigError
from elasticml.scheduler.omniscient import PlanPolicy
from elasticml.scheduler.deadline import (
    OD, SPOT, NONE, JobParams, TickView, UniformProgressPolicy, simulate,
)
from elasticml.scheduler.policies import POLICIES, run_policy
from elasticml.scheduler.traces import load_trace
from elasticml.scheduler.traces import FAMILIES, generate

GAP = 1 / 6
P = JobParams(job_hours=4, deadline_hours=6, restart_hours=0.2, price_ratio=3.0)
ALL = [*POLICIES, "omniscient"]


def avail(pattern: str) -> list[bool]:
    return [c == "." for c in pattern]


def test_on_demand_costs_work_plus_one_restart_at_the_on_demand_price():
    r = run_policy("on-demand", avail("X" * 60), GAP, P)
    assert r.cost == pytest.approx((4 + 0.2) * 3) == r.on_demand_cost
    assert r.finished_by_deadline and r.finish_hour == pytest.approx(4.2) and r.restarts == 0


@pytest.mark.parametrize("name", ALL)
def test_with_spot_always_there_everyone_but_on_demand_pays_spot(name):
    r = run_policy(name, avail("." * 60), GAP, P)
    assert r.finished_by_deadline
    if name != "on-demand":
        assert r.cost == pytest.approx(4.2) and r.on_demand_hours == 0


@pytest.mark.parametrize("name", ALL)
def test_with_no_spot_at_all_every_policy_still_meets_the_deadline(name):
    r = run_policy(name, avail("X" * 60), GAP, P)
    assert r.finished_by_deadline and r.spot_hours == 0


def test_preemption_forces_a_restart_that_is_billed():
    # Spot for 1 h, then gone: greedy waits, then must finish on on-demand.
    r = run_policy("greedy", avail("." * 6 + "X" * 60), GAP, P)
    assert r.preemptions == 1 and r.restarts == 1
    assert r.spot_hours == pytest.approx(1.0)
    assert r.on_demand_hours == pytest.approx(4 - 0.8 + 0.2)
    assert r.finished_by_deadline


def brute_force_optimum(av: list[bool], params: JobParams) -> float:
    n = int(round(params.deadline_hours / GAP))
    best = float("inf")
    for plan in itertools.product((NONE, SPOT, OD), repeat=n):
        if any(a == SPOT and not av[i] for i, a in enumerate(plan)):
            continue
        r = simulate(PlanPolicy("p", list(plan)), av, GAP, params)
        if r.finished_by_deadline:
            best = min(best, r.cost)
    return best


@pytest.mark.parametrize("pattern", ["..X.X...", "X..X..X.", ".XX..XX.", "...XXX.."])
def test_omniscient_equals_brute_force_on_small_instances(pattern):
    small = JobParams(job_hours=5 * GAP, deadline_hours=8 * GAP, restart_hours=0.2 * GAP * 6 / 6, price_ratio=3.0)
    assert run_policy("omniscient", avail(pattern), GAP, small).cost == pytest.approx(brute_force_optimum(avail(pattern), small), rel=1e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_omniscient_is_never_beaten_and_never_late(family):
    params = JobParams(job_hours=12, deadline_hours=16, restart_hours=0.2, price_ratio=3.0)
    av = [v == 0 for v in generate(family, hours=40, seed=5)["data"]]
    best = run_policy("omniscient", av, GAP, params)
    assert best.finished_by_deadline
    for name in POLICIES:
        r = run_policy(name, av, GAP, params)
        assert r.finished_by_deadline, name
        assert best.cost <= r.cost + 1e-6, name


class Recorder:
    """Wraps a policy and records what it saw and chose."""

    def __init__(self, inner, before=()):
        self.inner, self.name, self.seen = inner, inner.name, []
        self.before, self.expected_before = len(before), list(before)

    def decide(self, view):
        assert len(view.history) == self.before + view.tick  # the past only
        assert view.history[: self.before] == self.expected_before
        choice = self.inner.decide(view)
        self.seen.append(choice)
        return choice


@pytest.mark.parametrize("name", list(POLICIES))
def test_policies_see_only_the_past_and_present(name):
    base = [v == 0 for v in generate("bursty", hours=20, seed=1)["data"]]
    other = base[:40] + [not v for v in base[40:]]
    a, b = Recorder(POLICIES[name]()), Recorder(POLICIES[name]())
    simulate(a, base, GAP, P)
    simulate(b, other, GAP, P)
    assert a.seen[:40] == b.seen[:40]


def test_impossible_deadline_is_a_config_error():
    with pytest.raises(ConfigError, match="deadline"):
        JobParams(job_hours=10, deadline_hours=10, restart_hours=0.2, price_ratio=3)
    with pytest.raises(ConfigError, match="unknown policy 'fast'"):
        run_policy("fast", [True], GAP, P)


def test_generated_traces_have_their_documented_character():
    def availability(family):
        data = [x for seed in range(5) for x in generate(family, hours=200, seed=seed)["data"]]
        return 1 - sum(data) / len(data)

    assert availability("mostly-up") > 0.8
    assert availability("mostly-down") < 0.4
    assert availability("mostly-up") > availability("long-outages") > availability("mostly-down")


def test_cli_prints_one_json_object_with_the_agreed_fields(tmp_path):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(generate("long-outages", hours=80, seed=2)))
    base = [sys.executable, "-m", "elasticml.scheduler.simulate", "--trace", str(trace), "--job-hours", "48",
            "--deadline-hours", "52", "--restart-hours", "0.2", "--price-ratio", "3.0", "--json"]
    out = {}
    for policy in ["greedy", "omniscient", None]:
        cmd = base + (["--policy", policy] if policy else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
        out[policy] = json.loads(proc.stdout)
    for key in ("policy", "cost", "on_demand_cost", "finished_by_deadline", "finish_hour", "spot_hours", "on_demand_hours", "restarts"):
        assert key in out[None]
    assert out[None]["policy"] == "stochastic-dp"
    assert out["omniscient"]["cost"] <= min(out["greedy"]["cost"], out[None]["cost"]) + 1e-6
    assert out[None]["on_demand_cost"] == pytest.approx(48.2 * 3)
    for policy in ("greedy", "stochastic-dp"):
        skipped = subprocess.run(base + ["--policy", policy, "--start-hour", "30"], capture_output=True, text=True,
                                 check=True, timeout=60)
        assert json.loads(skipped.stdout) != out[policy if policy == "greedy" else None], policy
    bad = subprocess.run(base[:4] + [str(tmp_path / "none.json")] + base[5:], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such trace file" in bad.stderr


@pytest.mark.parametrize("name", list(POLICIES))
def test_policies_see_the_history_before_the_start_then_the_job_s_past(name):
    trace = [v == 0 for v in generate("bursty", hours=30, seed=3)["data"]]
    before, job = trace[:60], trace[60:]
    rec = Recorder(POLICIES[name](), before=before)
    r = simulate(rec, job, GAP, P, history=before)
    assert r.finished_by_deadline and rec.seen


def view(**kw):
    base = dict(tick=0, hour=0.0, gap_hours=GAP, progress=0.0, instance=NONE, preempted=False,
                spot_available=True, history=[], params=P)
    base.update(kw)
    return TickView(**base)


def test_uniform_progress_stays_on_demand_until_two_restarts_ahead_of_the_line():
    # P: 4 h of work by 6 h: the line is 2/3 h of work per hour.
    up = UniformProgressPolicy()
    line = 4 * 3.0 / 6
    assert up.decide(view(tick=18, hour=3.0, progress=line - 0.1, spot_available=False)) == OD  # behind: on-demand
    assert up.decide(view(tick=18, hour=3.0, progress=line + 0.1, spot_available=False)) == NONE  # ahead: wait
    # On on-demand, spot back: stays until progress >= line + 2 restarts.
    assert up.decide(view(tick=18, hour=3.0, progress=line + 0.3, instance=OD)) == OD
    assert up.decide(view(tick=18, hour=3.0, progress=line + 0.41, instance=OD)) == SPOT


def test_uniform_progress_safety_net_commits_to_on_demand_for_good():
    up = UniformProgressPolicy()
    # 6 - 3.5 = 2.5 h left < 2.2 h of work + 2 x 0.2 h restarts: commit.
    assert up.decide(view(tick=21, hour=3.5, progress=1.8, instance=SPOT)) == OD
    # Spot is back and progress would be fine by the line: still on-demand.
    assert up.decide(view(tick=22, hour=3.6, progress=3.9, instance=OD)) == OD


def test_cli_history_hours_is_documented_and_bad_values_are_refused(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "elasticml.scheduler.simulate", "--help"],
                               capture_output=True, text=True, check=True, timeout=60).stdout
    assert "--history-hours" in help_text and "--start-hour" in help_text
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(generate("long-outages", hours=120, seed=4)))
    base = [sys.executable, "-m", "elasticml.scheduler.simulate", "--trace", str(trace), "--job-hours", "24",
            "--deadline-hours", "30", "--restart-hours", "0.2", "--price-ratio", "3.0", "--start-hour", "60", "--json"]
    for bad in ("-1", "nan", "inf"):
        proc = subprocess.run(base + ["--history-hours", bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, bad
    for ok in ("0", "60"):
        proc = subprocess.run(base + ["--history-hours", ok], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and json.loads(proc.stdout)["finished_by_deadline"]


@pytest.mark.parametrize("body, field", [
    ({"metadata": {"gap_seconds": 600}, "data": [0, 2, 1]}, "data"),
    ({"metadata": {"gap_seconds": 600}, "data": [0, True]}, "data"),
    ({"metadata": {"gap_seconds": 600}, "data": [0, "1"]}, "data"),
    ({"metadata": {"gap_seconds": 600}, "data": [0.0, 1]}, "data"),
    ({"metadata": {"gap_seconds": 600}, "data": [[0, 1], [1, 0]]}, "data"),
    ({"metadata": {"gap_seconds": 600}, "data": []}, "data"),
    ({"metadata": {"gap_seconds": 600}, "data": {"0": 1}}, "data"),
    ({"metadata": {"gap_seconds": 0}, "data": [0]}, "metadata.gap_seconds"),
    ({"metadata": {"gap_seconds": -5}, "data": [0]}, "metadata.gap_seconds"),
    ({"metadata": {"gap_seconds": 1e9}, "data": [0]}, "metadata.gap_seconds"),
    ({"metadata": {"gap_seconds": "600"}, "data": [0]}, "metadata.gap_seconds"),
    ({"metadata": {}, "data": [0]}, "metadata.gap_seconds"),
])
def test_malformed_traces_are_refused_naming_the_field(tmp_path, body, field):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError) as err:
        load_trace(path)
    assert err.value.field == field


def test_non_finite_gap_and_non_json_traces_are_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"metadata": {"gap_seconds": NaN}, "data": [0]}')
    with pytest.raises(ConfigError, match="gap_seconds"):
        load_trace(path)
    path.write_text("[0, 1")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_trace(path)
    with pytest.raises(ConfigError, match='expected'):
        path.write_text("[0, 1]")
        load_trace(path)


@pytest.mark.parametrize("field, value", [
    ("job_hours", float("nan")), ("deadline_hours", float("inf")), ("restart_hours", True), ("price_ratio", "3"),
    ("job_hours", 1e9), ("deadline_hours", 1e6), ("price_ratio", 1e6), ("job_hours", -1.0),
])
def test_job_params_must_be_finite_bounded_numbers(field, value):
    kw = dict(job_hours=4.0, deadline_hours=6.0, restart_hours=0.2, price_ratio=3.0)
    kw[field] = value
    with pytest.raises(ConfigError) as err:
        JobParams(**kw)
    assert err.value.field == field


def test_an_omniscient_plan_too_large_to_hold_is_refused_up_front():
    params = JobParams(job_hours=2000, deadline_hours=3000, restart_hours=0.2, price_ratio=3.0)
    with pytest.raises(ConfigError, match="GiB") as err:
        run_policy("omniscient", [True] * 10, GAP, params)
    assert err.value.field == "job_hours"
