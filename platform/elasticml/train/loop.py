"""The per-worker training loop that Ray Train runs on every worker.

Sequence on each worker: build the model from the same seed, shard it with
FSDP2 (`fully_shard` on each block, then the root), restore the latest
checkpoint Ray Train hands back (model, optimizer and step: the step *is* the
data position, see `elasticml.data.loader`), then train. Every
`report_every` steps all workers call `ray.train.report` (a barrier); on a
checkpoint step every worker writes its own shards with
`torch.distributed.checkpoint` and attaches them to its report, and Ray Train
merges them into one checkpoint folder (see `elasticml.train.checkpoint`). No
worker ever holds the full model or optimizer state.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from elasticml.data.loader import TokenBlocks
from elasticml.models import user as user_models
from elasticml.models.transformer import Transformer, build_model
from elasticml.optimize.distill import distill_loss
from elasticml.train.checkpoint import load_model, read_meta, read_state, write_checkpoint
from elasticml.train.config import TrainConfig
from elasticml.train.history import record

log = logging.getLogger("elasticml.train")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def _gauges() -> dict[str, Any]:
    """Per-step metrics as Prometheus gauges, exported by Ray's metrics agent (ray_elasticml_train_*)."""
    from ray.util.metrics import Gauge

    return {
        name: Gauge(f"elasticml_train_{name}", description=desc, tag_keys=("run",))
        for name, desc in [("loss", "training loss"), ("tokens_per_s", "tokens per second, all workers"),
                           ("mfu", "model FLOPs utilisation"), ("step", "optimizer steps done"),
                           ("checkpoint_seconds", "how long the last checkpoint took to write and report"),
                           # Wall-clock, not a duration: an alert compares it with Prometheus' time().
                           ("last_checkpoint_timestamp_seconds", "when the last checkpoint was reported, Unix time")]
    }


def _teacher(cfg: TrainConfig, device: torch.device, mp: Any, fully_shard: Any) -> torch.nn.Module:
    """The frozen teacher, sharded like the student (FSDP2 gathers each block for its forward and
    frees it after), so a teacher larger than one worker's memory still fits the world."""
    teacher, _ = load_model(str(cfg.teacher))
    teacher.requires_grad_(False)
    teacher = teacher.to(device)
    blocks = list(teacher.blocks) if isinstance(teacher, Transformer) else user_models.shard_units(teacher)
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(teacher, mp_policy=mp)
    return teacher.eval()


