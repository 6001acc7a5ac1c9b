"""Deadline-aware spot vs on-demand policies for one job, and the engine that runs them on a trace.

The problem (NSDI'24 *Can't Be Late*): a job needs `job_hours` of compute
before `deadline_hours`. Every tick of `gap` hours it may run on spot (price
1 per hour, only while the trace says spot capacity is available; taken away
at once when it is not), on on-demand (price `price_ratio`, always available)
or idle (free). Every launch of an instance — the first, after a preemption,
or a switch between spot and on-demand — spends `restart_hours` before
progress resumes, and that time is billed.

Policies see only the past and the present (`TickView`: the zone's history
before the job started, the job's ticks so far, this tick), except
`omniscient`, which is given the whole trace and solves for the cheapest plan
that meets the deadline by dynamic programming (see `omniscient_plan`); it is
the yardstick the others are measured against. This module holds the engine
and the baselines; the default policy, `stochastic-dp`, is in `planner.py`,
and `policies.py` names them all.

Glossary
    slack    time to the deadline minus the time the remaining work needs on
             on-demand, including one restart: how long one can still wait.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


from elasticml.errors import ConfigError
from elasticml.scheduler.spot_model import runs

Instance = Literal["none", "spot", "on-demand"]
NONE: Instance = "none"
SPOT: Instance = "spot"
OD: Instance = "on-demand"
_EPS = 1e-9
MAX_HOURS = 8760.0
"""A year: the longest job or deadline a policy is asked about."""
MAX_PRICE_RATIO = 1000.0


@dataclass(kw_only=True, frozen=True)
class JobParams:
    job_hours: float
    deadline_hours: float
    restart_hours: float
    price_ratio: float
    """On-demand price per hour in units of the spot price."""

    def __post_init__(self) -> None:
        for name in ("job_hours", "deadline_hours", "restart_hours", "price_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"must be a finite number, got {value!r}", field=name)
        if not 0 < self.job_hours <= MAX_HOURS:
            raise ConfigError(f"must be in (0, {MAX_HOURS:.0f}] hours, got {self.job_hours}", field="job_hours")
        if self.deadline_hours > MAX_HOURS:
            raise ConfigError(f"must be <= {MAX_HOURS:.0f} hours, got {self.deadline_hours}", field="deadline_hours")
        if self.deadline_hours < self.job_hours + self.restart_hours:
            raise ConfigError(
                f"deadline {self.deadline_hours}h leaves no room for {self.job_hours}h of work plus one "
                f"{self.restart_hours}h restart", field="deadline_hours",
            )
        if self.restart_hours < 0:
            raise ConfigError(f"must be >= 0, got {self.restart_hours}", field="restart_hours")
        if self.price_ratio < 1:
            raise ConfigError(f"on-demand cheaper than spot ({self.price_ratio}) makes spot pointless", field="price_ratio")
        if self.price_ratio > MAX_PRICE_RATIO:
            raise ConfigError(f"must be <= {MAX_PRICE_RATIO:.0f}, got {self.price_ratio}", field="price_ratio")


@dataclass(kw_only=True, frozen=True)
class TickView:
    """What a policy may see when it decides tick `tick`: the past and the present."""

    tick: int
    hour: float
    gap_hours: float
    progress: float
    instance: Instance
    """What ran last tick; "none" after a preemption."""
    preempted: bool
    spot_available: bool
    history: Sequence[bool]
    """Spot availability before this tick: the zone's history before the job started, then ticks 0..tick-1.

    The engine's own list, read during `decide` (copying it every tick would make a long trace
    quadratic); copy it to keep it."""
    params: JobParams
    overhead_left: float = 0.0
    """Hours of the current instance's restart not yet paid (0 once it makes full progress)."""

    @property
    def remaining(self) -> float:
        return max(0.0, self.params.job_hours - self.progress)

    @property
    def slack(self) -> float:
        """Hours one could still idle and then finish on on-demand, one restart included."""
        return self.params.deadline_hours - self.hour - self.remaining - self.params.restart_hours

    def must_run_on_demand(self) -> bool:
        """Waiting one more tick, or a restart, would make the deadline unreachable."""
        restart = 0.0 if self.instance == OD else self.params.restart_hours
        return self.params.deadline_hours - self.hour - self.remaining - restart < self.gap_hours + _EPS


class Policy(Protocol):
    name: str

    def decide(self, view: TickView) -> Instance: ...


# -- the baselines --------------------------------------------------------------
class OnDemandPolicy:
    """On-demand from start to finish: never late, the most expensive."""

    name = "on-demand"

    def decide(self, view: TickView) -> Instance:
        return OD


