"""CPU replicas: int8 candidates vs fp32, tokens/s and quality, side by side in one run.

    python benchmarks/serve_int8.py [--threads 2] [--sizes small 125m] [--trained small] [--train-steps 300]
        [--rounds 5] [--reps 2] [--json OUT]

One model per size, and every figure of a size comes from that model: the sizes named in
--trained are first trained for --train-steps steps on Python stdlib sources, the others keep
random weights (seed 0). Each candidate is made from that model once, and the same candidate
objects are timed and scored. Quality is reported only for trained models: a random model's loss
says nothing about what int8 costs a real one. To measure speed and quality on the same 125M
model, name it in both (`--sizes 125m --trained 125m`; its training is slow on a few cores).

Speed, every candidate timed in turn within each of --rounds rounds (the order rotated each
round, so no candidate always runs first or last), --reps requests each per round:
- generation: greedy, --tokens bytes after a short prompt (KV cache, batch 1: what a CPU replica
  does per request);
- forward: one (1, --score-len) sequence, what /v1/score runs: torch fp32 and int8 against ONNX
  Runtime fp32 and dynamic int8 on the full-sequence graph (`onnxruntime.quantization.quantize_dynamic`).
Reported per candidate: the median tokens/s over rounds with its min-max, and the median (min-max)
of its per-round ratio to fp32 in the same round.
Quality: mean loss (nats/byte) on held-out stdlib files, each candidate against fp32.

Candidates: torch.ao dynamic int8 (what elasticml ships, see elasticml/serve/precision.py), ONNX
Runtime with the decode step exported with its KV cache (precisions `onnx` and `onnx-int8`) and,
when torchao is installed (`pip install torchao`; not a dependency), torchao's
Int8DynamicActivationInt8Weight and Int8WeightOnly configs in eager mode. Every round's rate and
every loss go to benchmarks/results/serve_int8.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import copy
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


import record  # benchmarks/record.py: a script's own folder is first on sys.path

from elasticml.models import build_model  # noqa: E402
from elasticml.serve.generate import generate  # noqa: E402
from elasticml.serve.precision import prepare  # noqa: E402

warnings.filterwarnings("ignore")

FP32 = "fp32"


def candidates() -> dict[str, Callable[[torch.nn.Module], torch.nn.Module]]:
    out: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
        FP32: lambda m: m,
        "torch.ao dynamic int8 (shipped)": lambda m: prepare(m, device="cpu", precision="int8"),
        # The decode step exported with its KV cache (elasticml/serve/onnx_runtime.py): precision onnx / onnx-int8.
        "onnxruntime fp32, KV cache (onnx)": lambda m: prepare(m, device="cpu", precision="onnx"),
        "onnxruntime dynamic int8, KV cache (onnx-int8)": lambda m: prepare(m, device="cpu", precision="onnx-int8"),
    }
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return out

    def tao(config: Any) -> Callable[[torch.nn.Module], torch.nn.Module]:
        def apply(m: torch.nn.Module) -> torch.nn.Module:
            quantize_(m, config)
            return m
        return apply

    out["torchao int8 dyn-act int8-weight"] = tao(Int8DynamicActivationInt8WeightConfig())
    out["torchao int8 weight-only"] = tao(Int8WeightOnlyConfig())
    return out


def interleaved(runs: dict[str, Callable[[], None]], tokens: int, rounds: int) -> dict[str, Any]:
    """Every run in turn within each round, the order rotated by one each round; tokens/s per round.
    One warm-up call each first: first-call allocations are not the candidate's speed."""
    for run in runs.values():
        run()
    names = list(runs)
    rates: dict[str, list[float]] = {name: [] for name in names}
    orders = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        orders.append(order)
        for name in order:
            t0 = time.perf_counter()
            runs[name]()
            rates[name].append(tokens / (time.perf_counter() - t0))
    return {"order": orders, "tokens_per_s": rates}


def summarise(measured: dict[str, Any], base: str) -> dict[str, dict[str, dict[str, float]]]:
    """Per candidate: tokens/s over rounds, and its ratio to `base` taken within each round."""
    rates = measured["tokens_per_s"]
    return {name: {"tokens_per_s": record.spread(values),
                   "vs_base": record.spread([v / b for v, b in zip(values, rates[base])])} for name, values in rates.items()}


def generation_runs(models: dict[str, torch.nn.Module], tokens: int, reps: int) -> dict[str, Callable[[], None]]:
    def run(model: torch.nn.Module) -> Callable[[], None]:
        def go() -> None:
            for _ in range(reps):
                generate(model, b"def main():\n    return", max_tokens=tokens)  # type: ignore[arg-type]
        return go
    return {name: run(model) for name, model in models.items()}


