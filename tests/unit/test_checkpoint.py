import torch

import pytest

from elasticml.checkpoint_key import KEY_ENV, make_cluster_key
from elasticml.errors import CheckpointError
from elasticml.models import SIZES, build_model
from elasticml.train.checkpoint import (is_complete, latest_checkpoint, load_model, newer_checkpoint, read_meta,
                                       remove_half_written, write_checkpoint)


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


def test_a_newer_complete_checkpoint_than_the_registered_one_is_found_and_an_incomplete_one_is_not(tmp_path):
    """Ray Train registered step 10; step 20 was written and uploaded but its report not yet taken."""
    run = tmp_path / "run"
    save(run / "checkpoint_10", 10)
    assert newer_checkpoint(run, run / "checkpoint_10") is None  # the registered one is the newest
    save(run / "checkpoint_20", 20)
    assert newer_checkpoint(run, run / "checkpoint_10") == run / "checkpoint_20"
    assert newer_checkpoint(run, run / "checkpoint_20") is None
    save(run / "checkpoint_30", 30)
    (run / "checkpoint_30" / "__0_0.distcp").unlink()  # a worker lost mid-upload: its shard never landed
    assert newer_checkpoint(run, run / "checkpoint_10") == run / "checkpoint_20"
    (run / "checkpoint_10" / "meta.json").unlink()  # a registered one that is not complete does not win either
    assert newer_checkpoint(run, run / "checkpoint_10") == run / "checkpoint_20"


