"""Per-step training metrics reach Prometheus: scraped from Ray's metrics agents over HTTP while a run trains."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def scrape_all_nodes() -> str:
    import ray

    text = []
    for node in ray.nodes():
        if node["Alive"]:
            try:
                text.append(httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics",
                                      timeout=5).text)
            except httpx.HTTPError:
                pass  # a node going away mid-scrape
    return "\n".join(text)


def test_loss_tokens_per_s_and_mfu_are_exported_as_prometheus_gauges(local_cluster, corpus, tmp_path):
    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit

    local_cluster.require_info().connect()
    cfg = TrainConfig(data=str(corpus), storage_path=str(tmp_path), run_name="prom", steps=400, global_batch=2,
                      seq_len=32, num_workers=1, report_every=10, peak_tflops=0.05)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(r=fit(cfg)), daemon=True)
    runner.start()
    found: dict[str, float] = {}
    deadline = time.time() + 150
    while runner.is_alive() and time.time() < deadline and len(found) < 4:
        for name, value in re.findall(r'^ray_elasticml_train_(\w+)\{[^}]*run="prom"[^}]*\} (\S+)$',
                                      scrape_all_nodes(), re.M):
            found[name] = float(value)
        time.sleep(1)
    runner.join(timeout=150)
    assert set(found) >= {"loss", "tokens_per_s", "mfu", "step"}, found
    assert 0 < found["loss"] < 6 and found["tokens_per_s"] > 0 and 0 < found["mfu"] < 1
    assert found["step"] % 10 == 0 and found["step"] >= 10
    assert result["r"].error is None
