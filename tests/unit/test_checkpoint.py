import torch

import pytest

from elasticml.errors import CheckpointError
from elasticml.models import SIZES, build_model
from elasticml.train.checkpoint import is_complete, latest_checkpoint, load_model, read_meta, write_checkpoint


def save(folder, step):
    torch.manual_seed(step)
    model = build_model("tiny")
    write_checkpoint(folder, model_state=model.state_dict(), optim_state={"x": 1}, model_config=SIZES["tiny"], step=step)
    return model


def test_round_trip(tmp_path):
    model = save(tmp_path / "c", 7)
    loaded, meta = load_model(tmp_path / "c")
    assert meta["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_truncated_or_missing_files_are_never_loaded(tmp_path):
    save(tmp_path / "c", 1)
    data = (tmp_path / "c" / "model.pt").read_bytes()
    (tmp_path / "c" / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pt is missing or truncated"):
        load_model(tmp_path / "c")
    save(tmp_path / "d", 1)
    (tmp_path / "d" / "meta.json").unlink()
    assert not is_complete(tmp_path / "d")
    with pytest.raises(CheckpointError, match="no meta.json"):
        read_meta(tmp_path / "d")


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    save(tmp_path / "run" / "checkpoint_a", 5)
    save(tmp_path / "run" / "checkpoint_b", 10)
    (tmp_path / "run" / "checkpoint_b" / "optim.pt").unlink()  # a crash mid-copy
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint_a"
    assert latest_checkpoint(tmp_path / "empty") is None
