"""Forecasting a deployment's load, to have replicas ready before it arrives.

Pure: a `LoadForecaster` is fed (time, load) observations and answers how many replicas the load
will need one replica start-up from now (and, where `serve_delay_s` asks for it, Serve's delay before
it: the load Serve reports is a window's mean, and an ask waits its upscale delay). Serve's adapter
(elasticml.serve.autoscale) feeds it the load every control-loop tick (`signal_load`: by default
the requests the replicas serve) and persists its state; the benchmark and the tests drive it
directly too.

The model works over fixed buckets of time: a level and a trend (Holt's double exponential
smoothing) and, when the app names its season (a day, or a day compressed into minutes in the
benchmark), a profile of the load with one slot per bucket, smoothed over the seasons seen. Within
a season the forecast is the current level plus the change the profile saw over the same stretch
last time, which anticipates a peak that came at the same hour yesterday (a trend cannot see it
coming); without one, the level and its trend follow a ramp one start-up ahead. Each bucket's
forecast is checked when its time comes: the error's RMS can set a safety margin (`margin_sigmas`,
none by default), a rise is provisioned for only once it stands out of the errors' noise (their
spread about their mean, `rise_sigmas` of it, the rise counted from the higher of the load just reported
and the level: on steady load the trend's noise asks for nothing,
while a ramp's errors, leaning one way, are no noise), and while the forecast is poor (or still
learning) the decision falls back to
reactive (Serve's rule, ceil(load / target), on the load just reported, served or in flight as
`signal` says), so a bad forecast costs at most what that rule on that load would. A decision never
asks for fewer replicas than it, but by `down_band` (at most one fewer, never none while load is seen) while an
ask for fewer than Serve's target runs.

Which load: Serve's own rule counts the requests in flight, those the replicas serve plus those
waiting at the handles for a free slot. Requests wait only once every replica is full, and where
replicas share cores a replica starting up slows the ones serving, so the wait grows while replicas
start; read as demand, it asks for more replicas, whose start-ups grow it further. So by default
(`signal` "running") the forecast, its reactive fallback and the floor follow the requests being
served (of those in flight, what the running replicas' slots hold: one count, where Serve's own
queued count is aggregated over another window), which a start-up inflates only by the service it
slows, and the waiting ones count through one rule instead: while requests wait, as many as are
served or while the replicas carry their target, keep every replica asked for and, with none
starting, ask for one more (and, where set, count them at `backlog_share`, or all of them once they
outnumber the served `surge_ratio` times). What is served
cannot exceed the replicas' slots (`max_ongoing_requests`), so on a sudden excess this grows by at
most slots / target per start-up where Serve's rule jumps to the whole queue: a target well below
the slots (the presets: 2 and 16 of 32) leaves room; ServeConfig refuses "running" for a target at
or above them; and until the forecaster has seen `warmup_buckets` (a deployment that learnt nothing
may start under load on one replica) the waiting requests count too, at `warmup_backlog_share`.
A bucket in which requests waited shows what the slots held, not the demand: the level, the trend
and a learnt profile skip it, and the level restarts at the load after it. A first season has no
profile to keep, so once the wait is over its slots take a line from the load before the wait (where
the wait opened the season, the lower of its first load and the load after) to the load after it,
no lower than what the slots held while the backlog grew (a lower bound on the demand): while a
backlog drains the slots serve more than arrives, a spike next season would foresee. "in_flight"
follows Serve's count, as before.

Scaling down has hysteresis: replicas are given back only when the forecast for the whole coming
start-up window fits in one replica fewer (in `down_headroom` of it; 1 by default, the window and
Serve's downscale delay being the hysteresis). Once a decision has asked for fewer than Serve's target,
that window holds the next ones at most one below the target (only the load, or a rise that passes
`rise_sigmas`, asks for the target again): Serve restarts its delay at every ask at or above its target,
so an ask flipping with each bucket's forecast would hold the replica a whole delay after the last flip.
With `down_band` the load too must clear the line by that share of a replica to ask for the target again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from elasticml.dataconf import check_number, shown
from elasticml.errors import ConfigError

MAX_STATE = 1e12
"""The largest magnitude a number of resumed state may have (loads, errors, times in seconds since the epoch):
beyond it the state is not what observations make, and a forecast from it could overflow."""
MAX_SLOTS = 2880
"""Seasonal slots kept (season_s / bucket_s): a day in 30 s buckets; bounds the persisted state."""
MAX_GAP_SPAN = 2 * MAX_SLOTS
"""The most buckets `LoadForecaster.gap_span` counts: a wait without end does not grow the state."""


MAX_SERVE_DELAY_S = 3600.0
"""The most `serve_delay` answers, set or derived (the lead is walked bucket by bucket every control-loop tick)."""


SIGNALS = ("running", "in_flight")


@dataclass(kw_only=True, frozen=True)
class ForecastConfig:
    target_per_replica: float = 2.0
    """Requests in flight one replica should carry (Serve's target_ongoing_requests)."""
    bucket_s: float = 1.0
    """Observations are averaged over buckets this long; the forecast steps by buckets."""
    season_s: float | None = None
    """The load's period (86400 for a daily pattern); None = trend only."""
    startup_s: float = 10.0
    """A replica's start-up time until one has been measured."""
    alpha: float = 0.8
    beta: float = 0.3
    gamma: float = 0.5
    """Smoothing of the level, the trend and the seasonal profile across seasons (0..1: higher follows faster).
    Chosen in simulation (benchmarks/autoscale_sim.py) on draws the live benchmark does not replay, with
    `rise_sigmas` and `warmup_backlog_share`; gamma last, in the model refitted to the router that ships
    (benchmarks/README.md says on which draws, and what was measured live)."""
    phi: float = 0.9
    """Damping of the trend (Gardner's damped Holt): step k ahead adds trend * (phi + ... + phi**k), so a
    queue draining or filling is not extrapolated for the whole lead; 1 = an undamped trend."""
    margin_sigmas: float = 0.0
    """Safety margin: this many RMS forecast errors above what is provisioned for (the forecast where its rise
    passes `rise_sigmas`, else the load). None by default; where a margin paid and where it did not, in
    simulation: benchmarks/README.md."""
    max_relative_error: float = 0.6
    """Fall back to reactive while the forecast's RMS error exceeds this share of the mean load."""
    warmup_buckets: int = 10
    """Buckets observed before the forecast is trusted."""
    down_headroom: float = 1.0
    """Give a replica back only when the coming load fits in this share of one replica fewer (1: when it fits;
    the coming window and Serve's downscale delay are the hysteresis)."""
    down_band: float = 0.2
    """While an ask for fewer than Serve's target runs (its downscale delay counting) and no rise passes
    `rise_sigmas`, what is provisioned (the load, plus `margin_sigmas`' margin) is read this share of one
    replica's target lower: a load on the line between two counts, whose noise would ask for the target again
    and restart Serve's delay, then keeps asking for fewer (the replicas left carry up to this share of a
    replica more for the delay). Never below one replica while any load is seen: the band is for the line
    between two counts, not for the last replica. At most 0.5 (beyond, the next line's noise). 0: no band (the
    coming window alone holds the ask, see `LoadForecaster.decide`). Chosen in the model on the tuning draws
    (0.1, 0.2, 0.3: the widest that put no request more over the SLO there) and checked on two held-out seed
    sets (benchmarks/README.md)."""
    signal: str = "running"
    """The load the forecast follows (see `signal_load`): "running", the requests the replicas serve (of those
    in flight, what the running replicas' slots hold), or "in_flight", Serve's own count."""
    replica_slots: int | None = None
    """The deployment's max_ongoing_requests, copied when the app is built (ServeConfig passes it; Serve's
    context does not carry it, so a deployment option changed later is not seen). With it the requests served
    are read as what the running replicas' slots hold of those in flight, from one count; without it, as
    Serve's in-flight count less its queued one (see `signal_load`)."""
    rise_sigmas: float = 1.0
    """Provision for a forecast above the load now only when its rise, from the higher of that load and the level,
    exceeds this many times the forecast errors' spread about their mean (`LoadForecaster.noise`: on a ramp the
    errors lean one way, the forecast's lag, which is no noise): on steady load (a ramp's plateau too) the
    trend's noise then asks for no replica the load does not need, which Serve's downscale delay would hold.
    0: any rise counts."""
    learn_while_waiting: bool = False
    """Whether a bucket in which requests waited teaches the level, the trend and a learnt profile (see
    `LoadForecaster._complete`); True learns from every bucket, as before the backlog rules."""
    warmup_backlog_share: float = 0.5
    """For a deployment's first `warmup_buckets` buckets (learnt from or not: it may start under load on one
    replica, with nothing learnt), requests waiting count toward the replicas asked for at this share, as
    Serve's rule counts them all (1): the served count alone, capped by the running replicas' slots, would
    add one replica's slots per start-up while the backlog grows. 0: they count only through the rule that
    keeps what starts and asks for one more. With `signal` "in_flight" nothing is counted as waiting, so
    neither this nor the unlearnt waiting buckets apply."""
    backlog_share: float = 0.0
    """The same after the first `warmup_buckets`: requests waiting count toward the replicas asked for at this
    share. 0: only the rule that keeps what starts and asks for one more (one replica's slots per start-up,
    which a steep rise outruns)."""
    surge_ratio: float = 0.0
    """Where requests waiting reach this many times those served (with `replica_slots`, at least this many full
    rounds of every running replica's slots: a backlog that the rule adding one replica per start-up cannot
    catch up with), count them all, as Serve's rule does: ask for (served + waiting) / target at once. Only
    while some are served (with none, the rules for a deployment with no replica running apply); with
    `signal` "in_flight" nothing counts as waiting, so it never applies. 0: never (one replica's slots per
    start-up, plus `backlog_share`)."""
    serve_delay_s: float | None = 0.0
    """How long before it is asked for a replica must be foreseen, beyond its start-up. 0 (the default): the
    start-up alone. None: Serve's own delay, from the deployment's autoscaling config as the policy reads it
    every call (`serve_delay`): Serve averages the load over its look-back window (on a rise the mean lags by
    half of it, and by half a metrics interval more, its reports' mean age) and holds an ask for its upscale
    delay. Not the default: in the model it bought no fewer requests over the SLO at the benchmark's
    sub-second delays, at more replica-seconds, and with the presets' delays fewer over the SLO at more
    replica-seconds still (benchmarks/README.md)."""

    def __post_init__(self) -> None:
        check_number(self.target_per_replica, field="target_per_replica", lo=0.01, hi=1e6)
        check_number(self.bucket_s, field="bucket_s", lo=0.05, hi=3600)
        if self.season_s is not None:
            check_number(self.season_s, field="season_s", lo=self.bucket_s * 2, hi=86400 * 7)
            if self.season_s / self.bucket_s > MAX_SLOTS:
                raise ConfigError(f"season_s / bucket_s must be at most {MAX_SLOTS} slots, got "
                                  f"{self.season_s / self.bucket_s:.0f}; use longer buckets", field="season_s")
        check_number(self.startup_s, field="startup_s", lo=0, hi=3600)
        for name in ("alpha", "beta", "gamma", "phi"):
            check_number(getattr(self, name), field=name, lo=0.0, hi=1.0)
        check_number(self.margin_sigmas, field="margin_sigmas", lo=0, hi=10)
        check_number(self.max_relative_error, field="max_relative_error", lo=0.01, hi=100)
        check_number(self.warmup_buckets, field="warmup_buckets", lo=1, hi=100_000, integer=True)
        check_number(self.down_headroom, field="down_headroom", lo=0.1, hi=1.0)
        check_number(self.down_band, field="down_band", lo=0, hi=0.5)
        check_number(self.rise_sigmas, field="rise_sigmas", lo=0, hi=10)
        check_number(self.warmup_backlog_share, field="warmup_backlog_share", lo=0, hi=1)
        check_number(self.backlog_share, field="backlog_share", lo=0, hi=1)
        check_number(self.surge_ratio, field="surge_ratio", lo=0, hi=1000)
        if 0 < self.surge_ratio < 1:
            raise ConfigError(f"must be 0 (off) or in [1, 1000], got {shown(self.surge_ratio)}", field="surge_ratio")
        if self.serve_delay_s is not None:
            check_number(self.serve_delay_s, field="serve_delay_s", lo=0, hi=MAX_SERVE_DELAY_S)
        if type(self.learn_while_waiting) is not bool:
            raise ConfigError(f"must be true or false, got {shown(self.learn_while_waiting)}",
                              field="learn_while_waiting")
        if not (isinstance(self.signal, str) and self.signal in SIGNALS):
            raise ConfigError(f"must be one of {', '.join(SIGNALS)}, got {shown(self.signal)}", field="signal")
        if self.replica_slots is not None:
            check_number(self.replica_slots, field="replica_slots", lo=1, hi=100_000, integer=True)

    @property
    def reading(self) -> str:
        """What the load observed is, as state learnt on it is tagged: state learnt on another is not resumed."""
        if self.signal == "running" and self.replica_slots is not None:
            return "running/slots"
        return self.signal

    @property
    def slots(self) -> int:
        return round(self.season_s / self.bucket_s) if self.season_s else 0


@dataclass
class Decision:
    replicas: int
    mode: str
    """'predictive', or 'reactive' while the forecast is not trusted."""
    load: float
    """The last load observed (`signal_load`'s: by default the requests served)."""
    forecast: float
    """What is provisioned for: the load expected one start-up from now with the margin, or the load now when
    the rise is within the forecast's noise (`rise_sigmas`) or the forecast is not trusted."""
    lead_s: float
    rms_error: float
    predicted: float = 0.0
    """The load expected one start-up from now, before the margin and the `rise_sigmas` gate (0 while not
    trusted): with `noise`, why a decision did or did not provision for a rise."""
    noise: float = 0.0


@dataclass
class LoadForecaster:
    config: ForecastConfig
    level: float | None = None
    trend: float = 0.0
    season: list[float] = field(default_factory=list)
    seasons_seen: float = 0.0
    """Seasons observed (fractional): the profile is used from the second one on."""
    bucket_start: float | None = None
    bucket_sum: float = 0.0
    bucket_n: int = 0
    buckets: int = 0
    """Completed buckets."""
    last_index: int | None = None
    """The absolute index (time // bucket_s) of the last completed bucket."""
    pending: deque[tuple[int, float]] = field(default_factory=deque)
    """(bucket index, forecast) made one lead ahead, checked when that bucket completes."""
    sq_error: float = 0.0
    mean_error: float = 0.0
    """The forecast errors' mean (EMA, as sq_error): their bias, which on a ramp is the forecast's lag."""
    checked: int = 0
    """Forecasts checked against the load: the first sets both error averages (an average started at zero
    would read small errors, and a trusted forecast, for its first dozen checks). `noise` is 0 after the first
    check and reads low for the next few (the spread of few errors about their own mean), so for the first
    checks after the warm-up the rise gate is narrower than `rise_sigmas` says."""
    mean_load: float = 0.0
    startup_s: float | None = None
    """Measured replica start-up (EMA), None until a scale-up completed."""
    waiting: dict[int, float] = field(default_factory=dict)
    """replica target -> when it was first asked for, for the start-up measurement."""
    backlogged: bool = False
    """The last completed bucket had requests waiting: the next one without restarts the level (`_complete`)."""
    bucket_waiting: bool = False
    """Requests waited at some observation of the bucket being filled."""
    bucket_queue: tuple[float, float] = (0.0, 0.0)
    """The requests waiting at the first and at the last observation of the bucket being filled: a backlog
    that fell drained in it."""
    gap: list[tuple[int, float]] = field(default_factory=list)
    """The first season's slots whose buckets had requests waiting, one after another, each with what it holds at
    least: the load served where the backlog did not fall (the demand was no lower), else 0 (a backlog that
    drained, or a bucket with no observation). `_complete` fills them once a bucket has none waiting."""
    gap_span: int = 0
    """The buckets with requests waiting since `gap` opened, those after the first season too: the line that fills
    the gap runs over all of them, to the first bucket without."""
    gap_from: float | None = None
    """What the slot before the gap held when the gap opened; None where the gap opened the first season or
    followed no completed bucket (after a restart's jump or a clock step back, that slot was never learnt)."""
    latest: float | None = None
    """The last load observed: what the reactive fallback and the floor of a decision use, as Serve's own
    rule uses the load it was just told (the bucket's mean so far would lag a rise by up to a bucket)."""
    fewer: int | None = None
    """Serve's target when the last decision asked for fewer replicas than it (its downscale delay running);
    None once one did not. Not persisted: Serve keeps that delay's timer in its controller's memory, so after a
    restart both start again."""
    serve_delay_s: float = 0.0
    """Serve's delay before a replica is asked for (`ForecastConfig.serve_delay_s`, resolved by `serve_delay`): the
    adapter sets it every call from the deployment's config, so it is not state and is not persisted."""

    def __post_init__(self) -> None:
        if not self.season and self.config.slots:
            self.season = [0.0] * self.config.slots

    # -- observations --------------------------------------------------------------
    def observe(self, now: float, load: float, waiting: float = 0.0) -> None:
        """Load (`signal_load`'s) seen at `now`, with the requests waiting (its second answer); completes buckets
        as time passes."""
        load = max(0.0, float(load)) if math.isfinite(load) else 0.0
        self.latest = load
        size = self.config.bucket_s
        if self.bucket_start is None:
            self.bucket_start = math.floor(now / size) * size
        if now < self.bucket_start:  # a clock step back: start the bucket again
            self.bucket_start = math.floor(now / size) * size
            self.bucket_sum, self.bucket_n, self.bucket_waiting = 0.0, 0, False
        while now >= self.bucket_start + size:
            if self.bucket_n:
                waited = self.bucket_waiting and not self.config.learn_while_waiting
                self._complete(self.bucket_sum / self.bucket_n, waited=waited,
                               drained=self.bucket_queue[1] < self.bucket_queue[0])
                self.bucket_sum, self.bucket_n, self.bucket_waiting = 0.0, 0, False
            else:  # a silent bucket (no tick in it) repeats the last value, and leaves a backlog open
                self._complete(self.level if self.level is not None else 0.0, skipped=True, waited=self.backlogged)
            self.bucket_start += size
            if now - self.bucket_start > size * 1000:  # a long gap (a restart): jump, do not replay it
                self.bucket_start = math.floor(now / size) * size
        queue = max(0.0, float(waiting)) if is_finite_number(waiting) else 0.0
        self.bucket_queue = (queue if self.bucket_n == 0 else self.bucket_queue[0], queue)
        self.bucket_sum += load
        self.bucket_n += 1
        if queue >= 1.0:
            self.bucket_waiting = True

    def _slot(self, index: int) -> int:
        return index % self.config.slots

    def _complete(self, y: float, *, skipped: bool = False, waited: bool = False, drained: bool = False) -> None:
        """A bucket's mean load `y`. Where requests waited in it (`waited`), `y` is what the replicas' slots could
        hold, not the demand: neither the level and trend nor a learnt season's profile take it in, and the first
        bucket without restarts the level at its load and the trend at zero, as a jump from the level before the
        backlog is no trend. A first season's slot has nothing to keep: it holds `y` until the wait is over, then
        its share of a line to the load after (`_fill_gap`), no lower than `y` where the backlog did not fall.
        `drained`: the backlog fell in the bucket, so its slots served more than arrived and `y` bounds nothing;
        a `skipped` bucket (no observation) repeats the level, which bounds nothing either."""
        cfg = self.config
        index = round(self.bucket_start / cfg.bucket_s)  # type: ignore[operator]  # a bucket has started before one completes
        follows = self.last_index == index - 1
        self.last_index = index
        while self.pending and self.pending[0][0] < index:
            self.pending.popleft()
        if self.pending and self.pending[0][0] == index and not skipped:
            err = y - self.pending.popleft()[1]
            first = self.checked == 0
            self.sq_error = err * err if first else 0.9 * self.sq_error + 0.1 * err * err
            self.mean_error = err if first else 0.9 * self.mean_error + 0.1 * err
            self.checked = min(self.checked + 1, 1 << 30)
        self.mean_load = y if self.buckets == 0 else 0.95 * self.mean_load + 0.05 * y
        if self.level is None:
            self.level, self.backlogged = y, waited  # a first bucket with a wait: the level restarts after it
        elif waited:
            self.backlogged = True
        elif self.backlogged:
            self.backlogged = False
            self.level, self.trend = y, 0.0
        else:
            previous = self.level
            self.level = cfg.alpha * y + (1 - cfg.alpha) * (self.level + cfg.phi * self.trend)
            self.trend = cfg.beta * (self.level - previous) + (1 - cfg.beta) * cfg.phi * self.trend
        if cfg.slots:
            slot = self._slot(index)
            first = self.first_season
            if first or not waited:
                self.season[slot] = y if first else cfg.gamma * y + (1 - cfg.gamma) * self.season[slot]
            if waited and (first or self.gap):
                if not self.gap:
                    self.gap_from = self.season[self._slot(index - 1)] if self.buckets and follows else None
                if first and all(slot != s for s, _ in self.gap):  # a step back in time may repeat a slot
                    self.gap.append((slot, 0.0 if drained or skipped else y))
                self.gap_span = min(self.gap_span + 1, MAX_GAP_SPAN)
            elif self.gap and not waited:
                self._fill_gap(y)
            self.seasons_seen += 1 / cfg.slots
        self.buckets += 1
        ahead = self._steps_ahead()
        self.pending.append((index + ahead, self.forecast(ahead)))
        while len(self.pending) > 4 * ahead + 8:
            self.pending.popleft()

    def _fill_gap(self, after: float) -> None:
        """The first season's slots in which requests waited, now that a bucket had none (its load `after`): a
        line over every bucket that waited (`gap_span`) from the slot before them (or, where there is none, the
        lower of the first one's load and `after`) to `after`, each slot no lower than its floor (`gap`)."""
        before = self.gap_from if self.gap_from is not None else min(self.season[self.gap[0][0]], after)
        n = self.gap_span  # never below len(gap): counted with every slot added, and checked so on resume
        for j, (slot, floor) in enumerate(self.gap):
            self.season[slot] = max(floor, before + (after - before) * (j + 1) / (n + 1))
        self.gap, self.gap_span, self.gap_from = [], 0, None

    # -- forecasts -------------------------------------------------------------------
    @property
    def lead_s(self) -> float:
        """How far ahead replicas must be asked for: Serve's delay (`serve_delay_s`), one start-up, and the bucket
        being filled."""
        startup = self.startup_s if self.startup_s is not None else self.config.startup_s
        return self.serve_delay_s + startup + self.config.bucket_s

    def _steps_ahead(self) -> int:
        return max(1, math.ceil(self.lead_s / self.config.bucket_s))

    def forecast(self, steps: int) -> float:
        """The load expected `steps` buckets after the last completed one (never below zero).

        Within a known season: the current level plus the change the profile saw over the same
        stretch of the last seasons (what came next last time); otherwise the level and its trend."""
        if self.level is None or self.last_index is None:
            return 0.0
        if self.seasonal:
            y = self.level + self.season[self._slot(self.last_index + steps)] - self.season[self._slot(self.last_index)]
        else:
            phi = self.config.phi
            damped = steps if phi >= 1.0 else phi * (1 - phi ** steps) / (1 - phi)
            y = self.level + self.trend * damped
        return max(0.0, y)

    @property
    def first_season(self) -> bool:
        """Fewer buckets than a season's slots completed (counted whole: `seasons_seen` adds 1 / slots a bucket,
        which summed `slots` times can fall a rounding short of 1)."""
        return self.seasons_seen * self.config.slots < self.config.slots - 0.5

    @property
    def seasonal(self) -> bool:
        return bool(self.config.slots) and not self.first_season

    @property
    def rms_error(self) -> float:
        return math.sqrt(self.sq_error)

    @property
    def noise(self) -> float:
        """The forecast errors' spread about their mean: the noise, without the bias (a ramp's lag is no noise)."""
        return math.sqrt(max(0.0, self.sq_error - self.mean_error * self.mean_error))

    @property
    def trusted(self) -> bool:
        if self.buckets < self.config.warmup_buckets:
            return False
        # Relative to the load as it is now, not only its long mean: on a ramp the mean lags far behind.
        scale = max(self.mean_load, self.level or 0.0, self.config.target_per_replica)
        return self.rms_error <= self.config.max_relative_error * scale

    # -- replica start-up --------------------------------------------------------------
    def replicas_seen(self, now: float, target: int, running: int) -> None:
        """Serve's target and running replicas at `now`: measures how long a scale-up takes to serve."""
        if target > running:
            for want in range(running + 1, target + 1):
                self.waiting.setdefault(want, now)
        for want in [w for w in self.waiting if w <= running]:
            took = now - self.waiting.pop(want)
            if 0 <= took <= 3600:
                self.startup_s = took if self.startup_s is None else 0.7 * self.startup_s + 0.3 * took
        for want in [w for w in self.waiting if w > target]:  # asked for, then no longer wanted
            self.waiting.pop(want)
        while len(self.waiting) > 64:
            self.waiting.pop(min(self.waiting))

    # -- the decision ---------------------------------------------------------------------
    def decide(self, *, running: int, low: int, high: int, queued: float = 0.0, target: int | None = None
               ) -> Decision:
        """How many replicas to ask for now, within [low, high]. `queued`: the requests waiting for a free
        slot (`signal_load`'s second answer); while enough wait, every replica still starting is kept and,
        with none starting, one more is asked for (the rule in the module docstring). `target`: Serve's target
        replicas (the running ones where not given), against which it holds an ask for fewer."""
        cfg = self.config
        serve_target = running if target is None else target
        load = self.latest if self.latest is not None else (self.level or 0.0)
        now_need = load / cfg.target_per_replica
        predicted = 0.0
        if not self.trusted:
            replicas = math.ceil(now_need)
            mode, provisioned = "reactive", load
        else:
            ahead = self._steps_ahead()
            margin = cfg.margin_sigmas * self.rms_error
            path = [self.forecast(k) for k in range(1, ahead + 1)]
            predicted = path[-1]
            # The rise itself must stand out of the noise (a margin is no rise); the margin goes on what is kept.
            # Measured from the level as well as the load just reported: a dip in that report (a tick's
            # count, noisier than a bucket's mean) would otherwise widen the gap and provision for the rise.
            rise = predicted - max(load, self.level or 0.0)
            rising = rise >= cfg.rise_sigmas * self.noise
            base = predicted if rising else load
            provisioned = max(base + margin, load)
            mode = "predictive"
            if not all(math.isfinite(x) for x in (provisioned, margin, *path)):
                # state no observations make (from_dict bounds what it reads back): Serve's rule, not a crash
                path, margin, provisioned, mode = [load], 0.0, load, "reactive"
            replicas = math.ceil(provisioned / cfg.target_per_replica)
            if cfg.down_band and self.fewer == serve_target and not rising and mode == "predictive":
                # A wish for fewer runs: the load must clear the line by the band to ask for the target again.
                banded = math.ceil((provisioned - cfg.down_band * cfg.target_per_replica) / cfg.target_per_replica)
                replicas = max(banded, 1 if provisioned > 0 else 0)
            if replicas < running and mode == "predictive":
                # Hysteresis: only as far down as the whole coming window allows, with headroom; a
                # falling trend is not taken as a promise (the level now counts).
                window = max(max(path), self.level or 0.0) + margin
                window = max(window, load)
                floor = math.ceil(window / (cfg.target_per_replica * cfg.down_headroom))
                if self.fewer == serve_target:
                    # The last decision asked for fewer than this target, which started Serve's downscale delay;
                    # an ask at the target restarts it, so the window, which moves with every bucket's forecast,
                    # holds at most one below it (the load, or a rise through the gate, can still ask for more).
                    floor = min(floor, serve_target - 1)
                replicas = max(replicas, min(running, floor))
        if queued >= 1.0 and (queued >= load or load >= running * cfg.target_per_replica):
            # Requests wait, as many as are served or while the replicas carry their target: the served count
            # cannot show the demand beyond the slots. (A request also counts as queued while its router picks
            # a replica, free slots or not, but for a routing time far shorter than a service, so those never
            # outnumber the served.) Keep every replica asked for (a decision below Serve's target would, held
            # for the downscale delay, stop a replica still starting), and with none starting ask for one more.
            replicas = max(replicas, max(self.waiting) if self.waiting else running + 1)
            # its first buckets, maybe under load with nothing learnt, have a share of their own
            share = cfg.warmup_backlog_share if self.buckets < cfg.warmup_buckets else cfg.backlog_share
            if cfg.surge_ratio and load > 0 and queued >= cfg.surge_ratio * load:
                share = 1.0
            if share > 0:
                replicas = max(replicas, math.ceil((load + share * queued) / cfg.target_per_replica))
        replicas = max(low, min(high, replicas))
        self.fewer = serve_target if replicas < serve_target else None
        return Decision(replicas=replicas, mode=mode, load=load, forecast=provisioned,
                        lead_s=self.lead_s, rms_error=self.rms_error, predicted=predicted, noise=self.noise)

    # -- persistence --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "signal": self.config.reading, "level": self.level, "trend": self.trend,
                "season": [round(x, 6) for x in self.season],
                "seasons_seen": self.seasons_seen, "bucket_start": self.bucket_start, "buckets": self.buckets,
                "sq_error": self.sq_error, "mean_error": self.mean_error, "checked": self.checked,
                "mean_load": self.mean_load, "startup_s": self.startup_s, "backlogged": self.backlogged,
                "gap": [[slot, round(floor, 6)] for slot, floor in self.gap], "gap_span": self.gap_span,
                "gap_from": self.gap_from}

    @classmethod
    def from_dict(cls, config: ForecastConfig, raw: Any) -> LoadForecaster:
        """A forecaster resumed from `to_dict`'s output; a fresh one when it does not fit this config
        (another season length, or learnt on another reading of the load (`ForecastConfig.reading`):
        state without one was Serve's in-flight count) or is not what to_dict writes."""
        fresh = cls(config=config)
        if not isinstance(raw, dict) or raw.get("v") != 1 or raw.get("signal", "in_flight") != config.reading:
            return fresh
        try:
            season = raw["season"]
            if not (isinstance(season, list) and len(season) == config.slots):
                return fresh
            # mean_error and checked are newer than the state's format: without them every error counts as noise,
            # and the errors seen so far as checked
            mean_error = raw.get("mean_error", 0.0)
            numbers = [raw["trend"], raw["seasons_seen"], raw["sq_error"], mean_error, raw["mean_load"], *season]
            checked = raw.get("checked", 1 if raw["buckets"] else 0)
            optional = [raw["level"], raw["bucket_start"], raw["startup_s"]]
            present = [*numbers, *(x for x in optional if x is not None)]
            if not all(is_finite_number(x) and abs(x) <= MAX_STATE for x in present):
                return fresh
            if optional[2] is not None and not 0 <= optional[2] <= 3600:  # a start-up, as replicas_seen keeps one
                return fresh
            if type(raw["buckets"]) is not int or raw["buckets"] < 0 or type(checked) is not int or checked < 0:
                return fresh
            backlogged = raw.get("backlogged", False)  # newer than the format: without it, no backlog was open
            if type(backlogged) is not bool:
                return fresh
            # Newer than the format: without them no gap is open (slots a wait taught before keep what was served).
            gap, gap_from = raw.get("gap", []), raw.get("gap_from")
            if not (isinstance(gap, list) and len(gap) <= config.slots and all(
                    isinstance(g, list) and len(g) == 2 and type(g[0]) is int and 0 <= g[0] < config.slots
                    and is_finite_number(g[1]) and 0 <= g[1] <= MAX_STATE for g in gap)):
                return fresh
            if len({g[0] for g in gap}) != len(gap):
                return fresh
            gap_span = raw.get("gap_span", len(gap))
            if type(gap_span) is not int or not len(gap) <= gap_span <= MAX_GAP_SPAN:
                return fresh
            if gap_from is not None and not (is_finite_number(gap_from) and 0 <= gap_from <= MAX_STATE):
                return fresh
            # The squared error's average bounds the mean's square (the same weights); state breaking that is
            # not to_dict's
            if raw["sq_error"] < 0 or abs(mean_error) > math.sqrt(raw["sq_error"]) * (1 + 1e-9) + 1e-12:
                return fresh
            last = round(optional[1] / config.bucket_s) - 1 if optional[1] is not None else None
            return cls(config=config, level=optional[0], last_index=last, trend=float(raw["trend"]),
                       season=[float(x) for x in season], seasons_seen=float(raw["seasons_seen"]),
                       bucket_start=optional[1], buckets=raw["buckets"], sq_error=float(raw["sq_error"]),
                       mean_error=float(mean_error), checked=min(checked, 1 << 30),
                       mean_load=float(raw["mean_load"]), startup_s=optional[2], backlogged=backlogged,
                       gap=[(g[0], float(g[1])) for g in gap], gap_span=gap_span if gap else 0,
                       gap_from=float(gap_from) if gap_from is not None and gap else None)
        except (KeyError, TypeError, ValueError, OverflowError):
            return fresh


