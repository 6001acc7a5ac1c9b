"""`elasticml checkpoint`: verify, sign and copy checkpoints."""

from __future__ import annotations

import time

import click

from elasticml.cli.options import emit, json_option


@click.group()
def checkpoint() -> None:
    """Checkpoints: verify, copy (to or from S3), or sign one written before checkpoints were signed."""


@checkpoint.command("verify")
@click.argument("path")
@json_option
def checkpoint_verify(path: str, as_json: bool) -> None:
    """Exit 0 if PATH is complete, signed with this cluster's key ($ELASTICML_CHECKPOINT_KEY_PATH) and
    every file matches its digest."""
    from elasticml.train.checkpoint import verify_files

    meta = verify_files(path)
    if emit(as_json, {"path": path, "step": meta["step"], "files": len(meta["files"]), "intact": True}):
        return
    click.echo(f"{path}: step {meta['step']}, {len(meta['files'])} files, signed and intact")


@checkpoint.command("sign")
@click.argument("path")
@json_option
def checkpoint_sign(path: str, as_json: bool) -> None:
    """Sign PATH with this cluster's checkpoint key, vouching for its bytes as they are now.

    For checkpoints written before checkpoints were signed (or under another cluster's key): Serve
    and `latest:` refuse them until then. Run it where the key is ($ELASTICML_CHECKPOINT_KEY_PATH: the
    head, or the launching machine), only on checkpoints you trust: a signed checkpoint's weights
    are loaded and served (its files run no code either way: elasticml.train.safe_load).
    """
    from elasticml.train.checkpoint import sign_checkpoint

    meta = sign_checkpoint(path)
    if emit(as_json, {"path": path, "step": meta["step"], "files": len(meta["files"]), "signed": True}):
        return
    click.echo(f"{path}: step {meta['step']}, {len(meta['files'])} files signed")


@checkpoint.command("copy")
@click.argument("src")
@click.argument("dst")
@json_option
def checkpoint_copy(src: str, dst: str, as_json: bool) -> None:
    """Copy the checkpoint SRC to DST, a new folder or s3:// prefix (upload, download or between buckets).

    SRC must be complete and signed with this cluster's key. DST becomes a checkpoint only once every
    file is in and matches SRC's manifest; a copy that fails leaves none there.
    """
    from elasticml.train.checkpoint import copy_checkpoint

    t0 = time.monotonic()
    meta = copy_checkpoint(src, dst)
    size = sum(meta["files"].values())
    if emit(as_json, {"src": src, "dst": dst, "step": meta["step"], "files": len(meta["files"]), "bytes": size,
                       "seconds": round(time.monotonic() - t0, 2)}):
        return
    click.echo(f"{dst}: step {meta['step']}, {len(meta['files'])} files, {size / 1e6:.1f} MB copied from {src} "
               f"in {time.monotonic() - t0:.1f}s")
