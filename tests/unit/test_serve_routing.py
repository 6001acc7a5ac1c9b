"""Serve's router settings every elasticml deployment that requests can queue for is given."""

from __future__ import annotations

import pytest


def test_the_cap_reaches_serves_router_config_and_its_first_retry_never_exceeds_it():
    from ray.serve.config import RequestRouterConfig

    from elasticml.serve.routing import ROUTER_MAX_BACKOFF_S, router_config

    serve_default = RequestRouterConfig()
    assert ROUTER_MAX_BACKOFF_S < serve_default.max_backoff_s  # the point of it
    ours = router_config()
    assert (ours.max_backoff_s, ours.initial_backoff_s) == (ROUTER_MAX_BACKOFF_S, serve_default.initial_backoff_s)
    assert ours.request_router_class == serve_default.request_router_class  # Serve's own router, only retrying sooner
    short = router_config(0.01)
    assert short.max_backoff_s == short.initial_backoff_s == 0.01  # Serve would otherwise wait 25 ms the first time


@pytest.mark.parametrize("module, cls", [("elasticml.serve.loadreplay", "SyntheticModel"),
                                         ("elasticml.serve.pools", "PoolRouter"),
                                         ("elasticml.serve.canary", "CanaryRouter")])
def test_every_deployment_built_outside_the_apps_config_retries_at_the_cap(module, cls):
    import importlib

    from elasticml.serve.routing import ROUTER_MAX_BACKOFF_S

    deployment = getattr(importlib.import_module(module), cls)
    # .options() (as the apps and the autoscaling benchmark call it) keeps what the decorator set
    for d in (deployment, deployment.options(num_replicas=2)):
        assert d._deployment_config.request_router_config.max_backoff_s == ROUTER_MAX_BACKOFF_S


def test_the_apps_config_takes_the_cap_and_defaults_to_the_platforms():
    from elasticml.serve.config import ServeConfig
    from elasticml.serve.routing import ROUTER_MAX_BACKOFF_S

    assert ServeConfig.from_dict({"checkpoint": "c"}).router_max_backoff_s == ROUTER_MAX_BACKOFF_S
    assert ServeConfig.from_dict({"checkpoint": "c", "router_max_backoff_s": 0.5}).router_max_backoff_s == 0.5
