"""Progress bars on a terminal and silence elsewhere; checkpoint copies that are complete or absent."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest
import torch

from elasticml.errors import CheckpointError
from elasticml.models import SIZES, build_model
from elasticml.storage import list_files
from elasticml.train.checkpoint import copy_checkpoint, latest_checkpoint, load_model, read_meta, write_checkpoint

CLI = str(Path(sys.executable).with_name("elasticml"))


def run_cli(args: list[str], *, tty: bool, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (as in a shell) or a pipe; (rc, stdout, stderr)."""
    env = {**{k: v for k, v in os.environ.items() if k != "ELASTICML_PROGRESS"}, **(env or {})}
    if not tty:
        proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.Popen([CLI, *args], stdout=subprocess.PIPE, stderr=slave, text=True, env=env)
    os.close(slave)
    out, _ = proc.communicate(timeout=300)
    reader.join(10)
    os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_data_build_draws_its_bars_on_a_terminal_only(tmp_path):
    rc, out, err = run_cli(["data", "build", "--out", str(tmp_path / "a"), "--max-mb", "1"], tty=True)
    assert rc == 0, err
    assert "wrote" in out and "\x1b" not in out and "shard" not in out.replace("shards to", "")
    assert "reading" in err and "writing shards" in err and "B/s" in err

    rc, out, err = run_cli(["data", "build", "--out", str(tmp_path / "b"), "--max-mb", "1"], tty=False)
    assert rc == 0 and "wrote" in out and err == ""

    rc, out, err = run_cli(["data", "build", "--out", str(tmp_path / "c"), "--max-mb", "1"], tty=True,
                           env={"ELASTICML_PROGRESS": "0"})
    assert rc == 0 and "wrote" in out and "writing shards" not in err


@pytest.mark.parametrize("flags, field", [(["--max-mb", "nan"], "max_mb"), (["--max-mb", "inf"], "max_mb"),
                                          (["--shards", "0"], "num_shards"), (["--shards", "99999"], "num_shards")])
def test_data_build_refuses_sizes_that_are_not_finite_and_bounded(tmp_path, flags, field):
    rc, out, err = run_cli(["data", "build", "--out", str(tmp_path / "x"), *flags], tty=False)
    assert rc == 2 and f"{field}:" in err and not (tmp_path / "x").exists()


def _save(folder: Path, step: int) -> torch.nn.Module:
    torch.manual_seed(step)
    model = build_model("tiny")
    write_checkpoint(folder, model_state=model.state_dict(), optim_state=None, model_config=SIZES["tiny"], step=step)
    return model


def test_a_checkpoint_goes_up_to_s3_and_back_intact_with_a_bar(tmp_path, s3_env):
    boto3.client("s3", endpoint_url=s3_env["ELASTICML_S3_ENDPOINT"]).create_bucket(Bucket="ckpts")
    model = _save(tmp_path / "local", 12)
    rc, out, err = run_cli(["checkpoint", "copy", str(tmp_path / "local"), "s3://ckpts/run/checkpoint_12", "--json"],
                           tty=True)
    assert rc == 0, err
    copied = json.loads(out)
    assert copied["step"] == 12 and copied["files"] == 2 and copied["bytes"] > 0
    assert "copying step 12" in err  # the bar, on the terminal
    assert read_meta("s3://ckpts/run/checkpoint_12")["step"] == 12
    assert latest_checkpoint("s3://ckpts/run") == "s3://ckpts/run/checkpoint_12"

    copy_checkpoint("s3://ckpts/run/checkpoint_12", tmp_path / "back")  # a download
    loaded, meta = load_model(tmp_path / "back")
    assert meta["step"] == 12
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)

    with pytest.raises(CheckpointError, match="already holds a checkpoint"):
        copy_checkpoint(tmp_path / "local", "s3://ckpts/run/checkpoint_12")
    rc, out, err = run_cli(["checkpoint", "copy", str(tmp_path / "nothing"), str(tmp_path / "x")], tty=False)
    assert rc != 0 and "not a complete elasticml checkpoint" in err and not (tmp_path / "x").exists()


def test_a_source_whose_bytes_differ_from_its_manifest_leaves_nothing_at_the_destination(tmp_path):
    _save(tmp_path / "src", 3)
    shard = tmp_path / "src" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the digest can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        copy_checkpoint(tmp_path / "src", tmp_path / "dst")
    assert list_files(str(tmp_path / "dst")) == {}


def test_a_copy_cut_off_midway_is_not_a_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C while the shards are on their way: no meta.json, no files, and `latest` finds nothing."""
    from elasticml import progress, storage

    _save(tmp_path / "src", 5)
    monkeypatch.setenv("ELASTICML_PROGRESS", "1")  # a live bar counts the bytes
    monkeypatch.setattr(storage, "COPY_CHUNK", 1024)
    real_bar = progress.bar

    def bar_that_is_interrupted(*args, **kwargs):
        shown = real_bar(*args, **kwargs)
        update = shown.update

        def update_then_stop(n: float = 1) -> None:
            update(n)
            if shown.n > 4096:
                raise KeyboardInterrupt
        shown.update = update_then_stop
        return shown

    monkeypatch.setattr(progress, "bar", bar_that_is_interrupted)
    with pytest.raises(KeyboardInterrupt):
        copy_checkpoint(tmp_path / "src", tmp_path / "runs" / "checkpoint_5")
    assert latest_checkpoint(tmp_path / "runs") is None
    assert list_files(str(tmp_path / "runs")) == {}
