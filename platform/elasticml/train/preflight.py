"""What a training run checks before Ray Train starts a worker: that its data is a complete corpus
whose shards are all there, and that its storage can be reached. A bad path then fails in about a
second with one line, instead of every worker failing, retrying and printing the same traceback.
(The model factory is checked when the TrainConfig is built.)"""

from __future__ import annotations

import pyarrow.fs as pafs

from elasticml.data.corpus import read_manifest
from elasticml.errors import DataError, ElasticMLError
from elasticml.storage import filesystem_for, is_remote
from elasticml.train.config import TrainConfig


def preflight(cfg: TrainConfig) -> None:
    """DataError (data), CheckpointError (no checkpoint key; teacher, init_from) or ElasticMLError
    (storage) naming the path, before anything starts."""
    from elasticml.train.checkpoint import checkpoint_key, verify_files

    checkpoint_key()  # the run signs every checkpoint with it: without one, fail now, not at the first
    for name in ("teacher", "init_from"):
        where = getattr(cfg, name)
        if where is not None:
            try:
                verify_files(where)  # complete, signed and unaltered: every worker will load it
            except ElasticMLError as exc:
                raise type(exc)(f"{name}: {exc}") from None
    manifest = read_manifest(cfg.data)
    fs, root = filesystem_for(str(cfg.data))
    paths = [f"{root}/{shard}" for shard in manifest.shards]
    missing = [p for p, info in zip(paths, fs.get_file_info(paths)) if info.type != pafs.FileType.File]
    if missing:
        raise DataError(f"corpus {cfg.data} is incomplete: {len(missing)} of its {len(paths)} shards are missing "
                        f"({missing[0].rsplit('/', 1)[-1]} first)")
    fs, root = filesystem_for(cfg.storage_path)
    try:
        if is_remote(cfg.storage_path):
            fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=False))
        else:
            fs.create_dir(root, recursive=True)
    except OSError as exc:
        raise ElasticMLError(f"cannot reach the storage path {cfg.storage_path}: {str(exc).splitlines()[0][:200]}") from None
