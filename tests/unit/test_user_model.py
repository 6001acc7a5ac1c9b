"""`module:factory` models: checked before any worker starts, with the field named."""

import pytest
import torch

from elasticml.errors import ConfigError
from elasticml.models import user
from elasticml.train.checkpoint import load_model, write_checkpoint
from elasticml.train.config import TrainConfig


def config(**kw):
    return TrainConfig(data="/d", storage_path="/s", **kw)


@pytest.mark.parametrize("spec, message", [
    ("tests.support.byte_conv", "expected 'package.module:function'"),
    ("no_such_module_xyz:build", "cannot import 'no_such_module_xyz'"),
    ("tests.support.byte_conv:missing", "has no callable 'missing'"),
])
def test_bad_factories_name_the_field(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        config(model=spec)
    assert err.value.field == "model"


def test_factory_must_return_a_module_mapping_bytes_to_logits():
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        user.build_user_model("tests.support.byte_conv:not_a_module")
    with pytest.raises(ConfigError, match=r"logits \(B, T, >=256\)"):
        user.check_output(user.build_user_model("tests.support.byte_conv:wrong_shape"), "wrong_shape")


def test_user_model_shards_its_layers_and_round_trips_through_a_checkpoint(tmp_path):
    cfg = config(model="tests.support.byte_conv:build", seq_len=4096)  # no max_seq_len for a user model
    model = user.build_user_model(cfg.model)
    user.check_output(model, cfg.model)
    assert user.shard_units(model) == list(model.layers)
    assert user.flops_per_token(model, 64) == 6 * sum(p.numel() for p in model.parameters())
    write_checkpoint(tmp_path / "c", model_state=model.state_dict(), optim_state=None, model_config=None, step=1,
                     extra={"model": cfg.model})
    loaded, meta = load_model(tmp_path / "c")
    assert type(loaded).__name__ == "ByteConvLM" and meta["model_config"] is None
    tokens = torch.randint(0, 256, (2, 8))
    assert torch.equal(loaded(tokens), model(tokens))
