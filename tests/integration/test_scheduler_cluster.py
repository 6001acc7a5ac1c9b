"""The scheduler actor on a real multi-node labelled cluster: placements become Ray's own options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elasticml import labels as L
from elasticml.errors import ConfigError, PlacementRefused, SchedulerNotRunning
from elasticml.scheduler.spec import Placement, TenantPolicy, WorkloadSpec

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]
ELASTICML = str(Path(sys.executable).with_name("elasticml"))


@pytest.fixture(scope="module")
def sched(local_cluster):

    from elasticml.scheduler.client import SchedulerClient

    local_cluster.require_info().connect()
    client = SchedulerClient.connect()  # `cluster up` created it
    yield client
    client.kill(no_restart=True)


def run_where(placement: Placement) -> dict[str, str]:
    """Run a 1-CPU task with the placement's Ray options; the labels of the node it ran on."""
    import ray

    @ray.remote(num_cpus=1)
    def where() -> dict[str, str]:
        return dict(ray.get_runtime_context().get_node_labels())

    return ray.get(where.options(**placement.ray_options).remote(), timeout=180)


def test_critical_on_reserved_low_on_spot_and_preemption(sched):
    low = sched.place(WorkloadSpec(name="nightly", tenant="research", priority="low", kind="training",
                                   checkpoint_interval_hours=0.5, min_workers=1, max_workers=2))
    assert low.market == "reserved"  # reserved was free: already paid for

    crit = sched.place(WorkloadSpec(name="fraud-model", tenant="payments", priority="critical", max_workers=2))
    assert crit.workload == "fraud-model" and crit.market == "reserved"  # its own answer, not the victim's
    assert run_where(crit)[L.NODE_TYPE] == "cpu_reserved"
    assert [d["action"] for d in sched.explain("nightly")][-2:] == ["preempt", "place"]

    moved = sched.placement("nightly")
    assert moved.market == "spot"
    labels = run_where(moved)
    assert labels[L.NODE_TYPE] == "cpu_spot" and labels[L.MARKET_TYPE] == "spot"
    assert "critical > low" in sched.explain("nightly")[-2]["reason"]


def test_spot_interruption_replaces_the_work_off_spot(sched):
    import ray

    spot_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n.get("Labels", {}).get(L.NODE_TYPE) == "cpu_spot"}
    out = sched.interrupt("cpu_spot")
    # Ray was told too: the spot nodes are draining as preempted (what Ray Train's get_preemption_info sees).
    assert set(out["drained_nodes"]) == spot_nodes
    assert [d["action"] for d in out["decisions"] if d["workload"] == "nightly"] == ["move"]
    moved = sched.placement("nightly")
    assert "checkpoint now" in moved.reason and moved.market == "on-demand"
    assert run_where(moved)[L.NODE_TYPE] == "cpu_on_demand"
    assert next(p for p in sched.status()["pools"] if p["node_type"] == "cpu_spot")["interrupted"]
    sched.clear_interruption("cpu_spot")


def test_residency_budget_and_bad_specs(sched):
    with pytest.raises(PlacementRefused, match="residency"):
        sched.place(WorkloadSpec(name="gdpr-job", tenant="eu-team", regions=("eu-west-1",)))
    sched.set_tenant(TenantPolicy(tenant="broke", budget=0.0))
    with pytest.raises(PlacementRefused, match="over budget") as info:
        sched.place(WorkloadSpec(name="too-pricey", tenant="broke", expected_hours=5))
    assert info.value.workload == "too-pricey"
    with pytest.raises(ConfigError, match="WorkloadSpec"):
        sched.place({"name": "x", "tenant": "t"})  # dicts do not cross the door
    assert sched.placement("gdpr-job") is None and sched.placement("too-pricey") is None


