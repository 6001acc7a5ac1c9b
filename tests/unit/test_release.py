"""`elasticml release`'s door: which candidate a report lets through, and every bad input named.

The release itself (canary, verdict, promotion, rollback) runs on real Serve in
tests/integration/test_serve_canary.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elasticml.errors import ConfigError
from elasticml.serve.release import Candidate, ReleaseConfig, candidate_from_report, read_base, release

ELASTICML = str(Path(sys.executable).with_name("elasticml"))


def report(tmp_path: Path, chosen: str | None, rows: list[dict]) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"teacher": {"checkpoint": "t", "loss": 2.0}, "candidates": rows, "chosen": chosen}))
    return path


ROWS = [
    {"name": "int8", "checkpoint": "/ckpt/teacher", "precision": "int8", "passed": True, "loss": 2.01,
     "loss_ratio": 1.005, "speedup": 1.3, "size_ratio": 0.4, "reasons": []},
    {"name": "prune10", "checkpoint": "/ckpt/prune10", "precision": "fp32", "passed": False, "loss": 3.0,
     "loss_ratio": 1.5, "speedup": 1.2, "size_ratio": 0.5,
     "reasons": ["held-out loss 3.0000 is 50.00% above the teacher's 2.0000 (budget 1%)"]},
]


def test_a_report_gives_its_chosen_candidate_with_the_gates_numbers_and_refuses_what_the_gate_stopped(tmp_path):
    path = report(tmp_path, "int8", ROWS)
    chosen = candidate_from_report(path)
    assert (chosen.checkpoint, chosen.precision, chosen.name) == ("/ckpt/teacher", "int8", "int8")
    assert chosen.gate == {"loss": 2.01, "loss_ratio": 1.005, "speedup": 1.3, "size_ratio": 0.4}
    assert candidate_from_report(tmp_path).name == "int8"  # the report's folder works too
    with pytest.raises(ConfigError, match=r"candidate: the gate stopped prune10: held-out loss 3.0000 is 50.00%"):
        candidate_from_report(path, "prune10")
    with pytest.raises(ConfigError, match=r"candidate: no candidate 'prune99' .* it has int8, prune10"):
        candidate_from_report(path, "prune99")
    nothing = report(tmp_path, None, ROWS[1:])
    with pytest.raises(ConfigError, match=r"the gate passed no candidate .*prune10: held-out loss"):
        candidate_from_report(nothing)


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "not an `elasticml optimize` report"),
    ("{not json", "is not JSON"),
    (json.dumps({"candidates": [{"name": "x", "checkpoint": 7, "precision": "int8", "passed": True}],
                 "chosen": "x"}), "checkpoint: must be a string"),
    (json.dumps({"candidates": [{"name": "x", "checkpoint": "/c", "precision": "int4", "passed": True}],
                 "chosen": "x"}), "precision: must be one of auto, fp32, int8, bf16"),
    ("{" + " " * (1 << 20) + "}", "larger than 1048576 bytes"),
])
def test_a_hostile_report_is_refused_naming_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "report.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        candidate_from_report(path)


@pytest.mark.parametrize("change, field", [
    ({"canary_share": 0.0}, "canary_share"), ({"canary_share": float("nan")}, "canary_share"),
    ({"timeout_s": float("inf")}, "timeout_s"), ({"evaluate_after": 1.5}, "evaluate_after"),
    ({"max_latency_ratio": 0.5}, "max_latency_ratio"), ({"app": "../etc"}, "app"),
    ({"route_prefix": "no-slash"}, "route_prefix"), ({"holdout_texts": ()}, "holdout_file"),
    ({"base": ["checkpoint"]}, "base"),
])
def test_release_settings_are_bounded_and_named(change, field):
    settings = {"candidate": Candidate(checkpoint="/c", precision="int8"), "holdout_texts": ("text",), **change}
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        ReleaseConfig(**settings)


def test_the_first_release_needs_the_current_version_and_reads_it_from_a_serve_deploy_file(tmp_path):
    cfg = ReleaseConfig(candidate=Candidate(checkpoint="/c", precision="int8"), holdout_texts=("t",),
                        records=str(tmp_path / "releases"))
    with pytest.raises(ConfigError, match="base: the first release of completion needs its current version"):
        release(cfg, say=lambda _m: None)  # refused before any cluster is asked
    deploy = tmp_path / "serve.yaml"
    deploy.write_text("applications:\n- name: other\n  args: {checkpoint: /x}\n"
                      "- name: completion\n  route_prefix: /api\n  import_path: serve_apps.completion:app\n"
                      "  args: {checkpoint: /ckpt/base, precision: fp32}\n")
    assert read_base(deploy, "completion") == ({"checkpoint": "/ckpt/base", "precision": "fp32"}, "/api")
    with pytest.raises(ConfigError, match="app: .* has no application named 'missing'"):
        read_base(deploy, "missing")
    plain = tmp_path / "args.yaml"
    plain.write_text("checkpoint: /ckpt/base\n")
    assert read_base(plain, "completion") == ({"checkpoint": "/ckpt/base"}, None)


def test_a_model_version_is_named_by_what_it_serves():
    from elasticml.serve.canary import version_name

    a = {"checkpoint": "/c", "precision": "fp32", "name": "x-stable"}
    assert version_name(a) == version_name({**a, "name": "x-canary"})  # its role is not part of it
    assert version_name(a) != version_name({**a, "precision": "int8"})
    assert version_name(a).startswith("v-") and len(version_name(a)) == 14


def test_cli_release_says_in_one_line_why_nothing_was_released(tmp_path):
    path = report(tmp_path, None, ROWS[1:])
    done = subprocess.run([ELASTICML, "release", str(path), "--holdout-file", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("elasticml: error: report: the gate passed no candidate"), done.stderr
    (tmp_path / "ok").mkdir()
    good = report(tmp_path / "ok", "int8", ROWS)
    done = subprocess.run([ELASTICML, "release", str(good), "--holdout-file", str(path), "--share", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "canary_share: must be in [0.01, 1]" in done.stderr, done.stderr


def test_one_release_of_an_app_at_a_time(tmp_path):
    import fcntl

    folder = tmp_path / "releases"
    folder.mkdir()
    cfg = ReleaseConfig(candidate=Candidate(checkpoint="/c", precision="int8"), holdout_texts=("t",),
                        records=str(folder))
    with open(folder / "completion.lock", "w") as held:
        held.write("pid 1234, since now\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)  # another release holds the app
        with pytest.raises(ConfigError, match=r"app: a release of completion is in progress \(pid 1234"):
            release(cfg, say=lambda _m: None)
    with pytest.raises(ConfigError, match="needs its current version"):  # free again: on to the next check
        release(cfg, say=lambda _m: None)
