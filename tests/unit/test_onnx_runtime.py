"""The reference transformer on ONNX Runtime computes what torch computes, through the serving path."""

from __future__ import annotations

import pytest
import torch

from elasticml.models import build_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return build_model("tiny").eval()


def test_onnx_runtime_generates_the_same_bytes_as_torch_with_its_kv_cache_and_left_padding(model):
    from elasticml.serve.generate import Prompt, generate_batch, log_likelihood
    from elasticml.serve.precision import prepare

    ort = prepare(model, device="cpu", precision="onnx")
    tokens = torch.randint(0, 256, (3, 40))
    with torch.no_grad():
        assert torch.allclose(ort(tokens), model(tokens), atol=1e-4)
    # Prompts of different lengths in one batch: left padding, then one position per new byte.
    prompts = [Prompt(text=b"def main():\n    return", max_tokens=24), Prompt(text=b"x", max_tokens=24),
               Prompt(text=b"import os, sys  # a longer prompt than the others", max_tokens=10)]
    assert generate_batch(ort, prompts) == generate_batch(model, prompts)
    assert log_likelihood(ort, b"for i in ", b"range(10):") == pytest.approx(
        log_likelihood(model, b"for i in ", b"range(10):"), rel=1e-4)


def test_onnx_int8_is_smaller_and_close_and_onnx_is_refused_where_it_cannot_run(model):
    from elasticml.errors import ConfigError
    from elasticml.serve.config import ServeConfig
    from elasticml.serve.precision import prepare

    fp32, int8 = prepare(model, device="cpu", precision="onnx"), prepare(model, device="cpu", precision="onnx-int8")
    assert int8.serialized_bytes() < 0.6 * fp32.serialized_bytes()
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = torch.log_softmax(model(tokens), -1)
        got = torch.log_softmax(int8(tokens), -1)
    assert (got.exp() - ref.exp()).abs().max() < 0.05  # quantised, not a different model
    with pytest.raises(ConfigError, match="precision: onnx-int8 is for CPU replicas"):
        ServeConfig(checkpoint="/c", device="gpu", precision="onnx-int8")
    with pytest.raises(ConfigError, match="precision: onnx runs the reference transformer on CPU"):
        prepare(torch.nn.Linear(2, 2), device="cpu", precision="onnx")
