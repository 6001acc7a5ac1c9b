"""The default spot policy (stochastic DP over a fitted run-length model) and its model."""

from collections.abc import Sequence

import numpy as np
import pytest

from elasticml.scheduler import spot_model
from elasticml.scheduler.deadline import NONE, OD, SPOT, JobParams, TickView, simulate
from elasticml.scheduler.planner import StochasticDPPolicy
from elasticml.scheduler.policies import run_policy

GAP = 1 / 6


def avail(pattern: str) -> list[bool]:
    return [c == "." for c in pattern]


# -- the model ------------------------------------------------------------------
def test_runs_and_current_age():
    h = avail("..XXX.X")
    assert spot_model.runs(h) == [(True, 2), (False, 3), (True, 1), (False, 1)]
    assert spot_model.current_age(h, available=False) == 2  # the last X, then this tick
    assert spot_model.current_age(h, available=True) == 1
    assert spot_model.current_age([], available=True) == 1


def test_hazards_are_kaplan_meier_with_the_last_run_censored():
    # Outages of 1, 1, 3 ticks; the trailing spot run (4 ticks) is still going: censored.
    h = avail("..X..X...XXX....")
    m = spot_model.fit(h, GAP, max_age=4, prior_mean_hours=(1.0, 1.0), prior_weight=0.0)
    down = m.hazard[spot_model.DOWN]
    assert down[0] == pytest.approx(2 / 3)  # 3 outages reached age 1, 2 ended there
    assert down[1] == pytest.approx(1e-6)  # 1 reached age 2, none ended
    assert down[2] == pytest.approx(1.0)  # it ended at 3
    up = m.hazard[spot_model.UP]
    # Spot runs 2, 2, 3 complete and 4 censored: at age 2, 4 at risk, 2 ended.
    assert up[1] == pytest.approx(2 / 4)
    assert up[3] == pytest.approx(1e-6)  # only the censored run reached age 4


def test_an_empty_history_gives_the_memoryless_prior():
    m = spot_model.fit([], GAP, max_age=6, prior_mean_hours=(1.0, 2.0), prior_weight=2.0)
    assert np.allclose(m.hazard[spot_model.DOWN], GAP / 1.0)
    assert np.allclose(m.hazard[spot_model.UP], GAP / 2.0)


# -- the policy -----------------------------------------------------------------
def test_with_spot_always_there_it_pays_one_launch_on_spot():
    p = JobParams(job_hours=4, deadline_hours=6, restart_hours=0.2, price_ratio=3.0)
    r = run_policy("stochastic-dp", avail("." * 60), GAP, p)
    assert r.finished_by_deadline and r.on_demand_hours == 0 and r.cost == pytest.approx(4.2)


def test_with_no_spot_at_all_it_runs_on_demand_in_time():
    p = JobParams(job_hours=4, deadline_hours=6, restart_hours=0.2, price_ratio=3.0)
    r = run_policy("stochastic-dp", avail("X" * 60), GAP, p)
    assert r.finished_by_deadline and r.spot_hours == 0


def _outage_view(history: Sequence[bool], params: JobParams) -> TickView:
    """Spot just went down at the job's first tick; nothing is running."""
    return TickView(tick=0, hour=0.0, gap_hours=GAP, progress=0.0, instance=NONE, preempted=False,
                    spot_available=False, history=list(history), params=params)


def test_the_zone_s_history_decides_whether_to_wait_out_an_outage():
    # 5 h of slack and 20-minute outages: waiting them all out fits in the slack.
    p = JobParams(job_hours=12, deadline_hours=17.2, restart_hours=0.2, price_ratio=3.0)
    short = avail(("." * 12 + "X" * 2) * 30 + "." * 12)
    assert StochasticDPPolicy().decide(_outage_view(short, p)) == NONE


def _spot_back_view(history: Sequence[bool], params: JobParams) -> TickView:
    """On on-demand (restart paid off), and spot has just come back."""
    return TickView(tick=0, hour=0.0, gap_hours=GAP, progress=0.0, instance=OD, preempted=False,
                    spot_available=True, history=list(history), params=params)


def test_the_zone_s_history_decides_whether_to_leave_on_demand_for_spot():
    # Spot that comes back for 10 minutes cannot repay the 12-minute restart: stay on on-demand.
    # Spot that comes back for 4 hours repays it many times: go.
    p = JobParams(job_hours=12, deadline_hours=14.2, restart_hours=0.2, price_ratio=3.0)
    blips = avail(("." + "X" * 6) * 40)
    long_runs = avail(("." * 24 + "X" * 6) * 12)
    assert StochasticDPPolicy().decide(_spot_back_view(blips, p)) == OD
    assert StochasticDPPolicy().decide(_spot_back_view(long_runs, p)) == SPOT


