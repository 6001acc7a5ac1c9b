"""`elasticml data`: build Parquet corpora."""

from __future__ import annotations

from pathlib import Path

import click

from elasticml.cli.options import emit, json_option


@click.group()
def data() -> None:
    """Build and inspect Parquet corpora."""


@data.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write the corpus to (its shards and manifest).")
@click.option("--shards", type=int, default=4, show_default=True, help="Parquet files the corpus is split into.")
@click.option("--max-mb", type=float, default=8.0, show_default=True, help="Corpus size cap.")
@click.option("--source", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Folder of .py sources [default: Python's standard library]; e.g. a held-out corpus "
                   "for `elasticml optimize` from a package the training corpus does not reach.")
@json_option
def data_build(out: Path, shards: int, max_mb: float, source: Path | None, as_json: bool) -> None:
    """Write a byte-level text corpus from Python sources (the standard library's by default)."""
    from elasticml.data.corpus import MAX_BYTES, build_corpus
    from elasticml.dataconf import check_number

    check_number(max_mb, field="max_mb", lo=1e-6, hi=MAX_BYTES / 1e6)
    manifest = build_corpus(out, num_shards=shards, max_bytes=max(1, int(max_mb * 1e6)), source_dir=source)
    if emit(as_json, {"out": str(out), "documents": manifest.num_documents, "bytes": manifest.num_bytes,
                       "shards": list(manifest.shards)}):
        return
    click.echo(f"wrote {manifest.num_documents} documents, {manifest.num_bytes / 1e6:.1f} MB, "
               f"{len(manifest.shards)} shards to {out}")
