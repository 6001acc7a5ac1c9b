"""The reference decoder-only transformer, byte-level (vocabulary 256).

A Llama-style block stack (RMSNorm, rotary positions, SwiGLU MLP, no biases)
kept small and plain so that FSDP2 can shard it block by block and a CPU can
train the *tiny* size in seconds. Bytes need no tokenizer, so nothing is ever
downloaded.

FLOPs per token (used for MFU) follow the PaLM appendix B convention:
6 * N for the dense matmuls of forward + backward (N = non-embedding
parameters) plus 12 * n_layers * d_model * seq_len for attention scores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from elasticml.errors import ConfigError


@dataclass(kw_only=True, frozen=True)
class ModelConfig:
    vocab_size: int = 256
    """Bytes: 256 symbols, no tokenizer."""
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    max_seq_len: int = 128
    """Longest context the rotary table and KV cache are built for."""
    mlp_hidden: int | None = None
    """SwiGLU hidden width; default 8/3 * d_model rounded up to a multiple of 64."""
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", field=f"model.{name}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}", field="model.d_model"
            )
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError("head dimension d_model/n_heads must be even (rotary pairs)", field="model.n_heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 64 * math.ceil(8 * self.d_model / 3 / 64)

    def num_params(self, *, embeddings: bool = True) -> int:
        d, h = self.d_model, self.hidden
        per_layer = 4 * d * d + 3 * d * h + 2 * d
        total = self.n_layers * per_layer + d  # final norm
        if embeddings:
            total += 2 * self.vocab_size * d  # input embedding and output head (untied)
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: forward + backward (see module docstring)."""
        return 6 * self.num_params(embeddings=False) + 12 * self.n_layers * self.d_model * seq_len

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


SIZES: dict[str, ModelConfig] = {
    # Seconds per step on 2 CPU cores: tests, the demo, small shops' smoke runs.
    "tiny": ModelConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=128),
    "small": ModelConfig(d_model=256, n_layers=4, n_heads=4, max_seq_len=256),
    "125m": ModelConfig(d_model=768, n_layers=18, n_heads=12, max_seq_len=1024),
    "350m": ModelConfig(d_model=1024, n_layers=28, n_heads=16, max_seq_len=1024),
    "1b": ModelConfig(d_model=2048, n_layers=20, n_heads=16, max_seq_len=2048),
}


def build_model(size: str | ModelConfig) -> Transformer:
    if isinstance(size, ModelConfig):
        return Transformer(size)
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}", field="model.size")
    return Transformer(SIZES[size])


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return norm.type_as(x) * self.weight


def rotary_table(head_dim: int, max_seq_len: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freqs)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # (T, head_dim/2, 2)


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); table: (T, D/2, 2) for the positions of x."""
    xf = x.float().unflatten(-1, (-1, 2))
    cos, sin = table[..., 0], table[..., 1]
    out = torch.stack(
        [xf[..., 0] * cos - xf[..., 1] * sin, xf[..., 0] * sin + xf[..., 1] * cos], dim=-1
    )
    return out.flatten(-2).type_as(x)


@dataclass
class KVCache:
    """Keys and values of every layer for the positions generated so far."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0
    pad: torch.Tensor | None = None
    """(B,) left-padding positions per row of a batch of prompts of different lengths; they are never attended to.
    Rotary positions are relative, so a row shifted right by its padding computes what it computes alone."""

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, *, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> KVCache:
        shape = (batch, config.n_heads, config.max_seq_len, config.head_dim)
        return cls(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
        )


def decode_mask(start: int | torch.Tensor, t: int, pad: torch.Tensor | None, device: torch.device | None = None
                ) -> torch.Tensor:
    """Which keys (positions 0..start+t-1) each of t new queries (positions start..) may attend to:
    (t, S) causal, or with `pad` (B,) left padding positions per row, (B, 1, t, S), padding never
    attended to. Built from comparisons of positions, so an exported graph (ONNX) computes it too."""
    keys = torch.arange(start + t, device=device)  # type: ignore[arg-type]  # a 0-d tensor end works (and traces for ONNX); torch's stub says Number
    queries = start + torch.arange(t, device=device)
    causal = keys[None, :] <= queries[:, None]  # (t, S)
    if pad is None:
        return causal
    real = keys[None, :] >= pad[:, None]  # (B, S)
    # A padding query still sees itself, so that its (unused) row stays finite instead of NaN.
    itself = keys[None, :] == queries[:, None]  # (t, S)
    return causal[None, None] & (real[:, None, None, :] | itself[None, None])


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def heads(self, x: torch.Tensor, rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (both rotated) and values, (B, H, T, D) each."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        return apply_rotary(q, rope), apply_rotary(k, rope), v

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.heads(x, rope)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            start = cache.length
            cache.keys[layer][:, :, start : start + t] = k
            cache.values[layer][:, :, start : start + t] = v
            k_all = cache.keys[layer][:, :, : start + t]
            v_all = cache.values[layer][:, :, : start + t]
            mask = decode_mask(start, t, cache.pad, x.device)
            y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.hidden, bias=False)
        self.up = nn.Linear(config.d_model, config.hidden, bias=False)
        self.down = nn.Linear(config.hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    rope: torch.Tensor  # a buffer registered in __init__, declared for the type checker

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # A buffer, not a parameter: FSDP leaves it whole on every rank.
        self.register_buffer("rope", rotary_table(config.head_dim, config.max_seq_len), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Residual projections scaled down with depth (GPT-2), so deep stacks start stable.
                scale = 1 / math.sqrt(2 * self.config.n_layers) if name.endswith(("out.weight", "down.weight")) else 1.0
                nn.init.normal_(p, mean=0.0, std=std * scale)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens: (B, T) int64 -> logits (B, T, vocab). With a cache, T new positions are appended."""
        start = cache.length if cache is not None else 0
        t = tokens.shape[1]
        if start + t > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + t} exceeds max_seq_len={self.config.max_seq_len}")
        x = self.embed(tokens)
        rope = self.rope[start : start + t]
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.length = start + t
        return self.head(self.norm(x))
