"""The load forecaster behind predictive autoscaling: pure, driven with synthetic load."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from elasticml.errors import ConfigError
from elasticml.serve.config import ServeConfig
from elasticml.serve.forecast import ForecastConfig, LoadForecaster


def drive(fc: LoadForecaster, load, start: float, end: float, tick: float = 0.1, running: int = 1):
    """Feed `load(t)` every tick; the decisions, one per second, as (t, Decision)."""
    out = []
    steps = round((end - start) / tick)
    for i in range(steps):
        t = start + i * tick
        fc.observe(t, load(t))
        if i % round(1 / tick) == 0:
            out.append((t, fc.decide(running=running, low=1, high=50)))
    return out


def test_on_a_ramp_it_asks_for_the_replicas_one_start_up_ahead_of_the_load():
    cfg = ForecastConfig(target_per_replica=1.0, startup_s=5.0)
    fc = LoadForecaster(config=cfg)
    ramp = lambda t: 1.0 if t < 30 else 1.0 + (t - 30) * 0.2  # noqa: E731
    decisions = drive(fc, ramp, 0, 80)
    late = [(t, d) for t, d in decisions if t >= 50]
    assert all(d.mode == "predictive" for _, d in late)
    for t, d in late:
        reactive = math.ceil(ramp(t))
        assert d.replicas >= reactive  # never behind what is in flight
        assert d.replicas >= math.ceil(ramp(t + 5.0)) - 1  # ready for what comes one start-up later
    assert sum(d.replicas > math.ceil(ramp(t)) for t, d in late) >= len(late) // 2


def test_with_a_season_it_anticipates_the_peak_a_trend_cannot_see():
    season = 60.0
    wave = lambda t: 6 + 5 * math.sin(2 * math.pi * t / season)  # noqa: E731
    seasonal = LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=6.0, season_s=season))
    trend_only = LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=6.0))
    drive(seasonal, wave, 0, 3 * season)
    drive(trend_only, wave, 0, 3 * season)
    assert seasonal.seasonal and not trend_only.seasonal
    # The trough is followed by a rise: at the trough, only the profile knows it is coming.
    trough = 3 * season + season * 0.75
    for fc in (seasonal, trend_only):
        drive(fc, wave, 3 * season, trough)
    truth = wave(trough + 6.0 + 1.0)
    assert abs(seasonal.forecast(7) - truth) < abs(trend_only.forecast(7) - truth)
    assert abs(seasonal.forecast(7) - truth) < 1.0


def test_a_poor_forecast_falls_back_to_reactive():
    cfg = ForecastConfig(target_per_replica=1.0, startup_s=3.0, max_relative_error=0.3)
    fc = LoadForecaster(config=cfg)
    noise = lambda t: 10.0 if int(t * 7919) % 3 == 0 else 0.5  # noqa: E731  (jumps every bucket)
    decisions = drive(fc, lambda t: noise(math.floor(t)), 0, 60)
    assert decisions[-1][1].mode == "reactive"
    d = decisions[-1][1]
    assert d.replicas == max(1, math.ceil(d.load))


def test_its_reactive_answer_is_serves_rule_on_the_load_just_observed_not_the_buckets_mean():
    # While learning (fewer buckets than warmup_buckets) the policy must cost no more than Serve's
    # rule: a jump within a bucket is answered at once, not once the bucket's mean catches up.
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, bucket_s=1.0, warmup_buckets=10))
    for i in range(9):
        fc.observe(0.1 * i, 1.0)
    fc.observe(0.95, 14.0)  # in the same bucket, the handles now report 14 in flight
    d = fc.decide(running=1, low=1, high=8)
    assert (d.mode, d.load, d.replicas) == ("reactive", 14.0, math.ceil(14.0 / 3.0))
    # the trusted path keeps it as its floor: never fewer than what is in flight now asks, here 20 where
    # the bucket's mean (9 ticks at 3 and one at 20: 4.7) would ask for 2
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, bucket_s=1.0, warmup_buckets=2))
    for i in range(69):
        fc.observe(0.1 * i, 3.0)
    fc.observe(6.95, 20.0)
    d = fc.decide(running=1, low=1, high=8)
    assert d.mode == "predictive" and d.replicas == math.ceil(20.0 / 3.0)


def test_it_scales_down_only_once_the_whole_coming_window_fits_in_fewer_replicas():
    cfg = ForecastConfig(target_per_replica=1.0, startup_s=4.0, down_headroom=0.8)
    fc = LoadForecaster(config=cfg)
    drive(fc, lambda t: 4.0, 0, 30, running=4)
    assert fc.decide(running=4, low=1, high=10).replicas == 4
    assert fc.decide(running=5, low=1, high=10).replicas == 5  # 4 in flight needs 4 / 0.8: the fifth stays
    down = drive(fc, lambda t: 4.0 if t < 30 else 1.0, 30, 90, running=5)
    assert down[-1][1].replicas <= 2
    assert down[0][1].replicas >= 4  # not the moment the load dipped


def test_by_default_a_replica_goes_back_once_the_coming_window_fits_in_one_fewer():
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=4.0))
    drive(fc, lambda t: 4.0, 0, 30, running=5)
    assert fc.decide(running=5, low=1, high=10).replicas == 4  # 4 in flight fits 4 at the target
    assert fc.decide(running=4, low=1, high=10).replicas == 4


def test_once_it_asked_for_fewer_the_window_holds_below_serves_target_and_does_not_restart_its_delay():
    from ray.serve.autoscaling_policy import _apply_delay_logic

    def trusted(level: float, latest: float) -> LoadForecaster:  # steady, with some noise: no rise passes the gate
        return LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=2.0), level=level,
                              last_index=100, buckets=100, checked=100, sq_error=0.09, mean_load=1.0, latest=latest)

    # A load of 0.8 on 2 replicas; each second a bucket moves the level above and below one replica's worth, where
    # the window alone would ask for 2, Serve's target: that would restart Serve's downscale delay at every flip.
    fc = trusted(0.9, 0.8)
    serve = SimpleNamespace(upscale_delay_s=0.0, downscale_delay_s=3.0, downscale_to_zero_delay_s=None)
    state: dict = {}
    target, asks, targets = 2, [], []
    for second in range(8):
        fc.level = 0.9 if second % 2 == 0 else 1.2
        asks.append(fc.decide(running=target, low=1, high=4, target=target).replicas)
        target, state = _apply_delay_logic(asks[-1], target, serve, state, _now=float(second))
        targets.append(target)
    assert asks == [1] * 8  # the window alone asked 1, 2, 1, 2, ...
    assert targets[:3] == [2, 2, 2] and targets[3:] == [1] * 5  # the replica goes the delay after the first ask
    # Before any ask for fewer the window is the hysteresis; the load's own need still counts after one, and a
    # new wish for fewer is held by the window again.
    assert trusted(1.2, 0.8).decide(running=2, low=1, high=4).replicas == 2
    fc = trusted(0.9, 0.8)
    assert fc.decide(running=2, low=1, high=4).replicas == 1  # without a target, the running count is Serve's
    fc.level = 1.2
    assert fc.decide(running=2, low=1, high=4).replicas == 1
    fc.latest = 1.5
    assert fc.decide(running=2, low=1, high=4).replicas == 2
    fc.latest = 0.8
    assert fc.decide(running=2, low=1, high=4).replicas == 2
    # The window still holds below the target: 5 running, fewer asked for (3), then a window of 3.6 asks for 4,
    # which Serve applies when its delay ends, and one of 4.2 for no more than 4.
    fc = trusted(2.8, 2.5)
    assert fc.decide(running=5, low=1, high=8, target=5).replicas == 3
    fc.level = 3.6
    assert fc.decide(running=5, low=1, high=8, target=5).replicas == 4
    fc.level = 4.2
    assert fc.decide(running=5, low=1, high=8, target=5).replicas == 4
    # Against another target (Serve's changed since the ask for fewer) the window counts in full.
    fc = trusted(0.9, 0.8)
    assert fc.decide(running=2, low=1, high=4, target=2).replicas == 1
    fc.level = 2.2
    assert fc.decide(running=3, low=1, high=4, target=3).replicas == 3


def test_with_a_down_band_a_load_on_the_line_keeps_asking_for_fewer_while_the_wish_runs():
    from ray.serve.autoscaling_policy import _apply_delay_logic

    def trusted(band: float, latest: float, level: float = 0.9, **config) -> LoadForecaster:  # no rise passes the gate
        return LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=2.0, down_band=band, **config),
                              level=level, last_index=100, buckets=100, checked=100, sq_error=0.09, mean_load=1.0,
                              latest=latest)

    # 2 replicas, a load of 0.8 asks for 1; then the load's reports wander about the line (1.1, 0.9, ...): without
    # the band each one over it asks for Serve's target, 2, and restarts its downscale delay.
    serve = SimpleNamespace(upscale_delay_s=0.0, downscale_delay_s=5.0, downscale_to_zero_delay_s=None)
    loads = [0.8, 1.1, 0.9, 1.15, 0.95, 1.1, 0.9, 0.95]
    kept = {}
    for band in (0.0, 0.2):
        fc, target, state, asks, targets = trusted(band, 0.8), 2, {}, [], []
        for second, load in enumerate(loads):
            fc.latest = load
            asks.append(fc.decide(running=target, low=1, high=4, target=target).replicas)
            target, state = _apply_delay_logic(asks[-1], target, serve, state, _now=float(second))
            targets.append(target)
        kept[band] = targets
        assert asks == ([1, 2, 1, 2, 1, 2, 1, 1] if band == 0.0 else [1] * 8)
    assert kept[0.0] == [2] * 8  # every ask at the target restarted the delay: the replica was never given back
    assert kept[0.2] == [2] * 5 + [1] * 3  # given back the delay after the first ask
    def wished(latest: float = 0.8, level: float = 0.9, running: int = 2, **config) -> LoadForecaster:
        fc = trusted(0.2, latest, level, **config)  # it asks for 1 where Serve's target is `running`
        assert fc.decide(running=running, low=1, high=4, target=running).replicas == 1
        return fc

    # The band is only for a wish that runs: before an ask for fewer the load over the line asks for the target;
    # a load beyond the band asks for it during one; so does a rise through the gate.
    assert trusted(0.2, 1.1).decide(running=1, low=1, high=4, target=1).replicas == 2
    fc = wished()
    fc.latest = 1.25
    assert fc.decide(running=2, low=1, high=4, target=2).replicas == 2
    fc = wished()
    fc.latest, fc.level, fc.trend = 0.85, 0.85, 0.14  # a forecast of 1.19, its rise just over the noise (0.3)
    assert fc.decide(running=2, low=1, high=4, target=2).replicas == 2
    # Only against the target the wish was for: Serve's target since moved to 2 (and one replica lost), a load of
    # 1.1 asks for 2.
    fc = wished(running=3)
    fc.latest = 1.1
    assert fc.decide(running=1, low=1, high=4, target=2).replicas == 2
    # Nor where the forecast is unusable and Serve's rule decides (state no observations make).
    fc = wished()
    fc.latest, fc.level = 1.1, math.inf
    decision = fc.decide(running=2, low=1, high=4, target=2)
    assert (decision.mode, decision.replicas) == ("reactive", 2)
    fc.latest = 0.8  # and Serve's rule alone, with no window from that state
    assert fc.decide(running=2, low=1, high=4, target=2).replicas == 1
    # The band comes off what is provisioned, margin included: a margin of 0.3 on a load of 1.0 still asks for 2.
    fc = wished(latest=0.5, level=0.6, margin_sigmas=1.0)
    fc.latest = 1.0
    assert fc.decide(running=2, low=1, high=4, target=2).replicas == 2
    # Never the last replica while load is seen (scale to zero is Serve's own delay, on no load).
    fc = trusted(0.2, 0.0, level=0.0)
    assert fc.decide(running=1, low=0, high=4, target=1).replicas == 0
    fc.latest = 0.15
    assert fc.decide(running=1, low=0, high=4, target=1).replicas == 1
    assert ForecastConfig(down_band=0.5).down_band == 0.5
    for bad in (0.6, -0.1, float("nan"), True, "0.2"):
        with pytest.raises(ConfigError, match="down_band"):
            ForecastConfig(down_band=bad)


def test_serves_policy_holds_an_ask_for_fewer_against_serves_target_not_the_running_count(monkeypatch):
    from elasticml.serve import autoscale

    monkeypatch.setattr(autoscale, "_kv_get", lambda key: None)
    monkeypatch.setattr(autoscale, "_kv_put", lambda key, value: None)
    policy = autoscale.PredictivePolicy(target_per_replica=1.0, startup_s=2.0, signal="in_flight")
    policy.forecaster = LoadForecaster(config=policy.config, level=0.9, last_index=99, buckets=100, checked=100,
                                       sq_error=0.09, mean_load=1.0, bucket_start=100.0)

    def ask(t: float) -> int:  # 2 running while Serve's target is 3 (one starting), 0.8 in flight
        return policy(SimpleNamespace(current_time=t, app_name="a", deployment_name="d", target_num_replicas=3,
                                      current_num_replicas=2, total_num_requests=0.8,
                                      capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8))[0]

    assert ask(100.1) == 1
    policy.forecaster.level = 1.2  # the window now fits 2: below Serve's target, so no delay restarts
    assert ask(100.2) == 2  # held against the running count, it would stay at 1


def test_replica_start_up_is_measured_from_target_and_running_counts():
    fc = LoadForecaster(config=ForecastConfig(startup_s=30.0))
    assert fc.lead_s == 31.0
    fc.replicas_seen(100.0, target=3, running=1)
    fc.replicas_seen(104.0, target=3, running=2)
    fc.replicas_seen(106.0, target=3, running=3)
    assert 4.0 <= fc.startup_s <= 6.0
    assert fc.lead_s < 10


def test_by_default_it_follows_the_requests_served_and_the_waiting_ones_through_one_rule():
    from elasticml.serve.forecast import signal_load

    running, in_flight = ForecastConfig(), ForecastConfig(signal="in_flight")
    assert running.signal == "running"
    assert signal_load(running, in_flight=10.0, queued=6.0) == (4.0, 6.0)
    assert signal_load(in_flight, in_flight=10.0, queued=6.0) == (10.0, 0.0)  # Serve's count; its rule has the queue
    # What Serve may report: no queue figure, a queue over the total (separate windows), nonsense.
    assert signal_load(running, in_flight=10.0, queued=None) == (10.0, 0.0)
    assert signal_load(running, in_flight=3.0, queued=5.0) == (0.0, 3.0)
    assert signal_load(running, in_flight=float("nan"), queued=float("inf")) == (0.0, 0.0)
    assert signal_load(running, in_flight=-2.0, queued=-1.0) == (0.0, 0.0)


def test_with_the_replicas_slots_the_served_count_comes_from_one_count_not_two_windows():
    from elasticml.serve.forecast import signal_load

    slots = ForecastConfig(replica_slots=4)
    assert signal_load(slots, in_flight=10.0, queued=None, running=2) == (8.0, 2.0)  # both replicas full
    # Serve's queued count, aggregated over another window, said 5 of 5 waited with free slots: not read.
    assert signal_load(slots, in_flight=5.0, queued=5.0, running=2) == (5.0, 0.0)
    assert signal_load(slots, in_flight=3.0, queued=0.0, running=0) == (0.0, 3.0)  # nothing runs: all wait
    assert signal_load(slots, in_flight=float("nan"), queued=None, running=2) == (0.0, 0.0)
    assert signal_load(ForecastConfig(replica_slots=4, signal="in_flight"), in_flight=10.0, queued=None,
                       running=2) == (10.0, 0.0)
    assert signal_load(slots, in_flight=10.0, queued=6.0) == (4.0, 6.0)  # running unknown: in flight less queued
    for bad in (0, 2.5, True, "4", 10**6):
        with pytest.raises(ConfigError, match="replica_slots"):
            ForecastConfig(replica_slots=bad)


def test_while_requests_wait_at_full_replicas_it_keeps_what_starts_and_else_asks_for_one_more():
    # A target equal to the replicas' slots (4): the requests served never exceed 4 a replica, so the served
    # load alone would never ask for a second one however long the queue.
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=4.0, startup_s=2.0, warmup_buckets=3))
    for i in range(100):
        fc.replicas_seen(i * 0.1, 1, 1)
        fc.observe(i * 0.1, 4.0)
    assert fc.decide(running=1, low=1, high=8).replicas == 1
    assert fc.decide(running=1, low=1, high=8, queued=0.5).replicas == 1  # less than a request waits on average
    assert fc.decide(running=1, low=1, high=8, queued=9.0).replicas == 2
    assert fc.decide(running=1, low=1, high=1, queued=9.0).replicas == 1  # within the bounds
    fc.replicas_seen(10.0, 3, 1)  # two more are starting: what the queue waits for; asking fewer would stop them
    assert fc.decide(running=1, low=1, high=8, queued=9.0).replicas == 3
    fc.replicas_seen(14.0, 3, 3)
    fc.observe(14.0, 12.0)
    assert fc.decide(running=3, low=1, high=8, queued=9.0).replicas == 4


def test_a_queue_beside_free_slots_adds_no_replica_one_as_long_as_the_served_does():
    # Serve counts a request as queued while its router picks a replica, free slots or not: at high rates that
    # is a request or more on average, though fewer than are served. Below their target the replicas have room.
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=4.0, startup_s=2.0, warmup_buckets=3))
    for i in range(100):
        fc.replicas_seen(i * 0.1, 2, 2)
        fc.observe(i * 0.1, 5.0)
    assert fc.decide(running=2, low=1, high=8, queued=3.0).replicas == 2
    # Just under one replica's target, with a queue as long as what is served: a replica short (the served count
    # of a full replica hovers at its slots, which may sit at the target) - one more.
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, startup_s=2.0, warmup_buckets=3))
    for i in range(100):
        fc.replicas_seen(i * 0.1, 1, 1)
        fc.observe(i * 0.1, 2.9)
    assert fc.decide(running=1, low=1, high=8, queued=2.0).replicas == 1
    assert fc.decide(running=1, low=1, high=8, queued=2.9).replicas == 2


def test_its_state_round_trips_and_hostile_state_starts_afresh():
    cfg = ForecastConfig(season_s=20.0)
    fc = LoadForecaster(config=cfg)
    drive(fc, lambda t: 3 + math.sin(t), 0, 50)
    fc.replicas_seen(1.0, target=2, running=1)
    fc.replicas_seen(3.0, target=2, running=2)
    again = LoadForecaster.from_dict(cfg, fc.to_dict())
    assert again.buckets == fc.buckets and again.seasonal and again.startup_s == fc.startup_s
    assert again.forecast(3) == pytest.approx(fc.forecast(3), abs=1e-4)
    assert fc.mean_error != 0 and (again.mean_error, again.sq_error) == (fc.mean_error, fc.sq_error)
    # State written before the errors' mean was kept resumes with none: every error counts as noise.
    older = {k: v for k, v in fc.to_dict().items() if k != "mean_error"}
    assert LoadForecaster.from_dict(cfg, older).mean_error == 0.0 and LoadForecaster.from_dict(cfg, older).buckets
    for bad in (None, [], {"v": 2}, {**fc.to_dict(), "level": float("nan")}, {**fc.to_dict(), "season": [1.0]},
                {**fc.to_dict(), "buckets": -1}, {**fc.to_dict(), "trend": "1"}, {**fc.to_dict(), "level": True},
                {**fc.to_dict(), "mean_error": float("inf")}, {**fc.to_dict(), "mean_error": "0"},
                {**fc.to_dict(), "sq_error": -1.0}, {**fc.to_dict(), "sq_error": 0.0, "mean_error": 1e200},
                {**fc.to_dict(), "mean_error": 10 ** 400}, {**fc.to_dict(), "trend": 10 ** 400},
                {**fc.to_dict(), "mean_error": 2 * math.sqrt(fc.sq_error)}, {**fc.to_dict(), "checked": -1},
                {**fc.to_dict(), "checked": "3"}, {**fc.to_dict(), "level": 1e308, "trend": 1e308},
                {**fc.to_dict(), "season": [1e300] * len(fc.season)}, {**fc.to_dict(), "startup_s": 1e6},
                {**fc.to_dict(), "startup_s": -1.0}, {**fc.to_dict(), "backlogged": "yes"},
                {**fc.to_dict(), "backlogged": 1}, {**fc.to_dict(), "gap": [[20, 1.0]]},
                {**fc.to_dict(), "gap": [[0, -1.0]]}, {**fc.to_dict(), "gap": [[True, 1.0]]},
                {**fc.to_dict(), "gap": [[0, 1.0]] * 21}, {**fc.to_dict(), "gap": "[]"},
                {**fc.to_dict(), "gap_from": float("nan")}, {**fc.to_dict(), "gap_from": "1"},
                {**fc.to_dict(), "gap": [[0, 1.0], [0, 1.0]]}, {**fc.to_dict(), "gap": [[0, 1.0]], "gap_span": 0},
                {**fc.to_dict(), "gap_span": True}, {**fc.to_dict(), "gap_span": 10 ** 9}):
        fresh = LoadForecaster.from_dict(cfg, bad)
        assert fresh.buckets == 0 and fresh.level is None
    # A backlog open at the save is still open after it; state from before the flag was kept had none open.
    fc.backlogged = True
    assert LoadForecaster.from_dict(cfg, fc.to_dict()).backlogged
    assert not LoadForecaster.from_dict(cfg, {k: v for k, v in fc.to_dict().items() if k != "backlogged"}).backlogged
    # Another season length: what was learnt does not fit.
    assert LoadForecaster.from_dict(ForecastConfig(season_s=30.0), fc.to_dict()).buckets == 0


def test_load_that_is_not_a_finite_number_counts_as_none():
    fc = LoadForecaster(config=ForecastConfig())
    for t, load in enumerate([1.0, float("nan"), float("inf"), -5.0, 2.0]):
        fc.observe(float(t), load)
    assert all(math.isfinite(x) for x in (fc.level, fc.trend, fc.sq_error))


@pytest.mark.parametrize("forecast, field", [
    ({"season_s": 1e9}, "season_s"), ({"season_s": 86400.0, "bucket_s": 1.0}, "season_s"),
    ({"alpha": 1.5}, "alpha"), ({"startup_s": float("inf")}, "startup_s"), ({"warmup_buckets": 2.5}, "warmup_buckets"),
    ({"margin": 1}, "unknown field"), ({"target_per_replica": 4}, "forecast.target_per_replica"),
    ({"signal": "queue"}, "signal"), ({"signal": ["running"]}, "signal"),
])
def test_the_apps_forecast_settings_are_checked_naming_the_field(forecast, field):
    with pytest.raises(ConfigError, match=field):
        ServeConfig(checkpoint="c", preset="latency", autoscaling="predictive", forecast=forecast)


def test_predictive_autoscaling_becomes_servees_policy_with_the_presets_target():
    cfg = ServeConfig(checkpoint="c", preset="latency", autoscaling="predictive", forecast={"season_s": 86400.0,
                                                                                           "bucket_s": 60.0})
    policy = cfg.autoscaling_config()["policy"]
    assert policy["policy_function"] == "elasticml.serve.autoscale:PredictivePolicy"
    assert policy["policy_kwargs"]["target_per_replica"] == cfg.autoscaling_config()["target_ongoing_requests"]
    assert policy["policy_kwargs"]["season_s"] == 86400.0
    assert "policy" not in ServeConfig(checkpoint="c", preset="latency").autoscaling_config()
    with pytest.raises(ConfigError, match="autoscaling: predictive autoscaling needs a preset"):
        ServeConfig(checkpoint="c", autoscaling="predictive")
    with pytest.raises(ConfigError, match="autoscaling: must be reactive, predictive"):
        ServeConfig(checkpoint="c", preset="latency", autoscaling="rm -rf /")


def test_serves_policy_logs_its_decisions_and_a_new_instance_resumes_what_was_learnt(monkeypatch):
    """The adapter Serve's controller calls, over a stand-in for Ray's key-value store."""
    from types import SimpleNamespace

    from elasticml.serve import autoscale

    store: dict[bytes, object] = {}
    monkeypatch.setattr(autoscale, "_kv_get", lambda key: store.get(key))
    monkeypatch.setattr(autoscale, "_kv_put", lambda key, value: store.__setitem__(key, value))
    kwargs = {"target_per_replica": 1.0, "bucket_s": 0.5, "startup_s": 3.0, "warmup_buckets": 4}

    def ctx(t: float, load: float, running: int, target: int) -> SimpleNamespace:
        return SimpleNamespace(current_time=t, app_name="a", deployment_name="d", target_num_replicas=target,
                               current_num_replicas=running, total_num_requests=load,
                               capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=10)

    policy = autoscale.PredictivePolicy(**kwargs)
    running = 1
    for i in range(300):
        t = 1000.0 + i * 0.1
        load = 1.0 + max(0.0, t - 1010.0) * 0.3
        replicas, state = policy(ctx(t, load, running, running))
        assert 1 <= replicas <= 10 and state["elasticml_mode"] in ("predictive", "reactive")
    events = [e for e in autoscale.decisions("a", "d") if e["event"] == "decision"]
    assert any(e["mode"] == "predictive" and e["replicas"] > e["reactive"] for e in events)
    # why a decision did or did not provision for a rise: the forecast before the gate, and the noise
    ahead = [e for e in events if e["mode"] == "predictive" and e["replicas"] > e["reactive"]]
    assert all(math.isfinite(e["predicted"]) and e["noise"] >= 0 for e in events)
    assert any(e["predicted"] >= e["load"] + policy.config.rise_sigmas * e["noise"] for e in ahead)
    learned = autoscale.learned_state("a", "d")
    assert learned and learned["buckets"] >= 50

    again = autoscale.PredictivePolicy(**kwargs)  # Serve's controller restarted
    again(ctx(1030.5, 5.0, running, running))
    assert autoscale.decisions("a", "d")[-2]["event"] == "resumed"
    assert again.forecaster.buckets >= learned["buckets"]

    store[b"a/d/state"] = {"v": 1, "level": "lots"}  # not what the policy writes: start afresh
    fresh = autoscale.PredictivePolicy(**kwargs)
    fresh(ctx(1031.0, 5.0, 1, 1))
    assert fresh.forecaster.buckets == 0

    with pytest.raises(ConfigError, match="policy_kwargs: unknown field"):
        autoscale.PredictivePolicy(bogus=1)


@pytest.mark.parametrize("signal", ["running", "in_flight"])
def test_serves_policy_does_not_take_the_queue_its_own_start_ups_cause_for_demand(monkeypatch, signal):
    """Steady load a replica carries; then a second replica starts and, as it takes the cores, requests queue
    behind the first (Serve's in-flight count climbs while the served count holds at the first one's slots)."""
    from types import SimpleNamespace

    from elasticml.serve import autoscale

    store: dict[bytes, object] = {}
    monkeypatch.setattr(autoscale, "_kv_get", lambda key: store.get(key))
    monkeypatch.setattr(autoscale, "_kv_put", lambda key, value: store.__setitem__(key, value))
    policy = autoscale.PredictivePolicy(target_per_replica=3.0, bucket_s=1.0, startup_s=5.0, warmup_buckets=5,
                                        signal=signal)
    asked = []
    for i in range(400):
        t = 100.0 + i * 0.1
        target, running = (2, 1) if 130.0 <= t < 138.0 else (1, 1)
        queued = 0.0 if t < 130.0 else min(12.0, (t - 130.0) * 2.0) if t < 138.0 else max(0.0, 12.0 - (t - 138.0) * 4)
        ctx = SimpleNamespace(current_time=t, app_name="a", deployment_name="d", target_num_replicas=target,
                              current_num_replicas=running, total_num_requests=3.0 + queued,
                              total_queued_requests=queued, capacity_adjusted_min_replicas=1,
                              capacity_adjusted_max_replicas=8)
        replicas, _ = policy(ctx)
        if 130.0 <= t < 138.0:
            asked.append(replicas)
    events = [e for e in autoscale.decisions("a", "d") if e["event"] == "decision"]
    assert all({"in_flight", "queued", "load", "reactive"} <= set(e) for e in events)
    if signal == "running":
        assert max(asked) == 2  # the one starting is kept; the served load stayed one replica's
        assert all(e["load"] == pytest.approx(e["in_flight"] - e["queued"], abs=2e-3) for e in events)
    else:
        assert max(asked) >= 4  # Serve's count read the queue as a rising load


def test_serves_policy_reads_serves_own_context_and_follows_in_flight_where_the_queue_is_no_use(monkeypatch):
    """Ray's AutoscalingContext, with its lazy metrics: the served load is in flight less queued; a queued
    count that fails, or one aggregated by max (two peaks), leaves Serve's in-flight count."""
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    from elasticml.serve import autoscale

    store: dict[bytes, object] = {}
    monkeypatch.setattr(autoscale, "_kv_get", lambda key: store.get(key))
    monkeypatch.setattr(autoscale, "_kv_put", lambda key, value: store.__setitem__(key, value))

    def broken() -> float:
        raise RuntimeError("the metric failed to aggregate")

    def ctx(queued, aggregation: str = "mean") -> AutoscalingContext:
        return AutoscalingContext(
            deployment_id=None, deployment_name="d", app_name="a", current_num_replicas=1, target_num_replicas=1,
            running_replicas=[], total_num_requests=lambda: 9.0, total_queued_requests=queued,
            aggregated_metrics=None, raw_metrics=None, capacity_adjusted_min_replicas=1,
            capacity_adjusted_max_replicas=8, policy_state={}, last_scale_up_time=None, last_scale_down_time=None,
            current_time=10.0, config=AutoscalingConfig(aggregation_function=aggregation))

    cases = [(lambda: 6.0, "mean", 2, 6.0),  # 3 served at the target, 6 waiting: one more than runs
             (broken, "mean", 3, None), (None, "mean", 3, None),  # ceil(9 in flight / 3), Serve's own rule
             (lambda: 6.0, "max", 3, None)]
    for queued, aggregation, replicas, logged in cases:
        store.clear()
        policy = autoscale.PredictivePolicy(target_per_replica=3.0)
        asked, state = policy(ctx(queued, aggregation))
        assert (asked, state["elasticml_mode"]) == (replicas, "reactive"), (queued, aggregation)
        event = autoscale.decisions("a", "d")[-1]
        assert (event["in_flight"], event["queued"]) == (9.0, logged)


