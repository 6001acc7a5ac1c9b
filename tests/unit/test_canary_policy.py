"""Promote or roll back a canary: quality first, then latency once both versions have enough requests."""

import pytest

from elasticml.errors import ConfigError
from elasticml.serve.canary import CanaryConfig
from elasticml.serve.canary_policy import VersionStats, judge

RULES = dict(max_nll_increase=0.01, max_latency_ratio=1.5, min_latency_samples=3)


def stats(nll, *lat):
    return VersionStats(nll_per_byte=nll, ms_per_token=list(lat))


def test_worse_held_out_loss_rolls_back_at_once():
    v = judge(stats(2.0, 1, 1, 1), stats(2.05), **RULES)
    assert v.action == "rollback" and "held-out loss" in v.reason and "+2.5%" in v.reason


def test_good_quality_waits_for_latency_samples_then_promotes():
    assert judge(stats(2.0, 1, 1, 1), stats(2.01, 1), **RULES).action == "wait"
    v = judge(stats(2.0, 1, 1, 1), stats(2.01, 1.2, 1.1, 1.3), **RULES)
    assert v.action == "promote" and "1.20x" in v.reason


def test_slower_canary_rolls_back():
    v = judge(stats(2.0, 1, 1, 1), stats(1.9, 2, 2, 2), **RULES)
    assert v.action == "rollback" and "2.00x" in v.reason


@pytest.mark.parametrize("kw, field", [
    ({"canary_share": 1.5, "holdout_texts": ["x"]}, "canary_share"),
    ({}, "holdout_texts"),
    ({"holdout_texts": ["x"], "max_latency_ratio": 0.5}, "max_nll_increase"),
])
def test_bad_canary_configs_name_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        CanaryConfig(canary_checkpoint="/c", **kw)
    assert err.value.field == field