def test_it_learns_from_history_and_beats_greedy_on_a_zone_with_long_outages():
    # Outages of 5 h after 3 h of spot, repeating; 2 h of slack: idling through an outage is ruinous.
    trace = avail(("." * 18 + "X" * 30) * 12)
    p = JobParams(job_hours=20, deadline_hours=22.2, restart_hours=0.2, price_ratio=3.0)
    start = 48 * 4 + 18  # the job starts as an outage does, with 4 cycles of history
    dp = run_policy("stochastic-dp", trace[start:], GAP, p, history=trace[:start])
    baselines = [run_policy(name, trace[start:], GAP, p, history=trace[:start]).cost
                 for name in ("greedy", "uniform-progress")]
    best = run_policy("omniscient", trace[start:], GAP, p)
    assert dp.finished_by_deadline
    assert dp.cost < 0.9 * min(baselines)  # they wait out the outage, then pay on-demand to the end
    assert dp.cost <= best.cost * 1.06


class _Adversary(Sequence):
    """Spot is offered whenever the policy is not on it and vanishes the tick after it launches there."""

    def __init__(self, n: int) -> None:
        self.n, self.last = n, NONE

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # the engine reads each tick once, before the policy decides
        return self.last != SPOT


class _Watch:
    def __init__(self, inner, adversary):
        self.inner, self.adversary, self.name = inner, adversary, inner.name

    def decide(self, view):
        choice = self.inner.decide(view)
        self.adversary.last = choice if not (choice == SPOT and not view.spot_available) else NONE
        return choice


def _random_trace(rng: np.random.Generator, n: int) -> list[bool]:
    kind = rng.integers(4)
    if kind == 0:  # Markov with random sojourns
        up, down = rng.uniform(0.1, 10), rng.uniform(0.1, 10)
        out, state = [], bool(rng.integers(2))
        for _ in range(n):
            if rng.random() < GAP / (up if state else down):
                state = not state
            out.append(state)
        return out
    if kind == 1:  # flapping every tick or two
        return [bool((i // (1 + rng.integers(2))) % 2) for i in range(n)]
    if kind == 2:  # i.i.d. coin with a random bias
        q = rng.uniform(0, 1)
        return list(rng.random(n) < q)
    # regime change: a calm history, then a hostile job
    half = n // 2
    return [True] * half + [bool(v) for v in rng.random(n - half) < 0.2]


@pytest.mark.parametrize("seed", range(40))
def test_it_never_misses_a_feasible_deadline_on_random_traces(seed):
    rng = np.random.default_rng(seed)
    job = float(rng.uniform(2, 10))
    p = JobParams(job_hours=job, deadline_hours=job + 0.2 + float(rng.uniform(0, 6)),
                  restart_hours=float(rng.choice([0.0, 0.1, 0.2, 0.5])), price_ratio=float(rng.uniform(1, 5)))
    n_hist = int(rng.integers(0, 200))
    trace = _random_trace(rng, n_hist + 200)
    r = simulate(StochasticDPPolicy(), trace[n_hist:], GAP, p, history=trace[:n_hist])
    assert r.finished_by_deadline, (seed, p)
    assert r.cost <= (p.job_hours + p.restart_hours) * p.price_ratio * 1.5


@pytest.mark.parametrize("slack", [0.2, 1.0, 4.0])
def test_it_never_misses_against_spot_that_vanishes_after_every_launch(slack):
    p = JobParams(job_hours=6, deadline_hours=6 + 0.2 + slack, restart_hours=0.2, price_ratio=3.0)
    adversary = _Adversary(400)
    r = simulate(_Watch(StochasticDPPolicy(), adversary), adversary, GAP, p)
    assert r.finished_by_deadline
    assert r.spot_hours <= 0.2 * (r.restarts + 1)  # never more than a tick's worth of spot a launch


def test_the_table_stays_within_its_memory_bound_on_a_long_job():
    policy = StochasticDPPolicy(max_table_bytes=4 * 1024 * 1024)
    p = JobParams(job_hours=100, deadline_hours=160, restart_hours=0.2, price_ratio=3.0)
    trace = avail(("." * 30 + "X" * 12) * 30)
    r = simulate(policy, trace, GAP, p)
    assert r.finished_by_deadline
    assert policy._plan is not None and policy._plan.table.nbytes <= 4 * 1024 * 1024
