"""Serving under load on a real multi-node cluster: a spot node lost, autoscaling up and down, scheduler placement.

The stated bound for a lost node: with 2 replicas and clients that retry a failed request up to
RETRIES times (0.3 s apart), no request fails for good, and at most the requests in flight on the
lost replica (one per client) fail their first attempt.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from elasticml import labels as L
from elasticml.cluster.local import free_port
from elasticml.models import SIZES, build_model
from elasticml.train.checkpoint import write_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]
RETRIES = 3
CLIENTS = 4


@pytest.fixture(scope="module")
def serving(local_cluster, tmp_path_factory):
    from ray import serve

    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    torch.manual_seed(5)
    write_checkpoint(folder, model_state=build_model("tiny").state_dict(), optim_state=None,
                     model_config=SIZES["tiny"], step=7)
    local_cluster.require_info().connect()
    port = free_port()
    # One proxy, on the head: on this one-box cluster every node's proxy would bind the same
    # 127.0.0.1 port (SO_REUSEPORT), so killing a node would also cut connections the kernel
    # happened to hand its proxy; on real nodes a load balancer's health check covers that.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    yield {"folder": str(folder), "base": f"http://127.0.0.1:{port}", "cluster": local_cluster}
    serve.shutdown()


class Load:
    """CLIENTS threads sending completions, each retried up to RETRIES times on 5xx or a dropped connection."""

    def __init__(self, base: str, *, retries: int = RETRIES) -> None:
        self.base, self.stop, self.retries = base, threading.Event(), retries
        self.ok = self.first_failures = self.failed = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                for attempt in range(self.retries + 1):
                    try:
                        r = client.post(f"{self.base}/v1/completions",
                                        json={"prompt": f"client {i} n {n}", "max_tokens": 16})
                        good = r.status_code == 200
                        error = "" if good else f"{r.status_code} {r.text[:200]}"
                    except httpx.HTTPError as exc:
                        good, error = False, repr(exc)
                    with self.lock:
                        if good:
                            self.ok += 1
                        elif attempt == 0:
                            self.first_failures += 1
                        if not good and attempt == self.retries:
                            self.failed += 1
                        if not good:
                            self.errors.append(error)
                    if good:
                        break
                    time.sleep(0.3)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def wait_until(condition, what: str, timeout: float = 120) -> None:
    """Poll until `condition()`; the timeout only keeps a broken run from hanging."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def replica_nodes(app: str, deployment: str = "Completer") -> list[str]:
    from ray.util.state import list_actors

    return [a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name == f"ServeReplica:{app}:{deployment}"]


def running_replicas(app: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments["Completer"]
    return status.replica_states.get("RUNNING", 0)


def test_losing_a_spot_node_under_load_fails_no_request_beyond_the_retry_budget(serving):
    import ray
    from ray import serve

    from elasticml.serve.completion import build_app

    serve.run(build_app({"checkpoint": serving["folder"], "market": "spot", "num_replicas": 2, "precision": "fp32",
                         "cache_size": 0}), name="spot", route_prefix="/spot")
    try:  # a failure here must not leave replicas holding the spot nodes the next tests need
        spot_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(L.NODE_TYPE) == "cpu_spot"}
        victims = set(replica_nodes("spot"))
        assert len(victims) == 2 and victims <= spot_nodes  # both replicas on spot, one per node
        with Load(serving["base"] + "/spot") as load:
            wait_until(lambda: load.ok > 0, "the first answers")
            assert serving["cluster"].kill_node(sorted(victims)[0])
            before = load.ok
            # Under load until the lost replica is replaced (on a new spot node) and 20 more requests were
            # answered after the loss: the window holds the whole failure, however long Ray takes to see it.
            wait_until(lambda: load.ok >= before + 20, "20 answers after the loss")
            wait_until(lambda: running_replicas("spot") == 2 and set(replica_nodes("spot")) != victims,
                       "the lost replica replaced")
        print(f"spot node lost: ok {before} -> {load.ok}, first-attempt failures {load.first_failures}, "
              f"failed for good {load.failed}: {load.errors[:5]}")
        assert load.failed == 0, vars(load)
        assert load.first_failures <= CLIENTS, vars(load)
    finally:
        serve.delete("spot")


