"""Training on a real local cluster (one per module: each start and stop costs seconds): FSDP2 over 2
gloo workers computes what a single process computes, for a user's `module:factory` model and for the
reference transformer with uneven batches and the speed options; per-step metrics reach Prometheus;
distillation (jobs/distill.py's run) moves a pruned student to its teacher and resumes."""

from __future__ import annotations

import re
import shutil
import threading
import time

import httpx
import pytest
import torch

pytestmark = pytest.mark.integration
TOLERANCE = 1e-3  # relative, per step: float32 reductions in a different order, nothing more
SPEC = "tests.support.byte_conv:build"


def losses(result) -> dict[int, float]:
    return {int(m["step"]): float(m["loss"]) for _, m in result.best_checkpoints}


def test_a_users_model_on_two_sharded_workers_matches_the_single_process_loss_curve(local_cluster, corpus, tmp_path):
    """A user's `module:factory` model (not the reference transformer) trains FSDP2-sharded over 2 gloo
    workers and computes what one process (recomputing activations) computes, step by step."""
    from elasticml.train.checkpoint import latest_checkpoint, load_model
    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit

    # Ray's workers get the driver's working directory on sys.path, as a job's working_dir would give them.
    local_cluster.require_info().connect()
    common = dict(data=str(corpus), storage_path=str(tmp_path), steps=6, global_batch=4, seq_len=64, lr=1e-2,
                  report_every=1, checkpoint_every=1, keep_checkpoints=10, seed=3, model=SPEC)
    # Recomputing activations on the lone process, plain FSDP2 on the two workers: the transformer's test
    # below has both on two workers, so every pairing is compared with one process somewhere.
    single = fit(TrainConfig(run_name="one", num_workers=1, activation_checkpointing=True, **common))
    sharded = fit(TrainConfig(run_name="two", num_workers=2, **common))
    assert single.error is None and sharded.error is None, (single.error, sharded.error)
    a, b = losses(single), losses(sharded)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=TOLERANCE), (step, a[step], b[step])
    print("max relative loss difference:", max(abs(b[s] - a[s]) / a[s] for s in a))
    assert a[6] < a[1]  # and it learns
    assert sharded.metrics["world_size"] == 2 and single.metrics["world_size"] == 1
    model, meta = load_model(latest_checkpoint(tmp_path / "two"))
    assert meta["model"] == SPEC and type(model).__name__ == "ByteConvLM"
    assert set(meta["files"]) == {".metadata", "__0_0.distcp", "__1_0.distcp"}  # one shard file per worker
    with torch.no_grad():
        logits = model(torch.randint(0, 256, (1, 16)))
    assert logits.shape == (1, 16, 256) and torch.isfinite(logits).all()


def test_uneven_batches_checkpointing_options_and_mfu(local_cluster, corpus, tmp_path):
    """The reference transformer: 3 sequences over 2 workers (2 + 1) still computes the single-process loss,
    and the speed options (recomputed activations, uploads in the background) keep it."""
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
    assert uneven.metrics["world_size"] == 2  # min_workers=1 allows one: it must have had both
    assert 0 < uneven.metrics["mfu"] < 1
    assert read_meta(latest_checkpoint(tmp_path / "u2"))["step"] == 4  # async uploads completed and complete


