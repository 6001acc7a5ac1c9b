"""Turning a trained model into a replica's model: int8 or fp32 on CPU, bf16 or fp32 on GPU.

CPU int8 is dynamic quantisation of every Linear (int8 weights, activations
quantised per batch at run time) through `torch.ao.quantization.quantize_dynamic`.
We measured the candidates (benchmarks/serve_int8.py, results in
benchmarks/README.md): torchao 0.18's int8 configs run in eager mode slower than
fp32 on a CPU (they are built for torch.compile and GPUs), while torch.ao's
dynamic int8 kernels (fbgemm) are 3.6x faster than fp32 at 125M parameters. That
is why we use torch.ao although torch 2.13 marks it deprecated; swap it here when
torchao's CPU path catches up.

`onnx` and `onnx-int8` run the reference transformer on ONNX Runtime instead
(elasticml.serve.onnx_runtime); `elasticml optimize` measures them beside torch's.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def prepare(model: nn.Module, *, device: str, precision: str) -> nn.Module:
    model = model.eval()
    if precision in ("onnx", "onnx-int8"):
        from elasticml.errors import ConfigError
        from elasticml.models.transformer import Transformer
        from elasticml.serve.onnx_runtime import OrtTransformer

        if device != "cpu" or not isinstance(model, Transformer):
            raise ConfigError(f"{precision} runs the reference transformer on CPU replicas", field="precision")
        return OrtTransformer(model, int8=precision == "onnx-int8")
    if device == "gpu":
        model = model.to("cuda")
        return model.to(torch.bfloat16) if precision == "bf16" else model
    if precision == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            quantized: nn.Module = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
            return quantized
    return model
