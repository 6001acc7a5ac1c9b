"""A sharded Parquet text corpus built from text every machine has.

The corpus is Python's own standard library sources (`sysconfig`'s stdlib
path): present wherever Python is, real text, and nothing to download. Rows
are documents (`path`, `text`); shards are contiguous runs of documents in
sorted path order, so a build is deterministic for a given Python.

A corpus folder is complete exactly when `_MANIFEST.json` is present: the
builder writes the shards into a temporary sibling folder, then the manifest,
then renames the folder into place, so a crash never leaves a half-written
corpus that a reader would take for whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from elasticml import progress
from elasticml.dataconf import check_number
from elasticml.errors import DataError

MANIFEST = "_MANIFEST.json"
FORMAT = "elasticml.corpus/v1"
MAX_SHARDS = 4096
MAX_BYTES = 100_000_000_000


@dataclass(kw_only=True, frozen=True)
class CorpusManifest:
    format: str
    shards: list[str]
    """Shard file names, in read order."""
    num_documents: int
    num_bytes: int
    source: str
    sha256: dict[str, str]
    """Per shard, so a reader can tell a corrupted shard from a good one."""


def build_corpus(
    out_dir: str | Path,
    *,
    num_shards: int = 4,
    max_bytes: int = 8_000_000,
    source_dir: str | Path | None = None,
    force: bool = False,
) -> CorpusManifest:
    """Write the corpus to out_dir; a complete corpus already there is reused unless force."""
    check_number(num_shards, field="num_shards", lo=1, hi=MAX_SHARDS, integer=True)
    check_number(max_bytes, field="max_bytes", lo=1, hi=MAX_BYTES, integer=True)
    out = Path(out_dir)
    if (out / MANIFEST).is_file() and not force:
        return read_manifest(out)
    source = Path(source_dir or sysconfig.get_paths()["stdlib"])
    docs = _collect(source, max_bytes)
    if len(docs) < num_shards:
        raise DataError(f"{source} holds {len(docs)} text files, fewer than the {num_shards} shards asked for")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shards, digests = [], {}
        per_shard = -(-len(docs) // num_shards)
        for i in progress.bar("writing shards", iterable=range(num_shards), total=num_shards, unit="shard"):
            chunk = docs[i * per_shard : (i + 1) * per_shard]
            name = f"shard-{i:05d}.parquet"
            table = pa.table({"path": [p for p, _ in chunk], "text": [t for _, t in chunk]})
            pq.write_table(table, staging / name, row_group_size=256)
            shards.append(name)
            digests[name] = _sha256(staging / name)
        manifest = CorpusManifest(
            format=FORMAT,
            shards=shards,
            num_documents=len(docs),
            num_bytes=sum(len(t.encode()) for _, t in docs),
            source=str(source),
            sha256=digests,
        )
        (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def read_manifest(corpus_dir: str | Path) -> CorpusManifest:
    """The manifest of a complete corpus at a local path or an s3:// URI."""
    from elasticml.storage import read_text

    path = f"{str(corpus_dir).rstrip('/')}/{MANIFEST}"
    try:
        raw = json.loads(read_text(path))
    except FileNotFoundError:
        raise DataError(
            f"{corpus_dir} is not a complete corpus (no {MANIFEST}); build one with `elasticml data build --out {corpus_dir}`"
        ) from None
    if raw.get("format") != FORMAT:
        raise DataError(f"{path} has format {raw.get('format')!r}, expected {FORMAT!r}")
    return CorpusManifest(**raw)


def _collect(source: Path, max_bytes: int) -> list[tuple[str, str]]:
    docs: list[tuple[str, str]] = []
    total = 0
    with progress.bar(f"reading {source.name} sources", total=max_bytes, in_bytes=True) as shown:
        for path in sorted(source.rglob("*.py")):
            if "site-packages" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if not text.strip():
                continue
            docs.append((str(path.relative_to(source)), text))
            size = len(text.encode())
            shown.update(min(size, max_bytes - total))
            total += size
            if total >= max_bytes:
                break
    return docs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