def test_serves_policy_with_the_slots_does_not_read_serves_queued_count(monkeypatch):
    """With max_ongoing_requests known the served count is what the running replicas' slots hold of those in
    flight: Serve's queued count is not evaluated (its window is not the in-flight one's), so one that fails
    or disagrees changes nothing."""
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    from elasticml.serve import autoscale

    store: dict[bytes, object] = {}
    monkeypatch.setattr(autoscale, "_kv_get", lambda key: store.get(key))
    monkeypatch.setattr(autoscale, "_kv_put", lambda key, value: store.__setitem__(key, value))
    read = []

    def queued() -> float:
        read.append(1)
        raise RuntimeError("the metric failed to aggregate")

    def ctx(in_flight: float, running: int, aggregation: str = "mean") -> AutoscalingContext:
        return AutoscalingContext(
            deployment_id=None, deployment_name="d", app_name="a", current_num_replicas=running,
            target_num_replicas=running, running_replicas=[], total_num_requests=lambda: in_flight,
            total_queued_requests=queued, aggregated_metrics=None, raw_metrics=None,
            capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
            last_scale_up_time=None, last_scale_down_time=None, current_time=10.0,
            config=AutoscalingConfig(aggregation_function=aggregation))

    # 9 in flight at one replica of 4 slots: 4 served (over the target of 3), 5 waiting: one more than runs.
    # Serve's own rule on 9 in flight would ask for 3.
    store.clear()
    policy = autoscale.PredictivePolicy(target_per_replica=3.0, replica_slots=4, warmup_backlog_share=0.0)
    asked, _ = policy(ctx(9.0, 1))
    event = autoscale.decisions("a", "d")[-1]
    assert (asked, event["load"], event["queued"], event["reactive"]) == (2, 4.0, 5.0, 3)
    # By default, nothing learnt yet, the waiting count at half: ceil((4 + 5 / 2) / 3).
    store.clear()
    asked, _ = autoscale.PredictivePolicy(target_per_replica=3.0, replica_slots=4)(ctx(9.0, 1))
    assert asked == 3
    # 7 in flight at 2 replicas of 4: every request in a slot, none waiting.
    store.clear()
    asked, _ = autoscale.PredictivePolicy(target_per_replica=3.0, replica_slots=4)(ctx(7.0, 2))
    event = autoscale.decisions("a", "d")[-1]
    assert (asked, event["load"], event["queued"]) == (3, 7.0, 0.0)
    assert read == []
    # Under max aggregation 9 is a peak: no queue held over the window; Serve's count is followed, ceil(9 / 3).
    store.clear()
    asked, _ = autoscale.PredictivePolicy(target_per_replica=3.0, replica_slots=4)(ctx(9.0, 1, "max"))
    event = autoscale.decisions("a", "d")[-1]
    assert (asked, event["load"], event["queued"]) == (3, 9.0, None)