def test_a_resume_deletes_the_checkpoints_left_half_written_and_nothing_else(tmp_path, monkeypatch):
    """Ray Train names a run's checkpoints checkpoint_<date and time>; here checkpoint_5 is the last it registered."""
    run = tmp_path / "run"
    for step in (1, 2, 5, 6, 7, 8, 9, 10, 11, 12):
        save(run / f"checkpoint_{step:02}", step)
    (run / "checkpoint_01" / "__0_0.distcp").unlink()  # damaged, but registered earlier: Ray Train would miss it
    (run / "checkpoint_05" / ".metadata").unlink()  # the last registered one, damaged: not this call's to judge
    (run / "checkpoint_06" / "meta.json").unlink()  # lost before rank 0's manifest
    meta = (run / "checkpoint_07" / "meta.json").read_bytes()
    (run / "checkpoint_07" / "meta.json").write_bytes(meta[: len(meta) // 2])  # the manifest's copy cut off
    (run / "checkpoint_08" / "__0_0.distcp").unlink()  # a worker lost before its shard landed
    shard = run / "checkpoint_09" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # ... or midway through it
    with monkeypatch.context() as m:  # whole, signed under a key since rotated: an operator may still sign it
        m.setenv(KEY_ENV, str(make_cluster_key("before rotation")))
        save(run / "checkpoint_13", 13)
    (run / "checkpoint_11" / "meta.json").write_text('{"format": "someone-else/v1"}')  # not this platform's
    (run / "checkpoint_12" / "meta.json").unlink()
    (run / "checkpoint_12").rename(run / "elsewhere_12")  # not a checkpoint folder of the run
    (run / "checkpoint_file").write_text("x")
    (run / "checkpoint_empty").mkdir()  # created, nothing uploaded yet

    removed = remove_half_written(run, registered=run / "checkpoint_05")

    assert removed == [str(run / f"checkpoint_{s}") for s in ("06", "07", "08", "09", "empty")]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_01", "checkpoint_02", "checkpoint_05",
                                                    "checkpoint_10", "checkpoint_11", "checkpoint_13",
                                                    "checkpoint_file", "elsewhere_12"]
    assert newer_checkpoint(run, run / "checkpoint_05") == run / "checkpoint_10"  # the complete one after it stays
    assert remove_half_written(run, registered=run / "checkpoint_05") == []
    (run / "checkpoint_10" / "meta.json").unlink()
    assert remove_half_written(run, registered=run / "checkpoint_05", keep=(run / "checkpoint_10",)) == []
    assert remove_half_written(tmp_path / "no-run", registered=tmp_path / "no-run" / "checkpoint_1") == []


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
    with monkeypatch.context() as m:
        m.setenv(KEY_ENV, str(make_cluster_key("elsewhere")))
        save(tmp_path / "elsewhere", 4)
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
    with monkeypatch.context() as m:
        m.setenv(KEY_ENV, str(make_cluster_key("attacker")))
        save(tmp_path / "run" / "checkpoint_b", 50)  # planted in the run folder by someone without the key
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


def test_without_a_key_nothing_is_read_verified_loaded_signed_or_written(tmp_path, monkeypatch):
    """Fail closed: a node without the cluster's key neither trusts a checkpoint (it once skipped the
    MAC check) nor signs one (it once made a key of its own wherever it wrote)."""
    from elasticml.home import home
    from elasticml.train.checkpoint import (copy_checkpoint, read_state, resolve_checkpoint, sign_checkpoint,
                                            verify_files)

    save(tmp_path / "run" / "checkpoint_1", 1)
    folder = tmp_path / "run" / "checkpoint_1"
    model = build_model("tiny")
    attempts = {
        "read_meta": lambda: read_meta(folder),
        "verify_files": lambda: verify_files(folder),
        "load_model": lambda: load_model(folder, allowed_modules=()),
        "read_state": lambda: read_state(folder, {"model": model.state_dict()}),
        "is_complete": lambda: is_complete(folder),
        "latest_checkpoint": lambda: latest_checkpoint(tmp_path / "run"),
        "resolve_checkpoint": lambda: resolve_checkpoint(f"latest:{tmp_path / 'run'}"),
        "sign_checkpoint": lambda: sign_checkpoint(folder),
        "copy_checkpoint": lambda: copy_checkpoint(folder, tmp_path / "copy"),
        "write_checkpoint": lambda: write_checkpoint(tmp_path / "new", model_state=model.state_dict(),
                                                     optim_state=None, model_config=SIZES["tiny"], step=2),
    }
    before = {p for p in home().rglob("*")}
    monkeypatch.delenv(KEY_ENV)
    for name, attempt in attempts.items():
        with pytest.raises(CheckpointError, match="no checkpoint key: set ELASTICML_CHECKPOINT_KEY_PATH") as info:
            attempt()
        assert "elasticml cluster credentials" in str(info.value) and "credentials/<cluster>/checkpoint.key" \
            in str(info.value), name
    # A variable naming a file that is not there, or a key too short to be one, is no key either.
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "nowhere.key"))
    with pytest.raises(CheckpointError, match="nowhere.key .ELASTICML_CHECKPOINT_KEY_PATH. does not exist"):
        write_checkpoint(tmp_path / "new", model_state=model.state_dict(), optim_state=None, model_config=None, step=2)
    (tmp_path / "empty.key").write_text("\n")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "empty.key"))
    with pytest.raises(CheckpointError, match="empty.key .* is readable by others"):  # a key others may read is no secret
        read_meta(folder)
    (tmp_path / "empty.key").chmod(0o600)
    with pytest.raises(CheckpointError, match="is not 32 or more bytes"):
        read_meta(folder)
    assert not (tmp_path / "nowhere.key").exists() and not (tmp_path / "new").exists() \
        and not (tmp_path / "copy").exists()
    assert {p for p in home().rglob("*")} == before  # no key was made anywhere


