"""`elasticml optimize`: candidates from a checkpoint, measured side by side, gated, reported.

Candidates: the teacher in each of `precisions` (torch's dynamic int8, the shipped CPU path; ONNX
Runtime in fp32 and int8), and for each `keep` share of MLP channels and each `layer_keep` share
of blocks (alone and combined) a structurally smaller model (elasticml.optimize.prune) distilled
from the teacher (elasticml.optimize.distill) on the training data, in fp32 and in each of
`precisions`. Each pruned model is written as a signed checkpoint under OUT/<name>; a candidate
is a checkpoint plus the `precision` a replica serves it in. Every candidate and the fp32 teacher are
measured on the same held-out blocks and prompts with the same CPU threads, then judged by the
gate (elasticml.optimize.gate); OUT/report.json keeps the numbers, the verdicts and the choice,
and OUT/report.html / report.png chart them (elasticml.observe.reports).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from elasticml.dataconf import check_number
from elasticml.errors import ConfigError
from elasticml.optimize.distill import DistillConfig
from elasticml.optimize.gate import GateConfig, Verdict, choose, judge
from elasticml.optimize.measure import measure_all

REPORT = "report.json"


@dataclass(kw_only=True, frozen=True)
class OptimizeConfig:
    checkpoint: str
    eval_data: str
    """A corpus (elasticml data build) the teacher was not trained on."""
    out: str
    train_data: str | None = None
    """The training corpus: calibrates pruning and fine-tunes the pruned students. Without it, no
    pruned candidates (only quantisation)."""
    keeps: tuple[float, ...] = (0.5,)
    """Share of MLP channels each pruned candidate keeps."""
    layer_keeps: tuple[float, ...] = ()
    """Share of blocks each shallower candidate keeps (alone and with each of `keeps`)."""
    threads: int = 2
    """CPU threads for the speed measurement: the replicas' num_cpus."""
    eval_blocks: int = 64
    seq_len: int = 128
    prompts: int = 4
    max_tokens: int = 32
    repeats: int = 5
    """Rounds of the speed measurement, every model timed in each (the order rotated); speed-ups are their median."""
    precisions: tuple[str, ...] = ("int8", "onnx", "onnx-int8")
    """How else than fp32 torch each model is measured: int8 (torch dynamic quantisation), onnx and
    onnx-int8 (ONNX Runtime, elasticml.serve.onnx_runtime); each is a `precision` replicas serve in."""
    gate: GateConfig = field(default_factory=GateConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if not (isinstance(self.keeps, tuple) and 0 < len(self.keeps) <= 8):
            raise ConfigError("must be 1 to 8 shares of channels to keep", field="keeps")
        for keep in self.keeps:
            check_number(keep, field="keeps", lo=0.001, hi=0.999)
        if not (isinstance(self.layer_keeps, tuple) and len(self.layer_keeps) <= 8):
            raise ConfigError("must be at most 8 shares of blocks to keep", field="layer_keeps")
        for keep in self.layer_keeps:
            check_number(keep, field="layer_keeps", lo=0.001, hi=0.999)
        check_number(self.threads, field="threads", lo=1, hi=256, integer=True)
        check_number(self.eval_blocks, field="eval_blocks", lo=1, hi=100_000, integer=True)
        check_number(self.seq_len, field="seq_len", lo=8, hi=65536, integer=True)
        check_number(self.prompts, field="prompts", lo=1, hi=64, integer=True)
        check_number(self.max_tokens, field="max_tokens", lo=1, hi=4096, integer=True)
        check_number(self.repeats, field="repeats", lo=1, hi=100, integer=True)
        if not (isinstance(self.precisions, tuple) and len(self.precisions) <= len(SERVED)
                and set(self.precisions) <= set(SERVED)):
            raise ConfigError(f"must be some of {', '.join(SERVED)}, got {self.precisions!r}"[:200], field="precisions")


SERVED = ("int8", "onnx", "onnx-int8")


def _served(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The model as a CPU replica serves it in `precision`."""
    from elasticml.serve.precision import prepare

    return prepare(model, device="cpu", precision=precision)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def optimize(cfg: OptimizeConfig, *, say: Any = print) -> dict[str, Any]:
    """Build, measure and gate the candidates; write OUT/report.json and return it."""
    from elasticml.atomic import write_atomic
    from elasticml.data.loader import TokenBlocks
    from elasticml.models.transformer import Transformer
    from elasticml.optimize.distill import finetune
    from elasticml.optimize.prune import drop_blocks, prune_mlp
    from elasticml.train.checkpoint import load_model, write_checkpoint

    teacher, meta = load_model(cfg.checkpoint)
    seq_len = min(cfg.seq_len, teacher.config.max_seq_len) if isinstance(teacher, Transformer) else cfg.seq_len
    held_out = TokenBlocks(cfg.eval_data, seq_len=seq_len)
    blocks = torch.from_numpy(held_out.blocks[: cfg.eval_blocks].astype("int64"))
    inputs, targets = blocks[:, :-1], blocks[:, 1:]
    prompt_len = max(1, min(32, seq_len - cfg.max_tokens))
    prompts = [bytes(b[:prompt_len].tolist()) for b in held_out.blocks[: cfg.prompts]]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        # name -> (model as served, parameters, checkpoint, precision); the teacher first.
        models: dict[str, tuple[torch.nn.Module, int, str, str]] = {
            "teacher": (teacher, _params(teacher), str(cfg.checkpoint), "fp32"),
            **{p: (_served(teacher, p), _params(teacher), str(cfg.checkpoint), p) for p in cfg.precisions},
        }
        if cfg.train_data is not None and not isinstance(teacher, Transformer):
            raise ConfigError("pruning needs the reference transformer; this checkpoint holds a user model",
                              field="keeps")
        if cfg.train_data is not None:
            train = TokenBlocks(cfg.train_data, seq_len=seq_len, seed=1)
            calibration = train.batch(0, global_batch=min(16, len(train)))[0]
            reference = cast(Transformer, teacher)  # refused above unless it is one
            shapes = [(1.0, k) for k in cfg.keeps] + [(d, k) for d in cfg.layer_keeps for k in (1.0, *cfg.keeps)]
            for depth, keep in shapes:
                name = "+".join(([f"depth{round(depth * 100)}"] if depth < 1 else []) +
                                ([f"prune{round(keep * 100)}"] if keep < 1 else []))
                student = drop_blocks(reference, keep=depth) if depth < 1 else reference
                student = prune_mlp(student, calibration, keep=keep) if keep < 1 else student  # new models, both
                batches = (train.batch(s, global_batch=cfg.distill.batch) for s in itertools.count(1))
                losses = finetune(student, teacher, batches, cfg.distill) if cfg.distill.steps else []
                student.eval()
                folder = write_checkpoint(out / name, model_state=student.state_dict(), optim_state=None,
                                          model_config=student.config, step=int(meta.get("step", 0)),
                                          extra={"optimized": {"from": str(cfg.checkpoint), "keep": keep,
                                                               "layer_keep": depth, "distill": asdict(cfg.distill),
                                                               "finetune_loss": losses[-1] if losses else None}})
                params = _params(student)
                models[name] = (student, params, str(folder), "fp32")
                for p in cfg.precisions:
                    models[f"{name}+{p}"] = (_served(student, p), params, str(folder), p)
                say(f"{name}: {params} parameters, distilled for {len(losses)} steps")
        say(f"measuring {len(models)} models side by side")
        measured = measure_all({n: (m, params) for n, (m, params, _, _) in models.items()}, inputs, targets, prompts,
                               max_tokens=cfg.max_tokens, repeats=cfg.repeats)
    finally:
        torch.set_num_threads(threads)
    base = measured.pop("teacher")
    candidates: dict[str, dict[str, Any]] = {n: {"checkpoint": models[n][2], "precision": models[n][3], "measurement": m}
                  for n, m in measured.items()}
    verdicts: dict[str, Verdict] = {n: judge(base, c["measurement"], cfg.gate) for n, c in candidates.items()}
    chosen = choose(verdicts)
    report = {
        "teacher": {"checkpoint": str(cfg.checkpoint), "precision": "fp32", **base.to_dict()},
        "threads": cfg.threads, "gate": asdict(cfg.gate), "eval_blocks": len(blocks), "seq_len": seq_len,
        "candidates": [{"name": n, "checkpoint": c["checkpoint"], "precision": c["precision"],
                        **c["measurement"].to_dict(), **verdicts[n].to_dict()} for n, c in candidates.items()],
        "chosen": chosen,
    }
    write_atomic(out / REPORT, json.dumps(report, indent=2))
    from elasticml.observe.reports import optimize_charts, page, png

    summary = [("teacher", f"{cfg.checkpoint} (fp32): held-out loss {base.loss:.4f}, {base.tokens_per_s:.0f} bytes/s"),
               ("gate", f"loss within {100 * cfg.gate.quality_budget:g}% of the teacher's, and {cfg.gate.min_speedup:g}x "
                        f"its bytes/s or at most {cfg.gate.max_size_ratio:g}x its size"),
               ("chosen", chosen or "none passed the gate")]
    write_atomic(out / "report.html", page("elasticml optimize", summary, optimize_charts(report)))
    write_atomic(out / "report.png", png(optimize_charts(report)))
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a Markdown table, teacher first."""
    rows = ["| candidate | precision | held-out loss | next-byte acc | p50 ms | bytes/s | size KiB | speed-up (rounds' "
            "min to max) | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    t = report["teacher"]
    rows.append(f"| teacher | fp32 | {t['loss']:.4f} | {t['accuracy']:.3f} | {t['p50_ms']:.1f} | {t['tokens_per_s']:.0f} | "
                f"{t['size_bytes'] / 1024:.0f} | 1.00x | baseline |")
    for c in report["candidates"]:
        verdict = "pass" + (" (chosen)" if c["name"] == report["chosen"] else "") if c["passed"] else \
            "fail: " + "; ".join(c["reasons"])
        rows.append(f"| {c['name']} | {c['precision']} | {c['loss']:.4f} | {c['accuracy']:.3f} | {c['p50_ms']:.1f} | "
                    f"{c['tokens_per_s']:.0f} | {c['size_bytes'] / 1024:.0f} | {c['speedup']:.2f}x ({c['speedup_min']:.2f} to {c['speedup_max']:.2f}) | "
                    f"{verdict} |")
    return "\n".join(rows)
