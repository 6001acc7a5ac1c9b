"""Predictive autoscaling on a real Serve app over real HTTP: ahead of a ramp, and it remembers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

import pytest

pytestmark = pytest.mark.integration

APP = "predictive"


@pytest.fixture(scope="module")
def app_url(local_cluster):
    from ray import serve

    from elasticml.cluster.local import free_port
    from elasticml.serve.autoscale import POLICY_PATH, forecast_config
    from elasticml.serve.loadreplay import SyntheticModel

    local_cluster.require_info().connect()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # SyntheticModel's 2 slots a replica, as ServeConfig passes max_ongoing_requests
    settings = forecast_config({"bucket_s": 0.5, "startup_s": 4.0, "warmup_buckets": 6}, target_per_replica=1.0,
                               replica_slots=2)
    autoscaling = {"min_replicas": 1, "max_replicas": 6, "target_ongoing_requests": 1.0, "upscale_delay_s": 0.5,
                   "downscale_delay_s": 30.0, "look_back_period_s": 1.0,
                   "metrics_interval_s": 0.5,  # load reported every 0.5 s, not 10: a ramp of seconds is seen
                   "policy": {"policy_function": POLICY_PATH, "policy_kwargs": asdict(settings)}}
    serve.run(SyntheticModel.options(autoscaling_config=autoscaling).bind(0.25, 2.0), name=APP,
              route_prefix=f"/{APP}")
    yield f"http://127.0.0.1:{port}/{APP}"
    serve.shutdown()


@pytest.mark.slow  # a replayed ramp; the policy on a ramp: tests/unit/test_forecast.py, measured: benchmarks/
def test_on_a_ramp_it_asks_for_replicas_before_the_reactive_rule_would(app_url):
    from elasticml.serve import loadreplay as lr
    from elasticml.serve.autoscale import decisions

    trace = lr.ramp(10.0, 20.0, 1.0, 16.0)  # 10 s at 1 request/s, then up to 16/s over 20 s
    outcome = asyncio.run(lr.replay(app_url, trace, 34.0, seed=3))
    assert outcome.summary(slo_s=30.0)["errors"] == 0
    events = [e for e in decisions(APP, "SyntheticModel") if e["event"] == "decision"]
    ahead = [e for e in events if e["mode"] == "predictive" and e["replicas"] > e["reactive"]]
    # At the moment of each of these decisions the rule "requests in flight / target" asked for fewer.
    assert ahead, events
    assert max(e["replicas"] for e in ahead) >= 2
    # and what it got ahead of did come: the requests in flight later reached what was provisioned for.
    first = ahead[0]
    later = [e["in_flight"] for e in events if e["t"] > first["t"]]
    assert later and max(later) >= first["reactive"] + 1, events


def test_what_it_learnt_survives_a_restart_of_serves_controller(app_url):
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    from elasticml.serve import loadreplay as lr
    from elasticml.serve.autoscale import decisions, learned_state

    asyncio.run(lr.replay(app_url, lr.flat(3.0), 5.0, seed=4))
    before = learned_state(APP, "SyntheticModel")
    assert before is not None and before["buckets"] > 0
    ray.kill(ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE), no_restart=False)
    deadline = time.monotonic() + 120
    resumed = []
    while time.monotonic() < deadline and not resumed:
        asyncio.run(lr.replay(app_url, lr.flat(3.0), 2.0, seed=5))  # the app keeps serving meanwhile
        resumed = [e for e in decisions(APP, "SyntheticModel") if e["event"] == "resumed"]
    assert resumed, "the restarted controller's policy did not resume from the stored state"
    assert resumed[-1]["buckets"] >= before["buckets"]
    assert learned_state(APP, "SyntheticModel")["buckets"] >= resumed[-1]["buckets"]


def test_a_bad_policy_setting_is_refused_when_the_app_is_built(tmp_path):
    from elasticml.errors import ConfigError
    from elasticml.serve.completion import build_app

    with pytest.raises(ConfigError, match="forecast: season_s"):
        build_app({"checkpoint": str(tmp_path), "preset": "latency", "autoscaling": "predictive",
                   "forecast": {"season_s": -1.0}})
    with pytest.raises(ConfigError, match="autoscaling: cannot import 'no_such_module:policy'"):
        build_app({"checkpoint": str(tmp_path), "preset": "latency", "autoscaling": "no_such_module:policy"})
