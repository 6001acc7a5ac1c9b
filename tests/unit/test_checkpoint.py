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
    shard = tmp_path / "c" / "__0_0.distcp"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="__0_0.distcp is missing or truncated"):
        load_model(tmp_path / "c")
    save(tmp_path / "d", 1)
    (tmp_path / "d" / "meta.json").unlink()
    assert not is_complete(tmp_path / "d")
    with pytest.raises(CheckpointError, match="no meta.json"):
        read_meta(tmp_path / "d")


def test_latest_checkpoint_skips_incomplete_ones(tmp_path):
    save(tmp_path / "run" / "checkpoint_a", 5)
    save(tmp_path / "run" / "checkpoint_b", 10)
    (tmp_path / "run" / "checkpoint_b" / ".metadata").unlink()  # a crash mid-copy
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint_a"
    assert latest_checkpoint(tmp_path / "empty") is None


def test_files_are_dcp_shards_listed_in_meta(tmp_path):
    save(tmp_path / "c", 3)
    meta = read_meta(tmp_path / "c")
    assert set(meta["files"]) == {".metadata", "__0_0.distcp"}
    assert meta["format"] == "elasticml.checkpoint/v2"


def test_model_only_load_ignores_optimizer_state(tmp_path):
    """A Serve replica asks for the model alone; optimizer tensors in the checkpoint are not read."""
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    model = build_model("tiny")
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    write_checkpoint(tmp_path / "c", model_state=model.state_dict(), optim_state=opt.state_dict(),
                     model_config=SIZES["tiny"], step=1)
    loaded, _ = load_model(tmp_path / "c")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    keys = dcp.FileSystemReader(tmp_path / "c").read_metadata().state_dict_metadata
    assert any(k.startswith("optim.") for k in keys)