def test_serve_config_passes_the_replicas_slots_to_the_policy():
    config = ServeConfig(checkpoint="c", preset="batch", autoscaling="predictive", max_ongoing_requests=40,
                         max_batch_size=16)
    assert config.autoscaling_config()["policy"]["policy_kwargs"]["replica_slots"] == 40
    with pytest.raises(ConfigError, match="forecast.replica_slots: comes from max_ongoing_requests"):
        ServeConfig(checkpoint="c", preset="batch", autoscaling="predictive", max_ongoing_requests=40,
                    max_batch_size=16, forecast={"replica_slots": 8}).autoscaling_config()


def test_state_learnt_on_another_signal_is_not_resumed():
    running = LoadForecaster(config=ForecastConfig())
    for i in range(50):
        running.observe(i * 0.5, 2.0)
    state = running.to_dict()
    assert LoadForecaster.from_dict(ForecastConfig(), state).buckets == running.buckets
    assert LoadForecaster.from_dict(ForecastConfig(signal="in_flight"), state).buckets == 0
    old = {k: v for k, v in state.items() if k != "signal"}  # written before there was a choice: in flight
    assert LoadForecaster.from_dict(ForecastConfig(), old).buckets == 0
    assert LoadForecaster.from_dict(ForecastConfig(signal="in_flight"), old).buckets == running.buckets
    # the served count read as in flight less queued is another reading than the one bounded by the slots
    assert LoadForecaster.from_dict(ForecastConfig(replica_slots=4), state).buckets == 0
    slots = LoadForecaster(config=ForecastConfig(replica_slots=4))
    slots.observe(0.0, 2.0)
    slots.observe(2.0, 2.0)
    assert LoadForecaster.from_dict(ForecastConfig(replica_slots=8), slots.to_dict()).buckets == slots.buckets
    assert LoadForecaster.from_dict(ForecastConfig(), slots.to_dict()).buckets == 0


