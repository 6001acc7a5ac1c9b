"""Knowledge distillation: a student learns the teacher's next-byte distribution and the data.

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets), with both
distributions softened by temperature T (Hinton et al., 2015; the T^2 keeps the soft term's
gradients on the scale of the hard one's as T changes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from elasticml.dataconf import check_number


@dataclass(kw_only=True, frozen=True)
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.5
    """Share of the soft (teacher) term; 0 = plain training on the data."""
    steps: int = 100
    lr: float = 5e-4
    batch: int = 8

    def __post_init__(self) -> None:
        check_number(self.temperature, field="temperature", lo=0.1, hi=100)
        check_number(self.alpha, field="alpha", lo=0.0, hi=1.0)
        check_number(self.steps, field="steps", lo=0, hi=1_000_000, integer=True)
        check_number(self.lr, field="lr", lo=1e-8, hi=1.0)
        check_number(self.batch, field="batch", lo=1, hi=4096, integer=True)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, *,
                 temperature: float, alpha: float) -> torch.Tensor:
    """student, teacher: logits (B, T, V); targets (B, T)."""
    hard = F.cross_entropy(student.flatten(0, 1).float(), targets.flatten())
    if alpha == 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student.float() / t, -1).flatten(0, 1),
                    F.log_softmax(teacher.float() / t, -1).flatten(0, 1), log_target=True,
                    reduction="batchmean") * t * t
    return alpha * soft + (1 - alpha) * hard


def finetune(student: torch.nn.Module, teacher: torch.nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
             cfg: DistillConfig) -> list[float]:
    """`cfg.steps` AdamW steps of the student on `batches` (an iterator of (inputs, targets)) against
    the frozen teacher; returns the loss of each step."""
    teacher.eval()
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses = []
    for _ in range(cfg.steps):
        inputs, targets = next(batches)
        with torch.no_grad():
            soft = teacher(inputs)
        loss = distill_loss(student(inputs), soft, targets, temperature=cfg.temperature, alpha=cfg.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses
