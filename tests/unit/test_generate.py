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


def test_a_batch_of_different_prompts_computes_what_each_computes_alone():
    from elasticml.serve.generate import Prompt, generate_batch

    torch.manual_seed(1)
    model = build_model("tiny").eval()
    prompts = [
        Prompt(text=b"import os", max_tokens=12),
        Prompt(text=b"x", max_tokens=5),
        Prompt(text=b"class Foo(object):\n    def", max_tokens=20),
        Prompt(text=b"abc", max_tokens=9, temperature=0.8, seed=7),
    ]
    batched = generate_batch(model, prompts)
    alone = [generate(model, p.text, max_tokens=p.max_tokens, temperature=p.temperature, seed=p.seed)
             for p in prompts]
    assert batched == alone
    assert [len(b) for b in batched] == [12, 5, 20, 9]


def test_rows_that_together_overflow_the_context_are_split_not_cut():
    from elasticml.serve.generate import Prompt, generate_batch

    model = build_model("tiny").eval()
    long_prompt = Prompt(text=bytes(range(65, 91)) * 4, max_tokens=4)  # 104 bytes + 4
    long_answer = Prompt(text=b"hi", max_tokens=100)  # 2 + 100; both together would need 204 > 128
    assert generate_batch(model, [long_prompt, long_answer]) == [
        generate(model, long_prompt.text, max_tokens=4), generate(model, b"hi", max_tokens=100)]


def test_log_likelihood_is_the_sum_of_next_byte_log_probabilities():
    from elasticml.serve.generate import log_likelihood

    torch.manual_seed(2)
    model = build_model("tiny").eval()
    total, n = log_likelihood(model, b"def ", b"main")
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([list(b"def main")])), -1)[0]
    expected = sum(float(logp[i - 1, b]) for i, b in enumerate(b"def main") if i >= 4)
    assert n == 4 and total == pytest.approx(expected, rel=1e-5)
    assert log_likelihood(model, b"", b"ab")[1] == 1
    with pytest.raises(ValueError, match="model's context is 128"):
        log_likelihood(model, b"x" * 100, b"y" * 100)


def test_a_poison_row_does_not_fail_its_batch_neighbours():
    from elasticml.serve.generate import Prompt, generate_batch

    torch.manual_seed(2)
    model = build_model("tiny").eval()
    good = [Prompt(text=b"import os", max_tokens=8), Prompt(text=b"abc", max_tokens=8, temperature=0.8, seed=7)]
    # Reached only past the API's validation: logits / 5e-324 overflow to inf; a seed of 2**70 overflows torch.
    poison = [Prompt(text=b"def", max_tokens=8, temperature=5e-324), Prompt(text=b"x", max_tokens=8, temperature=1.0, seed=2**70)]
    out = generate_batch(model, [good[0], poison[0], good[1], poison[1]])
    assert [out[0], out[2]] == generate_batch(model, good)
    assert len(out[1]) == 8 and len(out[3]) == 8
    assert out[1] == generate(model, b"def", max_tokens=8)  # an impossible temperature goes greedy


def test_seeds_that_torch_would_collide_or_overflow_are_refused_by_the_api_and_distinct_ones_differ():
    from pydantic import ValidationError

    from elasticml.serve.api import MAX_SEED, CompletionRequest

    for bad in [{"temperature": 5e-324}, {"temperature": 0.001}, {"temperature": float("nan")},
                {"temperature": float("inf")}, {"temperature": 2.5}, {"seed": 2**64}, {"seed": MAX_SEED + 1},
                {"seed": -1}]:
        with pytest.raises(ValidationError) as err:
            CompletionRequest(prompt="a", **bad)
        assert err.value.errors()[0]["loc"][0] == next(iter(bad)), bad
    for ok in [{"temperature": 0}, {"temperature": 0.01}, {"temperature": 2.0}, {"seed": 0}, {"seed": MAX_SEED}]:
        CompletionRequest(prompt="a", **ok)
    model = build_model("tiny").eval()
    a = generate(model, b"abc", max_tokens=24, temperature=1.0, seed=5)
    b = generate(model, b"abc", max_tokens=24, temperature=1.0, seed=6)
    assert a != b


def test_a_cancelled_prompt_stops_and_a_batch_of_them_stops_early():
    import threading

    import torch

    from elasticml.models import build_model
    from elasticml.serve.generate import Prompt, generate_batch

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    gone = threading.Event()
    gone.set()
    live = Prompt(text=b"def ", max_tokens=20)
    dead = Prompt(text=b"import ", max_tokens=20, cancel=gone)
    out = generate_batch(model, [live, dead])
    assert out[0] == generate_batch(model, [live])[0] and out[1] == b""  # its neighbour is untouched
    calls = []
    original = model.forward

    def counting(*a, **kw):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*a, **kw)

    model.forward = counting  # type: ignore[method-assign]
    assert generate_batch(model, [dead]) == [b""]
    assert len(calls) == 1  # the prompt's forward pass only: no token was generated for nobody