def test_the_served_signal_needs_a_target_below_the_replicas_slots():
    with pytest.raises(ConfigError, match="forecast.signal: the requests a replica serves cannot exceed"):
        ServeConfig(checkpoint="c", preset="batch", autoscaling="predictive", max_ongoing_requests=16,
                    max_batch_size=16)
    ServeConfig(checkpoint="c", preset="batch", autoscaling="predictive", max_ongoing_requests=16, max_batch_size=16,
                forecast={"signal": "in_flight"})
    ServeConfig(checkpoint="c", preset="batch", autoscaling="predictive", max_ongoing_requests=17, max_batch_size=16)


def test_rise_sigmas_provisions_for_a_rise_only_beyond_the_forecasts_noise():
    def trained(rise: float) -> LoadForecaster:
        fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, startup_s=4.0, warmup_buckets=5,
                                                  max_relative_error=5.0, rise_sigmas=rise))
        for i, y in enumerate([6, 9, 5, 8, 6, 9, 5, 8, 6, 9, 5, 8, 6, 6, 9, 9]):  # steady load about 7, noisy
            fc.observe(float(i), float(y))
        return fc

    plain, gated = trained(0.0), trained(1.0)
    assert plain.noise == gated.noise > 1.0
    rise = plain.forecast(plain._steps_ahead()) - plain.latest
    assert 0 < rise < plain.noise  # the trend extrapolates the jump, by less than its usual error
    assert plain.decide(running=3, low=1, high=8).replicas > 3  # asks for a replica the load does not need
    assert gated.decide(running=3, low=1, high=8).replicas == 3  # ceil(9 / 3): the load now
    with pytest.raises(ConfigError, match="rise_sigmas"):
        ForecastConfig(rise_sigmas=-1.0)


