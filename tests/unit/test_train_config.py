import subprocess
import sys
from pathlib import Path

import pytest

from elasticml import labels as L
from elasticml.errors import ConfigError
from elasticml.train.config import TrainConfig
from elasticml.train.loop import lr_at
from tests.support.output import last_json

REPO = Path(__file__).resolve().parents[2]


def cfg(**kw):
    base = {"data": "/d", "storage_path": "/s"}
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"steps": 0}, "steps"),
        ({"global_batch": 1, "num_workers": 2}, "global_batch"),
        ({"min_workers": 3, "num_workers": 2}, "min_workers"),
        ({"model_size": "huge"}, "model_size"),
        ({"seq_len": 4096}, "seq_len"),
        ({"market": "cheap"}, "market"),
        ({"storage_path": "relative/dir"}, "storage_path"),
        ({"lr": 0}, "lr"),
    ],
)
def test_bad_values_name_the_field(kw, field):
    with pytest.raises(ConfigError) as err:
        cfg(**kw)
    assert err.value.field == field and str(err.value).startswith(field)


def test_market_becomes_a_label_selector():
    assert cfg().label_selector() is None
    assert cfg(market="spot").label_selector() == {L.MARKET_TYPE: "spot"}
    assert cfg(market="reserved").label_selector() == {L.CAPACITY: "reserved"}


def test_yaml_and_unknown_fields(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("data: /d\nstorage_path: /s\nsteps: 3\n")
    assert TrainConfig.from_yaml(path, steps=5).steps == 5
    path.write_text("data: /d\nstorage_path: /s\nstepz: 3\n")
    with pytest.raises(ConfigError, match="unknown field.*stepz"):
        TrainConfig.from_yaml(path)


def test_lr_schedule_warms_up_then_decays():
    c = cfg(steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(99, c) < lr_at(50, c) < lr_at(10, c)
    assert lr_at(99, c) >= 0.1


def test_train_script_rejects_bad_flags_before_starting_ray():
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--data", "/d", "--steps", "-1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "steps: must be >= 1" in proc.stderr


@pytest.mark.parametrize("case", ["no corpus", "missing shard", "storage under a file"])
def test_a_bad_data_or_storage_path_fails_before_ray_starts_with_one_line_and_a_json_summary(case, corpus, tmp_path):
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    data, storage = str(corpus), str(tmp_path / "runs")
    if case == "no corpus":
        data, words = "/nonexistent/corpus", "not a complete corpus"
    elif case == "missing shard":
        broken = tmp_path / "corpus"
        shutil.copytree(corpus, broken)
        next(broken.glob("*.parquet")).unlink()
        data, words = str(broken), "shards are missing"
    else:
        (tmp_path / "a-file").write_text("x")
        storage, words = str(tmp_path / "a-file" / "runs"), "cannot reach the storage path"
    proc = subprocess.run([sys.executable, str(repo / "jobs" / "train.py"), "--data", data, "--storage-path", storage,
                           "--steps", "2"], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr[-2000:]
    summary = last_json(proc.stdout)
    assert summary["event"] == "train_failed" and words in summary["error"]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("kw, field", [
    ({"distill_alpha": 1.5}, "distill_alpha"), ({"distill_temperature": float("nan")}, "distill_temperature"),
    ({"teacher": ""}, "teacher"), ({"teacher": 7}, "teacher"), ({"init_from": "x" * 5000}, "init_from"),
    ({"init_from": "/ckpt", "model": "tests.support.user_models:small_mlp"}, "init_from"),
])
def test_distillation_settings_are_checked_and_named(kw, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        cfg(**kw)


def test_distill_job_needs_a_teacher_that_is_a_complete_checkpoint(tmp_path, corpus):
    from elasticml.errors import CheckpointError
    from elasticml.train.preflight import preflight

    def distill(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "jobs/distill.py", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120)

    done = distill("--data", str(corpus))
    assert done.returncode == 2 and "--teacher CHECKPOINT is required" in done.stderr
    done = distill("--data", str(corpus), "--teacher", f"latest:{tmp_path / 'none'}")
    assert done.returncode == 2 and "teacher: no complete checkpoint under" in done.stderr, done.stderr
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="^teacher: "):
        preflight(cfg(data=str(corpus), storage_path=str(tmp_path / "runs"), teacher=str(tmp_path / "half")))


def test_a_run_without_the_checkpoint_key_fails_before_anything_starts(tmp_path, corpus, monkeypatch):
    """Its workers would train until the first checkpoint and then fail to sign it."""
    from elasticml.errors import CheckpointError
    from elasticml.train.preflight import preflight

    monkeypatch.delenv("ELASTICML_CHECKPOINT_KEY_PATH")
    with pytest.raises(CheckpointError, match="no checkpoint key"):
        preflight(cfg(data=str(corpus), storage_path=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()
