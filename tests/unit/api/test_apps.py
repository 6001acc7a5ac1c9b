"""The API server's Serve apps without Ray: what a tenant may deploy, which checkpoint it serves, and
how its keys close, open and close the app again. (Serve itself: tests/integration/test_scheduler_cluster.py.)"""

from __future__ import annotations

import stat
from typing import Any

import pytest

from elasticml.api.apps import Apps, serve_name
from elasticml.api.jobs import Jobs
from elasticml.errors import AccessDenied, ConfigError
from elasticml.serve.auth import KeyRing

from tests.support.api_fakes import FakeJobClient, RecordingServe, Sched, built
from tests.unit.api.test_jobs import ACME, ADMIN, CONFIG, GLOBEX, SHARED


def newest(spec: str) -> str:
    """`latest:RUN_DIR` resolved as the platform would, to that run's newest checkpoint (a stand-in name)."""
    return spec.removeprefix("latest:") + "/checkpoint_000006"


@pytest.fixture
def world(tmp_path):
    jobs = Jobs(tmp_path / "jobs", FakeJobClient(), shared_data=SHARED)
    serve = RecordingServe()
    apps = Apps(tmp_path, serve, jobs, Sched, build=built, resolve=newest)
    job = jobs.submit(ACME, "eml1.acme.s", {"config": CONFIG})["submission_id"]
    return apps, serve, jobs, job


def args_of(serve: RecordingServe, tenant: str, name: str) -> dict[str, Any]:
    return serve.ran[serve_name(tenant, name)][0]["args"]


def test_a_deploy_serves_the_tenants_own_job_as_the_tenant_and_admits_no_one_before_a_key(world):
    apps, serve, jobs, job = world
    got = apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}", "preset": "latency"}})
    assert got == {"app": "chat", "tenant": "acme", "route_prefix": "/acme/chat", "status": "RUNNING", "keys": 0}
    app, prefix = serve.ran["acme.chat"]
    assert app["as"] == "eml1.acme.s" and prefix == "/acme/chat" and app["attach"] == "serve:acme.chat"
    args = app["args"]
    assert args["tenant"] == "acme" and args["checkpoint"] == newest(f"latest:{jobs.tenant_root('acme')}/runs/tiny")
    ring = KeyRing(args["api_keys"])
    assert not ring.open and ring.tenant_for("Bearer anything", None) is None


@pytest.mark.parametrize("config, field", [
    ({"tenant": "globex"}, "config.tenant"),
    ({"env_vars": {"LD_PRELOAD": "/tmp/x.so"}}, "config.env_vars"),
    ({"allowed_model_modules": ["evil"]}, "config.allowed_model_modules"),
    ({"api_keys": {"acme": "0" * 64}}, "config.api_keys"),
    ({"market": "spot"}, "config.market"),
    ({"autoscaling": "evil.module:policy", "preset": "latency"}, "config.autoscaling"),
    ({"num_replicas": float("inf")}, "num_replicas"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"name": "../x"}, "config.name"),
    ({"checkpoint": "/home/globex/runs/secret"}, "config.checkpoint"),
    ({"checkpoint": "latest:/home/globex/runs"}, "config.checkpoint"),
    ({"surprise": 1}, "config"),
])
def test_a_tenant_deploys_no_code_no_environment_no_keys_of_its_own_and_only_valid_configs(world, config, field):
    apps, serve, _, job = world
    with pytest.raises(ConfigError) as err:
        apps.deploy(ACME, "eml1.acme.s", {"config": {"checkpoint": f"job:{job}", **config}})
    assert field in str(err.value) and serve.ran == {}


def test_another_tenants_job_or_app_is_answered_as_if_it_did_not_exist(world):
    apps, serve, _, job = world
    with pytest.raises(AccessDenied, match="no job of this tenant"):
        apps.deploy(GLOBEX, "eml1.globex.s", {"config": {"name": "steal", "checkpoint": f"job:{job}"}})
    apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}"}})
    for call in (lambda: apps.status(GLOBEX, {"app": "chat"}), lambda: apps.mint_key(GLOBEX, "t", {"app": "chat"}),
                 lambda: apps.delete(GLOBEX, "t", {"app": "chat"}), lambda: apps.list_keys(GLOBEX, {"app": "chat"})):
        with pytest.raises(AccessDenied, match="no app of that name"):
            call()
    assert apps.list(GLOBEX, {}) == [] and [a["app"] for a in apps.list(ADMIN, {})] == ["chat"]
    from elasticml.errors import PlacementRefused

    with pytest.raises(PlacementRefused, match="tenants/globex/"):  # another's S3 prefix, vended or not
        apps.deploy(GLOBEX, "eml1.globex.s", {"config": {"name": "steal", "checkpoint": "s3://b/tenants/acme/run/ck"}})
    assert apps.status(ADMIN, {"app": "chat", "tenant": "acme"})["tenant"] == "acme"


