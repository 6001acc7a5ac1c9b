"""The reference transformer on ONNX Runtime: precision `onnx` (fp32) and `onnx-int8` on CPU replicas.

The forward pass is exported with its keys and values as explicit inputs and outputs (`Step`), so
generation keeps its KV cache: each new byte runs one position, not the whole prefix again. The
int8 variant is ONNX Runtime's dynamic quantisation of the exported graph (int8 weights of every
MatMul, activations quantised per batch). `OrtTransformer` is the result behind the model's own
interface (`model(tokens, cache)`, `.config`), so `serve.generate` and the optimisation pipeline's
measurements run it unchanged. elasticml.optimize measures it against torch's fp32 and int8 on the
same held-out data and prompts (benchmarks/README.md has the table).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from elasticml.models.transformer import Block, KVCache, Transformer, decode_mask

PRECISIONS = ("onnx", "onnx-int8")
OPSET = 18


class Step(nn.Module):
    """(tokens (B, t), past_k, past_v (L, B, H, P, D), pad (B,)) -> (logits (B, t, V), present_k,
    present_v (L, B, H, P+t, D)): the Transformer's forward over t new positions after P cached ones,
    with `pad` left-padding positions of each row never attended to (as KVCache.pad)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        b, t = tokens.shape
        start = past_k.shape[3]
        x = m.embed(tokens)
        rope = m.rope[start:start + t]
        mask = decode_mask(start, t, pad)
        present_k, present_v = [], []
        for i, block in enumerate(cast("Iterable[Block]", m.blocks)):  # nn.ModuleList yields nn.Module
            attn = block.attn
            q, k, v = attn.heads(block.attn_norm(x), rope)
            k, v = torch.cat([past_k[i], k], 2), torch.cat([past_v[i], v], 2)
            present_k.append(k)
            present_v.append(v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + attn.out(y.transpose(1, 2).reshape(b, t, -1))
            x = x + block.mlp(block.mlp_norm(x))
        return m.head(m.norm(x)), torch.stack(present_k), torch.stack(present_v)


def export(model: Transformer, path: str | Path, *, int8: bool) -> Path:
    """Write the model's `Step` as ONNX to `path` (quantised to int8 when asked); returns `path`."""
    c = model.config
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fp32 = target if not int8 else target.with_name(target.stem + ".fp32.onnx")
    past = torch.zeros(c.n_layers, 1, c.n_heads, 3, c.head_dim)
    example = (torch.zeros(1, 5, dtype=torch.long), past, past.clone(), torch.zeros(1, dtype=torch.long))
    axes = {"tokens": {0: "batch", 1: "new"}, "past_k": {1: "batch", 3: "past"}, "past_v": {1: "batch", 3: "past"},
            "pad": {0: "batch"}, "logits": {0: "batch", 1: "new"}, "present_k": {1: "batch", 3: "length"},
            "present_v": {1: "batch", 3: "length"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: the graph is plain tensor ops, and it needs no onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(Step(model.eval()), example, str(fp32), input_names=["tokens", "past_k", "past_v", "pad"],
                          output_names=["logits", "present_k", "present_v"], dynamic_axes=axes, opset_version=OPSET,
                          dynamo=False)
    if int8:
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # its "pre-process" hint
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
        fp32.unlink()
    return target


class OrtTransformer(nn.Module):
    """A Transformer run by ONNX Runtime: `model(tokens, cache=None) -> logits`, as the torch one.

    Its cache is the KVCache generation hands it (length and padding); the keys and values
    themselves are ONNX Runtime's outputs, kept on the cache between calls.
    """

    def __init__(self, model: Transformer, *, int8: bool, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.config = model.config
        self.precision = "onnx-int8" if int8 else "onnx"
        # generation and scoring ask the model for its device and dtype through its parameters
        self._placeholder = nn.Parameter(torch.zeros(1), requires_grad=False)
        with tempfile.TemporaryDirectory(prefix="elasticml-onnx-") as folder:
            path = export(model, Path(folder) / "model.onnx", int8=int8)
            self.onnx_bytes = path.read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.onnx_bytes, options, providers=["CPUExecutionProvider"])

    def serialized_bytes(self) -> int:
        """What a replica holds: the ONNX graph with its weights."""
        return len(self.onnx_bytes)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        c = self.config
        b, t = tokens.shape
        start = cache.length if cache is not None else 0
        if start + t > c.max_seq_len:
            raise ValueError(f"sequence of {start + t} exceeds max_seq_len={c.max_seq_len}")
        past = getattr(cache, "onnx_past", None) if cache is not None and start else None
        if past is None:
            empty = np.zeros((c.n_layers, b, c.n_heads, 0, c.head_dim), dtype=np.float32)
            past = (empty, empty)
        pad = cache.pad.numpy() if cache is not None and cache.pad is not None else np.zeros(b, dtype=np.int64)
        logits, present_k, present_v = self.session.run(None, {
            "tokens": tokens.numpy(), "past_k": past[0], "past_v": past[1], "pad": pad.astype(np.int64)})
        if cache is not None:
            cache.onnx_past = (present_k, present_v)  # type: ignore[attr-defined]  # ONNX Runtime's past rides on the KVCache; only this backend sets and reads it
            cache.length = start + t
        return torch.from_numpy(logits)


__all__ = ["PRECISIONS", "OrtTransformer", "Step", "export"]
