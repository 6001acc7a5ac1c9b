import pytest
import torch

from elasticml.errors import ConfigError
from elasticml.models import SIZES, KVCache, ModelConfig, build_model


def test_named_sizes_span_tiny_to_about_1b():
    counts = {name: cfg.num_params() for name, cfg in SIZES.items()}
    assert counts["tiny"] < 1e6
    assert 0.9e9 < counts["1b"] < 1.2e9
    assert 0.1e9 < counts["125m"] < 0.15e9
    assert list(counts.values()) == sorted(counts.values())


def test_num_params_matches_the_module():
    model = build_model("tiny")
    assert sum(p.numel() for p in model.parameters()) == SIZES["tiny"].num_params()


def test_kv_cache_decoding_equals_full_forward():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    tokens = torch.randint(0, 256, (2, 30))
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache.empty(model.config, 2)
        parts = [model(tokens[:, :17], cache)] + [model(tokens[:, i : i + 1], cache) for i in range(17, 30)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    a = torch.randint(0, 256, (1, 20))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 256
    with torch.no_grad():
        assert torch.allclose(model(a)[:, :10], model(b)[:, :10], atol=1e-6)
        assert not torch.allclose(model(a)[:, 10:], model(b)[:, 10:])


def test_sequence_longer_than_context_is_refused():
    model = build_model("tiny")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long))


@pytest.mark.parametrize("kwargs, field", [({"d_model": 65, "n_heads": 4}, "d_model"), ({"n_layers": 0}, "n_layers")])
def test_bad_model_config(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


def test_unknown_size():
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        build_model("huge")
