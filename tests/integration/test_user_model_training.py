"""A user's model given as `module:factory` trains sharded on Ray Train and serves from its checkpoint."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.integration
SPEC = "tests.support.byte_conv:build"


def test_user_model_trains_sharded_with_activation_checkpointing(local_cluster, corpus, tmp_path):
    from elasticml.train.checkpoint import latest_checkpoint, load_model
    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit

    # Ray's workers get the driver's working directory on sys.path, as a job's working_dir would give them.
    local_cluster.require_info().connect()
    common = dict(data=str(corpus), storage_path=str(tmp_path), steps=6, global_batch=4, seq_len=32, lr=1e-2,
                  report_every=3, checkpoint_every=3, keep_checkpoints=5, seed=1, model=SPEC)
    two = fit(TrainConfig(run_name="user2", num_workers=2, activation_checkpointing=True, **common))
    one = fit(TrainConfig(run_name="user1", num_workers=1, **common))
    assert two.error is None and one.error is None, (two.error, one.error)
    assert two.metrics["step"] == 6 and two.metrics["world_size"] == 2
    # Sharded (and recomputing activations) it computes what one process computes.
    assert two.metrics["loss"] == pytest.approx(one.metrics["loss"], rel=1e-3)
    model, meta = load_model(latest_checkpoint(tmp_path / "user2"))
    assert meta["model"] == SPEC and type(model).__name__ == "ByteConvLM"
    assert set(meta["files"]) == {".metadata", "__0_0.distcp", "__1_0.distcp"}  # one shard file per worker
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (1, 16)))
    assert logits.shape == (1, 16, 256) and torch.isfinite(logits).all()
