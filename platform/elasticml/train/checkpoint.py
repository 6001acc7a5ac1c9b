"""elasticml checkpoints: what a training run saves and a Serve replica loads.

A checkpoint is a folder written with `torch.distributed.checkpoint` (DCP):
every worker writes only its own shards (`__<rank>_0.distcp`), rank 0 adds
DCP's `.metadata`, and then, last, our `meta.json`, which lists every file of
every rank with its size. Ray Train merges the workers' folders into one
checkpoint folder in the run's storage. A folder is a complete checkpoint
exactly when meta.json is present and every file it lists has the listed size,
so a half-written or half-uploaded checkpoint is never loaded.

Because DCP stores tensors with their global shapes and offsets, a checkpoint
written by N workers loads into M workers (an elastic run that shrank or grew)
and into a single unsharded process (a Serve replica) alike.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from elasticml.atomic import write_atomic
from elasticml.errors import CheckpointError
from elasticml.models.transformer import ModelConfig, Transformer

META = "meta.json"
FORMAT = "elasticml.checkpoint/v2"


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

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"model": model_state}
    if optim_state is not None:
        state["optim"] = optim_state
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=folder, no_dist=not _distributed())
    mine = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name != META}
    if _distributed():
        everyone: list[dict[str, int] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        if dist.get_rank() != 0:
            return folder
        sizes = {name: size for part in everyone for name, size in (part or {}).items()}
    else:
        sizes = mine
    meta = {
        "format": FORMAT,
        "step": step,
        "model_config": model_config.to_dict() if model_config else None,
        "files": sizes,
        **(extra or {}),
    }
    write_atomic(folder / META, json.dumps(meta, indent=2))  # last: the checkpoint counts from here
    return folder


def read_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Load a complete checkpoint into `state` in place ({"model": ..., "optim": ...}, sharded or not).

    Only the keys present in `state` are read, so a Serve replica can ask for the model alone.
    """
    import torch.distributed.checkpoint as dcp

    read_meta(folder)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=Path(folder), no_dist=not _distributed())


def read_meta(folder: str | Path) -> dict[str, Any]:
    """meta.json of a complete checkpoint (local path or s3:// URI); CheckpointError if incomplete or foreign."""
    import pyarrow.fs as pafs

    from elasticml.storage import filesystem_for

    fs, root = filesystem_for(str(folder))
    try:
        with fs.open_input_stream(f"{root}/{META}") as fh:
            meta = json.loads(fh.read().decode())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a complete elasticml checkpoint (no {META})") from None
    except ValueError:
        raise CheckpointError(f"{folder}/{META} is not valid JSON") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder} has format {meta.get('format')!r}, expected {FORMAT!r}")
    for name, size in meta["files"].items():
        info = fs.get_file_info(f"{root}/{name}")
        if info.type != pafs.FileType.File or info.size != size:
            raise CheckpointError(f"{folder} is incomplete: {name} is missing or truncated")
    return meta


def is_complete(folder: str | Path) -> bool:
    try:
        read_meta(folder)
        return True
    except CheckpointError:
        return False


def latest_checkpoint(run_dir: str | Path) -> Path | str | None:
    """The complete checkpoint with the highest step under a Ray Train run folder (local or s3://)."""
    import pyarrow.fs as pafs

    from elasticml.storage import filesystem_for, is_remote

    uri = str(run_dir)
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
    return best[1] if is_remote(uri) else Path(best[1])


def load_model(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained model (eval mode, unsharded) and its meta.json, from a local folder or an s3:// URI.

    The reference transformer is rebuilt from meta's model_config, a user's model with its factory.
    """
    from elasticml.models.user import build_user_model
    from elasticml.storage import download_dir

    meta = read_meta(folder)
    local = download_dir(str(folder))
    model = build_user_model(meta["model"]) if meta.get("model") else Transformer(ModelConfig(**meta["model_config"]))
    state = {"model": model.state_dict()}
    read_state(local, state)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta
