"""Every dashboard query returns data from a real Prometheus scraping a real local cluster while it
trains, serves over HTTP and schedules: Prometheus reads Ray's service-discovery file of the
cluster's metrics agents (the scrape config `elasticml cluster prometheus-config` prints), and
labels every series with the cluster's name, which the dashboards' `$cluster` picks."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from elasticml.cluster.local import free_port

pytestmark = pytest.mark.integration


def prometheus_binary() -> str:
    """Prometheus from PATH: `./dev setup` installs Debian's package."""
    found = shutil.which("prometheus")
    assert found, "Prometheus is needed: `./dev setup` installs it as root, else `apt-get install prometheus`"
    return found


@pytest.fixture(scope="module")
def prometheus(local_cluster, tmp_path_factory):
    from elasticml import home
    from elasticml.observe.dashboards import prometheus_config

    exe = prometheus_binary()
    session = home.ray_temp_dir(local_cluster.name) / "session_latest"
    deadline = time.monotonic() + 60
    while not (session / "prom_metrics_service_discovery.json").is_file():
        assert time.monotonic() < deadline, f"Ray wrote no service-discovery file in {session}"
        time.sleep(0.5)
    folder = tmp_path_factory.mktemp("prometheus")
    printed = subprocess.run([str(Path(os.sys.executable).with_name("elasticml")), "cluster", "prometheus-config",
                              "--name", local_cluster.name], capture_output=True, text=True, timeout=60)
    expected = prometheus_config(str(session.resolve()), cluster=local_cluster.name)
    assert printed.returncode == 0 and printed.stdout == expected, printed.stderr
    (folder / "prometheus.yml").write_text(prometheus_config(str(session.resolve()), cluster=local_cluster.name,
                                                             interval_s=1))  # faster, here
    port = free_port()
    proc = subprocess.Popen([exe, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "Prometheus did not start"
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(20)


def test_every_dashboard_panel_returns_data_while_the_cluster_trains_serves_and_schedules(
        prometheus, local_cluster, corpus, tmp_path):
    import ray
    from ray import serve

    from elasticml.models import SIZES, build_model
    from elasticml.observe.dashboards import exprs
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.scheduler.spec import WorkloadSpec
    from elasticml.serve.auth import new_key
    from elasticml.serve.completion import build_app
    from elasticml.train.checkpoint import write_checkpoint
    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit, stop_flag

    local_cluster.require_info().connect()
    SchedulerClient.connect().place(WorkloadSpec(name="observed", tenant="analytics", max_workers=1))
    # Training, until told to stop.
    flag = stop_flag()
    cfg = TrainConfig(data=str(corpus), storage_path=str(tmp_path / "runs"), run_name="watched", steps=100_000,
                      global_batch=2, seq_len=32, num_workers=1, report_every=5, checkpoint_every=20,
                      peak_tflops=0.05)
    trained: dict = {}
    trainer = threading.Thread(target=lambda: trained.update(r=fit(cfg, stop=flag)), daemon=True)
    trainer.start()
    # Serving, under a steady trickle of requests.
    key, digest = new_key()
    write_checkpoint(tmp_path / "ckpt", model_state=build_model("tiny").state_dict(), optim_state=None,
                     model_config=SIZES["tiny"], step=1)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"checkpoint": str(tmp_path / "ckpt"), "api_keys": {"acme": digest}, "precision": "fp32"}),
              name="watched", route_prefix="/")
    done = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=30) as client:
            i = 0
            while not done.is_set():
                client.post("/v1/completions", json={"prompt": f"def f{i % 3}(", "max_tokens": 4})
                i += 1
                time.sleep(0.1)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        # As Grafana runs them with this cluster picked: the scrape config labels every series with it.
        missing = [e.replace("$cluster", local_cluster.name) for e in exprs()]
        deadline = time.monotonic() + 240
        while missing and time.monotonic() < deadline:
            missing = [e for e in missing if not httpx.get(f"{prometheus}/api/v1/query", params={"query": e},
                                                           timeout=10).json()["data"]["result"]]
            time.sleep(2)
        assert not missing, f"dashboard queries without data: {missing}"
        # And the numbers mean what the panels say.
        rate = httpx.get(f"{prometheus}/api/v1/query", params={
            "query": 'sum(ray_elasticml_scheduler_spend_rate_dollars_per_hour{tenant="analytics"})'}).json()
        assert float(rate["data"]["result"][0]["value"][1]) > 0
        loss = httpx.get(f"{prometheus}/api/v1/query", params={"query": 'max(ray_elasticml_train_loss{run="watched"})'})
        assert 0 < float(loss.json()["data"]["result"][0]["value"][1]) < 6
    finally:
        done.set()
        ray.get(flag.request.remote("the test has what it needs"))
        trainer.join(timeout=180)
        serve.shutdown()
        SchedulerClient.connect().finish("observed")
    assert trained["r"].error is None
