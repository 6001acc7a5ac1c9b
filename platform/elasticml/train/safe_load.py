"""Reading a DCP checkpoint without running code from it.

torch.distributed.checkpoint (torch 2.13) unpickles two things from a checkpoint folder with plain
pickle: its `.metadata` (`FileSystemReader.read_metadata`: `pickle.load`) and every non-tensor
value of the state dict, such as the optimizer's hyper-parameters (`DefaultLoadPlanner.load_bytes`:
`torch.load(weights_only=False)`). Pickle calls whatever callable the bytes name. The manifest's
MAC (train/checkpoint.py) proves the bytes are the ones a holder of the cluster's key wrote, not
that they are harmless: every training job runs where the key is. So nothing here trusts them:

- `.metadata` goes through `MetadataUnpickler`, which builds only what DCP metadata is made of
  (`ALLOWED`, plus any torch dtype, which pickles as a reference to its name in `torch`) and raises
  CheckpointError naming any other global before importing it. The result must be a DCP `Metadata`
  whose storage entries name files inside the folder.
- Non-tensor values load with `torch.load(weights_only=True)`, the loader DCP already uses for
  tensors (plain containers, numbers, strings, tensors).

DCP has no weights-only switch for either in this version; `dcp.load` takes a storage reader and a
load planner, and `SafeReader` and `WeightsOnlyPlanner` are those (`load_state` uses both). The reader
reads `.metadata` when it is made, so a refusal is a CheckpointError of its own (inside `dcp.load`
it would come back as DCP's text), and it never falls back to per-rank metadata (`__<rank>.metadata`),
which DCP reads when `.metadata` fails and which no manifest of ours lists.

How `ALLOWED` was derived: real checkpoints of the project's model (model only; model and AdamW
state; FSDP2-sharded on 1 and on 2 ranks) were written with `dcp.save`, and the globals their
`.metadata` pickles reference were listed (pickletools, and an unpickler that records
`find_class`). All four reference exactly these names and `torch.float32`; dataclasses come back
through pickle's NEWOBJ/BUILD opcodes, which need no global. Extend it only the same way.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from typing import IO, Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from elasticml.errors import CheckpointError

_DCP = "torch.distributed.checkpoint.metadata"
ALLOWED = frozenset({
    (_DCP, "Metadata"),
    (_DCP, "StorageMeta"),
    (_DCP, "TensorStorageMetadata"),
    (_DCP, "BytesStorageMetadata"),
    (_DCP, "ChunkStorageMetadata"),
    (_DCP, "TensorProperties"),
    (_DCP, "MetadataIndex"),
    (_DCP, "_MEM_FORMAT_ENCODING"),  # TensorProperties' memory format, an Enum looked up by value
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),  # which file and byte range holds a chunk
    ("torch", "Size"),  # shapes and offsets: a tuple
    ("torch.serialization", "_get_layout"),  # a layout by its name: a dict lookup
    ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id, the folder it was written to: no I/O on creation
})
"""Every global DCP's `.metadata` may name, as (module, name); torch dtypes are allowed apart."""
_DTYPES = frozenset(name for name, value in vars(torch).items() if isinstance(value, torch.dtype))


class MetadataUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only `ALLOWED` globals and torch dtypes."""

    def __init__(self, file: IO[bytes], *, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and name in _DTYPES:
            return getattr(torch, name)  # a dtype object, which is not callable
        raise CheckpointError(f"{self.source} names the global {module[:80]}.{name[:80]}, which DCP metadata never "
                              "holds: refused, nothing from it was run")


def load_metadata(file: IO[bytes], *, source: str) -> Metadata:
    """DCP metadata from a `.metadata` stream, through `MetadataUnpickler`, checked for shape."""
    try:
        metadata = MetadataUnpickler(file, source=source).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            RuntimeError) as exc:
        raise CheckpointError(f"{source} is not DCP metadata ({type(exc).__name__})") from None
    if type(metadata) is not Metadata or not isinstance(metadata.state_dict_metadata, dict) \
            or not isinstance(metadata.storage_data, dict) \
            or not isinstance(metadata.storage_meta, (StorageMeta, type(None))):
        raise CheckpointError(f"{source} is not DCP metadata (it holds a {type(metadata).__name__})")
    for info in metadata.storage_data.values():
        # Each chunk is read from `relative_path` in the folder: never from a file outside it.
        path = getattr(info, "relative_path", None)
        if type(info) is not _StorageInfo or type(path) is not str or "/" in path or "\\" in path \
                or path in ("", ".", ".."):
            raise CheckpointError(f"{source} points a chunk outside the checkpoint: {str(path)[:80]!r}")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's FileSystemReader with `.metadata` read through `load_metadata`, once, when it is made
    (CheckpointError then), and no per-rank metadata."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._metadata = self._load()

    def _load(self) -> Metadata:
        path = self._get_metadata_path()
        with self.fs.create_stream(path, "rb") as fh:
            return load_metadata(fh, source=str(path))  # type: ignore[arg-type]  # opened "rb": a binary stream

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        super().reset(checkpoint_id)
        if checkpoint_id:
            self._metadata = self._load()

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"{self.path}: only the checkpoint's own .metadata is read, not a rank's")
        metadata = self._metadata
        # What FileSystemReader.read_metadata does after unpickling.
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyPlanner(DefaultLoadPlanner):
    """DCP's DefaultLoadPlanner with non-tensor values loaded by `torch.load(weights_only=True)`."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            named = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            why = f"it names the global {named.group(1)[:100]}" if named else type(exc).__name__
            raise CheckpointError(f"the checkpoint's value {fqn[:100]} is not plain data ({why}): refused, "
                                  "nothing from it was run") from None
        # The rest is DefaultLoadPlanner.load_bytes.
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def load_state(state: dict[str, Any], folder: str | os.PathLike[str], *, no_dist: bool) -> None:
    """`dcp.load` of `folder` into `state` through `SafeReader` and `WeightsOnlyPlanner`; their
    refusals come out as the CheckpointError they raised, not inside DCP's CheckpointException."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader = SafeReader(folder)
    try:
        dcp.load(state, storage_reader=reader, planner=WeightsOnlyPlanner(), no_dist=no_dist)
    except CheckpointException as exc:
        ours = [failure for failure, _ in exc.failures.values() if isinstance(failure, CheckpointError)]
        if ours:
            raise ours[0] from None
        raise
