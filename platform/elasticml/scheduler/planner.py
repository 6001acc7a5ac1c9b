"""The default spot policy: a stochastic dynamic program over the zone's own run-length model.

Who owns what: `StochasticDPPolicy` owns its plan (a decision table) and
nothing else; it is pure over what `TickView` shows, so the simulator and the
live controller run the same object on the same inputs.

How it decides. At the job's start (and again whenever the history has grown
by `resolve_growth`) it fits a semi-Markov model of the zone
(`spot_model.fit`: hazards of spot runs and outages by age, from all the
history it is shown, before the job and during it) and solves, backwards
from the deadline, for the action that minimises the *expected* cost from
every reachable state:

    state    step, slack (in units of step / units_per_tick), what ran last
             step and how much of its restart is still unpaid, spot up or
             down and for how long
    actions  idle (slack drops a tick), spot (only while up), on-demand;
             switching to another instance pays a restart out of slack
    end      finishing costs nothing more; slack below -restart (the job can
             no longer finish by the deadline even on on-demand) is
             forbidden, so no plan it follows can be late

Time is in hours, not ticks: the plan's step is `plan_step` (the trace's
tick where that is coarser), run lengths are re-measured on that grid before
the model is fitted, and every lookup turns the view's hours (clock, slack,
run age, unpaid restart) into grid cells. A trace read at a finer tick is the
same zone and the same job, so it gets the same plan; the finer tick only
lets the policy react sooner when spot comes or goes.

Each step it looks its state up in the table. The safety net of the
baselines (`must_run_on_demand`) stays in front of the table; slack is
rounded down to whole units, so the table never believes in more time than
there is. What the model captures that threshold rules miss: whether an
outage of this age is likely to end before the slack runs out (idle or pay
on-demand), whether a spot run of this age is likely to last long enough to
repay the two restarts of leaving on-demand for it, and how much slack the
rest of the job will want.

Table size: steps x (1 + 2 K) x 2 x max_age x slack units, int8. Slack units
are coarsened (down to one a step) so that there are at most `max_slack_units`
and the table stays under `max_table_bytes`; past that, slack above the top row
is read as the top row. Both round slack down: that costs money, never deadlines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from elasticml.scheduler import spot_model
from elasticml.scheduler.deadline import NONE, OD, SPOT, Instance, JobParams, TickView

_BIG = 1e12
_ACTIONS: tuple[Instance, Instance, Instance] = (NONE, SPOT, OD)


@dataclass
class _Plan:
    start_step: int
    step_hours: float
    history_ticks: int
    unit_hours: float
    ages: int
    """K: steps after which an instance's restart is paid off."""
    max_age: int
    table: np.ndarray
    """(steps, 1 + 2K, 2, max_age, slack units + 1) -> index into _ACTIONS."""


