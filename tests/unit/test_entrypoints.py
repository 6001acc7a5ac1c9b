"""Every command-line entry point is a click command that ends through elasticml.entrypoint: the same
exit statuses for the same errors, help on every flag, and defaults read from the configs they set."""

from __future__ import annotations

import dataclasses
import runpy
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from elasticml import entrypoint
from elasticml.cli import main as elasticml
from elasticml.errors import ConfigError
from elasticml.provision import tls
from elasticml.scheduler import replay, simulate

REPO = Path(__file__).resolve().parents[2]


def job(name: str) -> dict:
    """A jobs/ script's globals, as `python jobs/NAME.py` would see them, without running it."""
    return runpy.run_path(str(REPO / "jobs" / f"{name}.py"))


ENTRY_POINTS = {
    "elasticml": elasticml,
    "jobs/train.py": job("train")["command"],
    "jobs/tune.py": job("tune")["command"],
    "jobs/distill.py": job("distill")["command"],
    "python -m elasticml.scheduler.replay": replay.command,
    "python -m elasticml.scheduler.simulate": simulate.command,
    "python -m elasticml.provision.tls": tls.cli,
}


def walk(command: click.Command, path: str):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, f"{path} {name}")


COMMANDS = [(path, c) for root, command in ENTRY_POINTS.items() for path, c in walk(command, root)]


# -- one map from errors to exit statuses ------------------------------------------------------------------
def test_a_bad_value_to_elasticml_names_the_field_and_exits_2(tmp_path):
    spec = tmp_path / "w.yaml"
    spec.write_text("name: job\ntenant: acme\nmax_workers: two\n")
    result = CliRunner().invoke(elasticml, ["scheduler", "validate", str(spec)])
    assert result.exit_code == 2
    assert result.output.startswith("elasticml: error: ") and "max_workers" in result.output.splitlines()[0]


def test_a_click_usage_error_to_elasticml_exits_2():
    result = CliRunner().invoke(elasticml, ["cluster", "up", "--port", "not-a-port"])
    assert result.exit_code == 2 and "Invalid value for '--port'" in result.output


