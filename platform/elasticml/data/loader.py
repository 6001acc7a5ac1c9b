"""Token blocks for training: a corpus as fixed-length byte sequences, split across workers.

Every document's UTF-8 bytes are joined with a separator (byte 0, which source
text never contains) into one stream and cut into blocks of `seq_len + 1`
bytes (inputs and next-byte targets). Block order is a permutation seeded by
(seed, epoch), the same on every worker.

Position is *global*: the batch of global step s is blocks
[s * global_batch, (s + 1) * global_batch) of the epoch-by-epoch stream, and
worker r of w takes its contiguous share of it. The data position is
therefore just the step, and a run resumed with a different number of workers
neither repeats nor skips a sample.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from elasticml.data.corpus import read_manifest
from elasticml.errors import ConfigError, DataError

SEPARATOR = 0


class TokenBlocks:
    def __init__(self, corpus_dir: str, *, seq_len: int, seed: int = 0) -> None:
        if seq_len < 1:
            raise ConfigError(f"must be >= 1, got {seq_len}", field="seq_len")
        from elasticml.storage import filesystem_for

        manifest = read_manifest(corpus_dir)
        fs, root = filesystem_for(str(corpus_dir))
        parts: list[bytes] = []
        for shard in manifest.shards:
            table = pq.read_table(f"{root}/{shard}", columns=["text"], filesystem=fs)
            parts.extend(text.encode("utf-8") for text in table.column("text").to_pylist())
        stream = np.frombuffer(bytes([SEPARATOR]).join(parts), dtype=np.uint8)
        n_blocks = len(stream) // (seq_len + 1)
        if n_blocks < 1:
            raise DataError(f"corpus {corpus_dir} is shorter than one block of {seq_len + 1} bytes")
        self.blocks = stream[: n_blocks * (seq_len + 1)].reshape(n_blocks, seq_len + 1)
        self.seq_len = seq_len
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.blocks)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng((self.seed, epoch)).permutation(len(self.blocks))}
        return self._orders[epoch]

    def sample_ids(self, step: int, *, global_batch: int, rank: int, world_size: int) -> list[int]:
        """Global sample ids (positions in the epoch-by-epoch stream) that this worker reads at step.

        The global batch is split as evenly as it goes (the first global_batch % world_size
        workers take one more), so an elastic run may have any number of workers up to the batch.
        """
        if world_size > global_batch:
            raise ConfigError(f"global batch {global_batch} is smaller than the {world_size} workers", field="global_batch")
        base, extra = divmod(global_batch, world_size)
        local = base + (1 if rank < extra else 0)
        first = step * global_batch + rank * base + min(rank, extra)
        return list(range(first, first + local))

    def batch(self, step: int, *, global_batch: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (global_batch / world_size, seq_len) int64."""
        rows = []
        for sid in self.sample_ids(step, global_batch=global_batch, rank=rank, world_size=world_size):
            epoch, i = divmod(sid, len(self.blocks))
            rows.append(self.blocks[self._order(epoch)[i]])
        data = torch.from_numpy(np.stack(rows).astype(np.int64))
        return data[:, :-1], data[:, 1:]