def test_a_dip_in_the_load_just_reported_does_not_pass_the_rise_gate():
    """The rise is measured from the level too: a tick that reads low (a count between arrivals, noisier than a
    bucket's mean) must not make the forecast's usual noise look like a rise and ask for a replica."""
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, startup_s=4.0, warmup_buckets=5,
                                              max_relative_error=5.0, rise_sigmas=1.0))
    for i, y in enumerate([6, 9, 5, 8, 6, 9, 5, 8, 6, 9, 5, 8, 6, 6, 9, 9]):  # steady load about 7, noisy
        fc.observe(float(i), float(y))
    predicted = fc.forecast(fc._steps_ahead())
    assert predicted - fc.level < fc.noise  # no rise out of the noise from the level
    assert fc.decide(running=3, low=1, high=8).replicas == 3
    fc.observe(15.5, 2.0)  # one low tick in the bucket being filled: the level and the forecast stand
    assert fc.forecast(fc._steps_ahead()) == predicted and predicted - fc.latest > fc.noise  # from it, a "rise"
    d = fc.decide(running=3, low=1, high=8)
    assert d.forecast == 2.0 and d.replicas == 3  # provisioned for the load; the hysteresis keeps the three


def test_on_a_noisy_ramp_the_forecasts_lag_is_not_counted_as_noise():
    """The errors on a ramp lean one way (the forecast lags the load): their spread about the mean, not their RMS,
    is what a rise must exceed, so a gate of 2 still provisions ahead of a ramp."""
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=4.0, warmup_buckets=5,
                                              rise_sigmas=2.0))
    for i in range(40):
        fc.observe(float(i), 1.0 + 0.8 * i + (0.05 if i % 2 else -0.05))
    assert fc.mean_error > 0.5 * fc.rms_error and fc.noise < 0.8 * fc.rms_error
    rise = fc.forecast(fc._steps_ahead()) - fc.latest
    assert fc.config.rise_sigmas * fc.noise < rise < fc.config.rise_sigmas * fc.rms_error  # the RMS would gate it
    decision = fc.decide(running=16, low=1, high=50)
    assert decision.forecast == pytest.approx(fc.latest + rise)
    assert decision.replicas > math.ceil(fc.latest)  # ahead of the load now


def test_the_first_checked_forecast_sets_the_error_averages_not_a_zero_before_it():
    """Averages started at zero would read a small error (a trusted forecast, no noise) for a dozen checks."""
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=4.0, warmup_buckets=3))
    ahead = fc._steps_ahead()
    for i in range(ahead + 2):  # the forecast made at bucket 0 is checked when bucket `ahead` completes
        fc.observe(float(i), 1.0 if i < ahead else 3.0)
    assert fc.checked == 1
    assert (fc.sq_error, fc.mean_error, fc.noise) == (pytest.approx(4.0), pytest.approx(2.0), pytest.approx(0.0))
    assert fc.buckets >= fc.config.warmup_buckets and not fc.trusted  # an error of 2 on a load of 1-3
    again = LoadForecaster.from_dict(fc.config, fc.to_dict())
    assert again.checked == 1 and again.sq_error == fc.sq_error


