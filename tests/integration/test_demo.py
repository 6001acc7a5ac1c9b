"""The README's first command, end to end."""

from __future__ import annotations

import pytest

from elasticml.cluster import LocalCluster
from elasticml.demo import run_demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_trains_serves_answers_and_leaves_what_to_try_next():
    lines: list[str] = []
    results = run_demo(steps=120, say=lines.append, cluster_name="demo-test")
    text = "\n".join(lines)
    for stop in range(1, 10):
        assert f"== {stop}/9" in text
    # The scheduler keeps the critical endpoint off spot and sends the low-priority run there.
    assert results["placements"] == {"training": "spot", "serving": "reserved"}
    assert results["savings_pct"] > 0
    assert "+spot node" in text  # the autoscaler brought spot capacity for training
    assert "step 120/120" in text
    # The job went in as tenant research through the API server, whose dashboard's URL was printed.
    assert "as tenant research to http://127.0.0.1:" in text and f"its dashboard: {results['dashboard_url']}" in text
    assert "[chaos] spot node" in text and results["resumed"]  # a spot node lost mid-run, and the run resumed
    assert "resumed from step" in text
    # The controller at work: the lost spot node made it move the running job off spot, and the job followed.
    assert "was lost (unexpected termination)" in text and "follows its move to" in text
    assert results["moved_to"] and "cpu_spot" not in results["moved_to"]
    assert len(results["latency_ms"]) == 3
    assert results["bad_request_status"] == 422
    assert results["cache_hit"] is True  # the repeated greedy request came from the response cache
    assert results["final_loss"] < 5.0
    assert LocalCluster("demo-test").info() is None
    # What it left works offline, as its last lines say: the checkpoint, the ledger, the audit trail.
    import json
    import subprocess
    import sys
    from pathlib import Path

    from elasticml.home import home

    cli = str(Path(sys.executable).with_name("elasticml"))
    ledger = home() / "scheduler" / "demo-test" / "ledger.sqlite"
    assert "what it left" in text and f"cost report --ledger {ledger}" in text
    report = subprocess.run([cli, "cost", "report", "--ledger", str(ledger), "--json"], capture_output=True,
                            text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    total = json.loads(report.stdout)["total"]
    assert total["cost"] > 0 and round(total["savings_pct"], 1) >= results["savings_pct"] - 5
    for args in (["checkpoint", "verify", str(results["checkpoint"])], ["audit", "verify", "--name", "demo-test"]):
        proc = subprocess.run([cli, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
