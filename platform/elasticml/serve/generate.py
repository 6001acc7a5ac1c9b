"""Byte-level text generation with a KV cache: what a replica runs per request."""

from __future__ import annotations

import torch

from elasticml.models.transformer import KVCache, Transformer


@torch.inference_mode()
def generate(
    model: Transformer,
    prompt: bytes,
    *,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int | None = None,
) -> bytes:
    """Continue prompt by up to max_tokens bytes; temperature 0 is greedy (deterministic).

    The prompt is cut from the left so that prompt + completion fits the
    model's context, as a chat client would.
    """
    if not prompt:
        raise ValueError("prompt must not be empty")
    limit = model.config.max_seq_len - max_tokens
    if limit < 1:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for a prompt in a {model.config.max_seq_len}-byte context")
    device = next(model.parameters()).device
    tokens = torch.tensor([list(prompt[-limit:])], dtype=torch.long, device=device)
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    cache = KVCache.empty(model.config, 1, device=device, dtype=next(model.parameters()).dtype)
    logits = model(tokens, cache)[:, -1]
    out: list[int] = []
    for _ in range(max_tokens):
        if temperature <= 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, -1)
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
        out.append(int(nxt))
        logits = model(nxt.view(1, 1), cache)[:, -1]
    return bytes(out)
