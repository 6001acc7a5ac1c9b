"""A tiny reference transformer trained for a few hundred steps in this process (plain torch): a
teacher, or a good checkpoint, for tests that need a model which has learned something."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def train_tiny(corpus: str | Path, *, steps: int, lr: float = 3e-3, seq_len: int = 64, batch: int = 16,
               seed: int = 0) -> torch.nn.Module:
    from elasticml.data.loader import TokenBlocks
    from elasticml.models import build_model

    torch.manual_seed(seed)
    model = build_model("tiny")
    blocks = TokenBlocks(str(corpus), seq_len=seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = blocks.batch(step, global_batch=batch)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