def test_a_minted_key_opens_the_app_to_its_holder_and_a_revoked_one_no_longer(world, tmp_path):
    apps, serve, _, job = world
    apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}"}})
    first = apps.mint_key(ACME, "eml1.acme.s", {"app": "chat"})
    second = apps.mint_key(ACME, "eml1.acme.s", {"app": "chat"})
    ring = KeyRing(args_of(serve, "acme", "chat")["api_keys"])
    assert ring.tenant_for(f"Bearer {first['key']}", None) and ring.tenant_for(None, second["key"])
    assert [k["key_id"] for k in apps.list_keys(ACME, {"app": "chat"})] == sorted([first["key_id"], second["key_id"]])
    for file in (tmp_path / "apps" / "acme").iterdir():  # digests only, readable by the server alone
        assert first["key"] not in file.read_text() and stat.S_IMODE(file.stat().st_mode) == 0o600
    apps.revoke_key(ACME, "eml1.acme.s", {"app": "chat", "key_id": first["key_id"]})
    ring = KeyRing(args_of(serve, "acme", "chat")["api_keys"])
    assert ring.tenant_for(f"Bearer {first['key']}", None) is None and ring.tenant_for(None, second["key"])
    with pytest.raises(ConfigError, match="key_id"):
        apps.revoke_key(ACME, "eml1.acme.s", {"app": "chat", "key_id": first["key_id"]})
    apps.revoke_key(ACME, "eml1.acme.s", {"app": "chat", "key_id": second["key_id"]})
    ring = KeyRing(args_of(serve, "acme", "chat")["api_keys"])
    assert not ring.open and ring.tenant_for(None, second["key"]) is None  # no key left: closed, not open


def test_an_update_keeps_the_keys_and_a_delete_takes_the_app_and_its_keys(world):
    apps, serve, _, job = world
    apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}"}})
    key = apps.mint_key(ACME, "eml1.acme.s", {"app": "chat"})["key"]
    apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}", "num_replicas": 2}})
    args = args_of(serve, "acme", "chat")
    assert args["num_replicas"] == 2 and KeyRing(args["api_keys"]).tenant_for(None, key)
    assert apps.delete(ACME, "eml1.acme.s", {"app": "chat"})["deleted"]
    assert serve.deleted == ["acme.chat"]  # its workload ends when the controller sees no replica of it
    assert apps.list(ACME, {}) == []
    apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}"}})
    assert not KeyRing(args_of(serve, "acme", "chat")["api_keys"]).tenant_for(None, key)  # the old key died with it


def test_two_tenants_apps_of_one_name_never_share_a_serve_app_or_route(world):
    apps, serve, jobs, job = world
    other = jobs.submit(GLOBEX, "eml1.globex.s", {"config": CONFIG})["submission_id"]
    apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}"}})
    apps.deploy(GLOBEX, "eml1.globex.s", {"config": {"name": "chat", "checkpoint": f"job:{other}"}})
    assert {n: p for n, (_, p) in serve.ran.items()} == {"acme.chat": "/acme/chat", "globex.chat": "/globex/chat"}


def test_a_key_change_whose_build_fails_changes_nothing(world):
    """The keys are saved only once a build with them serves: a revoke the scheduler refuses leaves the
    key listed (and revocable again), a mint that fails hands out no key."""
    from elasticml.errors import PlacementRefused

    apps, serve, _, job = world
    apps.deploy(ACME, "eml1.acme.s", {"config": {"name": "chat", "checkpoint": f"job:{job}"}})
    key = apps.mint_key(ACME, "eml1.acme.s", {"app": "chat"})

    def refused(args, *, sched, attach):  # type: ignore[no-untyped-def]
        raise PlacementRefused("acme/chat", "budget spent")

    apps.build = refused
    with pytest.raises(PlacementRefused):
        apps.revoke_key(ACME, "eml1.acme.s", {"app": "chat", "key_id": key["key_id"]})
    with pytest.raises(PlacementRefused):
        apps.mint_key(ACME, "eml1.acme.s", {"app": "chat"})
    assert [k["key_id"] for k in apps.list_keys(ACME, {"app": "chat"})] == [key["key_id"]]
    apps.build = built
    apps.revoke_key(ACME, "eml1.acme.s", {"app": "chat", "key_id": key["key_id"]})
    assert apps.list_keys(ACME, {"app": "chat"}) == []
