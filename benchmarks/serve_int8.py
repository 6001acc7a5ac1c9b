"""CPU replicas: int8 candidates vs fp32, tokens/s and quality, side by side in one run.

    python benchmarks/serve_int8.py [--threads 2] [--sizes small 125m] [--train-steps 300]

Speed: greedy generation of --tokens bytes after a short prompt (KV cache, batch 1: what a CPU
replica does per request) at each size, random weights (speed does not depend on the values).
Quality: the "small" model is first trained for --train-steps steps on Python stdlib sources,
then each candidate's mean loss (nats/byte) on held-out stdlib files is compared with fp32's.
Candidates: torch.ao dynamic int8 (what elasticml ships, see elasticml/serve/precision.py) and,
when torchao is installed (`pip install torchao`; not a dependency), torchao's
Int8DynamicActivationInt8Weight and Int8WeightOnly configs in eager mode.

ONNX Runtime (a dependency since the `onnx` / `onnx-int8` precisions): in generation, the decode
step exported with its KV cache as inputs and outputs, as replicas run it; and on the full-sequence
forward (what /v1/score runs): tokens/s scored for a (1, --score-len) input, torch fp32 and int8 vs
ORT fp32 and ORT dynamic int8 (`onnxruntime.quantization.quantize_dynamic`, QInt8 weights).
"""

from __future__ import annotations

import argparse
import copy
import sysconfig
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from elasticml.models import build_model
from elasticml.serve.generate import generate
from elasticml.serve.precision import prepare

warnings.filterwarnings("ignore")


def candidates() -> dict:
    out = {
        "fp32": lambda m: m,
        "torch.ao dynamic int8 (shipped)": lambda m: prepare(m, device="cpu", precision="int8"),
        # The decode step exported with its KV cache (elasticml/serve/onnx_runtime.py): precision onnx / onnx-int8.
        "onnxruntime fp32, KV cache (onnx)": lambda m: prepare(m, device="cpu", precision="onnx"),
        "onnxruntime dynamic int8, KV cache (onnx-int8)": lambda m: prepare(m, device="cpu", precision="onnx-int8"),
    }
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return out

    def tao(config):  # type: ignore[no-untyped-def]
        def apply(m):  # type: ignore[no-untyped-def]
            quantize_(m, config)
            return m
        return apply

    out["torchao int8 dyn-act int8-weight"] = tao(Int8DynamicActivationInt8WeightConfig())
    out["torchao int8 weight-only"] = tao(Int8WeightOnlyConfig())
    return out


def tokens_per_s(model: torch.nn.Module, n: int, reps: int) -> float:
    generate(model, b"def main(", max_tokens=4)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        generate(model, b"def main():\n    return", max_tokens=n)
    return n * reps / (time.perf_counter() - t0)


def forward_tokens_per_s(run, n: int, reps: int) -> float:  # type: ignore[no-untyped-def]
    run()
    t0 = time.perf_counter()
    for _ in range(reps):
        run()
    return n * reps / (time.perf_counter() - t0)


def onnx_rows(base: torch.nn.Module, size: str, seq: int, threads: int, reps: int) -> list[tuple[str, float]]:
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return []
    import tempfile

    tokens = torch.randint(0, 256, (1, seq))
    folder = Path(tempfile.mkdtemp())
    fp32_path, int8_path = folder / "model.onnx", folder / "model.int8.onnx"
    torch.onnx.export(base, (tokens,), str(fp32_path), input_names=["tokens"], output_names=["logits"],
                      dynamic_axes={"tokens": {0: "b", 1: "t"}}, dynamo=False)
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    rows = []
    with torch.inference_mode():
        rows.append(("torch fp32", forward_tokens_per_s(lambda: base(tokens), seq, reps)))
        q = prepare(copy.deepcopy(base), device="cpu", precision="int8")
        rows.append(("torch.ao dynamic int8 (shipped)", forward_tokens_per_s(lambda: q(tokens), seq, reps)))
    feed = {"tokens": tokens.numpy()}
    for name, path in (("onnxruntime fp32", fp32_path), ("onnxruntime dynamic int8", int8_path)):
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        rows.append((name, forward_tokens_per_s(lambda: session.run(None, feed), seq, reps)))
    return rows


def stdlib_bytes(names: list[str]) -> bytes:
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"\n".join((root / n).read_bytes() for n in names)


def train_small(steps: int, seq: int = 128, batch: int = 16) -> torch.nn.Module:
    data = torch.tensor(list(stdlib_bytes(["json/decoder.py", "json/encoder.py", "argparse.py", "dataclasses.py",
                                           "functools.py", "pathlib.py", "textwrap.py", "string.py"])))
    torch.manual_seed(0)
    model = build_model("small")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,))
        x = torch.stack([data[s:s + seq] for s in starts])
        y = torch.stack([data[s + 1:s + seq + 1] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.inference_mode()
def held_out_loss(model: torch.nn.Module, seq: int = 128) -> float:
    data = torch.tensor(list(stdlib_bytes(["shutil.py", "tempfile.py"])))[: seq * 64 + 1]
    x = data[:-1].view(-1, seq)
    y = data[1:].view(-1, seq)
    return float(F.cross_entropy(model(x).float().flatten(0, 1), y.flatten()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=["small", "125m"])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--score-len", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cands = candidates()
    print(f"threads={args.threads}  tokens={args.tokens}  reps={args.reps}")
    for size in args.sizes:
        torch.manual_seed(0)
        base = build_model(size).eval()
        rates = {name: tokens_per_s(make(copy.deepcopy(base)), args.tokens, args.reps) for name, make in cands.items()}
        for name, rate in rates.items():
            print(f"{size:6s} {name:34s} {rate:8.1f} tokens/s   {rate / rates['fp32']:.2f}x fp32")
    for size in args.sizes:
        torch.manual_seed(0)
        rows = onnx_rows(build_model(size).eval(), size, args.score_len, args.threads, args.reps * 3)
        for name, rate in rows:
            print(f"forward {size:6s} {name:34s} {rate:8.1f} tokens/s   {rate / rows[0][1]:.2f}x torch fp32")
    trained = train_small(args.train_steps)
    ref = held_out_loss(trained)
    print(f"quality: small trained {args.train_steps} steps, held-out loss fp32 {ref:.4f} nats/byte")
    for name, make in cands.items():
        if name == "fp32":
            continue
        loss = held_out_loss(make(copy.deepcopy(trained)))
        print(f"quality {name:34s} loss {loss:.4f}  ({(loss - ref) / ref * 100:+.2f}% vs fp32)")


if __name__ == "__main__":
    main()
