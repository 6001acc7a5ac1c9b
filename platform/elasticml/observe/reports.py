"""Reports people would rather look at than read: self-contained HTML pages of charts (inline SVG,
no script, nothing fetched) and the same charts as one PNG.

- `cost_report(intervals, report)`: cost over time by market and by tenant, worker-hours on spot vs
  on-demand vs reserved, savings against all on-demand, and every workload's placements on a
  timeline (each bar an allocation interval: the scheduler's moves are where a bar changes colour).
- `train_report(history)`: loss and tokens/s per step, with the steps a run resumed from marked.
- `optimize_charts(report)`: every candidate of `elasticml optimize` by speed-up and held-out loss,
  the gate's quality budget drawn, passed and stopped candidates apart, the chosen one marked.

matplotlib draws the charts: axes, ticks and legends by hand would be most of this file.
"""

from __future__ import annotations

import html
import io
import time
from typing import Any

MARKET_COLOURS = {"spot": "#2a9d8f", "on-demand": "#e76f51", "reserved": "#264653"}


def _figure(width: float = 7.5, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.grid(alpha=0.3)
    return fig, ax


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _cumulative(intervals: list[dict[str, Any]], key: str, now: float) -> dict[str, tuple[list[float], list[float]]]:
    """{key value: (hours since the first interval, cumulative dollars)} sampled at every interval edge."""
    if not intervals:
        return {}
    t0 = min(iv["start"] for iv in intervals)
    edges = sorted({iv["start"] for iv in intervals} | {iv["end"] if iv["end"] is not None else now for iv in intervals})
    out: dict[str, tuple[list[float], list[float]]] = {}
    for value in sorted({str(iv[key]) for iv in intervals}):
        mine = [iv for iv in intervals if str(iv[key]) == value]
        ys = [sum(iv["hourly_cost"] * max(0.0, min(t, iv["end"] if iv["end"] is not None else now) - iv["start"]) / 3600
                  for iv in mine) for t in edges]
        out[value] = ([(t - t0) / 3600 for t in edges], ys)
    return out


def cost_charts(intervals: list[dict[str, Any]], report: dict[str, Any], now: float | None = None) -> list[tuple[str, Any]]:
    now = now if now is not None else time.time()
    charts = []
    for key, title in (("market", "Cost over time by market"), ("tenant", "Cost over time by tenant")):
        fig, ax = _figure()
        for value, (xs, ys) in _cumulative(intervals, key, now).items():
            ax.plot(xs, ys, label=value, color=MARKET_COLOURS.get(value), linewidth=2)
        ax.set(title=title, xlabel="hours", ylabel="dollars")
        if intervals:
            ax.legend(loc="upper left")
        charts.append((title, fig))
    fig, ax = _figure(height=2.8)
    hours = {m: 0.0 for m in MARKET_COLOURS}
    for iv in intervals:
        end = iv["end"] if iv["end"] is not None else now
        hours[iv["market"]] = hours.get(iv["market"], 0.0) + iv["workers"] * max(0.0, end - iv["start"]) / 3600
    ax.barh(list(hours), list(hours.values()), color=[MARKET_COLOURS.get(m, "#888") for m in hours])
    ax.set(title="Worker-hours by market", xlabel="worker-hours")
    charts.append(("Worker-hours by market", fig))
    fig, ax = _figure(height=2.4)
    total = report["total"]
    ax.barh(["all on-demand", "what it cost"], [total["on_demand_cost"], total["cost"]], color=["#e76f51", "#2a9d8f"])
    ax.set(title=f"Savings: {total['savings_pct']:.0f}% (${total['savings']:.4f})", xlabel="dollars")
    charts.append(("Savings against all on-demand", fig))
    workloads = sorted({iv["workload"] for iv in intervals})
    fig, ax = _figure(height=max(2.0, 0.45 * len(workloads) + 1.2))
    t0 = min((iv["start"] for iv in intervals), default=now)
    for row, name in enumerate(workloads):
        for iv in (iv for iv in intervals if iv["workload"] == name):
            end = iv["end"] if iv["end"] is not None else now
            ax.barh(row, (end - iv["start"]) / 3600, left=(iv["start"] - t0) / 3600, height=0.6,
                    color=MARKET_COLOURS.get(iv["market"], "#888"), edgecolor="white")
    ax.set_yticks(range(len(workloads)), workloads)
    ax.set(title="Placements over time (a colour change is a move)", xlabel="hours")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=m) for m, c in MARKET_COLOURS.items()], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=8)
    charts.append(("Placements over time", fig))
    return charts