# Serve's own (reactive) policy on the latency preset; the default run scales a tenant's spot pool
# up and back with the predictive policy below, and tests/integration/test_serve_autoscale.py the policy itself.
@pytest.mark.slow
def test_autoscaling_goes_from_one_to_two_replicas_under_load_and_back(serving):
    from ray import serve

    from elasticml.serve.completion import build_app

    serve.run(build_app({"checkpoint": serving["folder"], "preset": "latency", "min_replicas": 1, "max_replicas": 2,
                         "upscale_delay_s": 1, "downscale_delay_s": 3, "precision": "fp32", "cache_size": 0,
                         "max_batch_size": 1, "batch_wait_ms": 0}), name="auto", route_prefix="/auto")
    assert running_replicas("auto") == 1
    with Load(serving["base"] + "/auto") as load:
        deadline = time.time() + 90
        while running_replicas("auto") < 2:
            assert time.time() < deadline, serve.status()
            time.sleep(0.5)
    assert load.failed == 0
    deadline = time.time() + 90
    while running_replicas("auto") > 1:
        assert time.time() < deadline, serve.status()
        time.sleep(1)
    serve.delete("auto")


def test_scheduler_placed_serving_loses_a_spot_node_under_load_and_clients_see_no_error(serving):
    """Base replica pinned off spot, spot replicas over-provisioned, the router fails over: no client retries."""
    import ray
    from ray import serve

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.serve.completion import build_app

    # The spot node an earlier test killed marked the pool interrupted; that loss is over.
    SchedulerClient.connect().clear_interruption("cpu_spot")
    serve.run(build_app({"checkpoint": serving["folder"], "tenant": "shop", "priority": "high", "preset": "latency",
                         "min_replicas": 1, "max_replicas": 2, "precision": "fp32", "cache_size": 0,
                         "name": "shop-endpoint"}), name="placed", route_prefix="/placed")
    base = serving["base"] + "/placed"
    pools = {p["market"] == "spot": p for p in httpx.get(f"{base}/v1/pools", timeout=30).json()["pools"]}
    assert pools[False]["market"] in ("reserved", "on-demand") and pools[False]["replicas"] == 1, pools
    assert pools[True]["replicas"] == 2  # 1 asked + 1 spare against preemptions
    labels = {n["NodeID"]: n["Labels"] for n in ray.nodes() if n["Alive"]}
    base_nodes = replica_nodes("placed", f"shop-endpoint-pool-{pools[False]['node_type']}")
    spot_nodes = replica_nodes("placed", "shop-endpoint-pool-cpu_spot")
    assert len(base_nodes) == 1 and L.market_of(labels[base_nodes[0]]) != "spot"
    assert len(spot_nodes) == 2 and all(L.market_of(labels[n]) == "spot" for n in spot_nodes)
    router_nodes = replica_nodes("placed", "PoolRouter")
    assert len(router_nodes) == 1 and L.market_of(labels[router_nodes[0]]) != "spot"  # the router is not on spot
    sched = SchedulerClient.connect()

    def pools_now() -> dict:
        return httpx.get(f"{base}/v1/pools", timeout=30).json()

    def spot_of(now: dict) -> dict:
        return next(p for p in now["pools"] if p["market"] == "spot")

    # Under load from before the loss until the router has followed the scheduler off spot (it saw the
    # node go and moved the spare replicas), and 20 more requests were answered after the loss.
    with Load(base, retries=0) as load:
        wait_until(lambda: load.ok > 0, "the first answers")
        assert serving["cluster"].kill_node(spot_nodes[0])
        before = load.ok
        wait_until(lambda: load.ok >= before + 20, "20 answers after the loss")
        wait_until(lambda: spot_of(pools_now())["weight"] == 0, "spot weighed to nothing", timeout=60)
    assert load.failed == 0 and load.first_failures == 0, (load.ok, load.errors)
    now = pools_now()
    spot = spot_of(now)
    assert "was lost" in now["followed"]["reason"], (now, sched.explain("shop-endpoint")[-3:])
    sent = spot["requests"]
    for _ in range(10):
        assert httpx.post(f"{base}/v1/completions", json={"prompt": "def f(", "max_tokens": 4}, timeout=60).status_code == 200
    assert next(p for p in httpx.get(f"{base}/v1/pools", timeout=30).json()["pools"]
                if p["market"] == "spot")["requests"] == sent
    sched.clear_interruption("cpu_spot")

    # The ledger charged the pools Ray ran the replicas on; deleting the app finishes the workload.
    charged = {(i["node_type"], i["workers"]) for i in sched.intervals("shop-endpoint")}
    assert (pools[False]["node_type"], 1) in charged and ("cpu_spot", 2) in charged, charged
    serve.delete("placed")
    deadline = time.time() + 90
    while sched.placement("shop-endpoint") is not None:
        assert time.time() < deadline, sched.explain("shop-endpoint")[-3:]
        time.sleep(1)
    assert all(i["end"] is not None for i in sched.intervals("shop-endpoint"))
    assert "the app was deleted" in sched.explain("shop-endpoint")[-1]["reason"]


