"""`elasticml demo`: the guided tour."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--steps", type=int, default=240, show_default=True, help="Training steps.")
@click.option("--clean", is_flag=True, help="Leave nothing behind (by default the data, checkpoint, ledger and "
              "audit trail stay to explore next).")
def demo_cmd(steps: int, clean: bool) -> None:
    """The guided tour: data, a training job, a Serve endpoint, on an embedded local cluster."""
    from elasticml.demo import run_demo

    run_demo(steps=steps, clean=clean)
