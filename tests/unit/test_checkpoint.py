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


def _flip_a_byte(path, at=-1):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_altered_shard_or_dcp_metadata_is_refused_before_anything_is_read(tmp_path):
    from elasticml.train.checkpoint import read_state, verify_files

    for name in ("__0_0.distcp", ".metadata"):  # .metadata is a pickle: never unpickled unless it is the one signed
        save(tmp_path / name, 3)
        _flip_a_byte(tmp_path / name / name, at=len((tmp_path / name / name).read_bytes()) // 2)
        for load in (lambda: load_model(tmp_path / name), lambda: verify_files(tmp_path / name),
                     lambda: read_state(tmp_path / name, {"model": build_model("tiny").state_dict()})):
            with pytest.raises(CheckpointError, match=f"{name} is not the file its manifest names"):
                load()


def test_a_changed_or_foreign_manifest_is_not_a_checkpoint(tmp_path, monkeypatch):
    import json

    save(tmp_path / "c", 3)
    meta_file = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["step"] = 999_999  # a higher step, so that latest: would pick it
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not signed with this cluster's checkpoint key"):
        read_meta(tmp_path / "c")
    del meta["mac"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not signed"):
        read_meta(tmp_path / "c")
    # Written under another cluster's key: refused here.
    monkeypatch.setenv("ELASTICML_CHECKPOINT_KEY_PATH", str(tmp_path / "other.key"))
    save(tmp_path / "elsewhere", 4)
    monkeypatch.delenv("ELASTICML_CHECKPOINT_KEY_PATH")
    with pytest.raises(CheckpointError, match="not signed"):
        read_meta(tmp_path / "elsewhere")
    for bad in ({"../../etc/passwd": 10}, {"": 1}):
        meta = json.loads((tmp_path / "elsewhere" / "meta.json").read_text())
        meta["files"], meta["sha256"] = bad, {k: "0" * 64 for k in bad}
        from elasticml.train.checkpoint import _manifest_mac, checkpoint_key

        meta["mac"] = _manifest_mac(checkpoint_key(), meta)  # even a signed manifest may not point outside
        (tmp_path / "elsewhere" / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="outside the checkpoint"):
            read_meta(tmp_path / "elsewhere")


def test_latest_takes_only_signed_checkpoints(tmp_path, monkeypatch):
    save(tmp_path / "run" / "checkpoint_a", 5)
    monkeypatch.setenv("ELASTICML_CHECKPOINT_KEY_PATH", str(tmp_path / "attacker.key"))
    save(tmp_path / "run" / "checkpoint_b", 50)  # planted in the run folder by someone without the key
    monkeypatch.delenv("ELASTICML_CHECKPOINT_KEY_PATH")
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint_a"


def test_a_user_model_factory_is_imported_only_from_allowed_modules(tmp_path):
    import sys

    sys.path.insert(0, str(tmp_path))
    (tmp_path / "shop_models.py").write_text(
        "from elasticml.models import build_model\n\ndef tiny():\n    return build_model('tiny')\n")
    try:
        model = build_model("tiny")
        write_checkpoint(tmp_path / "c", model_state=model.state_dict(), optim_state=None, model_config=None,
                         step=1, extra={"model": "shop_models:tiny"})
        with pytest.raises(CheckpointError, match="not in this deployment's allowed_model_modules"):
            load_model(tmp_path / "c", allowed_modules=())
        with pytest.raises(CheckpointError, match="allowed_model_modules"):
            load_model(tmp_path / "c", allowed_modules=("shop",))  # a prefix of the name is not its package
        assert load_model(tmp_path / "c", allowed_modules=("shop_models",))[1]["model"] == "shop_models:tiny"
    finally:
        sys.path.remove(str(tmp_path))


def test_serving_refuses_an_altered_checkpoint_when_the_app_is_built(tmp_path):
    from elasticml.serve.completion import build_app

    save(tmp_path / "c", 2)
    _flip_a_byte(tmp_path / "c" / "__0_0.distcp", at=100)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        build_app({"checkpoint": str(tmp_path / "c")})


def test_a_checkpoint_from_before_signing_is_refused_until_an_operator_signs_it(tmp_path):
    """The migration path: `elasticml checkpoint sign` vouches for an unsigned (pre-signing) checkpoint's
    bytes as they are; it refuses an incomplete one, and what it signed is checked like any other."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from elasticml.train.checkpoint import verify_files

    cli = str(Path(sys.executable).with_name("elasticml"))
    old = tmp_path / "old"
    save(old, step=7)
    meta = json.loads((old / "meta.json").read_text())
    unsigned = {k: v for k, v in meta.items() if k not in ("sha256", "mac")}  # what checkpoints held before
    (old / "meta.json").write_text(json.dumps(unsigned))
    with pytest.raises(CheckpointError, match="not signed"):
        verify_files(old)
    refused = subprocess.run([cli, "checkpoint", "verify", str(old)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not signed" in refused.stderr
    signed = subprocess.run([cli, "checkpoint", "sign", str(old)], capture_output=True, text=True, timeout=60)
    assert signed.returncode == 0 and "step 7" in signed.stdout, signed.stderr
    assert verify_files(old)["step"] == 7 and load_model(old)[0] is not None
    assert subprocess.run([cli, "checkpoint", "verify", str(old)], capture_output=True, timeout=60).returncode == 0
    shard = next(p for p in old.iterdir() if p.suffix == ".distcp")
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # altered after signing: refused as ever
    with pytest.raises(CheckpointError, match="sha256"):
        verify_files(old)
    # An incomplete one is never signed.
    torn = tmp_path / "torn"
    save(torn, step=8)
    (torn / "meta.json").write_text(json.dumps({k: v for k, v in json.loads((torn / "meta.json").read_text()).items()
                                                if k not in ("sha256", "mac")}))
    next(p for p in torn.iterdir() if p.suffix == ".distcp").write_bytes(b"short")
    proc = subprocess.run([cli, "checkpoint", "sign", str(torn)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "incomplete" in proc.stderr
