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


def test_the_apps_config_takes_the_cap_within_its_bounds_and_defaults_to_the_platforms():
    from elasticml.serve.config import ServeConfig
    from elasticml.serve.routing import BOUNDS, ROUTER_MAX_BACKOFF_S

    assert ServeConfig.from_dict({"checkpoint": "c"}).router_max_backoff_s == ROUTER_MAX_BACKOFF_S
    for edge in BOUNDS:
        assert ServeConfig.from_dict({"checkpoint": "c", "router_max_backoff_s": edge}).router_max_backoff_s == edge


def _cap(app) -> float:
    return app._bound_deployment._deployment_config.request_router_config.max_backoff_s


def test_an_apps_cap_reaches_every_deployment_it_builds_the_pools_and_their_router_alike():
    from elasticml.scheduler.capacity import Allocation
    from elasticml.serve.completion import _bind
    from elasticml.serve.config import ServeConfig

    cfg = ServeConfig.from_dict({"checkpoint": "c", "router_max_backoff_s": 0.2})
    alone = _bind(cfg, scaling={}, creds=[], allocations=[], workload="w", deployment_name="Completer",
                  backend=False, version=None)
    assert _cap(alone) == 0.2
    pools = [Allocation(workload="w", tenant="t", priority="high", node_type=node_type, market=market, workers=1,
                        cpus=1.0, nodes=1, hourly_cost=0.1, started_at=0.0)
             for node_type, market in (("cpu-reserved", "reserved"), ("cpu-spot", "spot"))]
    router = _bind(cfg, scaling={}, creds=[], allocations=pools, workload="w", deployment_name="Completer",
                   backend=False, version=None)
    _pools, handles = router._bound_deployment.init_args[:2]
    assert [_cap(router)] + [_cap(h) for h in handles] == [0.2, 0.2, 0.2]


def test_the_cap_is_no_part_of_a_model_versions_name():
    from elasticml.serve.canary import version_name

    args = {"checkpoint": "c", "precision": "int8"}
    # Serve changes the cap on running replicas; a new name would start new ones and load the model again
    assert version_name({**args, "router_max_backoff_s": 0.2}) == version_name(args)
    assert version_name({**args, "precision": "fp32"}) != version_name(args)