def test_tenants_act_through_their_own_credentials_and_cannot_reach_past_the_door(sched, local_cluster, tmp_path):
    import os

    import ray

    from elasticml.errors import AccessDenied
    from elasticml.scheduler.client import SchedulerClient

    name = local_cluster.name
    env = {**os.environ}
    for tenant in ("research", "payments"):
        proc = subprocess.run([ELASTICML, "scheduler", "credential", "add", tenant, "--role", "tenant", "--file",
                               str(tmp_path / tenant), "--name", name], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / tenant).stat().st_mode & 0o777 == 0o600
    research = SchedulerClient.connect(credential=tmp_path / "research")
    assert research.whoami() == {"name": "research", "role": "tenant"}
    assert research.placement("nightly") is not None  # its own
    for attempt in (lambda: research.finish("fraud-model"), lambda: research.explain("fraud-model"),
                    lambda: research.intervals("payments/fraud-model"),
                    lambda: research.set_tenant(TenantPolicy(tenant="payments", budget=0.0)),
                    lambda: research.interrupt("cpu_reserved")):
        with pytest.raises(AccessDenied):
            attempt()
    assert sched.placement("fraud-model").placed  # untouched
    assert set(research.status()["running"]) <= {"nightly"}
    # The node agents' credential, made when the scheduler started and trusted as an agent only.
    from elasticml.scheduler.identity import credentials_dir

    assert (credentials_dir(sched.status()["cluster"]) / "agent").stat().st_mode & 0o777 == 0o600
    agent = SchedulerClient.connect(default="agent")
    assert agent.whoami() == {"name": "node-agent", "role": "agent"}
    with pytest.raises(AccessDenied):
        agent.finish("fraud-model")
    # Ray lets anyone with the handle call an actor's methods: the actor has no other way in.
    handle = ray.get_actor("elasticml-scheduler", namespace="elasticml")
    with pytest.raises(AttributeError):
        handle.finish.remote("fraud-model")
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(handle.poll.remote("guess"))
    with pytest.raises(AccessDenied):
        ray.get(handle.call.remote("eml1.admin.guess", "finish", ("fraud-model",)))
    # The CLI as the tenant: refused, with the reason.
    proc = subprocess.run([ELASTICML, "scheduler", "finish", "fraud-model", "--name", name], capture_output=True,
                          text=True, timeout=120, env={**env, "ELASTICML_CREDENTIAL_PATH": str(tmp_path / "research")})
    assert proc.returncode == 2 and "tenant research may not finish research/fraud-model" in proc.stderr, proc.stderr
    # Its names are its own: its fraud-model is another workload than payments'.
    mine = research.place(WorkloadSpec(name="fraud-model", tenant="research", max_workers=1, priority="low"))
    assert mine.workload == "research/fraud-model"
    research.finish("fraud-model")
    assert sched.placement("fraud-model").placed and sched.placement("research/fraud-model") is None  # untouched
    shown = subprocess.run([ELASTICML, "audit", "show", "--name", name, "--tenant", "research", "--json"],
                           capture_output=True, text=True, timeout=60, env=env)
    denied = [json.loads(line) for line in shown.stdout.splitlines() if '"denied"' in line]
    # One record per burst of a caller's refusals of one call: the CLI's finish came within the burst
    # of the client's, so it is counted into the record written when the burst ends.
    assert {r["action"] for r in denied if r["who"] == "tenant research"} == {
        "finish", "explain", "intervals", "set_tenant", "interrupt"}
    assert all(r["who"] in ("tenant research", "an unknown caller") for r in denied)


