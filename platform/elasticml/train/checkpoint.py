"""elasticml checkpoints: what a training run saves and a Serve replica loads.

A checkpoint is a folder written with `torch.distributed.checkpoint` (DCP):
every worker writes only its own shards (`__<rank>_0.distcp`), rank 0 adds
DCP's `.metadata`, and then, last, our `meta.json`, which lists every file of
every rank with its size. Ray Train merges the workers' folders into one
checkpoint folder in the run's storage. A folder is a complete checkpoint
exactly when meta.json is present and every file it lists has the listed size,
so a half-written or half-uploaded checkpoint is never loaded.

Integrity: meta.json also holds the sha256 of every file, and an HMAC-SHA256 of
the whole manifest under the cluster's checkpoint key, which every node finds
through `$ELASTICML_CHECKPOINT_KEY_PATH` (`elasticml.checkpoint_key`: where it is
made and how it travels). A manifest without a valid MAC is not a checkpoint (so
`latest:` never picks one), and every file's digest is checked before anything
is read from it. Without the key nothing is read, verified or written: a node
that cannot check refuses rather than trusts.

What the MAC does not do is make the bytes harmless: it proves a key holder
wrote them, and every training job runs where the key is. DCP would unpickle
`.metadata` and the state dict's non-tensor values with plain pickle; here they
go through `elasticml.train.safe_load` instead (a restricted unpickler that builds
only DCP's metadata classes, and torch.load(weights_only=True)), so no bytes of
a checkpoint run code, signed or not. A user model's factory is imported only
from the modules a deployment allows.

Because DCP stores tensors with their global shapes and offsets, a checkpoint
written by N workers loads into M workers (an elastic run that shrank or grew)
and into a single unsharded process (a Serve replica) alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from elasticml.atomic import write_atomic
from elasticml.checkpoint_key import checkpoint_key, key_path
from elasticml.errors import CheckpointError
from elasticml.models.transformer import ModelConfig, Transformer

META = "meta.json"
FORMAT = "elasticml.checkpoint/v2"
MAX_META = 4 << 20


def _manifest_mac(key: bytes, meta: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in meta.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _sha256(open_stream: Any) -> str:
    h = hashlib.sha256()
    with open_stream() as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns that it "assumes" single-process use even when told so (no_dist=True)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def write_checkpoint(
    folder: Path,
    *,
    model_state: dict[str, Any],
    optim_state: dict[str, Any] | None,
    model_config: ModelConfig | None,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write this process's shards to `folder`; rank 0 (or a lone process) also writes meta.json, last.

    In a distributed run every rank must call this (DCP's save is collective);
    the states are the sharded ones from `get_model_state_dict` / `get_optimizer_state_dict`.
    """
    import torch.distributed.checkpoint as dcp

    key = checkpoint_key()  # on every rank, before any shard is written: no key, no checkpoint
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"model": model_state}
    if optim_state is not None:
        state["optim"] = optim_state
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=folder, no_dist=not _distributed())
    mine = {p.name: (p.stat().st_size, _sha256(lambda p=p: open(p, "rb")))
            for p in folder.iterdir() if p.is_file() and p.name != META and not p.name.startswith(".meta.json.")}
    if _distributed():
        everyone: list[dict[str, tuple[int, str]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        if dist.get_rank() != 0:
            return folder
        files = {name: entry for part in everyone for name, entry in (part or {}).items()}
    else:
        files = mine
    meta: dict[str, Any] = {
        "format": FORMAT,
        "step": step,
        "model_config": model_config.to_dict() if model_config else None,
        "files": {name: size for name, (size, _) in files.items()},
        "sha256": {name: digest for name, (_, digest) in files.items()},
        **(extra or {}),
    }
    meta["mac"] = _manifest_mac(key, meta)
    write_atomic(folder / META, json.dumps(meta, indent=2))  # last: the checkpoint counts from here
    return folder


def read_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Load a complete checkpoint into `state` in place ({"model": ..., "optim": ...}, sharded or not).

    Only the keys present in `state` are read, so a Serve replica can ask for the model alone.
    """
    from elasticml.train.safe_load import load_state

    verify_files(folder)  # before DCP reads anything from it
    with _quiet_single_process():
        # Not dcp.load's own reader and planner: they unpickle .metadata and non-tensor values with plain pickle.
        load_state(state, Path(folder), no_dist=not _distributed())


def _outside(name: object) -> bool:
    """Whether a manifest's file name could point outside its checkpoint folder (or is no name at all)."""
    return type(name) is not str or "/" in name or name in ("", ".", "..")


def _in_place(fs: Any, folder: str, name: str, size: object) -> bool:
    """Whether a listed file is in the folder at its listed size."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(f"{folder}/{name}")
    return bool(info.type == pafs.FileType.File and info.size == size)


def read_meta(folder: str | Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint (local path or s3:// URI); CheckpointError if incomplete or foreign."""
    from elasticml.storage import filesystem_for

    key = checkpoint_key()  # first: without it nothing is trusted, complete or not
    fs, root = filesystem_for(str(folder))
    try:
        with fs.open_input_stream(f"{root}/{META}") as fh:
            body = fh.read(MAX_META + 1)
        if len(body) > MAX_META:
            raise CheckpointError(f"{folder}/{META} is over {MAX_META >> 20} MiB; not a manifest this platform wrote")
        meta = json.loads(body.decode())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a complete elasticml checkpoint (no {META})") from None
    except ValueError:
        raise CheckpointError(f"{folder}/{META} is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{folder} has format {got!r}, expected {FORMAT!r}")
    mac = meta.get("mac")
    if type(mac) is not str or not hmac.compare_digest(mac, _manifest_mac(key, meta)):
        raise CheckpointError(f"{folder} is not signed with this cluster's checkpoint key ({key_path()}): "
                              "written elsewhere, or its meta.json was changed; it is not loaded")
    if not isinstance(meta.get("files"), dict) or not isinstance(meta.get("sha256"), dict) \
            or set(meta["files"]) != set(meta["sha256"]):
        raise CheckpointError(f"{folder}/{META} does not list every file with its size and sha256")
    for name, size in meta["files"].items():
        if _outside(name):
            raise CheckpointError(f"{folder}/{META} names a file outside the checkpoint: {name[:80]!r}")
        if not _in_place(fs, root, name, size):
            raise CheckpointError(f"{folder} is incomplete: {name} is missing or truncated")
    return meta


def verify_files(folder: str | Path) -> dict[str, Any]:
    """read_meta, then every file's sha256 against the (signed) manifest; CheckpointError naming the file."""
    from elasticml.storage import filesystem_for

    meta = read_meta(folder)
    fs, root = filesystem_for(str(folder))
    for name, want in meta["sha256"].items():
        if not hmac.compare_digest(_sha256(lambda name=name: fs.open_input_stream(f"{root}/{name}")), str(want)):
            raise CheckpointError(f"{folder}: {name} is not the file its manifest names (its sha256 differs); "
                                  "the checkpoint is not loaded")
    return meta


def sign_checkpoint(folder: str | Path) -> dict[str, Any]:
    """Sign a complete checkpoint that carries no valid MAC under this cluster's key: one written
    before checkpoints were signed, or under another cluster's key. Whoever runs it vouches for
    the bytes as they are now (it is the migration path, an operator's decision, not a repair):
    every listed file must be there at its listed size; their sha256s are taken now. Returns the
    new manifest. Local folders and s3:// alike; meta.json is replaced in one write."""
    from elasticml.storage import filesystem_for

    key = checkpoint_key()  # signing is where the key is, and nowhere else
    fs, root = filesystem_for(str(folder))
    try:
        with fs.open_input_stream(f"{root}/{META}") as fh:
            raw = json.loads(fh.read(MAX_META).decode())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a checkpoint (no {META})") from None
    except ValueError:
        raise CheckpointError(f"{folder}/{META} is not valid JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or not isinstance(raw.get("files"), dict):
        raise CheckpointError(f"{folder} is not an {FORMAT} checkpoint with a file list; it cannot be signed")

    sha: dict[str, str] = {}
    for name, size in raw["files"].items():
        if _outside(name) or name == META or type(size) is not int:
            raise CheckpointError(f"{folder}/{META} lists a file it cannot hold: {str(name)[:80]!r}")
        if not _in_place(fs, root, name, size):
            raise CheckpointError(f"{folder} is incomplete: {name} is missing or truncated; not signed")
        sha[name] = _sha256(lambda name=name: fs.open_input_stream(f"{root}/{name}"))
    meta = {**{k: v for k, v in raw.items() if k not in ("sha256", "mac")}, "sha256": sha}
    meta["mac"] = _manifest_mac(key, meta)
    from elasticml.storage import write_text_atomic

    write_text_atomic(_meta_uri(folder), json.dumps(meta, indent=2))
    return meta


def _meta_uri(folder: str | Path) -> str:
    return f"{str(folder).rstrip('/')}/{META}"


def copy_checkpoint(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Copy a complete, signed checkpoint to `dst`, a new local folder or s3:// prefix (an upload, a
    download, or between buckets), with a progress bar. Its files go first, several at a time, and
    meta.json last, only once every file is in place and its bytes match the source's signed
    manifest: a copy that fails or is cut off leaves no checkpoint at `dst` (what it wrote is removed
    where it can be). Returns the manifest."""
    from elasticml.storage import copy_tree, exists, filesystem_for, write_text_atomic

    src, dst = str(src), str(dst)
    meta = read_meta(src)
    if exists(_meta_uri(dst)):
        raise CheckpointError(f"{dst} already holds a checkpoint; copy to a new folder")
    try:
        digests = copy_tree(src, dst, files=dict(meta["files"]), desc=f"copying step {meta['step']}")
        for name, want in meta["sha256"].items():
            if not hmac.compare_digest(digests[name], str(want)):
                raise CheckpointError(f"{src}: {name} is not the file its manifest names (its sha256 differs); "
                                      "nothing was copied")
        write_text_atomic(_meta_uri(dst), json.dumps(meta, indent=2))
    except BaseException:
        fs, root = filesystem_for(dst)
        for name in meta["files"]:
            with contextlib.suppress(OSError):
                fs.delete_file(f"{root}/{name}")
        raise
    return meta


def is_complete(folder: str | Path) -> bool:
    checkpoint_key()  # without the key nothing is complete: say so, not False
    try:
        read_meta(folder)
        return True
    except CheckpointError:
        return False


def latest_checkpoint(run_dir: str | Path) -> Path | str | None:
    """The complete checkpoint with the highest step under a Ray Train run folder (local or s3://)."""
    newest = newest_complete(run_dir)
    return None if newest is None else newest[1]


def newest_complete(run_dir: str | Path) -> tuple[int, Path | str] | None:
    """(step, folder) of `latest_checkpoint`'s choice, its manifest read once; None if the run has none."""
    import pyarrow.fs as pafs

    from elasticml.storage import filesystem_for, is_remote

    uri = str(run_dir)
    checkpoint_key()  # without the key every candidate is refused: say so, not "none"
    fs, root = filesystem_for(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return None
    best: tuple[int, str] | None = None
    for info in infos:
        if info.base_name != META:
            continue
        folder_path = info.path.rsplit("/", 1)[0]
        folder = ("s3://" + folder_path) if is_remote(uri) else folder_path
        try:
            step = int(read_meta(folder)["step"])
        except CheckpointError:
            continue
        if best is None or step > best[0]:
            best = (step, folder)
    if best is None:
        return None
    return best[0], (best[1] if is_remote(uri) else Path(best[1]))


def newer_checkpoint(run_dir: str | Path, than: str | Path) -> Path | str | None:
    """The run's newest complete checkpoint (`latest_checkpoint`) where its step is past `than`'s, else None.

    Ray Train resumes a run from the last checkpoint its controller registered. A checkpoint the workers
    wrote and uploaded whose report the controller had not yet taken when they were lost is in storage,
    complete and signed, but not the run's latest as Ray Train knows it: resuming from it saves the steps
    since the one before."""
    newest = newest_complete(run_dir)
    if newest is None:
        return None
    try:
        registered = int(read_meta(than)["step"])
    except CheckpointError:  # not complete (it would not load either): the newest complete one is the choice
        registered = -1
    return newest[1] if newest[0] > registered else None


def _half_written(fs: Any, folder: str) -> bool:
    """Whether a run's checkpoint folder is one a writer left midway: no meta.json (it goes last), one cut off, or a
    manifest of this format naming a file that is missing or short. A manifest that is whole but not signed with
    this cluster's key (a key since rotated, a checkpoint an operator has yet to sign) is no half-write: kept."""
    try:
        with fs.open_input_stream(f"{folder}/{META}") as fh:
            body = fh.read(MAX_META + 1)
    except FileNotFoundError:
        return True
    try:
        meta = json.loads(body.decode())
    except ValueError:
        return len(body) <= MAX_META  # cut off mid-copy; an oversized one is not ours to judge
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        return False
    for name, size in meta["files"].items():
        if _outside(name) or type(size) is not int:
            return False
        if not _in_place(fs, folder, name, size):
            return True
    return False


def remove_half_written(run_dir: str | Path, *, registered: str | Path, keep: tuple[str | Path, ...] = ()) -> list[str]:
    """Delete the checkpoint folders of a Ray Train run (`checkpoint_*` directly under `run_dir`, local or s3://)
    made after `registered`, the last one Ray Train registered, that a writer left midway (`_half_written`),
    except those in `keep`; returns what was deleted.

    A worker lost mid-upload leaves such a folder, which no run loads and Ray Train, never having registered it,
    never deletes. Only folders after the last registered one are looked at (Ray Train names them
    `checkpoint_<date and time>`, so the names sort in time): an older registered checkpoint that is damaged
    stays, since Ray Train refuses to resume a run whose registered checkpoints have gone. Call it only where
    the run's workers do not write: a resumed run's rank 0 does, before its first step (Ray Train shuts the
    attempt's workers down, killing them after a grace period, before it starts the next). A worker cut off
    from the cluster may still be uploading; what it uploads was never registered, and a folder it brings back
    goes at the next resume."""
    import pyarrow.fs as pafs

    from elasticml.storage import filesystem_for, is_remote

    uri = str(run_dir)
    fs, root = filesystem_for(uri)
    after = filesystem_for(str(registered))[1].rstrip("/").rsplit("/", 1)[-1]
    kept = {filesystem_for(str(k))[1].rstrip("/") for k in keep}
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
    except FileNotFoundError:
        return []
    removed = []
    for info in sorted(infos, key=lambda i: i.base_name):
        path = info.path.rstrip("/")
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_") \
                or info.base_name <= after or path in kept:
            continue
        if _half_written(fs, path):
            fs.delete_dir(path)
            removed.append(("s3://" + path) if is_remote(uri) else path)
    return removed


def load_model(folder: str | Path, *, device: str | torch.device = "cpu",
               allowed_modules: tuple[str, ...] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model (eval mode, unsharded) and its meta.json, from a local folder or an s3:// URI.

    The reference transformer is rebuilt from meta's model_config, a user's model with its factory,
    which is imported only when its module is in `allowed_modules` (None: any, for the training
    process that wrote it; a Serve deployment passes its own list).
    """
    from elasticml.models.user import build_user_model
    from elasticml.storage import download_dir

    read_meta(folder)
    local = download_dir(str(folder))
    meta = verify_files(local)  # the local copy is what gets read
    factory = meta.get("model")
    if factory and allowed_modules is not None:
        module = str(factory).split(":", 1)[0]
        if not any(module == m or module.startswith(m + ".") for m in allowed_modules):
            raise CheckpointError(f"{folder} needs the model factory {str(factory)[:100]!r}, whose module is not in "
                                  f"this deployment's allowed_model_modules ({', '.join(allowed_modules) or 'none'})")
    model = build_user_model(factory) if factory else Transformer(ModelConfig(**meta["model_config"]))
    state = {"model": model.state_dict()}
    read_state(local, state)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


def resolve_checkpoint(spec: str) -> str:
    """A checkpoint folder, or `latest:RUN_DIR` for the newest complete checkpoint of a run."""
    if spec.startswith("latest:"):
        target = spec.removeprefix("latest:")
        run_dir = target if "://" in target else Path(target).expanduser()
        found = latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(
                f"no complete checkpoint under {run_dir}; train one first (jobs/train.py) or pass a checkpoint folder"
            )
        return str(found)
    where = spec if "://" in spec else str(Path(spec).expanduser())
    verify_files(where)  # refuse an incomplete, unsigned or altered checkpoint before any replica starts
    return where
