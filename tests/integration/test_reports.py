"""The HTML reports as a person sees them: rendered by headless Chromium (Debian's), screenshot checked
for its charts; and the PNGs. The cost report reads a real ledger written by the scheduler's state
through moves between markets; the training report reads the history a run and its resumption wrote."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.browser import chromium

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("elasticml"))




def screenshot(page: Path, out: Path) -> None:
    proc = subprocess.run([chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={out}", "--window-size=1000,2600", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert out.is_file(), proc.stderr[-2000:]


def drawn(png: Path) -> tuple[float, float]:
    """(share of pixels that are not white, number of distinct colours / 1000): blank pages score 0."""
    import numpy as np
    from matplotlib.image import imread

    image = imread(png)[..., :3]
    inked = float((image.sum(axis=2) < 2.9).mean())
    colours = len(np.unique((image * 255).astype(np.uint8).reshape(-1, 3), axis=0)) / 1000
    return inked, colours


def test_the_cost_report_page_renders_its_charts(tmp_path):
    from elasticml.cluster.config import load_cluster_spec
    from elasticml.scheduler.spec import WorkloadSpec
    from tests.support.scheduler import Sched as SchedulerState

    now = [1_000_000.0]
    state = SchedulerState(load_cluster_spec(REPO / "cluster_configs" / "local.yaml"), str(tmp_path / "ledger.sqlite"),
                           clock=lambda: now[0])
    state.place(WorkloadSpec(name="endpoint", tenant="product", kind="serving", priority="critical", min_workers=2,
                             max_workers=2))  # all of the reserved pool
    state.place(WorkloadSpec(name="nightly", tenant="research", priority="low", max_workers=2,
                             checkpoint_interval_hours=0.1))
    now[0] += 1800
    state.interrupt("cpu_spot")  # nightly moves off spot
    now[0] += 1800
    state.clear_interruption("cpu_spot")  # and back when spot returns
    now[0] += 3600
    state.finish("nightly")
    markets = {iv["market"] for iv in state.ledger.intervals("nightly")}
    assert len(markets) >= 2  # it did move
    html, png = tmp_path / "cost.html", tmp_path / "cost.png"
    proc = subprocess.run([CLI, "cost", "report", "--ledger", str(tmp_path / "ledger.sqlite"), "--html", str(html),
                           "--png", str(png), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = html.read_text()
    assert text.count("<svg") == 5 and "Placements over time" in text and "<script" not in text
    shot = tmp_path / "cost-screenshot.png"
    screenshot(html, shot)
    inked, colours = drawn(shot)
    assert inked > 0.02 and colours > 0.05, (inked, colours)  # charts, not an empty or error page
    assert drawn(png)[0] > 0.02


def test_the_training_report_page_marks_the_resume(tmp_path):
    from elasticml.train.history import read_history, record

    storage = str(tmp_path / "runs")
    for step, loss in ((10, 5.2), (20, 4.1), (30, 3.6)):
        record(storage, "nightly", {"step": step, "loss": loss, "tokens_per_s": 900.0, "world_size": 2},
               resumed_from=None)
    # The job moved: a new run resumed from step 30's checkpoint.
    for step, loss, first in ((40, 3.3, True), (50, 3.1, False)):
        record(storage, "nightly", {"step": step, "loss": loss, "tokens_per_s": 1200.0, "world_size": 1},
               resumed_from=30 if first else None)
    assert [r["step"] for r in read_history(f"{storage}/nightly")] == [10, 20, 30, 40, 50]
    html, png = tmp_path / "train.html", tmp_path / "train.png"
    proc = subprocess.run([CLI, "train", "report", f"{storage}/nightly", "--html", str(html), "--png", str(png)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(resumed)" in proc.stdout and proc.stdout.splitlines()[0].split() == ["step", "loss", "tokens/s", "workers"]
    text = html.read_text()
    assert text.count("<svg") == 2 and "resumed from</th><td>30" in text
    shot = tmp_path / "train-screenshot.png"
    screenshot(html, shot)
    inked, colours = drawn(shot)
    assert inked > 0.005 and colours > 0.02 and drawn(png)[0] > 0.005, (inked, colours)
    missing = subprocess.run([CLI, "train", "report", str(tmp_path / "nothing")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode != 0 and "no training history" in missing.stderr
