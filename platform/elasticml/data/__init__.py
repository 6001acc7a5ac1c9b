"""Data: byte-level Parquet text corpora, built once and read per worker."""

from elasticml.data.corpus import CorpusManifest, build_corpus, read_manifest
from elasticml.data.loader import TokenBlocks

__all__ = ["CorpusManifest", "build_corpus", "read_manifest", "TokenBlocks"]
