"""What a candidate model is worth: held-out quality, speed on this machine's CPU threads, size.

Quality is mean next-byte cross-entropy (nats) and accuracy (argmax == next byte) over held-out
blocks, in the candidate's serving precision. Speed is the serving path itself
(`elasticml.serve.generate.generate`, greedy, KV cache): the median latency of completing a prompt
and the bytes per second of each round, every candidate timed in turn in each round, the order
rotated from round to round. A candidate's speed-up is taken within each round (its bytes/s over the
teacher's in that round) and reported as the median of the rounds with their spread. Size is the
bytes of the state dict a replica holds.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Measurement:
    loss: float
    accuracy: float
    p50_ms: float
    tokens_per_s: float
    size_bytes: int
    params: int
    round_tokens_per_s: tuple[float, ...] = ()
    """Bytes/s in each round, in order; `tokens_per_s` is their median."""

    def speedups(self, baseline: "Measurement") -> list[float]:
        """This model's bytes/s over `baseline`'s, round by round (both timed in every round); without
        rounds, the one ratio of their speeds."""
        if self.round_tokens_per_s and len(self.round_tokens_per_s) == len(baseline.round_tokens_per_s):
            return [mine / theirs for mine, theirs in zip(self.round_tokens_per_s, baseline.round_tokens_per_s)]
        return [self.tokens_per_s / baseline.tokens_per_s]

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {**asdict(self), "round_tokens_per_s": list(self.round_tokens_per_s)}  # as JSON reads it back


@torch.inference_mode()
def quality(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, batch: int = 16) -> tuple[float, float]:
    """(mean cross-entropy in nats, next-byte accuracy) over the held-out (inputs, targets)."""
    total, correct, n = 0.0, 0, 0
    for i in range(0, len(inputs), batch):
        logits = model(inputs[i:i + batch]).float()
        y = targets[i:i + batch]
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += y.numel()
    return total / n, correct / n


def speeds(models: dict[str, torch.nn.Module], prompts: list[bytes], *, max_tokens: int,
           repeats: int) -> dict[str, tuple[float, float, tuple[float, ...]]]:
    """name -> (median ms to complete one prompt, median bytes per second of the rounds, bytes per second
    in each round), every model timed in turn within each of `repeats` rounds, each round starting one
    model further along: a machine that slows down or speeds up midway shifts all of them alike, and no
    model is always the one timed first (after the idle moment between rounds)."""
    from elasticml.serve.generate import generate

    for model in models.values():  # warm-up: first-call allocations are not the model's speed
        generate(model, prompts[0], max_tokens=max_tokens)  # type: ignore[arg-type]  # a Transformer, or a copy with its interface (int8, ONNX)
    times: dict[str, list[float]] = {name: [] for name in models}
    rounds: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            model, took = models[name], []
            for p in prompts:
                start = time.perf_counter()
                generate(model, p, max_tokens=max_tokens)  # type: ignore[arg-type]  # as above
                took.append(time.perf_counter() - start)
            times[name].extend(took)
            rounds[name].append(max_tokens * len(took) / sum(took))
    return {name: (1000 * statistics.median(t), statistics.median(rounds[name]), tuple(rounds[name]))
            for name, t in times.items()}


def size_bytes(model: torch.nn.Module) -> int:
    if hasattr(model, "serialized_bytes"):  # ONNX Runtime's graph and weights
        return int(model.serialized_bytes())  # type: ignore[operator]  # hasattr above: ONNX Runtime's wrapper
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def measure_all(models: dict[str, tuple[torch.nn.Module, int]], inputs: torch.Tensor, targets: torch.Tensor,
                prompts: list[bytes], *, max_tokens: int, repeats: int) -> dict[str, Measurement]:
    """Every model's Measurement (`models`: name -> (model, parameter count)), speeds side by side."""
    fast = speeds({n: m for n, (m, _) in models.items()}, prompts, max_tokens=max_tokens, repeats=repeats)
    out = {}
    for name, (model, params) in models.items():
        loss, accuracy = quality(model, inputs, targets)
        out[name] = Measurement(loss=loss, accuracy=accuracy, p50_ms=fast[name][0], tokens_per_s=fast[name][1],
                                size_bytes=size_bytes(model), params=params, round_tokens_per_s=fast[name][2])
    return out