def test_distillation_on_two_sharded_workers_moves_a_pruned_student_to_its_teacher_and_resumes(
        local_cluster, corpus, tmp_path):
    """jobs/distill.py's run: a student cut from the teacher (half the blocks, half the MLP channels)
    learns the teacher's soft targets on 2 FSDP2 workers, checkpoints, and a second run resumes it."""
    import torch.nn.functional as F

    from elasticml.data.loader import TokenBlocks
    from elasticml.models import SIZES
    from elasticml.optimize.prune import drop_blocks, prune_mlp
    from elasticml.train.checkpoint import latest_checkpoint, load_model, read_meta, write_checkpoint
    from elasticml.train.config import TrainConfig
    from elasticml.train.history import read_history
    from elasticml.train.launch import fit
    from tests.support.tiny import train_tiny

    blocks = TokenBlocks(str(corpus), seq_len=64)
    teacher = train_tiny(corpus, steps=150)
    t_dir = write_checkpoint(tmp_path / "teacher", model_state=teacher.state_dict(), optim_state=None,
                             model_config=SIZES["tiny"], step=150)
    held_out, _ = blocks.batch(10_000, global_batch=16)
    student = prune_mlp(drop_blocks(teacher, keep=0.5), held_out[:4], keep=0.5)
    with torch.no_grad():  # a fresh start far from the teacher, so that only distillation brings it back
        for p in student.blocks.parameters():
            p.mul_(0.3)
    s_dir = write_checkpoint(tmp_path / "student", model_state=student.state_dict(), optim_state=None,
                             model_config=student.config, step=0)

    def kl_to_teacher(model) -> float:
        with torch.no_grad():
            return F.kl_div(F.log_softmax(model(held_out), -1).flatten(0, 1),
                            F.log_softmax(teacher(held_out), -1).flatten(0, 1), log_target=True,
                            reduction="batchmean").item()

    local_cluster.require_info().connect()
    common = dict(data=str(corpus), storage_path=str(tmp_path / "runs"), run_name="distil", num_workers=2,
                  global_batch=8, seq_len=64, lr=3e-3, warmup_steps=2, report_every=5, checkpoint_every=10,
                  teacher=str(t_dir), init_from=str(s_dir), distill_alpha=1.0, distill_temperature=1.0)
    first = fit(TrainConfig(steps=10, **common))
    assert first.error is None and first.metrics["step"] == 10
    # What a worker lost mid-upload leaves: its shards, no manifest. The resume deletes it.
    run = tmp_path / "runs" / "distil"
    half = run / "checkpoint_9999-12-31_23-59-59.999999"
    shutil.copytree(latest_checkpoint(run), half)
    (half / "meta.json").unlink()
    second = fit(TrainConfig(steps=35, **common))
    assert not half.exists()
    assert second.error is None and second.metrics["step"] == 35 and second.metrics["world_size"] == 2
    history = read_history(str(tmp_path / "runs" / "distil"))
    assert [r["resumed_from"] for r in history if "resumed_from" in r] == [10]  # the second run went on

    final = latest_checkpoint(tmp_path / "runs" / "distil")
    meta = read_meta(final)
    assert meta["distilled"] == {"teacher": str(t_dir), "temperature": 1.0, "alpha": 1.0, "init_from": str(s_dir)}
    distilled, _ = load_model(final)
    assert distilled.config == student.config  # the student's shape: fewer blocks, narrower MLPs
    before, after = kl_to_teacher(student), kl_to_teacher(distilled)
    print(f"KL(teacher || student) on held-out blocks: {before:.4f} -> {after:.4f}")
    assert after < 0.5 * before
    # With alpha 1 the loss trained on is the KL to the teacher alone, far below the data's cross-entropy.
    with torch.no_grad():
        data_loss = F.cross_entropy(distilled(held_out[:, :-1]).flatten(0, 1), held_out[:, 1:].flatten()).item()
    assert second.metrics["loss"] < 0.5 * data_loss, (second.metrics["loss"], data_loss)


def scrape_all_nodes() -> str:
    import ray

    text = []
    for node in ray.nodes():
        if node["Alive"]:
            try:
                text.append(httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics",
                                      timeout=5).text)
            except httpx.HTTPError:
                pass  # a node going away mid-scrape
    return "\n".join(text)


@pytest.mark.slow  # the same gauges feed the dashboards test_prometheus.py checks while a job trains
def test_loss_tokens_per_s_and_mfu_are_exported_as_prometheus_gauges(local_cluster, corpus, tmp_path):
    from elasticml.train.config import TrainConfig
    from elasticml.train.launch import fit

    local_cluster.require_info().connect()
    cfg = TrainConfig(data=str(corpus), storage_path=str(tmp_path), run_name="prom", steps=400, global_batch=2,
                      seq_len=32, num_workers=1, report_every=10, peak_tflops=0.05)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(r=fit(cfg)), daemon=True)
    runner.start()
    found: dict[str, float] = {}
    deadline = time.time() + 150
    while runner.is_alive() and time.time() < deadline and len(found) < 4:
        for name, value in re.findall(r'^ray_elasticml_train_(\w+)\{[^}]*run="prom"[^}]*\} (\S+)$',
                                      scrape_all_nodes(), re.M):
            found[name] = float(value)
        time.sleep(1)
    runner.join(timeout=150)
    assert set(found) >= {"loss", "tokens_per_s", "mfu", "step"}, found
    assert 0 < found["loss"] < 6 and found["tokens_per_s"] > 0 and 0 < found["mfu"] < 1
    assert found["step"] % 10 == 0 and found["step"] >= 10
    assert result["r"].error is None
