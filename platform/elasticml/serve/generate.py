"""Byte-level generation and scoring with a KV cache: what a replica runs per batch of requests.

A batch holds prompts of different lengths: they are left-padded to the
longest and the padding is masked out of attention (`KVCache.pad`). Rotary
positions are relative, so each row computes what it would compute alone;
`tests/unit/test_generate.py` holds batched and one-by-one output equal.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from elasticml.models.transformer import KVCache, Transformer


@dataclass(frozen=True, kw_only=True)
class Prompt:
    text: bytes
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    cancel: threading.Event | None = field(default=None, compare=False)
    """Set when nobody waits for the answer any more (past its deadline, client gone): the row stops."""

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


def _fit(model: Transformer, prompt: Prompt) -> list[int]:
    """The prompt cut from the left so that prompt + completion fits the context, as a chat client would."""
    if not prompt.text:
        raise ValueError("prompt must not be empty")
    limit = model.config.max_seq_len - prompt.max_tokens
    if limit < 1:
        raise ValueError(f"max_tokens={prompt.max_tokens} leaves no room for a prompt in a "
                         f"{model.config.max_seq_len}-byte context")
    return list(prompt.text[-limit:])


@torch.inference_mode()
def generate_batch(model: Transformer, prompts: list[Prompt]) -> list[bytes]:
    """Continue every prompt by its max_tokens bytes; temperature 0 is greedy (deterministic).

    A cancelled prompt gets no more bytes, and once every unfinished row is cancelled the batch
    stops: a request nobody waits for does not keep the replica busy.
    """
    rows = [_fit(model, p) for p in prompts]
    device = next(model.parameters()).device
    width = max(len(r) for r in rows)
    steps = max(p.max_tokens for p in prompts)
    if width + steps > model.config.max_seq_len:
        # Rows of different budgets together overflow the context: split rather than cut a prompt further.
        half = len(prompts) // 2
        return generate_batch(model, prompts[:half]) + generate_batch(model, prompts[half:])
    tokens = torch.tensor([[0] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
    cache = KVCache.empty(model.config, len(rows), device=device, dtype=next(model.parameters()).dtype)
    if any(len(r) < width for r in rows):
        cache.pad = torch.tensor([width - len(r) for r in rows], device=device)
    generators = []
    for p in prompts:
        gen = torch.Generator(device=device)
        if p.seed is not None:
            gen.manual_seed(p.seed % 2**32)  # what the CPU generator keeps anyway; never overflows
        generators.append(gen)
    logits = model(tokens, cache)[:, -1]
    out: list[list[int]] = [[] for _ in prompts]
    for step in range(steps):
        if all(p.cancelled or len(out[i]) >= p.max_tokens for i, p in enumerate(prompts)):
            break
        nxt = logits.argmax(-1)
        for i, p in enumerate(prompts):
            if p.temperature > 0:
                probs = torch.softmax(logits[i].float() / p.temperature, -1)
                # One row's impossible temperature must not fail its batch neighbours: it goes greedy.
                if bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0:
                    nxt[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
            if len(out[i]) < p.max_tokens and not p.cancelled:
                out[i].append(int(nxt[i]))
        if step + 1 < steps:
            logits = model(nxt.view(-1, 1), cache)[:, -1]
    return [bytes(o) for o in out]


def generate(model: Transformer, prompt: bytes, *, max_tokens: int, temperature: float = 0.0,
             seed: int | None = None) -> bytes:
    return generate_batch(model, [Prompt(text=prompt, max_tokens=max_tokens, temperature=temperature, seed=seed)])[0]


@torch.inference_mode()
def log_likelihood(model: Transformer, context: bytes, continuation: bytes) -> tuple[float, int]:
    """Sum of log p(continuation | context) in nats, and the number of bytes scored.

    With an empty context the first byte of the continuation is not scored (nothing predicts it).
    """
    text = list(context + continuation)
    if len(text) > model.config.max_seq_len:
        raise ValueError(f"context + continuation is {len(text)} bytes; the model's context is "
                         f"{model.config.max_seq_len}")
    device = next(model.parameters()).device
    tokens = torch.tensor([text], dtype=torch.long, device=device)
    logp = F.log_softmax(model(tokens[:, :-1]).float(), -1)
    first = max(len(context), 1) - 1  # index in logp of the first scored prediction
    targets = tokens[0, first + 1:]
    picked = logp[0, first:].gather(-1, targets[:, None]).squeeze(-1)
    return float(picked.sum()), int(targets.numel())
