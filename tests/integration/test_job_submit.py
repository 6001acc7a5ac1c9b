"""`ray job submit` of jobs/train.py against a real head with token auth on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elasticml.train.checkpoint import load_model, read_meta

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def submit(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAY, "job", "submit", "--working-dir", str(REPO), "--", "python", "jobs/train.py", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


# Slow: a job of the same script trains on two workers and checkpoints in the scheduled-job test below; the
# checks of its history (`elasticml train report`), model size and loss are made only here.
@pytest.mark.slow
def test_train_job_runs_two_workers_and_saves_a_checkpoint(local_cluster, corpus, tmp_path):
    env = local_cluster.require_info().client_env()
    proc = submit(
        env, "--data", str(corpus), "--storage-path", str(tmp_path / "runs"), "--run-name", "t",
        "--steps", "6", "--workers", "2", "--global-batch", "4", "--report-every", "3", "--market", "spot",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    summary = next(json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{"event": "train_done"'))
    assert summary["error"] is None
    assert summary["metrics"]["step"] == 6 and summary["metrics"]["world_size"] == 2
    checkpoint = Path(summary["checkpoint"])
    assert checkpoint.is_relative_to(tmp_path / "runs" / "t")
    meta = read_meta(checkpoint)
    assert meta["step"] == 6 and meta["model_size"] == "tiny"
    model, _ = load_model(checkpoint)
    assert model.config.n_layers == 2
    # The loss went down from the uniform-guess starting point (ln 256 = 5.55).
    assert summary["metrics"]["loss"] < 5.5
    # Every report point is in the run's history, for `elasticml train report`.
    report = subprocess.run([str(Path(RAY).with_name("elasticml")), "train", "report", str(tmp_path / "runs" / "t"),
                             "--json"], capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    history = json.loads(report.stdout)["history"]
    assert [r["step"] for r in history] == [3, 6] and history[-1]["loss"] == pytest.approx(summary["metrics"]["loss"])


def test_submission_without_the_right_token_is_refused(local_cluster, tmp_path):
    info = local_cluster.require_info()
    wrong = tmp_path / "wrong_token"
    wrong.write_text("f" * 64)
    env = {**info.client_env(), "RAY_AUTH_TOKEN_PATH": str(wrong)}
    proc = submit(env, "--data", "/nonexistent", timeout=120)
    assert proc.returncode != 0
    out = (proc.stdout + proc.stderr).lower()
    assert "unauthorized" in out or "authentication" in out or "401" in out or "403" in out, out[-2000:]


def test_a_job_placed_by_the_scheduler_trains_and_serve_deploy_yaml_serves_its_latest_checkpoint(
        local_cluster, corpus, tmp_path):
    """`ray job submit` of a tenant's job, which asks the scheduler where to run and trains there, then
    `serve deploy serve_apps/completion.yaml` of its checkpoint, as the README says."""
    import time

    import httpx
    import yaml

    from elasticml.cluster.local import free_port
    from elasticml.scheduler.client import SchedulerClient
    from elasticml.serve.generate import generate
    from elasticml.train.checkpoint import latest_checkpoint

    env = local_cluster.require_info().client_env()
    runs = tmp_path / "runs"
    proc = submit(env, "--data", str(corpus), "--storage-path", str(runs), "--run-name", "sched-run",
                  "--steps", "10", "--workers", "2", "--global-batch", "4", "--report-every", "5",
                  "--tenant", "research", "--priority", "high")
    assert proc.returncode == 0, proc.stdout[-3000:]
    placement = next(json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{"event": "placement"'))
    summary = next(json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{"event": "train_done"'))
    assert placement["state"] == "placed" and "reserved" in placement["reason"]
    assert summary["node_type"] == "cpu_reserved" and summary["num_workers"] == 2
    assert summary["metrics"]["world_size"] == 2 and summary["metrics"]["step"] == 10
    local_cluster.require_info().connect()
    sched = SchedulerClient.connect()
    assert "sched-run" not in sched.status()["running"]  # it reported itself finished
    # Charged where Ray ran its workers (2 on the reserved pool), and closed at the end.
    charged = sched.intervals("sched-run")
    assert charged and {(i["node_type"], i["workers"]) for i in charged} <= {("cpu_reserved", 2), ("cpu_reserved", 1)}
    assert all(i["end"] is not None for i in charged)

    config = yaml.safe_load((REPO / "serve_apps" / "completion.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["checkpoint"] = f"latest:{runs / 'sched-run'}"
    # The shipped config requires keys from a file: make one, as the comment in it says.
    from elasticml.serve.auth import add_to_key_file, new_key

    key, key_digest = new_key()
    add_to_key_file(tmp_path / "api_keys.json", "acme", key_digest)
    config["applications"][0]["args"]["api_keys_file"] = str(tmp_path / "api_keys.json")
    path = tmp_path / "completion.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_cli = str(Path(sys.executable).with_name("serve"))
    deploy = subprocess.run([serve_cli, "deploy", str(path)], env={**os.environ, **env},
                            capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stderr[-2000:]

    from elasticml.serve.precision import prepare

    model, _ = load_model(latest_checkpoint(runs / "sched-run"))
    model = prepare(model, device="cpu", precision=config["applications"][0]["args"]["precision"])  # int8, as served
    expected = generate(model, b"import ", max_tokens=12).decode("utf-8", errors="replace")
    deadline = time.monotonic() + 180
    body = None
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "import ", "max_tokens": 12},
                           headers={"Authorization": f"Bearer {key}"}, timeout=10)
            if r.status_code == 200:
                body = r.json()
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    assert body is not None, "the deployed app never answered"
    assert body["completion"] == expected and body["model_step"] == 10
    anonymous = httpx.post(f"http://127.0.0.1:{port}/v1/completions", content=b"{not json", timeout=10)
    assert anonymous.status_code == 401  # the key is checked before the body is even parsed
    subprocess.run([serve_cli, "shutdown", "-y"], env={**os.environ, **env}, capture_output=True, timeout=120)


@pytest.mark.slow  # four Ray Train trials
def test_tune_sweep_with_asha_reports_the_best_trial(local_cluster, corpus, tmp_path):
    env = local_cluster.require_info().client_env()
    proc = subprocess.run(
        [RAY, "job", "submit", "--working-dir", str(REPO), "--", "python", "jobs/tune.py", "--data", str(corpus),
         "--storage-path", str(tmp_path), "--lrs", "3e-3,1e-2,1e-3,1e-5", "--steps", "12", "--concurrent", "2"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = next(json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{"event": "tune_done"'))
    assert summary["trials"] == 4 and summary["errors"] == 0
    assert summary["best"]["loss"] < 5.5 and summary["best"]["lr"] in (3e-3, 1e-2, 1e-3)
    # The 1e-5 trial learns next to nothing and reaches each rung after better ones: ASHA cuts it.
    assert summary["stopped_early"] >= 1
