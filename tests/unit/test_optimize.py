"""Model optimisation: structured pruning that keeps the model exact where it should, distillation's
loss, the release gate's verdicts, and `elasticml optimize` end to end on a trained tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from elasticml.models import SIZES, build_model
from elasticml.optimize.gate import GateConfig, choose, judge
from elasticml.optimize.measure import Measurement

ELASTICML = str(Path(sys.executable).with_name("elasticml"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, corpus):
    """A tiny model trained for a few hundred steps on the corpus (plain torch, one process)."""
    from elasticml.train.checkpoint import write_checkpoint
    from tests.support.tiny import train_tiny

    model = train_tiny(corpus, steps=200)
    folder = tmp_path_factory.mktemp("teacher") / "checkpoint"
    write_checkpoint(folder, model_state=model.state_dict(), optim_state=None, model_config=SIZES["tiny"], step=200)
    return folder


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Text the teacher never saw: the corpus is the start of the stdlib, this is its email package."""
    from elasticml.data.corpus import build_corpus

    out = tmp_path_factory.mktemp("heldout") / "corpus"
    build_corpus(out, num_shards=1, max_bytes=80_000, source_dir=Path(sysconfig.get_paths()["stdlib"]) / "email")
    return out


def test_pruning_removes_the_channels_that_add_nothing_and_leaves_the_output_exact():
    from elasticml.optimize.prune import prune_mlp

    torch.manual_seed(1)
    model = build_model("tiny").eval()
    hidden = model.config.hidden
    with torch.no_grad():
        for block in model.blocks:  # the first half of every MLP's channels write nothing
            block.mlp.down.weight[:, : hidden // 2] = 0
    tokens = torch.randint(0, 256, (2, 32))
    pruned = prune_mlp(model, tokens, keep=0.5)
    assert pruned.config.mlp_hidden == hidden // 2
    assert pruned.blocks[0].mlp.down.weight.shape == (model.config.d_model, hidden // 2)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(pruned(tokens), model(tokens), atol=1e-5)  # a smaller model, same answers
    whole = prune_mlp(model, tokens, keep=1.0)
    assert whole.config.mlp_hidden == hidden


def test_distillation_loss_is_the_data_loss_without_a_teacher_and_zero_soft_term_when_equal():
    from elasticml.optimize.distill import DistillConfig, distill_loss

    torch.manual_seed(2)
    student, other = torch.randn(2, 5, 256), torch.randn(2, 5, 256)
    targets = torch.randint(0, 256, (2, 5))
    hard = F.cross_entropy(student.flatten(0, 1), targets.flatten())
    assert torch.allclose(distill_loss(student, other, targets, temperature=2.0, alpha=0.0), hard)
    assert torch.allclose(distill_loss(student, student, targets, temperature=2.0, alpha=0.5), 0.5 * hard, atol=1e-6)
    assert distill_loss(student, other, targets, temperature=2.0, alpha=1.0) > 0
    with pytest.raises(Exception, match="temperature"):
        DistillConfig(temperature=float("nan"))


def _m(loss: float, tps: float, size: int) -> Measurement:
    return Measurement(loss=loss, accuracy=0.5, p50_ms=1.0, tokens_per_s=tps, size_bytes=size, params=1)


def test_the_gate_wants_quality_within_budget_and_a_gain():
    base, cfg = _m(2.0, 100.0, 1000), GateConfig()
    fast = judge(base, _m(2.01, 200.0, 1000), cfg)
    assert fast.passed and fast.reasons == [] and fast.speedup == 2.0
    small = judge(base, _m(2.0, 90.0, 500), cfg)
    assert small.passed  # slower but half the bytes: a size gain
    worse = judge(base, _m(2.05, 400.0, 100), cfg)
    assert not worse.passed and "2.50% above the teacher's" in worse.reasons[0]
    same = judge(base, _m(1.9, 105.0, 950), cfg)
    assert not same.passed and same.reasons[0].startswith("no gain")
    assert choose({"a": fast, "b": small, "c": worse}) == "a"
    assert choose({"c": worse, "d": same}) is None
    with pytest.raises(Exception, match="quality_budget"):
        GateConfig(quality_budget=-0.1)


def test_speed_ups_are_taken_within_each_round_and_the_choice_goes_by_their_median():
    def rounds(*bps: float) -> Measurement:
        return Measurement(loss=2.0, accuracy=0.5, p50_ms=1.0, tokens_per_s=sorted(bps)[len(bps) // 2], size_bytes=1000,
                           params=1, round_tokens_per_s=bps)

    # The machine halves its speed in the last two rounds; both candidates are measured through it.
    teacher = rounds(100, 100, 100, 50, 50)
    steady = rounds(150, 150, 150, 75, 75)  # 1.5x in every round
    lucky = rounds(140, 140, 140, 140, 140)  # 1.4x while the machine was fast, 2.8x once it slowed
    cfg = GateConfig()
    a, b = judge(teacher, steady, cfg), judge(teacher, lucky, cfg)
    assert a.speedup == 1.5 and a.speedup_range == (1.5, 1.5)
    assert b.speedup == pytest.approx(1.4) and b.speedup_range == (pytest.approx(1.4), pytest.approx(2.8))
    # Pooled over the rounds, lucky looks faster (140 bytes/s against 120); paired, steady is.
    assert choose({"steady": a, "lucky": b}) == "steady"
    assert a.to_dict()["speedup_min"] == 1.5 and b.to_dict()["speedup_max"] == 2.8


def test_every_model_is_timed_in_every_round_and_none_always_first(monkeypatch):
    import elasticml.serve.generate as generate_module
    from elasticml.optimize import measure

    order: list[str] = []
    monkeypatch.setattr(generate_module, "generate", lambda model, prompt, *, max_tokens: order.append(model))
    models = {name: name for name in ("teacher", "int8", "onnx")}
    out = measure.speeds(models, [b"p"], max_tokens=4, repeats=6)  # type: ignore[arg-type]  # names stand in for models
    timed = order[3:]  # after one warm-up call each
    firsts = [timed[r * 3] for r in range(6)]
    assert sorted(timed) == sorted(list(models) * 6)
    assert set(firsts) == set(models) and all(firsts.count(m) == 2 for m in models)
    assert all(len(out[m][2]) == 6 for m in models)


def test_optimize_writes_signed_smaller_checkpoints_and_the_gate_stops_an_over_pruned_one(teacher, held_out, corpus,
                                                                                          tmp_path):
    from elasticml.data.loader import TokenBlocks
    from elasticml.optimize.distill import DistillConfig
    from elasticml.optimize.measure import quality
    from elasticml.optimize.pipeline import OptimizeConfig, optimize, table
    from elasticml.train.checkpoint import load_model

    cfg = OptimizeConfig(checkpoint=str(teacher), eval_data=str(held_out), out=str(tmp_path / "out"),
                         train_data=str(corpus), keeps=(0.5, 0.02), distill=DistillConfig(steps=20),
                         eval_blocks=16, seq_len=64, prompts=2, max_tokens=8, repeats=1)
    report = optimize(cfg, say=lambda _m: None)
    by = {c["name"]: c for c in report["candidates"]}
    served = ("int8", "onnx", "onnx-int8")
    assert set(by) == {*served, "prune50", "prune2", *(f"prune{k}+{p}" for k in (50, 2) for p in served)}
    # ONNX Runtime computes the same function as torch (fp32), and its int8 graph is smaller.
    assert by["onnx"]["loss"] == pytest.approx(report["teacher"]["loss"], rel=1e-4)
    assert by["prune50+onnx"]["loss"] == pytest.approx(by["prune50"]["loss"], rel=1e-4)
    assert by["onnx-int8"]["size_bytes"] < 0.6 * by["onnx"]["size_bytes"]
    # 4 MLP channels of 192 left: far outside a 1% quality budget, whatever it gains.
    assert not by["prune2"]["passed"] and "above the teacher's" in by["prune2"]["reasons"][0]
    assert by["prune2"]["loss"] > report["teacher"]["loss"] * 1.01
    assert by["prune2"]["params"] < by["prune50"]["params"] < report["teacher"]["params"]
    # The pruned checkpoint is a real one: signed, it loads as the narrower model and scores what was reported.
    model, meta = load_model(by["prune50"]["checkpoint"])
    assert model.config.mlp_hidden == SIZES["tiny"].hidden // 2 and meta["optimized"]["keep"] == 0.5
    blocks = torch.from_numpy(TokenBlocks(str(held_out), seq_len=64).blocks[:16].astype("int64"))
    loss, _ = quality(model, blocks[:, :-1], blocks[:, 1:])
    assert loss == pytest.approx(by["prune50"]["loss"], rel=1e-5)
    assert by["prune50+int8"]["checkpoint"] == by["prune50"]["checkpoint"] and by["prune50+int8"]["precision"] == "int8"
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") == 2 and "prune2+onnx" in page and "quality budget 1%" in page  # every candidate drawn
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["chosen"] is None or by[report["chosen"]]["passed"]
    assert "| prune2 | fp32 |" in table(report) and "fail: held-out loss" in table(report)


@pytest.mark.slow  # the whole command once more; what it runs is tested above
def test_the_optimize_command_reports_json_and_refuses_bad_settings(teacher, held_out, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ELASTICML, "optimize", str(teacher), "--eval-data", str(held_out), "--out",
                               str(tmp_path / "o"), *args], capture_output=True, text=True, timeout=300)

    done = run("--eval-blocks", "8", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    # no training data: the teacher in other precisions only
    assert [c["name"] for c in report["candidates"]] == ["int8", "onnx", "onnx-int8"]
    for args, words in ((["--keep", "half"], "--keep: must be comma-separated numbers"),
                        (["--keep", "0"], "keeps: must be in"), (["--threads", "0"], "threads: must be in"),
                        (["--quality-budget", "nan"], "quality_budget: must be in"),
                        (["--precisions", "int8,int4"], "precisions: must be some of int8, onnx, onnx-int8")):
        bad = run(*args)
        assert bad.returncode == 2 and bad.stderr.startswith("elasticml: error: ") and words in bad.stderr, bad.stderr


def test_a_shallower_student_keeps_the_first_and_last_blocks_whole():
    from elasticml.optimize.prune import drop_blocks

    torch.manual_seed(3)
    model = build_model(SIZES["tiny"].__class__(d_model=64, n_layers=5, n_heads=4, max_seq_len=64)).eval()
    student = drop_blocks(model, keep=0.6)
    assert student.config.n_layers == 3
    for new, old in enumerate([0, 2, 4]):
        for (k, a), (_, b) in zip(student.blocks[new].state_dict().items(), model.blocks[old].state_dict().items()):
            assert torch.equal(a, b), k
    assert torch.equal(student.head.weight, model.head.weight) and torch.equal(student.embed.weight, model.embed.weight)
    assert drop_blocks(model, keep=0.01).config.n_layers == 1


def test_a_held_out_corpus_is_built_from_another_source_folder(tmp_path):
    from elasticml.data.corpus import read_manifest

    source = Path(sysconfig.get_paths()["stdlib"]) / "json"
    done = subprocess.run([ELASTICML, "data", "build", "--out", str(tmp_path / "h"), "--source", str(source),
                           "--shards", "1", "--max-mb", "0.05", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["documents"] >= 1
    assert read_manifest(tmp_path / "h").source == str(source)
    missing = subprocess.run([ELASTICML, "data", "build", "--out", str(tmp_path / "x"), "--source", str(tmp_path / "no")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
