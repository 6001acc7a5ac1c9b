"""A user's own model for the `module:factory` tests: a small causal convolutional byte LM.

Nothing like the reference transformer on purpose: other parameter names, a
`layers` list instead of `blocks`, no KV cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalConvBlock(nn.Module):
    def __init__(self, d: int, kernel: int = 4):
        super().__init__()
        self.kernel = kernel
        self.norm = nn.LayerNorm(d)
        self.conv = nn.Conv1d(d, d, kernel, groups=d)
        self.mix = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)
        h = self.conv(F.pad(h, (self.kernel - 1, 0))).transpose(1, 2)  # left padding: causal
        return x + self.mix(F.gelu(h))


class ByteConvLM(nn.Module):
    def __init__(self, d: int = 32, n_layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(256, d)
        self.layers = nn.ModuleList(CausalConvBlock(d) for _ in range(n_layers))
        self.head = nn.Linear(d, 256)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def build() -> ByteConvLM:
    return ByteConvLM()


def not_a_module() -> str:
    return "oops"


def wrong_shape() -> nn.Module:
    return nn.Linear(4, 4)
