"""`eml.fit`'s scheduling options: kw-only, refused without a tenant (fit then runs as it always did),
and held to the scheduler's defaults. Refusals come before Ray or the scheduler is touched."""

from __future__ import annotations

import dataclasses

import pytest
from elasticml.errors import ConfigError
from elasticml.scheduler.spec import WorkloadSpec
from elasticml.train.config import TrainConfig
from elasticml.train.follow import Scheduling, scheduled_spec

CFG = TrainConfig(data="/corpus", storage_path="/runs", run_name="nightly", steps=100, checkpoint_every=10)


@pytest.mark.parametrize("option", [{"priority": "low"}, {"expected_hours": 2.0}, {"max_wait_s": 5.0},
                                    {"deadline_hours": 4.0}, {"spot_policy": "greedy"}, {"settle_s": 1.0}])
def test_a_scheduling_option_without_a_tenant_is_refused_naming_it(option):
    import elasticml as eml

    with pytest.raises(ConfigError, match=rf"^{next(iter(option))}: .*needs a tenant"):
        eml.fit(CFG, **option)


@pytest.mark.parametrize("own", [{"stop": object()}, {"started": lambda: 0.0}, {"retries": False}])
def test_with_a_tenant_the_follower_owns_stopping_starting_and_restarting(own):
    from elasticml.train.launch import fit

    with pytest.raises(ConfigError, match="scheduler's follower"):
        fit(CFG, tenant="research", **own)


def test_the_options_are_keyword_only():
    from elasticml.train.launch import fit

    with pytest.raises(TypeError):
        fit(CFG, None, None, None, True, "research")  # type: ignore[misc]


def test_scheduling_defaults_are_the_scheduler_s_and_bad_values_are_named():
    for name in ("priority", "expected_hours", "spot_policy"):
        assert getattr(Scheduling(), name) == next(f.default for f in dataclasses.fields(WorkloadSpec) if f.name == name)
    for bad in ({"settle_s": -1.0}, {"max_wait_s": float("nan")}, {"restart_hours": "soon"}):
        with pytest.raises(ConfigError, match=f"^{next(iter(bad))}: "):
            Scheduling(**bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Scheduling("research")  # type: ignore[misc]


def test_the_spec_a_scheduled_run_asks_for():
    spec = scheduled_spec(CFG, Scheduling(tenant="research", priority="low", expected_hours=2.0))
    assert (spec.name, spec.tenant, spec.kind, spec.priority) == ("nightly", "research", "training", "low")
    assert spec.max_workers == CFG.num_workers and spec.checkpoint_interval_hours == pytest.approx(0.2)
    assert spec.restart_overhead_hours == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs a tenant"):
        scheduled_spec(CFG, Scheduling())
