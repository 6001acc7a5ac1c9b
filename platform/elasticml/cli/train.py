"""`elasticml train`: training runs' reports (the runs themselves are jobs/train.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from elasticml.cli.options import json_option


@click.group()
def train() -> None:
    """Training runs: their reports."""


@train.command("report")
@click.argument("run_dir")
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a page of charts: loss and tokens/s per step, resumes marked.")
@click.option("--png", "png_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the same charts as one PNG.")
@json_option
def train_report(run_dir: str, html_out: Path | None, png_out: Path | None, as_json: bool) -> None:
    """What a run (RUN_DIR: the storage path / run name, local or s3://) reported at every report point."""
    from elasticml.train.history import read_history

    history = read_history(run_dir)
    if not history:
        raise click.ClickException(f"{run_dir} has no training history (history/ is written by jobs/train.py runs)")
    run = run_dir.rstrip("/").rsplit("/", 1)[-1]
    resumes = [r["resumed_from"] for r in history if r.get("resumed_from")]
    if html_out or png_out:
        from elasticml.atomic import write_atomic
        from elasticml.observe.reports import page, png, train_charts

        summary = [("run", run), ("steps reported", f"{history[0]['step']}..{history[-1]['step']}"),
                   ("last loss", f"{history[-1].get('loss', float('nan')):.4f}"),
                   ("resumed from", ", ".join(map(str, resumes)) or "never")]
        if html_out:
            write_atomic(html_out, page(f"elasticml training report: {run}", summary, train_charts(history, run)))
        if png_out:
            write_atomic(png_out, png(train_charts(history, run)))
    if as_json:
        click.echo(json.dumps({"run": run, "history": history, "resumed_from": resumes}))
        return
    click.echo(f"{'step':>8}  {'loss':>8}  {'tokens/s':>10}  {'workers':>7}")
    for r in history:
        mark = "  (resumed)" if r.get("resumed_from") else ""
        click.echo(f"{r['step']:>8}  {r.get('loss', float('nan')):>8.4f}  {r.get('tokens_per_s', 0):>10.0f}  "
                   f"{r.get('world_size', 0):>7}{mark}")