class _Touch:
    """Unpickles as `Path(path).touch()`: the file appears exactly when the pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (self.path,))


def _resign(folder):
    """What a key holder does: every file's size and sha256 in the manifest, MAC'd with the cluster's key."""
    import hashlib
    import json

    from elasticml.train.checkpoint import _manifest_mac, checkpoint_key

    meta = json.loads((folder / "meta.json").read_text())
    files = [p for p in folder.iterdir() if p.name != "meta.json"]
    meta["files"] = {p.name: p.stat().st_size for p in files}
    meta["sha256"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    meta["mac"] = _manifest_mac(checkpoint_key(), meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_dcp_metadata_that_would_run_code_is_refused_even_when_signed(tmp_path):
    """DCP's .metadata is a pickle. One that calls Path.touch, in an otherwise valid checkpoint signed with
    the cluster's key, is refused by the real load path, naming the global, and nothing runs."""
    import pickle

    import torch.distributed.checkpoint as dcp

    from elasticml.train.checkpoint import read_state, verify_files

    folder, marker = tmp_path / "c", tmp_path / "ran"
    save(folder, 4)
    with open(folder / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)  # our own, just written
    metadata.planner_data = {"model.x": _Touch(marker)}
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    _resign(folder)
    assert verify_files(folder)["step"] == 4  # signed and intact: the MAC is not what stops it
    for load in (lambda: load_model(folder, allowed_modules=()), lambda: load_model(folder),
                 lambda: read_state(folder, {"model": build_model("tiny").state_dict()})):
        with pytest.raises(CheckpointError, match=r"names the global pathlib\.Path\.touch.*nothing from it was run"):
            load()
    assert not marker.exists()
    dcp.FileSystemReader(folder).read_metadata()  # DCP's own reader: plain pickle.load runs it
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP's own load, below
def test_a_non_tensor_value_that_would_run_code_is_refused_even_when_signed(tmp_path):
    """DCP saves a non-tensor value (an optimizer's hyper-parameters) with torch.save and loads it with
    torch.load(weights_only=False); here it loads weights-only, and a pickled call is refused."""
    import torch.distributed.checkpoint as dcp

    from elasticml.train.checkpoint import read_state

    folder, marker = tmp_path / "c", tmp_path / "ran"
    model = build_model("tiny")
    write_checkpoint(folder, model_state=model.state_dict(), optim_state={"x": _Touch(marker)},
                     model_config=SIZES["tiny"], step=1)  # signed by its writer, a key holder
    with pytest.raises(CheckpointError, match=r"optim\.x is not plain data \(it names the global getattr\)"):
        read_state(folder, {"model": model.state_dict(), "optim": {"x": None}})
    assert not marker.exists()
    dcp.load({"model": model.state_dict(), "optim": {"x": None}}, checkpoint_id=folder, no_dist=True)  # DCP's own
    assert marker.exists()


def test_metadata_that_points_a_chunk_outside_the_checkpoint_is_refused(tmp_path):
    import pickle

    from elasticml.train.checkpoint import read_state

    folder = tmp_path / "c"
    save(folder, 2)
    with open(folder / ".metadata", "rb") as fh:
        metadata = pickle.load(fh)
    info = next(iter(metadata.storage_data.values()))
    info.relative_path = "../../elsewhere/secret"
    (folder / ".metadata").write_bytes(pickle.dumps(metadata))
    _resign(folder)
    with pytest.raises(CheckpointError, match="points a chunk outside the checkpoint"):
        read_state(folder, {"model": build_model("tiny").state_dict()})


def test_real_checkpoints_metadata_needs_only_the_allow_list_and_optimizer_state_round_trips(tmp_path):
    """The allow-list is what DCP metadata of this project's checkpoints holds (model and AdamW state);
    the optimizer's non-tensor state comes back through the weights-only loader."""
    import io
    import pickle

    from elasticml.train.checkpoint import read_state
    from elasticml.train.safe_load import _DTYPES, ALLOWED

    torch.manual_seed(0)
    model = build_model("tiny")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    write_checkpoint(tmp_path / "c", model_state=model.state_dict(), optim_state=opt.state_dict(),
                     model_config=SIZES["tiny"], step=1)
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO((tmp_path / "c" / ".metadata").read_bytes())).load()
    assert seen and all(g in ALLOWED or (g[0] == "torch" and g[1] in _DTYPES) for g in seen), seen
    fresh = build_model("tiny")
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1.0)
    fresh(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    fresh_opt.step()  # DCP fills in the keys the state asks for: give it Adam's moments
    state = {"model": fresh.state_dict(), "optim": fresh_opt.state_dict()}
    read_state(tmp_path / "c", state)
    assert state["optim"]["param_groups"][0]["lr"] == 3e-4 and state["optim"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert torch.equal(state["optim"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
