"""The completion app's parts on their own: config validation, keys, cache, presets, precision
(its HTTP surface: test_serve_ingress.py)."""

import pytest
import torch

from elasticml.errors import ConfigError
from elasticml.models import build_model
from elasticml.serve.auth import KeyRing, digest, new_key
from elasticml.serve.cache import ResponseCache
from elasticml.serve.config import PRESETS, ServeConfig
from elasticml.serve.precision import prepare


def cfg(**kw):
    return ServeConfig(checkpoint="/c", **kw)


@pytest.mark.parametrize("kw, field, words", [
    ({"device": "tpu"}, "device", "one of cpu, gpu"),
    ({"precision": "bf16"}, "precision", "bf16 is for GPU replicas"),
    ({"device": "gpu", "precision": "int8"}, "precision", "int8 is for CPU replicas"),
    ({"max_batch_size": 0}, "max_batch_size", r"must be in \[1, 4096\], got 0"),
    ({"max_batch_size": 64}, "max_ongoing_requests", "at least max_batch_size=64"),
    ({"request_timeout_s": 0}, "request_timeout_s", r"must be in \[0.001, 3600\], got 0"),
    ({"preset": "latency", "min_replicas": 3, "max_replicas": 2}, "max_replicas", "min_replicas <= max_replicas"),
    ({"preset": "turbo"}, "preset", "one of fixed, latency, batch"),
    ({"api_keys": {"acme": "eml_plain_key_pasted_by_mistake"}}, "api_keys", "not a sha256 hex digest"),
])
def test_bad_serve_configs_name_the_field(kw, field, words):
    with pytest.raises(ConfigError, match=words) as err:
        cfg(**kw)
    assert err.value.field == field
    assert "eml_plain_key_pasted_by_mistake" not in str(err.value)  # a key is never echoed


def test_unknown_args_are_refused_with_the_known_ones_listed():
    with pytest.raises(ConfigError, match="unknown field.*max_batch"):
        ServeConfig.from_dict({"checkpoint": "/c", "max_batch": 3})


def test_presets_and_precision_defaults():
    assert cfg().resolved_precision == "int8" and cfg(device="gpu").resolved_precision == "bf16"
    assert cfg().autoscaling_config() == {}
    latency = cfg(preset="latency", max_replicas=6).autoscaling_config()
    assert latency["max_replicas"] == 6 and latency["target_ongoing_requests"] == PRESETS["latency"]["target_ongoing_requests"]
    assert PRESETS["batch"]["target_ongoing_requests"] > PRESETS["latency"]["target_ongoing_requests"]


def test_keys_match_by_digest_per_tenant():
    key, d = new_key()
    other, d2 = new_key()
    ring = KeyRing({"acme": d, "globex": d2})
    assert ring.tenant_for(f"Bearer {key}", None) == "acme"
    assert ring.tenant_for(None, other) == "globex"
    assert ring.tenant_for("Bearer nope", None) is None and ring.tenant_for(None, None) is None
    assert digest(key) == d and key not in d


def test_lru_cache_evicts_the_least_recently_used_and_counts_hits():
    cache: ResponseCache[str] = ResponseCache(2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"  # a is now the most recent
    cache.put("c", "3")  # evicts b
    assert cache.get("b") is None and cache.get("c") == "3"
    assert (cache.hits, cache.misses) == (2, 1) and cache.hit_rate == pytest.approx(2 / 3)
    off: ResponseCache[str] = ResponseCache(0)
    off.put("a", "1")
    assert off.get("a") is None and len(off) == 0


def test_int8_replaces_every_linear_and_stays_close():
    torch.manual_seed(0)
    model = build_model("small").eval()
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        ref = torch.log_softmax(model(tokens), -1)
        q = prepare(build_model("small"), device="cpu", precision="fp32")
        q.load_state_dict(model.state_dict())
        q = prepare(q, device="cpu", precision="int8")
        got = torch.log_softmax(q(tokens), -1)
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert (got - ref).abs().max() < 0.1