def _newest_of_run(cfg: TrainConfig, restored: Any, *, rank: int, device: torch.device) -> Any:
    """The checkpoint to resume from: Ray Train's last registered one, or a newer complete one of the same run in
    storage (`newer_checkpoint`: written before the loss, its report not yet taken). Rank 0 looks and tells the
    others, so every worker loads the same one. Rank 0 also deletes the checkpoint folders made after the registered
    one that the lost attempt left half-written (`remove_half_written`): no worker writes before the first step."""
    import ray.train

    from elasticml.storage import is_remote
    from elasticml.train.checkpoint import newer_checkpoint, remove_half_written, verify_files

    remote = is_remote(cfg.storage_path)
    newer: str | None = None
    if rank == 0:
        def uri(path: str) -> str:
            return f"s3://{path}" if remote else path

        run_dir = uri(restored.path.rstrip("/").rsplit("/", 1)[0])
        try:
            found = newer_checkpoint(run_dir, uri(restored.path))
            if found is not None:
                verify_files(found)  # every file's digest now: one that fails would fail every retry's load
            newer = None if found is None else str(found)
        except Exception as exc:  # anything: the registered one still resumes the run, and no rank waits forever
            log.info("did not look past the run's last registered checkpoint: %s", str(exc)[:200])
        try:
            for folder in remove_half_written(run_dir, registered=uri(restored.path), keep=(newer,) if newer else ()):
                log.info("deleted %s: a checkpoint the lost attempt left half-written", folder)
        except Exception as exc:  # what is left stays until the next resume; the run resumes all the same
            log.warning("could not delete the half-written checkpoints of %s: %s", run_dir, str(exc)[:200])
    if dist.is_initialized():
        box = [newer]
        dist.broadcast_object_list(box, src=0, device=device if cfg.use_gpu else None)
        newer = box[0]
    if newer is None:
        return restored
    if rank == 0:
        log.info("a complete checkpoint newer than the run's last registered one: %s (registered: %s)",
                 newer, restored.path)
    return ray.train.Checkpoint(path=newer.removeprefix("s3://"), filesystem=restored.filesystem)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    from ray.train import CheckpointUploadMode
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cfg: TrainConfig = loop_config["config"]
    stop = loop_config.get("stop")
    if loop_config.get("s3_credentials"):  # a tenant's: its prefix is out of the node role's reach
        from elasticml.storage import use_credentials

        use_credentials(loop_config["s3_credentials"])
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # Ray configures the root logger too; print each line once
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")  # type: ignore[attr-defined]  # ray.train.torch: imported by TorchTrainer, which runs this loop

    torch.manual_seed(cfg.seed)
    if cfg.init_from:
        model, _ = load_model(cfg.init_from)
        model.train()
    elif cfg.model:
        model = user_models.build_user_model(cfg.model)
        user_models.check_output(model, cfg.model)
    else:
        model = build_model(cfg.model_size)
    if isinstance(model, Transformer):
        model_config = model.config
        units = list(model.blocks)
        flops_per_token = model_config.flops_per_token(cfg.seq_len)
    else:
        model_config = None
        units = user_models.shard_units(model)
        flops_per_token = user_models.flops_per_token(model, cfg.seq_len)
    model = model.to(device)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cfg.use_gpu else MixedPrecisionPolicy()
    if cfg.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        wrap = set(map(id, units))
        apply_activation_checkpointing(model, check_fn=lambda m: id(m) in wrap)
        units = [m for m in model.modules() if getattr(m, "_checkpoint_wrapped_module", None) is not None]
    if cfg.compile:
        for unit in units:
            unit.compile()
    for unit in units:
        fully_shard(unit, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    teacher = _teacher(cfg, device, mp, fully_shard) if cfg.teacher else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))

    start_step = 0
    restored = ray.train.get_checkpoint()
    if restored is not None:
        restored = _newest_of_run(cfg, restored, rank=rank, device=device)
        with restored.as_directory() as folder:
            meta = read_meta(folder)
            # Sharded states of *this* world size; DCP reads each worker's slices whatever world wrote them.
            state: dict[str, Any] = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
            read_state(folder, state)
            set_model_state_dict(model, state["model"])
            set_optimizer_state_dict(model, opt, optim_state_dict=state["optim"])
            start_step = int(meta["step"])
        if rank == 0:
            # The data position is the step: the next sample is start_step * global_batch, whatever the world size.
            log.info("resumed from step %d (next sample %d, %d workers) from %s",
                     start_step, start_step * cfg.global_batch, world, restored.path)

    started = loop_config.get("started")
    if rank == 0 and started is not None:
        # Tell the job's driver side the run is up; on a replayed market the answer is the restart's
        # cost in wall seconds, spent here as the simulator spends it (paid, no progress).
        pause_s = float(started())
        if pause_s > 0:
            log.info("run up at step %d: the restart costs %.1fs", start_step, pause_s)
            time.sleep(pause_s)

    data = TokenBlocks(cfg.data, seq_len=cfg.seq_len, seed=cfg.seed)
    gauges = _gauges() if rank == 0 else None
    window_tokens, window_start = 0, time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    saved_for_preemption = False
    pace_start = time.perf_counter()
    first_report = True
    for step in range(start_step, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        inputs, targets = data.batch(step, global_batch=cfg.global_batch, rank=rank, world_size=world)
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        if teacher is None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        else:
            with torch.no_grad():
                soft = teacher(inputs)
            loss = distill_loss(logits, soft, targets, temperature=cfg.distill_temperature, alpha=cfg.distill_alpha)
        # FSDP averages gradients over workers; weigh each worker by its share of an uneven batch.
        (loss * (inputs.shape[0] * world / cfg.global_batch)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cfg.min_step_seconds:
            # A schedule, not a per-step minimum: report points' waits are made up by the steps after them.
            time.sleep(max(0.0, pace_start + (step + 1 - start_step) * cfg.min_step_seconds - time.perf_counter()))
        loss_sum += loss.detach()
        loss_count += 1
        window_tokens += inputs.numel()

        done = step + 1
        is_last = done == cfg.steps
        want_ckpt = is_last or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        if not (want_ckpt or done % cfg.report_every == 0):
            continue
        # A barrier across workers, so asked only at report points, where all of them are.
        # A spot interruption notice (the scheduler drains the node) means: checkpoint now.
        if ray.train.get_preemption_info() is not None and not saved_for_preemption:
            want_ckpt = saved_for_preemption = True
            if rank == 0:
                log.info("preemption notice at step %d: checkpointing now", done)
        # The driver raises the stop flag when the scheduler moves the job; rank 0 reads it and the
        # all-reduce below tells every worker, so all of them checkpoint and stop at the same step.
        stop_now = 1.0 if rank == 0 and stop is not None and ray.get(stop.reason.remote(), timeout=30) else 0.0
        stats = torch.stack([loss_sum * inputs.shape[0] * world / cfg.global_batch,
                             torch.tensor(float(window_tokens), device=device),
                             torch.tensor(stop_now, device=device)])
        dist.all_reduce(stats)
        moving = stats[2].item() > 0 and not is_last
        if moving:
            want_ckpt = True
            if rank == 0:
                log.info("the scheduler moved this job at step %d: checkpointing, then stopping", done)
        elapsed = time.perf_counter() - window_start
        tokens_per_s = stats[1].item() / elapsed
        metrics = {
            "step": done,
            "loss": stats[0].item() / (loss_count * world),
            "tokens_per_s": tokens_per_s,
            "flops_per_s": tokens_per_s * flops_per_token,
            "lr": lr_at(step, cfg),
            "world_size": world,
        }
        if cfg.peak_tflops:
            # MFU = achieved model FLOP/s (6N + attention, see models.transformer) / peak of all workers.
            metrics["mfu"] = metrics["flops_per_s"] / (cfg.peak_tflops * 1e12 * world)
        if gauges is not None:
            for name, gauge in gauges.items():
                if name in metrics:
                    gauge.set(metrics[name], tags={"run": cfg.run_name})
        if rank == 0:
            log.info("step %d/%d loss %.4f tokens/s %.0f workers %d", done, cfg.steps, metrics["loss"], tokens_per_s, world)
            try:
                record(cfg.storage_path, cfg.run_name, metrics, resumed_from=start_step if first_report and start_step else None)
            except OSError as exc:  # the report's history is for people; training goes on without it
                log.info("history not written at step %d: %s", done, str(exc)[:200])
            first_report = False
        if want_ckpt:
            # Every worker writes its shards to its own folder, which Ray deletes once uploaded
            # (in the background with async_upload) into the one shared checkpoint folder.
            ckpt_start = time.perf_counter()
            folder = Path(tempfile.mkdtemp(prefix="elasticml-ckpt-"))
            write_checkpoint(
                folder,
                model_state=get_model_state_dict(model),
                optim_state=get_optimizer_state_dict(model, opt),
                model_config=model_config,
                step=done,
                extra={"model_size": None if cfg.model or cfg.init_from else cfg.model_size, "model": cfg.model,
                       "loss": metrics["loss"], "seq_len": cfg.seq_len,
                       "next_sample": done * cfg.global_batch, "global_batch": cfg.global_batch,
                       "world_size": world,
                       **({"distilled": {"teacher": cfg.teacher, "temperature": cfg.distill_temperature,
                                         "alpha": cfg.distill_alpha, "init_from": cfg.init_from}}
                          if cfg.teacher else {})},
            )
            ray.train.report(
                metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                checkpoint_upload_mode=CheckpointUploadMode.ASYNC if cfg.async_upload else CheckpointUploadMode.SYNC,
                delete_local_checkpoint_after_upload=True,
            )
            if gauges is not None:
                gauges["checkpoint_seconds"].set(time.perf_counter() - ckpt_start, tags={"run": cfg.run_name})
                gauges["last_checkpoint_timestamp_seconds"].set(time.time(), tags={"run": cfg.run_name})
        else:
            ray.train.report(metrics)
        loss_sum.zero_()
        loss_count, window_tokens, window_start = 0, 0, time.perf_counter()
        if moving:
            return
