"""`elasticml optimize` and `elasticml release`: smaller, faster candidates from a checkpoint, and one of them
into a Serve app through a canary."""

from __future__ import annotations

from pathlib import Path

import click

from elasticml.cli.options import (
    address_option,
    connect,
    emit,
    json_option,
    name_option,
)
from elasticml.entrypoint import default_of
from elasticml.serve.release import ReleaseConfig


def _shares(value: str, option: str) -> tuple[float, ...]:
    from elasticml.errors import ConfigError

    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"must be comma-separated numbers, got {value[:80]!r}", field=option) from None


# These defaults are OptimizeConfig's, GateConfig's and DistillConfig's written out: reading them would
# import torch on every `elasticml` call. tests/unit/test_entrypoints.py holds them equal.
@click.command("optimize")
@click.argument("checkpoint")
@click.option("--eval-data", required=True, help="Held-out corpus (elasticml data build) the teacher did not train on.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for candidates and report.json.")
@click.option("--train-data", default=None, help="Training corpus: calibrates pruning, fine-tunes the pruned students.")
@click.option("--keep", "keep", default="0.5", show_default=True, help="Shares of MLP channels pruned candidates keep.")
@click.option("--layers", "layers", default="", help="Shares of blocks shallower candidates keep (e.g. 0.5).")
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for the speed measurement.")
@click.option("--quality-budget", type=float, default=0.01, show_default=True,
              help="Held-out loss may exceed the teacher's by this share.")
@click.option("--distill-steps", type=int, default=100, show_default=True, help="Fine-tune steps per pruned student.")
@click.option("--eval-blocks", type=int, default=64, show_default=True, help="Held-out blocks the loss is taken on.")
@click.option("--precisions", default="int8,onnx,onnx-int8", show_default=True,
              help="Serving precisions measured besides fp32: int8 (torch), onnx, onnx-int8 (ONNX Runtime).")
@json_option
def optimize_cmd(checkpoint: str, eval_data: str, out: str, train_data: str | None, keep: str, layers: str, threads: int,
                 quality_budget: float, distill_steps: int, eval_blocks: int, precisions: str, as_json: bool) -> None:
    """Smaller and faster candidates from CHECKPOINT (int8 and ONNX Runtime; students with fewer MLP
    channels or blocks, distilled from it, in fp32 and those precisions), measured on held-out data
    and this machine's CPU, gated on quality and gain.

    OUT/report.json keeps every number, each verdict and the chosen candidate.
    """
    from elasticml.optimize.distill import DistillConfig
    from elasticml.optimize.gate import GateConfig
    from elasticml.optimize.pipeline import OptimizeConfig, optimize, table

    cfg = OptimizeConfig(checkpoint=checkpoint, eval_data=eval_data, out=out, train_data=train_data,
                         keeps=_shares(keep, "--keep"), layer_keeps=_shares(layers, "--layers"), threads=threads,
                         eval_blocks=eval_blocks, precisions=tuple(p.strip() for p in precisions.split(",") if p.strip()),
                         gate=GateConfig(quality_budget=quality_budget), distill=DistillConfig(steps=distill_steps))
    report = optimize(cfg, say=(lambda _m: None) if as_json else (lambda m: click.echo(m, err=True)))
    if emit(as_json, report):
        return
    click.echo(table(report))
    click.echo(f"chosen: {report['chosen'] or 'none passed the gate'} ({Path(out) / 'report.json'})")


@click.command("release")
@click.argument("candidate")
@click.option("--app", default=default_of(ReleaseConfig, "app"), show_default=True, help="The Serve application to release into.")
@click.option("--pick", "pick", default=None, help="A candidate of the report by name [default: the one it chose].")
@click.option("--precision", default=None,
              help="When CANDIDATE is a checkpoint: the precision it serves in [default: the current version's].")
@click.option("--base", "base_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="The current version, for the app's first release: its `serve deploy` file or a YAML of its args.")
@click.option("--holdout-file", required=True, help="Held-out text (local or s3://) the canary scores both versions on.")
@click.option("--share", "canary_share", type=float, default=default_of(ReleaseConfig, "canary_share"), show_default=True,
              help="Share of the traffic the candidate takes.")
@click.option("--evaluate-after", type=int, default=default_of(ReleaseConfig, "evaluate_after"), show_default=True,
              help="Canary requests before it is judged.")
@click.option("--max-nll-increase", type=float, default=default_of(ReleaseConfig, "max_nll_increase"), show_default=True,
              help="Roll back when the candidate's held-out loss is more than this share above the current one's.")
@click.option("--max-latency-ratio", type=float, default=default_of(ReleaseConfig, "max_latency_ratio"), show_default=True,
              help="Roll back when its p50 latency per token is more than this many times the current one's.")
@click.option("--min-latency-samples", type=int, default=default_of(ReleaseConfig, "min_latency_samples"), show_default=True,
              help="Requests on each version before latency counts.")
@click.option("--timeout", "timeout_s", type=float, default=default_of(ReleaseConfig, "timeout_s"), show_default=True,
              help="Seconds to wait for a verdict; then it is judged on what it saw, and rolled back without one.")
@name_option
@address_option
@json_option
def release_cmd(candidate: str, app: str, pick: str | None, precision: str | None, base_file: str | None,
                holdout_file: str, canary_share: float, evaluate_after: int, max_nll_increase: float,
                max_latency_ratio: float, min_latency_samples: int, timeout_s: float, name: str, address: str | None,
                as_json: bool) -> None:
    """Release CANDIDATE (an `elasticml optimize` report or its folder, or a checkpoint) into Serve app APP
    through a canary: promoted when the router's online checks pass, rolled back otherwise.

    The record, $ELASTICML_HOME/releases/APP.json, keeps every step and what APP serves now (the next
    release's base); releases/APP.yaml is a `serve deploy` file of it.
    """
    from elasticml.serve.release import (
        Candidate,
        candidate_from_report,
        load_record,
        read_base,
        record_path,
        release,
    )

    path = Path(candidate).expanduser()
    is_report = path.suffix == ".json" or (path.is_dir() and (path / "report.json").exists())
    base, route = read_base(base_file, app) if base_file else (None, None)
    if is_report:
        if precision is not None:
            raise click.UsageError("--precision is for a checkpoint; a report's candidate has its own")
        chosen = candidate_from_report(path, pick)
    else:
        if pick is not None:
            raise click.UsageError("--pick is for a report")
        current = base or (load_record(record_path(app)) or {}).get("serving", {})
        chosen = Candidate(checkpoint=candidate, precision=precision or current.get("precision", "auto"))
    cfg = ReleaseConfig(candidate=chosen, app=app, route_prefix=route, base=base, holdout_file=holdout_file,
                        canary_share=canary_share, evaluate_after=evaluate_after, max_nll_increase=max_nll_increase,
                        max_latency_ratio=max_latency_ratio, min_latency_samples=min_latency_samples,
                        timeout_s=timeout_s)
    connect(name, address)
    entry = release(cfg, say=(lambda _m: None) if as_json else (lambda m: click.echo(m, err=True)))
    if emit(as_json, entry):
        return
    click.echo(f"{app}: {entry['outcome'].replace('_', ' ')} ({record_path(app)})")
