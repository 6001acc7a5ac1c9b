"""Sharded training computes what a single process computes: FSDP2 over 2 gloo workers vs 1 worker."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
TOLERANCE = 1e-3  # relative, per step: float32 reductions in a different order, nothing more


def losses(result) -> dict[int, float]:
    return {int(m["step"]): float(m["loss"]) for _, m in result.best_checkpoints}


def test_two_worker_sharded_run_matches_the_single_process_loss_curve(local_cluster, corpus, tmp_path):
    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit

    local_cluster.require_info().connect()
    common = dict(data=str(corpus), storage_path=str(tmp_path), steps=6, global_batch=4, seq_len=64,
                  report_every=1, checkpoint_every=1, keep_checkpoints=10, seed=3)
    single = fit(TrainConfig(run_name="one", num_workers=1, **common))
    sharded = fit(TrainConfig(run_name="two", num_workers=2, **common))
    assert single.error is None and sharded.error is None
    a, b = losses(single), losses(sharded)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=TOLERANCE), (step, a[step], b[step])
    print("max relative loss difference:", max(abs(b[s] - a[s]) / a[s] for s in a))
    assert a[6] < a[1]  # and it learns
    assert sharded.metrics["world_size"] == 2 and single.metrics["world_size"] == 1


def test_uneven_batches_checkpointing_options_and_mfu(local_cluster, corpus, tmp_path):
    """3 sequences over 2 workers (2 + 1) still computes the single-process loss; the speed options keep it."""
    from elasticml.train.checkpoint import latest_checkpoint, read_meta
    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit

    local_cluster.require_info().connect()
    common = dict(data=str(corpus), storage_path=str(tmp_path), steps=4, global_batch=3, seq_len=64,
                  report_every=1, checkpoint_every=1, keep_checkpoints=10, seed=5)
    single = fit(TrainConfig(run_name="u1", num_workers=1, **common))
    uneven = fit(TrainConfig(run_name="u2", num_workers=2, min_workers=1, activation_checkpointing=True,
                             async_upload=True, peak_tflops=0.05, **common))
    assert single.error is None and uneven.error is None
    a, b = losses(single), losses(uneven)
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=TOLERANCE), (step, a[step], b[step])
    assert 0 < uneven.metrics["mfu"] < 1
    assert read_meta(latest_checkpoint(tmp_path / "u2"))["step"] == 4  # async uploads completed and complete