def test_predictive_extra_replicas_of_a_tenants_app_go_to_spot_and_leave_when_the_load_does(serving):
    """The base replica stays off spot; what the forecast adds above it runs in the spot pool, which
    starts empty, grows under load and empties again after it."""
    import ray
    from ray import serve

    from elasticml.scheduler.client import SchedulerClient
    from elasticml.serve.autoscale import decisions
    from elasticml.serve.completion import build_app

    SchedulerClient.connect().clear_interruption("cpu_spot")
    serve.run(build_app({"checkpoint": serving["folder"], "tenant": "shop", "priority": "high", "preset": "latency",
                         "min_replicas": 1, "max_replicas": 2, "precision": "fp32", "cache_size": 0,
                         "max_batch_size": 1, "batch_wait_ms": 0, "upscale_delay_s": 1, "downscale_delay_s": 3,
                         "autoscaling": "predictive",
                         "forecast": {"bucket_s": 0.5, "startup_s": 4.0, "warmup_buckets": 6},
                         "name": "shop-burst"}), name="burst", route_prefix="/burst")
    base_url = serving["base"] + "/burst"
    spot_deployment = "shop-burst-pool-cpu_spot"

    def pools() -> dict:
        return {p["market"] == "spot": p for p in httpx.get(f"{base_url}/v1/pools", timeout=30).json()["pools"]}

    def spot_running() -> int:
        return serve.status().applications["burst"].deployments[spot_deployment].replica_states.get("RUNNING", 0)

    try:
        fixed = pools()[False]
        base_deployment = f"shop-burst-pool-{fixed['node_type']}"
        assert fixed["market"] in ("reserved", "on-demand") and fixed["replicas"] == 1
        # Idle, nothing runs on spot: the forecast asks for no more than the base.
        assert spot_running() == 0 and pools()[True]["weight"] == 0
        with Load(base_url, retries=0) as load:  # 4 clients in flight, 2 per replica: one more replica needed
            wait_until(lambda: spot_running() >= 1, "a spot replica under load", timeout=180)
            wait_until(lambda: pools()[True]["weight"] >= 1, "the router sending to the spot pool", timeout=30)
            before = pools()[True]["requests"]
            wait_until(lambda: pools()[True]["requests"] > before, "requests answered on spot", timeout=30)
        assert load.failed == 0 and load.first_failures == 0, (load.ok, load.errors[:5])
        labels = {n["NodeID"]: n["Labels"] for n in ray.nodes() if n["Alive"]}  # spot nodes started for it
        on = replica_nodes("burst", spot_deployment)
        assert on and all(L.market_of(labels[n]) == "spot" for n in on)
        kept = replica_nodes("burst", base_deployment)
        assert len(kept) == 1 and L.market_of(labels[kept[0]]) != "spot"  # the base never moved
        wait_until(lambda: spot_running() == 0, "the spot pool empty after the load", timeout=90)
        assert len(replica_nodes("burst", base_deployment)) == 1
        logged = [e for e in decisions("burst", spot_deployment) if e["event"] == "decision"]
        asked = [e["replicas"] for e in logged]
        assert max(asked) >= 1 and asked[-1] == 0, asked  # what the policy asked the spot pool for, in order
        # While no spot replica ran yet (Serve then applies a positive answer at once, so a dip in the load would
        # stop the replica starting and start another from scratch), what was asked for was taken back only after
        # fewer had been wanted for the downscale delay (3 s), as Serve's own delay does once one runs. An answer
        # of 0 is not applied at once (Serve's delay holds it), so it is passed on as it comes; the answers held at
        # Serve's target after it belong to the same wish for fewer, whose delay counts from the 0 (the policy logs
        # how long fewer was wanted when it lets a step down through).
        first = next(i for i, e in enumerate(logged) if e["replicas"] >= 1)
        starting = []
        for e in logged[first:]:
            if e["running"] >= 1:
                break
            starting.append(e)
        early = [(a, b) for a, b in zip(starting, starting[1:])
                 if 0 < b["replicas"] < a["replicas"] and b["t"] - a["t"] < 2.8 and (b["fewer_for_s"] or 0) < 2.8]
        assert not early, [(round(e["t"] - starting[0]["t"], 1), e["replicas"], e["target"], e["fewer_for_s"],
                            e["load"]) for e in starting]
    finally:
        serve.delete("burst")