class GreedyPolicy:
    """Spot whenever there is spot; otherwise idle, until the deadline forces on-demand.

    Sequence: run on spot while available; idle through outages; once the slack
    is gone, switch to on-demand and stay there, since any further restart
    would miss the deadline.
    """

    name = "greedy"

    def decide(self, view: TickView) -> Instance:
        if view.instance == OD and view.slack < view.params.restart_hours + view.gap_hours:
            return OD
        if view.must_run_on_demand():
            return OD
        return SPOT if view.spot_available else NONE


class UniformProgressPolicy:
    """Can't Be Late's uniform progress (NSDI'24), as the paper describes it.

    The line: progress should be at least job_hours * t / deadline_hours.
    Sequence of moves:
      1. safety net: once time left < work left + 2 restarts, commit to on-demand to the end;
      2. on on-demand: stay until progress is back on the line two restarts ahead
         (hysteresis, so one short spot window does not cost two restarts);
      3. spot available: run on spot;
      4. spot away: on-demand while progress is behind the line, else idle.
    """

    name = "uniform-progress"

    def __init__(self) -> None:
        self._committed = False

    def decide(self, view: TickView) -> Instance:
        p = view.params
        time_left = p.deadline_hours - view.hour
        if self._committed or time_left < view.remaining + 2 * p.restart_hours or view.must_run_on_demand():
            self._committed = True
            return OD
        line = p.job_hours * view.hour / p.deadline_hours
        if view.instance == OD and view.progress < line + 2 * p.restart_hours:
            return OD
        if view.spot_available:
            return SPOT
        return OD if view.progress < line else NONE


@dataclass
class SlackReservePolicy:
    """Ours: wait for spot while the slack allows, but keep a reserve to come back to spot later.

    Greedy spends all its slack waiting and then runs the rest on on-demand;
    uniform progress pays for on-demand early even when spot would have come
    back. This policy keeps a *reserve* of slack, sized from what it has
    observed (mean outage length), and the rest is spent on waiting.

    Sequence of moves:
      1. spot available: run on spot; leave on-demand for it only when the
         slack can pay a restart and still cover one preemption (2 restarts)
         and the remaining work is long enough to earn the restart back;
      2. spot unavailable, slack above the reserve: idle (wait for spot);
      3. slack at or below the reserve: on-demand, and stay there while spot is away;
      4. at the last moment (the deadline requires it): on-demand, and stay.
    """

    name: str = "slack-reserve"
    reserve_restarts: float = 3.0
    """The reserve, in restarts: what going back to spot later may cost."""
    reserve_outage_fraction: float = 0.5
    """Plus this share of the mean outage seen so far, so long outages keep more reserve."""

    def reserve(self, view: TickView) -> float:
        mean_outage_ticks = _mean_run_length(view.history, value=False)
        return (
            self.reserve_restarts * view.params.restart_hours
            + self.reserve_outage_fraction * mean_outage_ticks * view.gap_hours
        )

    def decide(self, view: TickView) -> Instance:
        d = view.params.restart_hours
        if view.must_run_on_demand():
            return OD
        if view.spot_available:
            if view.instance == OD:
                worth_it = view.remaining * (view.params.price_ratio - 1) > d * view.params.price_ratio
                if view.slack < 2 * d + view.gap_hours or not worth_it:
                    return OD
            return SPOT
        if view.instance == OD:
            return OD  # spot is still away: a restart now would only burn slack
        return OD if view.slack <= self.reserve(view) else NONE


def _mean_run_length(history: Sequence[bool], *, value: bool) -> float:
    lengths = [n for v, n in runs(history) if v == value]
    return sum(lengths) / len(lengths) if lengths else 0.0


# -- the engine -----------------------------------------------------------------
@dataclass(kw_only=True)
class SimResult:
    policy: str
    cost: float
    on_demand_cost: float
    finished_by_deadline: bool
    finish_hour: float | None
    spot_hours: float
    on_demand_hours: float
    restarts: int
    preemptions: int
    progress_hours: float

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def on_demand_cost(params: JobParams) -> float:
    return (params.job_hours + params.restart_hours) * params.price_ratio