def serve_delay(config: ForecastConfig, autoscaling: Any, *, windowed: bool = True) -> float:
    """`ForecastConfig.serve_delay_s` where a number, else from Serve's AutoscalingConfig (or anything with its fields):
    its upscale delay and, where the load is Serve's (`windowed`), half its look-back window and half its metrics
    interval (a window mean of reports pushed that often lags a rise by about that; a burst pool reads its
    routers' fresh counts instead). A field missing or not a finite number in range counts as 0."""
    if config.serve_delay_s is not None:
        return float(config.serve_delay_s)

    def field(name: str) -> float:
        x: Any = getattr(autoscaling, name, None)
        return float(x) if is_finite_number(x) and 0 <= x <= 86400 else 0.0

    window = (field("look_back_period_s") + field("metrics_interval_s")) / 2 if windowed else 0.0
    return min(MAX_SERVE_DELAY_S, field("upscale_delay_s") + window)


def signal_load(config: ForecastConfig, *, in_flight: float, queued: float | None,
                running: int | None = None) -> tuple[float, float]:
    """(the load to observe, the requests waiting to pass to `decide`) from what Serve reports: its requests
    in flight (running and queued at the handles), those queued (None when not read) and the running replicas.
    "in_flight" observes Serve's count and passes no queue (its rule counts it). "running" observes the
    requests served: with `replica_slots` and `running` known, those in flight up to what the running
    replicas' slots hold, the rest waiting; otherwise in flight less queued. Serve aggregates its in-flight
    and queued counts over look-back windows opened separately, so while the load moves their difference
    can read near zero with every slot full; the slots need one count only. A replica admits no more than
    its slots, so beyond them requests wait; within them a few may wait too (a router backs off when the two
    replicas it sampled are full, and counts a request as queued while it picks), which this reading does
    not count, and over a window mean it counts at most the mean excess: a lower bound on the queue."""
    in_flight = max(0.0, float(in_flight)) if is_finite_number(in_flight) else 0.0
    if config.signal == "in_flight":
        return in_flight, 0.0
    if config.replica_slots is not None and running is not None:
        served = min(in_flight, max(0, running) * config.replica_slots)
        return served, in_flight - served
    queued = min(in_flight, max(0.0, float(queued))) if queued is not None and is_finite_number(queued) else 0.0
    return in_flight - queued, queued


def is_finite_number(x: Any) -> bool:
    """A real number (not a bool) that is finite: for state read back, where a bad value means start afresh."""
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float (JSON integers are unbounded)
        return False
