"""`elasticml cost`: what the cluster's workloads cost, from the scheduler or its ledger."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from elasticml.cli.options import (
    address_option,
    json_option,
    name_option,
    scheduler_client,
)


@click.group()
def cost() -> None:
    """What the cluster's workloads cost."""


@cost.command("report")
@name_option
@address_option
@click.option("--ledger", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="Read this ledger file instead of asking the running scheduler (e.g. after the cluster "
                   "is down); open intervals are charged to the last time it recorded.")
@click.option("--html", "html_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write a page of charts: cost over time by market and tenant, worker-hours, savings, moves.")
@click.option("--png", "png_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the same charts as one PNG.")
@json_option
def cost_report(name: str, address: str | None, ledger: Path | None, html_out: Path | None, png_out: Path | None,
                as_json: bool) -> None:
    """Cost per tenant, workload and market, and savings against all on-demand."""
    if ledger is not None:
        from elasticml.scheduler.ledger import Ledger

        book = Ledger.read_only(ledger)
        now = book.last_recorded() or time.time()
        report: dict[str, Any] = book.report(now=now)
        intervals = book.intervals() if (html_out or png_out) else []
    else:
        sched = scheduler_client(name, address)
        report, now = sched.cost_report(), time.time()
        intervals = [iv for w in report["workload"] for iv in sched.intervals(w["key"])] if (html_out or png_out) else []
    if html_out or png_out:
        from elasticml.atomic import write_atomic
        from elasticml.observe.reports import cost_charts, page, png

        t = report["total"]
        summary = [("total", f"${t['cost']:.6f}"), ("all on-demand", f"${t['on_demand_cost']:.6f}"),
                   ("saved", f"{t['savings_pct']:.1f}%"), ("allocation intervals", str(len(intervals)))]
        if html_out:
            write_atomic(html_out, page("elasticml cost report", summary, cost_charts(intervals, report, now)))
        if png_out:
            write_atomic(png_out, png(cost_charts(intervals, report, now)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for column in ("tenant", "workload", "market"):
        if column not in report:  # a tenant sees its own rows only, and no market totals
            continue
        click.echo(f"by {column}:")
        for r in report[column]:
            click.echo(f"  {r['key']:<20} ${r['cost']:.6f}  (on-demand ${r['on_demand_cost']:.6f}, "
                       f"saved ${r['savings']:.6f})  {r['worker_hours']:.4f} worker-h")
    t = report["total"]
    click.echo(f"total ${t['cost']:.6f}; all on-demand would be ${t['on_demand_cost']:.6f}: "
               f"saved {t['savings_pct']:.1f}%" + (f" over {report['intervals']} allocation intervals"
                                                    if "intervals" in report else ""))
