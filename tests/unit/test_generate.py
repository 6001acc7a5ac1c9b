import torch

import pytest

from elasticml.models import build_model
from elasticml.serve.generate import generate


def test_greedy_generation_matches_step_by_step_argmax():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    prompt = b"def f(x):"
    out = generate(model, prompt, max_tokens=10)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(10):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert list(out) == seq[len(prompt):]


def test_sampling_is_reproducible_with_a_seed():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    a = generate(model, b"abc", max_tokens=20, temperature=1.0, seed=3)
    b = generate(model, b"abc", max_tokens=20, temperature=1.0, seed=3)
    assert a == b and len(a) == 20


def test_long_prompts_are_cut_from_the_left_and_bad_lengths_refused():
    model = build_model("tiny").eval()
    assert len(generate(model, b"x" * 1000, max_tokens=8)) == 8
    with pytest.raises(ValueError, match="no room"):
        generate(model, b"x", max_tokens=model.config.max_seq_len)
    with pytest.raises(ValueError, match="empty"):
        generate(model, b"", max_tokens=1)