class JobStepper:
    """One job under a policy, one tick at a time: the object both `simulate` and the live controller run.

    Each tick: `decide(spot_available)` turns a spot loss into a preemption, shows the
    policy the past and the present, and books the launch a change of instance costs;
    the caller then says what the tick achieved (`run_for`, the simulator's model of a
    tick) or what the job reported (`observe`, live), and `end_tick` files the tick's
    availability into the history. The same availability and progress give the same
    decisions wherever it runs.
    """

    def __init__(self, policy: Policy, params: JobParams, gap_hours: float, *, history: Sequence[bool] = ()) -> None:
        if isinstance(gap_hours, bool) or not isinstance(gap_hours, (int, float)) or not 0 < gap_hours <= MAX_HOURS:
            raise ConfigError(f"must be a number in (0, {MAX_HOURS:.0f}] hours, got {gap_hours!r}", field="gap_hours")
        self.policy = policy
        self.params = params
        self.gap_hours = float(gap_hours)
        self.past = [bool(v) for v in history]
        self.tick = 0
        self.progress = 0.0
        self.instance: Instance = NONE
        self.overhead_left = 0.0
        self.restarts = 0
        self.preemptions = 0
        self.launched = False
        self._lost_spot = False
        self.n_ticks = math.ceil(params.deadline_hours / gap_hours - _EPS)

    @property
    def hour(self) -> float:
        return self.tick * self.gap_hours

    def decide(self, spot_available: bool) -> Instance:
        avail = bool(spot_available)
        preempted = (self.instance == SPOT and not avail) or self._lost_spot
        self._lost_spot = False
        if preempted:
            self.preemptions += 1
            self.instance = NONE
        view = TickView(
            tick=self.tick, hour=self.hour, gap_hours=self.gap_hours, progress=self.progress, instance=self.instance,
            preempted=preempted, spot_available=avail, history=self.past, params=self.params,
            overhead_left=self.overhead_left if self.instance != NONE else 0.0,
        )
        # Past the deadline only on-demand is left: finish as soon as possible.
        choice = self.policy.decide(view) if self.tick < self.n_ticks else OD
        if choice == SPOT and not avail:
            choice = NONE
        if choice != self.instance and choice != NONE:
            self.overhead_left = self.params.restart_hours
            self.restarts += 1 if self.launched else 0
            self.launched = True
        self.instance = choice
        return choice

    def run_for(self, hours: float) -> tuple[float, float]:
        """The simulator's tick: pay the restart first, then progress; (work done, overhead paid) in hours."""
        if self.instance == NONE:
            return 0.0, 0.0
        used = min(self.overhead_left, hours)
        self.overhead_left -= used
        work = min(hours - used, self.params.job_hours - self.progress)
        self.progress += work
        return work, used

    def observe(self, progress_hours: float, *, instance: Instance) -> None:
        """Live: the work the job reports done, and what it runs on now (a lost node ends a spot run)."""
        if instance != self.instance:
            self._lost_spot = self.instance == SPOT and instance == NONE
            self.instance = instance
            self.overhead_left = 0.0 if instance == NONE else self.overhead_left
        if progress_hours - self.progress > _EPS:
            self.overhead_left = 0.0  # it made progress: the restart is behind it
        self.progress = min(self.params.job_hours, max(0.0, progress_hours))

    def end_tick(self, spot_available: bool) -> None:
        self.past.append(bool(spot_available))
        self.tick += 1

    @property
    def done(self) -> bool:
        return self.progress >= self.params.job_hours - _EPS


def simulate(
    policy: Policy, availability: Sequence[bool], gap_hours: float, params: JobParams,
    *, history: Sequence[bool] = (), decisions: list[Instance] | None = None,
) -> SimResult:
    """Run a policy tick by tick from availability[0]; ticks past the end of the trace count as spot unavailable.

    `history` is the zone's availability before the job starts, oldest first:
    policies see it (an online signal), the job does not run in it. `decisions`,
    when given, receives the instance chosen at every tick.
    """
    job = JobStepper(policy, params, gap_hours, history=history)
    cost = spot_h = od_h = 0.0
    finish: float | None = None
    # Keep going past the deadline (on-demand) so a late job reports when it would finish.
    last = job.n_ticks + math.ceil((params.job_hours + params.restart_hours) / gap_hours) + 1
    while finish is None and job.tick < last:
        avail = bool(availability[job.tick]) if job.tick < len(availability) else False
        choice = job.decide(avail)
        if decisions is not None:
            decisions.append(choice)
        if choice != NONE:
            hour = job.hour
            work, used = job.run_for(gap_hours)
            billed = gap_hours
            if job.done:
                billed = used + work
                finish = hour + billed
            price = 1.0 if choice == SPOT else params.price_ratio
            cost += billed * price
            if choice == SPOT:
                spot_h += billed
            else:
                od_h += billed
        job.end_tick(avail)
    return SimResult(
        policy=policy.name,
        cost=round(cost, 6),
        on_demand_cost=round(on_demand_cost(params), 6),
        finished_by_deadline=finish is not None and finish <= params.deadline_hours + _EPS,
        finish_hour=None if finish is None else round(finish, 6),
        spot_hours=round(spot_h, 6),
        on_demand_hours=round(od_h, 6),
        restarts=job.restarts,
        preemptions=job.preemptions,
        progress_hours=round(job.progress, 6),
    )