def test_a_margin_goes_on_what_is_provisioned_for_and_is_no_rise():
    def trained(**settings: float) -> LoadForecaster:
        fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, startup_s=4.0, warmup_buckets=5,
                                                  max_relative_error=5.0, **settings))
        for i, y in enumerate([6, 9, 5, 8, 6, 9, 5, 8, 6, 9, 5, 8, 6, 6, 9, 9]):  # steady load about 7, noisy
            fc.observe(float(i), float(y))
        return fc

    gated = trained(rise_sigmas=1.0, margin_sigmas=1.0)
    d = gated.decide(running=3, low=1, high=8)
    assert d.predicted - d.load < gated.noise  # the rise alone does not pass the gate,
    assert d.predicted + gated.rms_error - d.load > gated.noise  # the rise with the margin would
    assert d.forecast == pytest.approx(d.load + gated.rms_error)  # the margin goes on the load, not the forecast
    plain = trained(rise_sigmas=0.0, margin_sigmas=1.0)
    assert plain.decide(running=3, low=1, high=8).forecast == pytest.approx(plain.decide(running=3, low=1, high=8)
                                                                            .predicted + plain.rms_error)


def test_state_no_observation_makes_falls_back_to_serves_rule_not_a_crash():
    fc = LoadForecaster(config=ForecastConfig(target_per_replica=1.0, warmup_buckets=1, max_relative_error=100.0))
    drive(fc, lambda t: 3.0, 0, 20)
    fc.trend = 1e308  # what from_dict no longer reads back, set in memory
    d = fc.decide(running=1, low=1, high=10)
    assert (d.mode, d.replicas) == ("reactive", 3)


@pytest.mark.parametrize("fixed", [True, False])
def test_a_burst_pools_replica_still_starting_is_not_stopped_by_a_dip_in_the_load(monkeypatch, fixed):
    """Serve's own wrapper (its bounds and delays) around the policy, on a clock the test moves: while no spot
    replica runs yet, a load that dips for less than the downscale delay keeps the replicas asked for; without
    the policy's hold, Serve applies each dip at once (its cold-start path) and restarts the start-up. A drop
    that lasts takes them away."""
    from types import SimpleNamespace

    import ray.serve.autoscaling_policy as serve_policy
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    from elasticml.serve import autoscale

    store: dict[bytes, object] = {}
    monkeypatch.setattr(autoscale, "_kv_get", lambda key: store.get(key))
    monkeypatch.setattr(autoscale, "_kv_put", lambda key, value: store.__setitem__(key, value))
    clock = [1000.0]
    monkeypatch.setattr(serve_policy, "time", SimpleNamespace(time=lambda: clock[0]))  # Serve's delays, on it
    # The whole app's requests in flight, as its routers report them: 2 base + 1 or 2 spot replicas' worth,
    # dipping to the base's own for 0.4 s in every 1.2 s; from t = 12 s to the end at 30 s, no load.
    whole = [0.0]
    monkeypatch.setattr(autoscale, "router_load", lambda workload, now: whole[0])
    if not fixed:
        monkeypatch.setattr(autoscale.PredictivePolicy, "_hold_while_none_runs",
                            lambda self, wanted, **kw: (wanted, None))
    config = AutoscalingConfig(min_replicas=0, max_replicas=3, upscale_delay_s=1.0, downscale_delay_s=3.0,
                               target_ongoing_requests=2.0)
    policy = serve_policy._apply_autoscaling_config(autoscale.PredictivePolicy(
        target_per_replica=2.0, bucket_s=0.5, startup_s=4.0, warmup_buckets=6,
        burst={"workload": "w", "base_replicas": 1}))
    target, state, seen = 0, {}, []
    for i in range(300):
        t = i * 0.1
        clock[0] = 1000.0 + t
        phase = t % 1.2
        whole[0] = 0.0 if t >= 12.0 else 2.0 if phase < 0.4 else 5.0 if phase < 0.8 else 4.0
        ctx = AutoscalingContext(
            deployment_id=None, deployment_name="shop-pool-cpu_spot", app_name="a", current_num_replicas=0,
            target_num_replicas=target, running_replicas=[], total_num_requests=0.0, total_queued_requests=0.0,
            aggregated_metrics=None, raw_metrics=None, capacity_adjusted_min_replicas=0,
            capacity_adjusted_max_replicas=3, policy_state=state, last_scale_up_time=None,
            last_scale_down_time=None, current_time=clock[0], config=config)
        target, state = policy(ctx)
        seen.append((t, target))
    changes = [t for (_, a), (t, b) in zip(seen, seen[1:]) if b != a]
    early = [t for (_, a), (t, b) in zip(seen, seen[1:])  # steps down sooner than the delay after the last change
             if b < a and t - max(c for c in changes if c < t) < 3.0 - 1e-6]
    if fixed:
        assert early == [], (changes, early)
        # the load's peaks ask for 2 spot replicas every 1.2 s: a step down goes to the most the delay wanted
        assert min(n for t, n in seen if 1.0 <= t < 12.0) >= 2, seen
        # the drop lasted: none asked for, the last step one delay after the one before (not Serve's on top)
        zero = next(t for t, n in seen if t >= 12.0 and n == 0)
        assert seen[-1][1] == 0 and zero - max(c for c in changes if c < zero) <= 3.0 + 0.2, changes
    else:
        assert [t for t in early if t < 12.0]  # Serve alone takes each dip of the load at once: what this catches


def test_a_wish_for_none_then_for_fewer_is_one_wish_whose_delay_counts_from_the_first(monkeypatch):
    """While none runs: 2 asked, then 0 wanted (passed on: Serve's delay holds it), then 1. The 1 is held at
    Serve's target until fewer has been wanted for the delay counted from the 0, then let through, with how
    long logged; Serve's real wrapper applies it at once (its cold-start path) and never the 0."""
    from types import SimpleNamespace

    import ray.serve.autoscaling_policy as serve_policy
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    from elasticml.serve import autoscale

    clock = [1000.0]
    monkeypatch.setattr(serve_policy, "time", SimpleNamespace(time=lambda: clock[0]))
    config = AutoscalingConfig(min_replicas=0, max_replicas=2, upscale_delay_s=1.0, downscale_delay_s=3.0)
    policy = autoscale.PredictivePolicy(target_per_replica=2.0)

    def held(ctx):  # the hold alone, on what the forecast wanted at each moment
        t = ctx.current_time - 1000.0
        wanted = 2 if t < 5.0 else 0 if t < 7.2 else 1
        answer, held_for = policy._hold_while_none_runs(
            wanted, target=ctx.target_num_replicas, running=0, now=ctx.current_time, config=config,
            serve_down_since=autoscale._serve_down_since(ctx))
        answers.append((round(t, 1), answer, held_for))
        return answer, {}

    wrapped = serve_policy._apply_autoscaling_config(held)
    answers: list = []
    target, state, targets = 0, {}, []
    for i in range(120):
        clock[0] = 1000.0 + i * 0.1
        ctx = AutoscalingContext(
            deployment_id=None, deployment_name="d", app_name="a", current_num_replicas=0, target_num_replicas=target,
            running_replicas=[], total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics=None,
            raw_metrics=None, capacity_adjusted_min_replicas=0, capacity_adjusted_max_replicas=2, policy_state=state,
            last_scale_up_time=None, last_scale_down_time=None, current_time=clock[0], config=config)
        target, state = wrapped(ctx)
        targets.append((round(i * 0.1, 1), target))
    assert {a for t, a, _ in answers if 5.0 <= t < 7.2} == {0}  # the 0 passed on as it came
    assert {a for t, a, _ in answers if 7.2 <= t < 8.0} == {2}  # the 1 held at the target: fewer since 5.0 only
    released = next((t, s) for t, a, s in answers if a == 1)
    assert released == (8.0, pytest.approx(3.0))  # once fewer had been wanted for the delay, from the 0
    assert min(n for t, n in targets if t < 8.0) == 2 and targets[-1][1] == 1  # Serve never took the 0


