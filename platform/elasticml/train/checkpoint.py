"""elasticml checkpoints: what a training run saves and a Serve replica loads.

A checkpoint is a folder with `model.pt` (the full, unsharded state dict),
`optim.pt` and `meta.json`. `meta.json` is written last and lists every other
file with its size: a folder is a complete checkpoint exactly when meta.json is
present and every file it lists has the listed size, so a half-written or
half-copied checkpoint is never loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from elasticml.errors import CheckpointError
from elasticml.models.transformer import ModelConfig, Transformer

META = "meta.json"
FORMAT = "elasticml.checkpoint/v1"


def write_checkpoint(
    folder: Path,
    *,
    model_state: dict[str, torch.Tensor],
    optim_state: dict[str, Any] | None,
    model_config: ModelConfig,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"model.pt": model_state}
    if optim_state is not None:
        files["optim.pt"] = optim_state
    sizes = {}
    for name, obj in files.items():
        torch.save(obj, folder / name)
        sizes[name] = (folder / name).stat().st_size
    meta = {
        "format": FORMAT,
        "step": step,
        "model_config": model_config.to_dict(),
        "files": sizes,
        **(extra or {}),
    }
    tmp = folder / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, folder / META)
    return folder


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


def load_model(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[Transformer, dict[str, Any]]:
    """The trained model (eval mode) and its meta.json, from a local folder or an s3:// URI."""
    from elasticml.storage import download_dir

    meta = read_meta(folder)
    local = download_dir(str(folder))
    model = Transformer(ModelConfig(**meta["model_config"]))
    state = torch.load(local / "model.pt", map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), meta