def forward_runs(base: torch.nn.Module, int8: torch.nn.Module, seq: int, threads: int,
                 reps: int) -> dict[str, Callable[[], None]]:
    """torch fp32 and int8 and, when ONNX Runtime is there, its fp32 and int8 full-sequence graphs."""
    tokens = torch.randint(0, 256, (1, seq))

    def torch_run(model: torch.nn.Module) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode():
                for _ in range(reps):
                    model(tokens)
        return go

    runs = {"torch fp32": torch_run(base), "torch.ao dynamic int8 (shipped)": torch_run(int8)}
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return runs
    folder = Path(tempfile.mkdtemp())
    fp32_path, int8_path = folder / "model.onnx", folder / "model.int8.onnx"
    torch.onnx.export(base, (tokens,), str(fp32_path), input_names=["tokens"], output_names=["logits"],
                      dynamic_axes={"tokens": {0: "b", 1: "t"}}, dynamo=False)
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    feed = {"tokens": tokens.numpy()}

    def ort_run(path: Path) -> Callable[[], None]:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        def go() -> None:
            for _ in range(reps):
                session.run(None, feed)
        return go

    runs["onnxruntime fp32"] = ort_run(fp32_path)
    runs["onnxruntime dynamic int8"] = ort_run(int8_path)
    return runs


def stdlib_bytes(names: list[str]) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"\n".join((root / n).read_bytes() for n in names)


def train(size: str, steps: int, lr: float, seq: int = 128, batch: int = 16) -> tuple[torch.nn.Module, list[float]]:
    data = torch.tensor(list(stdlib_bytes(["json/decoder.py", "json/encoder.py", "argparse.py", "dataclasses.py",
                                           "functools.py", "pathlib.py", "textwrap.py", "string.py"])))
    torch.manual_seed(0)
    model = build_model(size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[s:s + seq] for s in starts])
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 5))
    return model.eval(), losses


@torch.inference_mode()
def held_out_loss(model: torch.nn.Module, seq: int = 128) -> float:
    data = torch.tensor(list(stdlib_bytes(["shutil.py", "tempfile.py"])))[: seq * 64 + 1]
    x = data[:-1].view(-1, seq)
    y = data[1:].view(-1, seq)
    return float(F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()))


def print_speed(what: str, label: str, table: dict[str, dict[str, dict[str, float]]], base: str) -> None:
    print(f"{what}, {label}: tokens/s median (min-max) over rounds; vs {base} in the same round, median (min-max)")
    for name, row in table.items():
        t, v = row["tokens_per_s"], row["vs_base"]
        print(f"  {name:48s} {t['median']:9.1f} ({t['min']:.1f}-{t['max']:.1f})   "
              f"{v['median']:.2f}x ({v['min']:.2f}-{v['max']:.2f})")


def measure_size(size: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every figure for one size, all from one model (trained or not, as the label says)."""
    t0 = time.monotonic()
    if size in args.trained:
        model, losses = train(size, args.train_steps, args.lr)
        label = f"{size} trained {args.train_steps} steps on stdlib sources"
    else:
        torch.manual_seed(0)
        model, losses = build_model(size).eval(), []
        label = f"{size} with random weights (untrained: speed only)"
    train_s = time.monotonic() - t0
    params = sum(p.numel() for p in model.parameters())
    label += f", {params / 1e6:.1f}M parameters"
    models = {name: make(copy.deepcopy(model)) for name, make in candidates().items()}
    gen = interleaved(generation_runs(models, args.tokens, args.reps), args.tokens * args.reps, args.rounds)
    gen_table = summarise(gen, FP32)
    print_speed("generation", label, gen_table, FP32)
    fwd = interleaved(forward_runs(models[FP32], models["torch.ao dynamic int8 (shipped)"], args.score_len,
                                   args.threads, args.reps * 3), args.score_len * args.reps * 3, args.rounds)
    fwd_table = summarise(fwd, "torch fp32")
    print_speed(f"forward (1 x {args.score_len})", label, fwd_table, "torch fp32")
    quality: dict[str, float] | None = None
    if size in args.trained:
        quality = {name: held_out_loss(m) for name, m in models.items()}
        ref = quality[FP32]
        print(f"quality, {label}: held-out loss, nats/byte")
        for name, loss in quality.items():
            print(f"  {name:48s} {loss:.4f}" + ("" if name == FP32 else f"  ({(loss - ref) / ref * 100:+.2f}% vs fp32)"))
    else:
        print(f"quality, {label}: not measured (random weights)")
    return {"model": label, "params": params, "trained_steps": args.train_steps if size in args.trained else 0,
            "train_s": round(train_s, 1), "train_losses": losses, "generation": gen, "forward": fwd,
            "held_out_loss": quality, "summary": {"generation": gen_table, "forward": fwd_table}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=["small", "125m"], help="a model per size, every figure from it")
    p.add_argument("--trained", nargs="*", default=["small"],
                   help="sizes trained before they are measured (the others keep random weights: speed only)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tokens", type=int, default=32, help="bytes generated per request")
    p.add_argument("--rounds", type=int, default=5, help="rounds; every candidate is timed once in each")
    p.add_argument("--reps", type=int, default=2, help="requests per candidate per round (forward: 3x this)")
    p.add_argument("--score-len", type=int, default=128)
    record.add_arguments(p, __file__)
    args = p.parse_args(argv)
    if unknown := set(args.trained) - set(args.sizes):
        p.error(f"--trained {sorted(unknown)}: not in --sizes")
    run = record.start(__file__, args, argv)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  tokens={args.tokens}  rounds={args.rounds}  reps={args.reps}  "
          f"candidates: {', '.join(candidates())}")
    samples = {size: measure_size(size, args) for size in args.sizes}
    run.write(samples={size: {k: v for k, v in s.items() if k != "summary"} for size, s in samples.items()},
              summary={size: {"model": s["model"], **s["summary"], "held_out_loss": s["held_out_loss"]}
                       for size, s in samples.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
