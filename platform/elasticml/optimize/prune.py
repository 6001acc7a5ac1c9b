"""Structured pruning of the reference transformer's SwiGLU MLPs: whole hidden channels go.

A channel j of a block's MLP is gate[j], up[j] and down[:, j]; removing it leaves a model of the
same architecture with a narrower `mlp_hidden`, which any replica loads as it is (no masks, no
sparse kernels: every matmul is smaller). A channel's importance is what it adds to the block's
output on real text: mean |silu(gate_j x) * up_j x| over calibration tokens times ||down[:, j]||.
Every block keeps the same number of channels (the config has one width), each its own best ones.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from elasticml.dataconf import check_number
from elasticml.models.transformer import MLP, Transformer


@torch.no_grad()
def channel_importance(model: Transformer, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per block, each MLP channel's importance (see the module docstring) on `tokens` (B, T)."""
    scores: list[torch.Tensor] = []
    hooks = []
    for block in model.blocks:
        def hook(mlp: MLP, args: tuple[torch.Tensor, ...], _out: torch.Tensor, _scores: list[torch.Tensor] = scores) -> None:
            x = args[0]
            act = (F.silu(mlp.gate(x)) * mlp.up(x)).abs().flatten(0, -2).mean(0)
            _scores.append(act * mlp.down.weight.norm(dim=0))
        hooks.append(block.mlp.register_forward_hook(hook))  # type: ignore[union-attr]  # nn.ModuleList yields nn.Module; these are Blocks
    try:
        model.eval()(tokens)
    finally:
        for h in hooks:
            h.remove()
    return scores


@torch.no_grad()
def prune_mlp(model: Transformer, tokens: torch.Tensor, *, keep: float) -> Transformer:
    """A new model keeping the `keep` share (0..1] of each block's MLP channels, by importance."""
    check_number(keep, field="keep", lo=0.001, hi=1.0)
    hidden = model.config.hidden
    width = max(1, round(hidden * keep))
    config = dataclasses.replace(model.config, mlp_hidden=width)
    pruned = Transformer(config)
    state = {k: v for k, v in model.state_dict().items()}
    for i, score in enumerate(channel_importance(model, tokens)):
        kept = torch.sort(torch.topk(score, width).indices).values
        prefix = f"blocks.{i}.mlp."
        state[prefix + "gate.weight"] = state[prefix + "gate.weight"][kept].clone()
        state[prefix + "up.weight"] = state[prefix + "up.weight"][kept].clone()
        state[prefix + "down.weight"] = state[prefix + "down.weight"][:, kept].clone()
    pruned.load_state_dict(state)
    return pruned.eval()


@torch.no_grad()
def drop_blocks(model: Transformer, *, keep: float) -> Transformer:
    """A new model of the `keep` share of the blocks, evenly spaced and always the first and the last
    (the embedding's and the head's neighbours), each copied whole: a shallower student to distil."""
    check_number(keep, field="layer_keep", lo=0.001, hi=1.0)
    n = model.config.n_layers
    count = max(1, round(n * keep))
    kept = sorted({round(i * (n - 1) / (count - 1)) for i in range(count)}) if count > 1 else [n - 1]
    config = dataclasses.replace(model.config, n_layers=len(kept))
    student = Transformer(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for new, old in enumerate(kept):
        for key, value in model.blocks[old].state_dict().items():
            state[f"blocks.{new}.{key}"] = value.clone()
    student.load_state_dict(state)
    return student.eval()