def test_a_bucket_in_which_requests_waited_teaches_neither_the_level_nor_the_profile():
    """What the slots held while requests waited is no demand: the level, the trend and a learnt season's slots
    keep what they had, and the first bucket without a wait restarts the level at its load, with no trend."""
    cfg = ForecastConfig(season_s=20.0, bucket_s=1.0)
    fc = LoadForecaster(config=cfg)
    for i in range(401):  # two seasons at 3 (the last bucket completes at t = 40)
        fc.observe(i * 0.1, 3.0)
    level, trend, profile = fc.level, fc.trend, list(fc.season)
    assert fc.seasonal and level == pytest.approx(3.0)
    for i in range(401, 450):  # 5 s at the slots' 8 with 6 waiting
        fc.observe(i * 0.1, 8.0, waiting=6.0)
    assert (fc.level, fc.trend) == (level, trend) and fc.backlogged
    assert fc.season == profile  # the slots of those 5 s too
    for i in range(450, 471):  # the wait is over: 5 in flight, all served
        fc.observe(i * 0.1, 5.0)
    assert fc.level == pytest.approx(5.0) and fc.trend == 0.0 and not fc.backlogged
    # A first season has nothing else for its slots: what the slots held is kept there, a lower bound.
    first = LoadForecaster(config=cfg)
    for i in range(30):
        first.observe(i * 0.1, 4.0, waiting=3.0)
    assert first.season[0] == pytest.approx(4.0) and first.season[1] == pytest.approx(4.0)
    # A wait in the very first bucket: its capped load starts the level, which restarts once the wait is over.
    opening = LoadForecaster(config=ForecastConfig())
    for i in range(10):
        opening.observe(i * 0.1, 4.0, waiting=5.0)
    for i in range(10, 21):  # the first bucket completes at t = 1 (a wait in it), the next at t = 2 (none)
        opening.observe(i * 0.1, 6.0)
    assert opening.level == pytest.approx(6.0) and opening.trend == 0.0 and not opening.backlogged
    # learn_while_waiting: every bucket teaches, the wait's too
    every = LoadForecaster(config=ForecastConfig(learn_while_waiting=True))
    for i in range(200):
        every.observe(i * 0.1, 3.0 if i < 100 else 8.0, waiting=0.0 if i < 100 else 6.0)
    assert every.level == pytest.approx(8.0, abs=0.1) and not every.backlogged
    with pytest.raises(ConfigError, match="learn_while_waiting"):
        ForecastConfig(learn_while_waiting="no")  # type: ignore[arg-type]


def test_a_first_season_that_opens_on_a_backlog_does_not_teach_its_drain_as_demand():
    """A deployment that starts on a rise: a backlog grows on one replica's 4 slots, then replicas come and drain
    it (24 served, the backlog falling), then 10 are served with none waiting. The slots the drain served take a
    line to the load after the wait, so next season the profile foresees no spike: the policy asks for the
    replicas 10 needs, not 24's."""
    cfg = ForecastConfig(season_s=30.0, bucket_s=1.0, warmup_buckets=5)
    fc = LoadForecaster(config=cfg)
    tick = 0.1

    def served(t: float) -> tuple[float, float]:  # (load served, requests waiting) at t into the season
        if t < 4:
            return 4.0, 2.0 + 4 * t  # the backlog grows on one replica
        if t < 8:
            return 24.0, 18.0 - 4 * (t - 4)  # the replicas that came drain it
        return 10.0, 0.0

    def season(t: float) -> tuple[float, float]:  # the first season, then 10 served all along
        return served(t) if t < 30 else (10.0, 0.0)

    asked = []
    for i in range(int(60 / tick)):
        fc.observe(i * tick, *season(i * tick))
        if i * tick >= 40:  # the coming window (11 buckets ahead) covers the drain's slots, 34-38 s
            asked.append(fc.decide(running=5, low=1, high=20))
        if i * tick == pytest.approx(31.5):
            # The wait opened the season: a line from the lower of its first load and the load after (4, 10) to
            # 10 over the eight buckets that waited, the four where the backlog grew no lower than their 4 served;
            # the next season's first bucket blended into slot 0, not taken for the first season's.
            line = [4 + 6 * (j + 1) / 9 for j in range(8)]
            assert fc.season[:8] == pytest.approx([0.5 * 10 + 0.5 * line[0], *line[1:]])  # gamma 0.5
            assert not fc.first_season and not fc.gap
    assert {d.mode for d in asked} == {"predictive"} and {d.replicas for d in asked} == {5}


def test_a_first_season_wait_after_a_learnt_slot_starts_its_line_there():
    """A wait later in a first season: the line runs from the slot before it to the load after it, over every
    bucket that waited (the next season's too), each slot no lower than what it served while the backlog grew."""
    fc = LoadForecaster(config=ForecastConfig(season_s=20.0, bucket_s=1.0))
    for i in range(100):
        fc.observe(i * 0.1, 2.0)
    for i in range(100, 130):  # three buckets draining a backlog at 12 served (two completed by the end)
        fc.observe(i * 0.1, 12.0, waiting=9.0 - (i - 100) * 0.3)
    assert [slot for slot, _ in fc.gap] == [10, 11] and fc.gap_from == pytest.approx(2.0)
    state = LoadForecaster.from_dict(fc.config, fc.to_dict())  # a restart mid-wait keeps the gap open
    assert (state.gap, state.gap_span, state.gap_from) == (fc.gap, 2, fc.gap_from)
    for i in range(130, 150):
        fc.observe(i * 0.1, 6.0)
    assert fc.season[10:13] == pytest.approx([3.0, 4.0, 5.0]) and fc.season[13] == pytest.approx(6.0)
    assert not fc.gap and fc.gap_from is None
    # A wait from the first season's last two buckets into the next two: the line runs over all four.
    late = LoadForecaster(config=ForecastConfig(season_s=20.0, bucket_s=1.0))
    for i in range(240):
        t = i * 0.1
        late.observe(t, 2.0 if t < 18 else 6.0 if t >= 22 else 12.0, waiting=9.0 - t / 10 if 18 <= t < 22 else 0.0)
    assert late.season[18:20] == pytest.approx([2.8, 3.6])  # 2 to 6 in five steps, not three
    # A backlog that grows at 12 served, then 6 served with none waiting: 12 was demand, the slots keep it.
    grown = LoadForecaster(config=ForecastConfig(season_s=20.0, bucket_s=1.0))
    for i in range(40):
        grown.observe(i * 0.1, 12.0 if i < 30 else 6.0, waiting=1.0 + i * 0.1 if i < 30 else 0.0)
    assert grown.season[:3] == pytest.approx([12.0] * 3)
    # Buckets with no observation during a wait repeat the level, which bounds nothing: the line, not the 30 of
    # the first bucket's.
    silent = LoadForecaster(config=ForecastConfig(season_s=20.0, bucket_s=1.0))
    for i in range(10):
        silent.observe(i * 0.1, 30.0, waiting=5.0)
    for t in (4.0, 4.5, 5.0):
        silent.observe(t, 5.0)
    assert silent.season[0] == pytest.approx(30.0) and silent.season[1:4] == pytest.approx([5.0] * 3)
    # A wait after a restart's jump follows no learnt slot: the slot before it was never taught (0), so the
    # line starts from the lower of the wait's first load and the load after, not from 0.
    jumped = LoadForecaster(config=ForecastConfig(season_s=20.0, bucket_s=1.0))
    for i in range(50):
        jumped.observe(i * 0.1, 8.0)
    for i in range(30):  # slots 10-12 drain a backlog at 12 served
        jumped.observe(2010 + i * 0.1, 12.0, waiting=9.0 - i * 0.3)
    assert jumped.gap_from is None
    for i in range(20):
        jumped.observe(2013 + i * 0.1, 8.0)
    assert jumped.season[9] == 0.0 and jumped.season[10:13] == pytest.approx([8.0] * 3)


def test_before_the_warm_up_a_backlog_counts_at_its_share_and_after_it_through_the_one_more_rule():
    """A deployment that learnt nothing, under load on one replica of 4 slots: 4 served, 5 waiting."""
    def decided(buckets: int, share: float | None = None) -> int:
        extra = {} if share is None else {"warmup_backlog_share": share}
        fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, replica_slots=4, **extra))
        for i in range(buckets * 10 + 1):
            fc.observe(i * 0.1, 4.0, waiting=5.0)
        return fc.decide(running=1, low=1, high=8, queued=5.0).replicas

    assert decided(0) == 3  # ceil((4 + 5 / 2) / 3): nothing learnt, half the waiting count too
    assert decided(0, share=1.0) == 3 and decided(0, share=0.0) == 2  # Serve's rule ceil(9 / 3); one more
    assert decided(ForecastConfig().warmup_buckets) == 2  # warmed up: the one-more rule only
    with pytest.raises(ConfigError, match="warmup_backlog_share"):
        ForecastConfig(warmup_backlog_share=1.5)