def test_a_bad_value_to_the_training_job_names_the_field_and_exits_2(capsys):
    assert job("train")["main"](["--data", "/d", "--steps", "-1", "--settle-s", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: ") and "steps: must be >= 1" in err and err.count("\n") == 1


def test_the_distillation_job_without_a_teacher_is_a_usage_error_but_its_help_is_not(capsys):
    main = job("distill")["main"]
    assert main(["--data", "/d"]) == 2 and "--teacher CHECKPOINT is required" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "--teacher" in capsys.readouterr().out


def test_a_bad_value_to_replay_names_the_field_and_exits_2(tmp_path, capsys):
    trace = tmp_path / "t.json"
    trace.write_text('{"metadata": {"gap_seconds": 600}, "data": ' + str([0] * 60) + "}")
    base = ["--trace", str(trace), "--job-hours", "1", "--deadline-hours", "2", "--restart-hours", "0.1",
            "--price-ratio", "3", "--seconds-per-hour", "20"]
    assert replay.main([*base, "--step-seconds", "100"]) == 2
    assert capsys.readouterr().err == "replay: error: step_seconds: must be in [0.01, 60], got 100.0\n"
    assert replay.main([*base, "--step-seconds", "inf"]) == 2  # click's usage error, before anything runs
    assert "must be a finite number" in capsys.readouterr().err


def test_simulate_refuses_a_missing_trace_with_exit_2(tmp_path, capsys):
    assert simulate.main(["--trace", str(tmp_path / "none.json"), "--job-hours", "1", "--deadline-hours", "2",
                          "--restart-hours", "0.1", "--price-ratio", "3"]) == 2
    assert capsys.readouterr().err.startswith("simulate: error: ")


def _raising(exc: BaseException) -> click.Command:
    @click.command()
    def command() -> None:
        raise exc

    return command


def test_the_map_itself():
    assert entrypoint.run(_raising(ConfigError("too big", field="x")), [], prog="p") == 2
    assert entrypoint.run(_raising(click.ClickException("no")), [], prog="p") == 1
    assert entrypoint.run(_raising(KeyboardInterrupt()), [], prog="p") == 130
    with pytest.raises(ZeroDivisionError):  # a bug is not an exit status: it propagates with its traceback
        entrypoint.run(_raising(ZeroDivisionError()), [], prog="p")


def test_a_group_interrupted_exits_130():
    group = click.Group("g", commands={"stop": _raising(KeyboardInterrupt())})
    top = entrypoint.EntryGroup("top", commands={"g": group}, prog="top")
    assert CliRunner().invoke(top, ["g", "stop"]).exit_code == 130


# -- help on every flag ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_option_and_argument_has_help(path, command):
    """Options carry their own help; an argument, which click gives none, is named (as its metavar,
    e.g. SPEC_FILE) in its command's help text."""
    assert (command.help or "").strip(), f"{path} has no help text"
    for param in command.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{path} {param.opts[0]} has no help"
        else:
            metavar = param.make_metavar(click.Context(command)).strip("[].")
            assert metavar in command.help, f"{path}: its help does not say what {metavar} is"


# -- defaults read from the configs they set ---------------------------------------------------------------
def _default(path: str, flag: str):
    command = dict(COMMANDS)[path]
    return next(p for p in command.params if flag in p.opts).default


def _field(cls: type, name: str):
    return entrypoint.default_of(cls, name)


def test_flag_defaults_are_their_configs_defaults():
    from elasticml.cluster.spot_market import MarketSettings
    from elasticml.optimize.distill import DistillConfig
    from elasticml.optimize.gate import GateConfig
    from elasticml.optimize.pipeline import OptimizeConfig
    from elasticml.scheduler.policies import DEFAULT_POLICY
    from elasticml.scheduler.spec import WorkloadSpec
    from elasticml.serve.release import ReleaseConfig
    from elasticml.train.config import TrainConfig

    pairs = [
        (("elasticml cluster up", "--seconds-per-hour"), _field(MarketSettings, "seconds_per_hour")),
        (("elasticml cluster up", "--notice-seconds"), _field(MarketSettings, "notice_seconds")),
        (("elasticml release", "--share"), _field(ReleaseConfig, "canary_share")),
        (("elasticml release", "--timeout"), _field(ReleaseConfig, "timeout_s")),
        (("elasticml release", "--app"), _field(ReleaseConfig, "app")),
        (("elasticml jobs submit", "--expected-hours"), _field(WorkloadSpec, "expected_hours")),
        # optimize's flags keep their own literals (reading the configs would import torch on every
        # `elasticml` call): this holds them equal.
        (("elasticml optimize", "--threads"), _field(OptimizeConfig, "threads")),
        (("elasticml optimize", "--eval-blocks"), _field(OptimizeConfig, "eval_blocks")),
        (("elasticml optimize", "--precisions"), ",".join(_field(OptimizeConfig, "precisions"))),
        (("elasticml optimize", "--keep"), ",".join(map(str, _field(OptimizeConfig, "keeps")))),
        (("elasticml optimize", "--quality-budget"), _field(GateConfig, "quality_budget")),
        (("elasticml optimize", "--distill-steps"), _field(DistillConfig, "steps")),
        (("jobs/train.py", "--spot-policy"), DEFAULT_POLICY),
        (("jobs/train.py", "--priority"), _field(WorkloadSpec, "priority")),
        (("jobs/tune.py", "--size"), _field(TrainConfig, "model_size")),
        (("python -m elasticml.scheduler.replay", "--policy"), DEFAULT_POLICY),
        (("python -m elasticml.scheduler.simulate", "--policy"), DEFAULT_POLICY),
    ]
    for (path, flag), expected in pairs:
        assert _default(path, flag) == expected, (path, flag)
    assert _field(WorkloadSpec, "spot_policy") == DEFAULT_POLICY


def test_default_of_refuses_a_field_that_is_not_there():
    @dataclasses.dataclass
    class C:
        a: int
        b: list = dataclasses.field(default_factory=list)

    assert entrypoint.default_of(C, "b") == []
    with pytest.raises(TypeError, match="no default"):
        entrypoint.default_of(C, "a")
    with pytest.raises(TypeError, match="no field"):
        entrypoint.default_of(C, "c")


def test_tls_refuses_a_bad_address_with_exit_2_naming_it(tmp_path, capsys):
    tls.make_ca(tmp_path / "ca", "x")
    assert tls.main(["node", "--ca-dir", str(tmp_path / "ca"), "--out", str(tmp_path / "out"), "--ip", "10.0.0.300"]) == 2
    assert capsys.readouterr().err.startswith("tls: error: ip: ") and not (tmp_path / "out").exists()