def train_charts(history: list[dict[str, Any]], run: str) -> list[tuple[str, Any]]:
    steps = [r["step"] for r in history]
    resumes = [r["resumed_from"] for r in history if r.get("resumed_from")]
    charts = []
    for key, title, ylabel in (("loss", f"Loss, {run}", "loss"), ("tokens_per_s", f"Tokens per second, {run}", "tokens/s")):
        fig, ax = _figure()
        ax.plot(steps, [r.get(key) for r in history], marker="o", markersize=3, linewidth=1.5, color="#264653")
        for i, at in enumerate(resumes):
            ax.axvline(at, color="#e76f51", linestyle="--", label="resumed" if i == 0 else None)
        if resumes:
            ax.legend(loc="best")
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        charts.append((title, fig))
    return charts


PRECISION_MARKERS = {"fp32": "o", "int8": "s", "onnx": "^", "onnx-int8": "D", "bf16": "v"}


def optimize_charts(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """Speed-up against held-out loss, and size, of every candidate in an optimize report."""
    from matplotlib.lines import Line2D

    teacher, budget = report["teacher"], 100 * report["gate"]["quality_budget"]
    rows = report["candidates"]
    charts = []
    for key, xlabel, title in (("speedup", "bytes/s vs the fp32 teacher (x)", "Speed-up and quality cost"),
                               ("size_ratio", "size vs the fp32 teacher (x)", "Size and quality cost")):
        fig, ax = _figure(7.5, 3.8)
        for c in rows:
            loss_pct = 100 * (c["loss"] / teacher["loss"] - 1)
            colour = "#2a9d8f" if c["passed"] else "#e76f51"
            ax.scatter(c[key], loss_pct, marker=PRECISION_MARKERS.get(c["precision"], "o"), color=colour,
                       s=140 if c["name"] == report["chosen"] else 40, edgecolors="black" if c["name"] == report["chosen"]
                       else "none", zorder=3)
            ax.annotate(c["name"], (c[key], loss_pct), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(budget, color="#264653", linestyle="--", linewidth=1)
        ax.axvline(1.0, color="#999999", linewidth=0.8)
        ax.set(title=title, xlabel=xlabel, ylabel="held-out loss vs teacher (%)")
        handles = [Line2D([], [], linestyle="--", color="#264653", label=f"quality budget {budget:g}%"),
                   Line2D([], [], marker="o", linestyle="", color="#2a9d8f", label="passed the gate"),
                   Line2D([], [], marker="o", linestyle="", color="#e76f51", label="stopped"),
                   *(Line2D([], [], marker=m, linestyle="", color="#777777", label=p)
                     for p, m in PRECISION_MARKERS.items() if any(c["precision"] == p for c in rows))]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
        charts.append((title, fig))
    return charts


def page(title: str, summary: list[tuple[str, str]], charts: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary)
    figures = "".join(f'<figure><figcaption>{html.escape(t)}</figcaption>{_svg(f)}</figure>' for t, f in charts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
            "th,td{text-align:left;padding:.2em 1em .2em 0}figure{margin:1.5em 0}"
            "figcaption{font-weight:bold}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><table>{rows}</table>{figures}</body></html>\n")


def png(charts: list[tuple[str, Any]]) -> bytes:
    """The charts stacked into one PNG (re-drawn from their SVG-ready figures)."""
    import matplotlib.pyplot as plt
    from matplotlib.image import imread

    images = []
    for _, fig in charts:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        plt.close(fig)
        buf.seek(0)
        images.append(imread(buf))
    height = sum(i.shape[0] for i in images) / 100
    out, axes = plt.subplots(len(images), 1, figsize=(images[0].shape[1] / 100, height), dpi=100)
    for ax, image in zip(axes if len(images) > 1 else [axes], images):
        ax.imshow(image)
        ax.axis("off")
    out.subplots_adjust(0, 0, 1, 1, 0, 0)
    buf = io.BytesIO()
    out.savefig(buf, format="png")
    plt.close(out)
    return buf.getvalue()