def test_a_tenant_without_the_ray_token_works_through_the_api_server_and_cannot_connect_a_driver(
        sched, local_cluster, tmp_path):
    """`cluster up` starts the API server on 127.0.0.1; a tenant whose environment has no Ray token
    (another HOME and ELASTICML_HOME) places, reads and is refused through it with its credential
    alone, and cannot connect a Ray driver."""
    import os

    from elasticml.api.transport import HttpTransport
    from elasticml.errors import AccessDenied
    from elasticml.scheduler.client import SchedulerClient

    name = local_cluster.name
    status = json.loads(subprocess.run([ELASTICML, "cluster", "status", "--name", name, "--json"], capture_output=True,
                                       text=True, timeout=60, check=True).stdout)
    url = status["api_url"]
    assert url.startswith("http://127.0.0.1:")
    sched.add_principal("initech", "tenant", tmp_path / "initech.cred")
    tenant = SchedulerClient(HttpTransport(url, tmp_path / "initech.cred"))
    placed = tenant.place(WorkloadSpec(name="etl", tenant="initech", kind="batch", priority="low",
                                       checkpoint_interval_hours=0.1))
    assert placed.workload == "initech/etl" and sched.placement("initech/etl") == placed
    with pytest.raises(AccessDenied, match="its own workloads only"):
        tenant.finish("fraud-model")
    assert set(tenant.status()["running"]) <= {"initech/etl"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ELASTICML_"))}
    env.update({"HOME": str(tmp_path), "ELASTICML_HOME": str(tmp_path / "home"),
                "ELASTICML_CREDENTIAL_PATH": str(tmp_path / "initech.cred")})
    cli = subprocess.run([ELASTICML, "--endpoint", url, "scheduler", "explain", "etl"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert cli.returncode == 0 and "place" in cli.stdout, cli.stderr
    # Ray retries a refused connection for about 20 s by default: two tries say as much here.
    connect = f"import ray; ray.init(address={local_cluster.require_info().gcs_address!r})"
    driver = subprocess.run([sys.executable, "-c", connect], capture_output=True, text=True,
                            env={**env, "RAY_gcs_server_port_wait_time_s": "2"}, timeout=120)
    assert driver.returncode != 0 and "InvalidAuthToken" in driver.stderr, driver.stderr[-2000:]  # no token, no driver
    tenant.finish("etl")


def test_a_tenant_trains_through_the_api_server_with_only_its_credential(sched, local_cluster, corpus, tmp_path):
    """A tenant with no Ray token submits a training job through the server, follows it to the end,
    reads its logs, placement and costs, serves the model with a key of its own, revokes the key and
    deletes the app; another tenant sees none of it."""
    import os
    import time

    import httpx

    from elasticml.api.transport import HttpTransport
    from elasticml.errors import AccessDenied, ConfigError
    from elasticml.yamlio import dump_yaml

    url = local_cluster.require_info().api_url
    sched.add_principal("hooli", "tenant", tmp_path / "hooli.cred")
    sched.add_principal("piper", "tenant", tmp_path / "piper.cred")
    hooli, piper = HttpTransport(url, tmp_path / "hooli.cred"), HttpTransport(url, tmp_path / "piper.cred")
    import shutil

    from elasticml.home import home

    # A dataset every tenant may read (the server's shared data); the runs go where the server keeps hooli's.
    shared = home() / "datasets" / "corpus"
    shutil.copytree(corpus, shared, dirs_exist_ok=True)
    config = {"data": str(shared), "run_name": "tiny", "steps": 6, "num_workers": 1, "global_batch": 2,
              "seq_len": 32, "report_every": 3}
    for bad, field in (({**config, "storage_path": str(home() / "tenants" / "piper" / "runs")}, "config.storage_path"),
                       ({**config, "data": str(home() / "tenants" / "piper" / "private")}, "config.data"),
                       ({**config, "data": f"{shared}/../../tenants/piper"}, "config.data")):
        with pytest.raises(ConfigError) as err:
            hooli.post("jobs/submit", {"config": bad})
        assert field in str(err.value)
    for bad, field in (({**config, "model": "evil.module:make"}, "config.model"),
                       ({**config, "steps": "many"}, "steps"), ({**config, "surprise": 1}, "config")):
        with pytest.raises(ConfigError) as err:
            hooli.post("jobs/submit", {"config": bad})
        assert field in str(err.value)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ELASTICML_"))}
    env.update({"HOME": str(tmp_path), "ELASTICML_HOME": str(tmp_path / "home"), "ELASTICML_ENDPOINT": url,
                "ELASTICML_CREDENTIAL_PATH": str(tmp_path / "hooli.cred")})
    (tmp_path / "train.yaml").write_text(dump_yaml(config))
    out = subprocess.run([ELASTICML, "jobs", "submit", str(tmp_path / "train.yaml"), "--priority", "low",
                          "--expected-hours", "0.1"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["workload"] == "hooli/tiny"
    deadline = time.monotonic() + 300
    while (status := hooli.post("jobs/status", {"submission_id": job["submission_id"]})["status"]) not in (
            "SUCCEEDED", "FAILED", "STOPPED"):
        assert time.monotonic() < deadline
        time.sleep(1)
    logs = hooli.post("jobs/logs", {"submission_id": job["submission_id"]})["logs"]
    assert status == "SUCCEEDED", logs[-3000:]
    assert '"event": "train_done"' in logs and "eml1." not in logs.replace("eml1.[redacted]", "")
    explained = subprocess.run([ELASTICML, "scheduler", "explain", "tiny"], capture_output=True, text=True, env=env,
                               timeout=120)
    assert explained.returncode == 0 and "place" in explained.stdout, explained.stderr
    assert [r["key"] for r in hooli.post("cost_report", {})["tenant"]] == ["hooli"]
    for op in ("status", "logs", "stop"):
        with pytest.raises(AccessDenied, match="no job of this tenant"):
            piper.post(f"jobs/{op}", {"submission_id": job["submission_id"]})
    assert piper.post("jobs/list", {}) == [] and [j["submission_id"] for j in hooli.post("jobs/list", {})] == [
        job["submission_id"]]

    # It serves what it trained: deployed, keyed and queried through the server, as hooli.
    (tmp_path / "serve.yaml").write_text(dump_yaml({"name": "tiny-chat", "precision": "fp32", "cache_size": 0}))
    with pytest.raises(AccessDenied, match="no job of this tenant"):
        piper.post("apps/deploy", {"config": {"name": "steal", "checkpoint": f"job:{job['submission_id']}"}})
    out = subprocess.run([ELASTICML, "apps", "deploy", str(tmp_path / "serve.yaml"), "--job", job["submission_id"]],
                         capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["route_prefix"] == "/hooli/tiny-chat"
    out = subprocess.run([ELASTICML, "apps", "keys", "mint", "tiny-chat"], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)
    assert hooli.post("apps/status", {"app": "tiny-chat"})["status"] == "RUNNING"  # mint answers once the keyed build serves
    endpoint = "http://127.0.0.1:8000/hooli/tiny-chat/v1/completions"
    query = {"prompt": "def f(", "max_tokens": 4}
    answer = httpx.post(endpoint, json=query, headers={"Authorization": f"Bearer {key['key']}"}, timeout=60)
    assert answer.status_code == 200 and answer.json()["model_step"] == 6, answer.text
    assert httpx.post(endpoint, json=query, timeout=60).status_code == 401
    with pytest.raises(AccessDenied, match="no app of that name"):
        piper.post("apps/keys/mint", {"app": "tiny-chat"})
    assert piper.post("apps/list", {}) == [] and "hooli" not in json.dumps(piper.post("audit_records", {"limit": 100}))
    hooli.post("apps/keys/revoke", {"app": "tiny-chat", "key_id": key["key_id"]})
    assert httpx.post(endpoint, json=query, headers={"X-API-Key": key["key"]}, timeout=60).status_code == 401
    trail = hooli.post("audit_records", {"limit": 100})
    assert sum(r.get("action") == "deploy" and "tiny-chat" in json.dumps(r) for r in trail) >= 3, trail[-5:]
    while "hooli/tiny-chat" not in {r["key"] for r in hooli.post("cost_report", {})["workload"]}:
        assert time.monotonic() < deadline + 120, "the app's replicas were never charged to hooli"
        time.sleep(1)
    assert hooli.post("apps/delete", {"app": "tiny-chat"})["deleted"] and hooli.post("apps/list", {}) == []


def test_eml_fit_with_a_tenant_is_placed_by_the_scheduler_and_finished_after(sched, corpus, tmp_path):
    """`eml.fit(cfg, tenant=...)` from plain Python takes jobs/train.py --tenant's path: admitted and
    placed as the tenant's workload (in status, with its tenant, while it runs) and finished on return."""
    import threading
    import time

    import elasticml as eml

    cfg = eml.TrainConfig(data=str(corpus), storage_path=str(tmp_path / "runs"), run_name="sdk-fit", steps=12,
                          num_workers=1, global_batch=2, seq_len=32, report_every=3, min_step_seconds=0.25)
    out: dict = {}

    def train() -> None:
        try:
            out["result"] = eml.fit(cfg, tenant="research", priority="normal", expected_hours=0.1, max_wait_s=120)
        except BaseException as exc:  # handed to the test thread below
            out["error"] = exc

    worker = threading.Thread(target=train)
    worker.start()
    seen = []
    while worker.is_alive():
        if (running := sched.status()["running"].get("sdk-fit")) is not None:
            seen.append(running)
        time.sleep(0.5)
    worker.join()
    assert "error" not in out, out.get("error")
    result = out["result"]
    assert result.error is None and result.metrics["step"] == 12 and result.checkpoint is not None
    assert seen and {a["tenant"] for a in seen[0]} == {"research"}, seen[:1]
    assert "place" in [d["action"] for d in sched.explain("sdk-fit")]
    assert "sdk-fit" not in sched.status()["running"]  # finished when fit returned
    assert all(i["end"] is not None for i in sched.intervals("sdk-fit"))
    with pytest.raises(ConfigError, match="needs a tenant"):
        eml.fit(cfg, priority="low")


def test_actor_killed_and_restarted_loses_nothing(sched):
    import time

    import ray

    before_status, before_report = sched.status(), sched.cost_report()
    sched.kill(no_restart=False)  # Ray restarts it (max_restarts=-1); state comes back from the ledger
    deadline = time.monotonic() + 60
    while True:
        try:
            after_status = sched.status()
            break
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert after_status == before_status
    after_report = sched.cost_report()
    assert after_report["intervals"] == before_report["intervals"] > 0
    assert after_report["total"]["cost"] >= before_report["total"]["cost"]


def test_the_audit_trail_survives_the_kill_and_verify_catches_an_edit(sched, local_cluster):
    import os

    from elasticml.home import home

    name = local_cluster.name
    verify = [ELASTICML, "audit", "verify", "--name", name]
    proc = subprocess.run(verify, capture_output=True, text=True, timeout=60, env={**os.environ})
    assert proc.returncode == 0 and "intact" in proc.stdout, proc.stdout + proc.stderr
    trail = home() / "scheduler" / name / "audit.jsonl"
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    # Recorded before the actor was killed, still there after its restart: the denials and the placements.
    assert any(r["outcome"] == "denied" and r["who"] == "tenant research" for r in records)
    assert any(r["action"] == "preempt" and r["target"] == "nightly" for r in records)
    good = trail.read_bytes()
    try:
        trail.write_bytes(good.replace(b'"outcome":"denied"', b'"outcome":"done"', 1))
        proc = subprocess.run(verify, capture_output=True, text=True, timeout=60, env={**os.environ})
        assert proc.returncode == 1 and "NOT intact" in proc.stderr, proc.stdout + proc.stderr
    finally:
        trail.write_bytes(good)


def test_cli_status_explain_and_cost_report(sched, local_cluster):
    env = {**__import__("os").environ}
    name = local_cluster.name
    status = subprocess.run([ELASTICML, "scheduler", "status", "--name", name, "--json"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert status.returncode == 0, status.stderr
    assert "fraud-model" in json.loads(status.stdout)["running"]
    explain = subprocess.run([ELASTICML, "scheduler", "explain", "fraud-model", "--name", name],
                             capture_output=True, text=True, timeout=120, env=env)
    assert "why: reserved" in explain.stdout
    report = subprocess.run([ELASTICML, "cost", "report", "--name", name, "--json"],
                            capture_output=True, text=True, timeout=120, env=env)
    data = json.loads(report.stdout)
    assert {r["key"] for r in data["tenant"]} >= {"payments", "research"}
    assert {r["key"] for r in data["market"]} >= {"reserved", "spot", "on-demand"}
    assert data["total"]["on_demand_cost"] >= data["total"]["cost"] > 0


def test_cli_commands_that_reach_the_scheduler_print_one_json_document_with_json(sched, local_cluster, tmp_path):
    name = local_cluster.name

    def cli(*args: str) -> dict:
        proc = subprocess.run([ELASTICML, *args, "--name", name, "--json"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # the whole of stdout: one document

    spec = tmp_path / "w.yaml"
    spec.write_text("name: json-probe\ntenant: research\npriority: low\nmin_workers: 1\nmax_workers: 1\n")
    placed = cli("scheduler", "submit", str(spec))
    assert placed["workload"] == "json-probe" and placed["state"] in ("placed", "queued")
    records = cli("scheduler", "explain", "json-probe")["records"]
    assert records and records[-1]["action"] in ("place", "queue")
    assert cli("scheduler", "whoami") == {"name": "admin", "role": "admin"}
    assert cli("scheduler", "finish", "json-probe") == {"workload": "json-probe", "finished": True}
    assert sched.placement("json-probe") is None or not sched.placement("json-probe").placed


def test_cli_refuses_a_malformed_spec_file_without_touching_the_cluster(tmp_path, local_cluster):
    bad = tmp_path / "w.yaml"
    bad.write_text("name: x\ntenant: t\nmin_workers: 0\n")
    proc = subprocess.run([ELASTICML, "scheduler", "submit", str(bad), "--name", local_cluster.name],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("elasticml: error: ") and "min_workers" in proc.stderr


def test_scheduler_start_on_a_cluster_models_the_config_it_is_given(sched, local_cluster, tmp_path):
    """As on a `ray up` head: no scheduler, clients say so; `scheduler start --config` creates it for that config."""
    import time


    from elasticml.scheduler.client import SchedulerClient

    sched.kill(no_restart=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            SchedulerClient.connect()
        except SchedulerNotRunning as exc:
            assert "scheduler start --config" in str(exc)
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    info = local_cluster.require_info()
    env = {**__import__("os").environ, **info.client_env()}
    env.pop("RAY_ADDRESS")
    config = Path(__file__).resolve().parents[2] / "cluster_configs" / "aws-gpu.yaml"
    proc = subprocess.run([ELASTICML, "scheduler", "start", "--config", str(config), "--address", info.gcs_address,
                           "--ledger", str(tmp_path / "ledger.sqlite")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    pools = {p["node_type"] for p in SchedulerClient.connect().status()["pools"]}
    assert pools == {"cpu_spot", "cpu_on_demand", "gpu_spot", "gpu_on_demand", "gpu_reserved"}