def test_after_the_warm_up_a_backlog_counts_at_backlog_share_where_one_is_set():
    """Warmed up on one replica of 4 slots, then 4 served and 14 waiting: the one-more rule asks for 2."""
    def decided(**extra: float) -> int:
        fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, replica_slots=4, **extra))
        warm = fc.config.warmup_buckets * 10
        for i in range(warm + 11):
            fc.observe(i * 0.1, 3.0 if i < warm else 4.0, waiting=0.0 if i < warm else 14.0)
        return fc.decide(running=1, low=1, high=8, queued=14.0).replicas

    assert decided() == 2  # the default: one more than runs
    assert decided(backlog_share=0.5) == 4  # ceil((4 + 14 / 2) / 3)
    assert decided(backlog_share=1.0) == 6  # Serve's rule: ceil(18 / 3)
    assert decided(backlog_share=1.0, warmup_backlog_share=0.0) == 6  # the warm-up's own share is not this one
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match="backlog_share"):
            ForecastConfig(backlog_share=bad)


def test_a_surge_counts_every_waiting_request_once_they_outnumber_the_served_by_surge_ratio():
    """Warmed up on 2 replicas of 4 slots, then 8 served: with 14 waiting (1.75x) and 20 (2.5x)."""
    def decided(waiting: float, **extra: float) -> int:
        fc = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, replica_slots=4, **extra))
        warm = fc.config.warmup_buckets * 10
        for i in range(warm + 11):
            fc.observe(i * 0.1, 5.0 if i < warm else 8.0, waiting=0.0 if i < warm else waiting)
        return fc.decide(running=2, low=1, high=12, queued=waiting).replicas

    assert decided(14.0) == 3 and decided(20.0) == 3  # the default: one more than runs
    assert decided(14.0, surge_ratio=2.0) == 3  # fewer waiting than twice the served: one more
    assert decided(20.0, surge_ratio=2.0) == 10  # Serve's rule on the whole: ceil((8 + 20) / 3)
    assert decided(14.0, surge_ratio=1.0) == 8  # ceil(22 / 3)
    assert decided(16.0, surge_ratio=2.0) == 8  # exactly twice the served: ceil(24 / 3)
    assert decided(20.0, surge_ratio=2.0, backlog_share=0.25) == 10  # the surge counts them all, not a share
    assert ForecastConfig(surge_ratio=0).surge_ratio == 0  # off
    # none served (no replica runs): the rules for that case, not a surge
    idle = LoadForecaster(config=ForecastConfig(target_per_replica=3.0, replica_slots=4, surge_ratio=1.0))
    for i in range(idle.config.warmup_buckets * 10 + 11):
        idle.observe(i * 0.1, 0.0, waiting=0.0)
    assert idle.decide(running=0, low=0, high=12, queued=30.0).replicas == 1  # one more, not ceil(30 / 3)
    for bad in (0.5, -1.0, 1001.0, float("nan"), float("inf"), True, False, "2", None):
        with pytest.raises(ConfigError, match="surge_ratio"):
            ForecastConfig(surge_ratio=bad)  # type: ignore[arg-type]


def test_the_lead_counts_serves_delay_before_a_replica_is_asked_for():
    """Serve averages the load over its look-back window, from reports pushed every metrics interval, and holds
    an ask for its upscale delay: a replica must be foreseen that much earlier than its start-up alone says."""
    from types import SimpleNamespace

    from elasticml.serve.forecast import serve_delay

    latency = SimpleNamespace(upscale_delay_s=3.0, look_back_period_s=12.0, metrics_interval_s=10.0)
    serves = ForecastConfig(serve_delay_s=None)
    assert serve_delay(serves, latency) == 3.0 + 6.0 + 5.0
    assert serve_delay(ForecastConfig(), latency) == 0.0  # by default the start-up alone
    assert serve_delay(ForecastConfig(serve_delay_s=2.5), None) == 2.5
    assert serve_delay(serves, latency, windowed=False) == 3.0  # a burst pool's routers report fresh
    hostile = SimpleNamespace(upscale_delay_s=float("nan"), look_back_period_s=-5.0, metrics_interval_s=True)
    assert serve_delay(serves, hostile) == 0.0 and serve_delay(serves, None) == 0.0
    huge = SimpleNamespace(upscale_delay_s=86400.0, look_back_period_s=86400.0, metrics_interval_s=86400.0)
    assert serve_delay(serves, huge) == 3600.0  # as far as a set one may go
    for bad in (-1.0, float("inf"), "3", 4000.0):
        with pytest.raises(ConfigError, match="serve_delay_s"):
            ForecastConfig(serve_delay_s=bad)

    # On a ramp, the further lead asks for more, sooner: what the load will need by the time a replica serves.
    ramp = lambda t: 1.0 if t < 30 else 1.0 + (t - 30) * 0.2  # noqa: E731
    plain, delayed = (LoadForecaster(config=ForecastConfig(target_per_replica=1.0, startup_s=5.0)) for _ in range(2))
    delayed.serve_delay_s = 4.0
    assert delayed.lead_s == plain.lead_s + 4.0
    pairs = list(zip(drive(plain, ramp, 0, 80), drive(delayed, ramp, 0, 80)))
    late = [(p, d) for (t, p), (_, d) in pairs if t >= 50]
    assert all(d.replicas >= p.replicas for p, d in late) and any(d.replicas > p.replicas for p, d in late)
    # the deployment's config, not what was learnt: not persisted; the policy sets it again on every call
    assert set(delayed.to_dict()) == set(plain.to_dict())
    assert LoadForecaster.from_dict(delayed.config, delayed.to_dict()).serve_delay_s == 0.0


def test_serves_policy_takes_the_delay_from_the_deployments_autoscaling_config_where_asked(monkeypatch):
    from types import SimpleNamespace

    from elasticml.serve import autoscale

    store: dict[bytes, object] = {}
    monkeypatch.setattr(autoscale, "_kv_get", lambda key: store.get(key))
    monkeypatch.setattr(autoscale, "_kv_put", lambda key, value: store.__setitem__(key, value))
    config = SimpleNamespace(upscale_delay_s=3.0, look_back_period_s=12.0, metrics_interval_s=10.0,
                             aggregation_function="mean", downscale_delay_s=30.0)
    ctx = SimpleNamespace(current_time=100.0, app_name="a", deployment_name="d", target_num_replicas=1,
                          current_num_replicas=1, total_num_requests=1.0, capacity_adjusted_min_replicas=1,
                          capacity_adjusted_max_replicas=4, config=config, policy_state={})
    policy = autoscale.PredictivePolicy(target_per_replica=2.0, replica_slots=4, startup_s=5.0, bucket_s=1.0,
                                        serve_delay_s=None)
    policy(ctx)
    assert policy.forecaster.lead_s == 14.0 + 5.0 + 1.0
    assert autoscale.decisions("a", "d")[-1]["lead_s"] == 20.0
    by_default = autoscale.PredictivePolicy(target_per_replica=2.0, replica_slots=4, startup_s=5.0, bucket_s=1.0)
    by_default(ctx)
    assert by_default.forecaster.lead_s == 6.0
    monkeypatch.setattr(autoscale, "router_load", lambda workload, now: 2.0)  # the routers' fresh counts
    pool = autoscale.PredictivePolicy(target_per_replica=2.0, replica_slots=4, startup_s=5.0, bucket_s=1.0,
                                      serve_delay_s=None, burst={"workload": "w", "base_replicas": 1})
    pool(ctx)
    assert pool.forecaster.lead_s == 3.0 + 5.0 + 1.0  # no window to lag behind: Serve's upscale delay alone
