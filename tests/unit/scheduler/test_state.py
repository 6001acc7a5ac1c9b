"""The actor's state without Ray: persistence, ledger durability and costs."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elasticml.errors import ConfigError
from elasticml.scheduler.actor import SchedulerState
from elasticml.scheduler.ledger import Ledger

REPO = Path(__file__).resolve().parents[3]
CONFIG = str(REPO / "cluster_configs" / "local.yaml")


def test_a_new_incarnation_reloads_everything(tmp_path):
    db = str(tmp_path / "l.sqlite")
    s = SchedulerState(CONFIG, db)
    s.set_tenant({"tenant": "b", "budget": 100.0})
    s.submit({"name": "crit", "tenant": "a", "priority": "critical", "max_workers": 2})
    s.submit({"name": "r1", "tenant": "a", "max_workers": 2})
    s.submit({"name": "r2", "tenant": "b", "max_workers": 1})  # reserved and on-demand full: queued
    s.interrupt("cpu_spot")
    before = (s.status(), s.explain("crit"), s.ledger.intervals())
    again = SchedulerState(CONFIG, db)
    assert (again.status(), again.explain("crit"), again.ledger.intervals()) == before
    assert again.queue == ["r2"] and again.interrupted == {"cpu_spot"}
    assert again.tenants.of("b").budget == 100.0


def test_finishing_frees_capacity_for_the_queue(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    s.submit({"name": "a", "tenant": "t", "max_workers": 2})
    s.submit({"name": "b", "tenant": "t", "max_workers": 2})
    q = s.submit({"name": "c", "tenant": "t", "max_workers": 1})
    assert q[-1]["action"] == "queue"
    out = s.finish("a")
    assert ("c", "place") in [(d["workload"], d["action"]) for d in out]
    assert s.queue == []
    closed = [i for i in s.ledger.intervals() if i["workload"] == "a"]
    assert closed and all(i["end"] is not None for i in closed)


def test_costs_and_savings_add_up(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    t0 = 1_000_000.0
    ledger.open(workload="w", tenant="t", node_type="cpu_spot", market="spot", workers=2,
                hourly_cost=0.08, on_demand_hourly_cost=0.2, at=t0)
    ledger.close("w", at=t0 + 1800)
    ledger.open(workload="w", tenant="t", node_type="cpu_on_demand", market="on-demand", workers=2,
                hourly_cost=0.2, on_demand_hourly_cost=0.2, at=t0 + 1800)
    rows = {r.key: r for r in ledger.costs_by("market", now=t0 + 3600)}
    assert rows["spot"].cost == pytest.approx(0.04) and rows["on-demand"].cost == pytest.approx(0.1)
    (tenant,) = ledger.costs_by("tenant", now=t0 + 3600)
    assert tenant.on_demand_cost == pytest.approx(0.2) and tenant.savings == pytest.approx(0.06)
    assert tenant.hours == pytest.approx(2.0)


def test_a_crash_mid_write_leaves_the_ledger_as_it_was(tmp_path):
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ledger.open(workload="kept", tenant="t", node_type="n", market="spot", workers=1, hourly_cost=1, on_demand_hourly_cost=2)
    # Another process starts a write and dies (SIGKILL-like) before committing it.
    code = (
        "import os, sqlite3; db = sqlite3.connect(%r, isolation_level=None); db.execute('BEGIN');"
        "db.execute(\"INSERT INTO intervals (workload, tenant, node_type, market, workers, hourly_cost,"
        " on_demand_hourly_cost, start) VALUES ('lost','t','n','spot',1,1,2,0)\");"
        "db.execute(\"UPDATE intervals SET end = 1 WHERE workload = 'kept'\"); os._exit(9)" % str(path)
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 9
    after = Ledger(path).intervals()
    assert [i["workload"] for i in after] == ["kept"] and after[0]["end"] is None
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_bad_specs_are_refused_before_anything_changes(tmp_path):
    s = SchedulerState(CONFIG, str(tmp_path / "l.sqlite"))
    with pytest.raises(ConfigError, match="priority"):
        s.submit({"name": "x", "tenant": "t", "priority": "asap"})
    assert s.status()["running"] == {} and s.ledger.intervals() == []
