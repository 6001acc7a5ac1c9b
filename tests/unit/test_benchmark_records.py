"""Every benchmark writes its raw results through benchmarks/record.py, and the record says what ran.

The README's tables point at these files; a script that printed figures without writing them would
leave a table nobody can check, so every script in benchmarks/ is held to the helper here. The
scripts' own measurements that decide what a figure means (the actor benchmark's refusals, the int8
benchmark's interleaving) are checked without Ray or a model.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
# Scripts in benchmarks/ that are not benchmarks: the helper itself.
NOT_SCRIPTS = {"record.py"}
# serve_http.py is being wired to the helper in a change of its own; strict, so that this mark
# fails the run as soon as it is, and is then removed.
PENDING: set[str] = set()


@pytest.fixture(scope="module")
def record() -> Iterator[object]:
    sys.path.insert(0, str(BENCH))
    try:
        import record

        yield record
    finally:
        sys.path.remove(str(BENCH))


def _start(record, tmp_path: Path, **extra: object):  # type: ignore[no-untyped-def]
    args = argparse.Namespace(json=tmp_path / "out" / "demo.json", no_json=False, rounds=3, data=BENCH / "x", **extra)
    return record.start(BENCH / "demo.py", args, ["--rounds", "3", "--note", "two words"])


def test_a_record_holds_command_commit_date_cpus_args_and_samples(record, tmp_path: Path) -> None:
    path = _start(record, tmp_path).write(samples=[{"round": 0, "x": 1.5}, {"round": 1, "x": 2.5}],
                                          summary={"median": 2.0}, setting={"slots": 4})
    body = json.loads(path.read_text())
    assert body["script"] == "benchmarks/demo.py"
    assert body["command"] == "python benchmarks/demo.py --rounds 3 --note 'two words'"
    assert body["commit"] == "unknown" or all(c in "0123456789abcdef" for c in body["commit"])
    assert body["dirty"] in (True, False, None)
    assert datetime.fromisoformat(body["date"].replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert body["cpus"] == os.cpu_count()
    assert body["args"]["rounds"] == 3
    assert body["args"]["data"] == "benchmarks/x"  # a path in the repository, as the command names it
    assert body["samples"] == [{"round": 0, "x": 1.5}, {"round": 1, "x": 2.5}]
    assert body["summary"] == {"median": 2.0} and body["setting"] == {"slots": 4}
    assert isinstance(body["wall_s"], float) and body["schema"] == record.SCHEMA  # a field, not a speed


def test_a_failed_write_leaves_the_previous_record_whole(record, tmp_path: Path) -> None:
    run = _start(record, tmp_path)
    run.write(samples=[1], summary="first")

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("cannot be written")

    with pytest.raises(RuntimeError):
        run.write(samples=[Unprintable()])
    assert json.loads(run.path.read_text())["summary"] == "first"
    run.write(samples=[2], summary="second")
    assert json.loads(run.path.read_text())["summary"] == "second"
    assert [p.name for p in run.path.parent.iterdir()] == ["demo.json"]  # no temporary left beside it


def test_no_json_writes_nothing(record, tmp_path: Path) -> None:
    run = record.start(BENCH / "demo.py", {"json": tmp_path / "x.json", "no_json": True}, [])
    assert run.write(samples=[1]) is None
    assert not (tmp_path / "x.json").exists()


def test_the_default_path_is_results_by_script_name_and_json_overrides_it(record, tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    record.add_arguments(p, BENCH / "spot_replay.py")
    assert p.parse_args([]).json == BENCH / "results" / "spot_replay.json"
    assert p.parse_args(["--json", str(tmp_path / "a.json")]).json == tmp_path / "a.json"
    assert p.parse_args(["--no-json"]).no_json


def _scripts() -> list[object]:
    names = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_SCRIPTS)
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="wired separately")) if n in PENDING else n
            for n in names]


@pytest.mark.parametrize("name", _scripts())
def test_every_benchmark_script_writes_its_record(name: str) -> None:
    """It imports the helper, takes --json from it, starts a run and writes that run."""
    tree = ast.parse((BENCH / name).read_text())
    imported = any(isinstance(n, ast.Import) and any(a.name == "record" for a in n.names) for n in ast.walk(tree))

    def calls(obj: str, attr: str) -> list[ast.Call]:
        return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and isinstance(n.func.value, ast.Name) and n.func.value.id == obj and n.func.attr == attr]

    runs = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
            and n.value in calls("record", "start") for t in n.targets if isinstance(t, ast.Name)}
    assert imported, f"{name} does not import benchmarks/record.py"
    assert calls("record", "add_arguments"), f"{name} does not take --json from record.add_arguments"
    assert runs, f"{name} does not start a record (run = record.start(...))"
    assert any(calls(run, "write") for run in runs), f"{name} starts a record and never writes it"


def test_the_actor_benchmark_counts_refusals_and_queued_placements_apart() -> None:
    pytest.importorskip("ray")  # imported by the script, never started here
    sys.path.insert(0, str(BENCH))
    try:
        import scheduler_actor
    finally:
        sys.path.remove(str(BENCH))
    from elasticml.errors import PlacementRefused
    from elasticml.scheduler.spec import Placement

    class Door:
        """Every 4th placement refused for a budget, every 4th queued, the rest granted."""

        def place(self, spec):  # type: ignore[no-untyped-def]
            i = int(spec.name[1:])
            if i % 4 == 0:
                raise PlacementRefused(spec.name, "tenant budget spent")
            return Placement(workload=spec.name, state="queued" if i % 4 == 1 else "placed", reason="")

        def finish(self, name: str) -> None:
            pass

    got = scheduler_actor.run_callers(Door(), 0, 40, 4)  # type: ignore[arg-type]
    assert (got["placements_asked"], got["granted"], got["queued"], got["refused"], got["finishes"]) == (40, 20, 10, 10, 40)
    assert got["refused_by_reason"] == {"tenant budget spent": 10}
    assert got["answers"] == 80
    assert got["granted_per_s"] == pytest.approx(20 / got["wall_s"])
    assert got["answers_per_s"] == pytest.approx(80 / got["wall_s"])


def test_the_int8_benchmark_times_candidates_interleaved_in_rotating_order() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import serve_int8
    finally:
        sys.path.remove(str(BENCH))
    calls: list[str] = []
    runs = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    got = serve_int8.interleaved(runs, tokens=10, rounds=4)
    assert got["order"] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert calls == ["a", "b", "c"] + [n for order in got["order"] for n in order]  # a warm-up each, then rounds
    assert all(len(v) == 4 for v in got["tokens_per_s"].values())
    table = serve_int8.summarise({"tokens_per_s": {"a": [10.0, 20.0, 30.0], "b": [20.0, 20.0, 90.0]}}, "a")
    assert table["b"]["tokens_per_s"] == {"median": 20.0, "min": 20.0, "max": 90.0}
    assert table["b"]["vs_base"] == {"median": 2.0, "min": 1.0, "max": 3.0}  # 20/10, 20/20, 90/30: within each round


def test_the_node_loss_benchmark_reads_the_resume_line_the_training_loop_logs() -> None:
    """The benchmark times the resume by the loop's own log line: the format it parses is the one loop.py writes."""
    import logging

    sys.path.insert(0, str(BENCH))
    try:
        import node_loss
    finally:
        sys.path.remove(str(BENCH))
    from elasticml.train import loop

    source = (Path(loop.__file__)).read_text()
    fmt = "resumed from step %d (next sample %d, %d workers) from %s"
    assert fmt in source  # the line loop.py logs on a resume
    line = logging.LogRecord("x", logging.INFO, "", 0, fmt, (30, 120, 2, "/tmp/ckpt"), None).getMessage()
    assert node_loss.resumed_step(f"(RayTrainWorker pid=1) step 20/200\n(RayTrainWorker pid=2) {line}\n") == 30
    assert node_loss.resumed_step("(RayTrainWorker pid=1) step 20/200 loss 2.1\n") is None
    # the kill waits for this step; "resumed from step 30 (" is no step report
    assert node_loss.last_step(f"step 5/200\nstep 25/200\n{line}\nstep 20/200\n") == 25
    assert node_loss.last_step("job submitted\n") is None
    def row(dead: float, replaced: float, resumed: float, step: int, newest: int | None) -> dict:
        return {"dead_s": dead, "replaced_s": replaced, "resumed_s": resumed, "resumed_from_step": step,
                "newest_complete_at_loss": newest}

    spread = node_loss.summarise([row(3.0, 6.0, 14.0, 20, 20), row(5.0, 9.0, 12.0, 10, 20),
                                  row(4.0, 7.0, 20.0, 10, None)])
    assert spread["resumed_s"] == {"median": 14.0, "min": 12.0, "max": 20.0}
    assert spread["dead_s"]["median"] == 4.0
    assert spread["resumed_from_newest"] == 1  # the second resumed from an older one; the third saw none to count
    assert spread["past_registered"] == 0
    assert node_loss.PAST_REGISTERED in source  # the line loop.py logs when it goes past Ray Train's choice