@dataclass
class StochasticDPPolicy:
    """Ours (the default): expected-cost-optimal under a run-length model fitted from the zone's history.

    Sequence of moves, as they come out of the table on real traces: take spot
    whenever it is up and the slack can pay the restart; in an outage, idle
    while the model expects spot back before the slack is needed, else go
    on-demand; on on-demand, go back to spot only once the spot run has lasted
    long enough that it is likely to repay two restarts; at the end, the
    safety net.
    """

    name: str = "stochastic-dp"
    # Defaults chosen on the tuning traces only: benchmarks/tune_spot_policy.py.
    prior_mean_hours: tuple[float, float] = (0.5, 1.0)
    """(mean outage, mean spot run) of the memoryless prior the history is shrunk toward."""
    prior_weight: float = 2.0
    """Pseudo-observations of the prior per age."""
    max_age_hours: float = 8.0
    """Run ages are told apart up to this; older runs share one tail hazard."""
    resolve_growth: float = 0.5
    """Fit and solve again once the history has grown by this share since the last fit (and by >= 1 h)."""
    step_hours: float | None = None
    """The plan's time step: decisions are planned, and run lengths measured, on this grid in hours
    whatever the trace's tick (a coarser tick plans at the tick). None: the job's restart, within
    [deadline / 2000, 10 minutes], so the grid resolves what a launch costs."""
    units_per_tick: int = 5
    """Slack units per step, before coarsening."""
    max_slack_units: int = 480
    max_table_bytes: int = 128 * 1024 * 1024
    idle_while_up: bool = False
    """Let the plan wait while spot is up (for an older, steadier spot run). Under its model that
    can be worth the slack; when the model misleads (a calm history before a hostile job) the
    slack is gone when it is needed, so by default spot up means run: on spot or on-demand."""
    model_history: list[bool] | None = None
    """Fit the model on this instead of the history the view shows (diagnostics only, e.g. a
    model fitted on the job's own future to measure what a perfect fit would be worth)."""
    _plan: _Plan | None = field(default=None, init=False, repr=False)

    def decide(self, view: TickView) -> Instance:
        if view.must_run_on_demand():
            return OD
        if self._holds(view):
            return view.instance
        plan = self._plan
        if plan is None or self._step_of(plan.step_hours, view) < plan.start_step or self._history_grew(plan, view):
            plan = self._plan = self._solve(view)
        choice = _ACTIONS[int(plan.table[self._index(plan, view)])]
        if choice == SPOT and not view.spot_available:
            return NONE
        return choice

    def _history_grew(self, plan: _Plan, view: TickView) -> bool:
        grown = len(view.history) - plan.history_ticks
        return grown * view.gap_hours >= 1.0 and grown >= self.resolve_growth * plan.history_ticks

    def plan_step(self, params: JobParams, gap_hours: float) -> float:
        """The plan's step in hours: set by the job, never finer than the trace's tick."""
        step = self.step_hours
        if step is None:
            step = min(1 / 6, max(params.restart_hours, params.deadline_hours / 2000))
        return max(gap_hours, step)

    def _holds(self, view: TickView) -> bool:
        """Inside a plan step where nothing happened: keep what ran last tick.

        The table decides once a step, as its program assumes; a finer tick looks again inside
        the step only when something happened (spot came or went, a preemption), so the same
        zone read at a finer tick runs the same plan and still reacts at once to events."""
        if view.tick == 0 or view.preempted or not view.history:
            return False
        g = self.plan_step(view.params, view.gap_hours)
        if g <= view.gap_hours + 1e-12:
            return False
        same_step = self._step_of(g, view) == math.floor((view.hour - view.gap_hours) / g + 1e-9)
        return same_step and bool(view.history[-1]) == view.spot_available

    # -- lookup -------------------------------------------------------------------
    @staticmethod
    def _step_of(step_hours: float, view: TickView) -> int:
        return math.floor(view.hour / step_hours + 1e-9)

    def _index(self, plan: _Plan, view: TickView) -> tuple[int, int, int, int, int]:
        d, g = view.params.restart_hours, plan.step_hours
        K = plan.ages
        if view.instance == NONE:
            m = 0
        else:
            unpaid = view.overhead_left
            age = K if unpaid <= 1e-9 else min(K - 1, max(0, round((d - unpaid) / g)))
            m = (1 if view.instance == SPOT else 1 + K) + max(age, 1) - 1
        a = 1 if view.spot_available else 0
        age_ticks = spot_model.current_age(view.history, view.spot_available)
        k = min(spot_model.age_on_grid(age_ticks, view.gap_hours, g), plan.max_age) - 1
        n_slack = plan.table.shape[-1]
        i = min(n_slack - 1, max(0, math.floor((view.slack + d) / plan.unit_hours + 1e-9)))
        t = min(plan.table.shape[0] - 1, self._step_of(g, view) - plan.start_step)
        return t, m, a, k, i

    # -- the program ----------------------------------------------------------------
    def _solve(self, view: TickView) -> _Plan:
        p = view.params
        g = self.plan_step(view.params, view.gap_hours)
        d, rho = p.restart_hours, p.price_ratio
        slack_room = max(0.0, view.slack + d)
        t0 = self._step_of(g, view)
        T = max(t0 + 1, math.ceil(p.deadline_hours / g - 1e-9))
        A = max(2, math.ceil(self.max_age_hours / g))
        K_max = max(1, math.ceil(d / g - 1e-9))  # = K below for any R: ceil(ceil(xR) / R) == ceil(x)
        per_unit = (T - t0) * (1 + 2 * K_max) * 2 * A
        max_units = max(2, min(self.max_slack_units, self.max_table_bytes // max(1, per_unit)))
        R = self.units_per_tick
        if slack_room / (g / R) > max_units - 1:
            R = max(1, math.floor((max_units - 1) * g / slack_room))
        u = g / R
        O = math.ceil(d / u - 1e-9)
        K = max(1, math.ceil(O / R))
        M = 1 + 2 * K
        # Slack beyond the table's top row is looked up as the top row: the plan then believes
        # in less slack than there is, which costs money, never deadlines.
        n_slack = min(max_units, math.floor(slack_room / u + 1e-9) + 1)
        history = view.history if self.model_history is None else self.model_history
        model = spot_model.fit(
            (), g, max_age=A, prior_mean_hours=self.prior_mean_hours, prior_weight=self.prior_weight,
            observed=spot_model.on_grid(spot_model.runs(history), view.gap_hours, g),
        )
        cont = model.continue_probability()  # (2, A)
        older = np.minimum(np.arange(A) + 1, A - 1)
        slack_h = (np.arange(n_slack) - O) * u

        def shifted(x: np.ndarray, by: int) -> np.ndarray:
            """x[..., i - by], forbidden (BIG) where i - by < 0."""
            out = np.full_like(x, _BIG)
            if by < n_slack:
                out[..., by:] = x[..., : n_slack - by]
            return out

        # Running kind (1 spot, 2 on-demand) from an instance of that kind aged j (0: a new launch)
        # pays `over[j]` restart units this tick and leaves the instance in state `base + after[j]`.
        over = [min(max(O - j * R, 0), R) for j in range(K + 1)]
        after = [min(j + 1, K) - 1 for j in range(K + 1)]
        age_in = np.zeros((3, M), dtype=np.intp)  # [kind, state] -> j
        for j in range(1, K + 1):
            age_in[1, j] = j
            age_in[2, K + j] = j

        table = np.empty((T - t0, M, 2, A, n_slack), dtype=np.int8)
        V = np.full((M, 2, A, n_slack), _BIG, dtype=np.float32)  # unfinished at the deadline
        for t in range(T - 1, t0 - 1, -1):
            # W[m', a, k, i]: expected value at t+1 after choosing instance state m' now, spot (a, k) now.
            after_down = V.copy()
            after_down[1 : 1 + K] = V[0]  # a spot instance is gone when spot goes down
            W = np.empty_like(V)
            W[:, 1] = cont[1][None, :, None] * V[:, 1, older] + (1 - cont[1])[None, :, None] * after_down[:, 0, :1]
            W[:, 0] = cont[0][None, :, None] * after_down[:, 0, older] + (1 - cont[0])[None, :, None] * V[:, 1, :1]
            remaining = (p.deadline_hours - t * g - d - slack_h).astype(np.float32)
            Q = np.empty((3, M, 2, A, n_slack), dtype=np.float32)
            Q[0] = shifted(W[0], R)[None]
            for kind, price, base in ((1, 1.0, 1), (2, rho, 1 + K)):
                per_age = np.empty((K + 1, 2, A, n_slack), dtype=np.float32)
                for j in range(K + 1):
                    finishes = (R - over[j]) * u >= remaining - 1e-6
                    per_age[j] = np.where(finishes, price * (over[j] * u + np.maximum(remaining, 0.0)),
                                          price * g + shifted(W[base + after[j]], over[j]))
                Q[kind] = per_age[age_in[kind]]
            Q[1, :, 0] = _BIG  # no spot while it is down
            if not self.idle_while_up:
                Q[0, :, 1] = _BIG  # no waiting while spot is up: see idle_while_up
            best = np.argmin(Q, axis=0).astype(np.int8)
            V = np.minimum(np.min(Q, axis=0), _BIG)
            best[V >= _BIG / 2] = 2  # nothing feasible: on-demand is as good as anything
            V[..., remaining <= 1e-9] = 0.0
            table[t - t0] = best
        return _Plan(start_step=t0, step_hours=g, history_ticks=len(view.history), unit_hours=u, ages=K,
                     max_age=A, table=table)
