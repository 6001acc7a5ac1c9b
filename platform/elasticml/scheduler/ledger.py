"""The cost ledger: every allocation interval, durable across actor restarts.

The `intervals` table of the scheduler's store (store.py owns the file, its schema and its
transactions). Each interval is (workload, tenant, node type, market, workers, dollars per
hour, start, end); an open interval has no end. Writes go through the store's open command,
so an interval opened or closed by a decision is committed with that decision or not at all.

Times are the scheduler's clock in seconds, given by the caller on every write (wall-clock
seconds live; a replayed market's seconds there): a default of its own would mix two clocks. Costs
are dollars.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

@dataclass(frozen=True)
class CostRow:
    key: str
    cost: float
    on_demand_cost: float
    hours: float

    @property
    def savings(self) -> float:
        return self.on_demand_cost - self.cost


class Ledger:
    def __init__(self, db: sqlite3.Connection, write: Callable[..., Any] | None = None) -> None:
        """Over the store's connection; `write` is the store's (None: read only)."""
        self._db = db
        self._writer = write
        self._closed: dict[str, float] | None = None
        """Dollars per tenant of closed intervals (they never change): so a snapshot's spend costs the
        open intervals only. Forgotten whenever the store is read again (a rollback)."""

    @classmethod
    def read_only(cls, path: str | Path) -> Ledger:
        """A ledger file of a cluster that may be gone, read without changing it (any schema version)."""
        return cls(sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, check_same_thread=False))

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        if self._writer is None:
            raise sqlite3.OperationalError("this ledger was opened read only")
        cursor: sqlite3.Cursor = self._writer(sql, params)
        return cursor

    def open(self, *, workload: str, tenant: str, node_type: str, market: str, workers: int, nodes: int,
             hourly_cost: float, on_demand_hourly_cost: float, at: float) -> None:
        self._write(
            "INSERT INTO intervals (workload, tenant, node_type, market, workers, nodes, hourly_cost,"
            " on_demand_hourly_cost, start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (workload, tenant, node_type, market, workers, nodes, hourly_cost, on_demand_hourly_cost, at),
        )

    def open_intervals(self, workload: str) -> list[dict[str, object]]:
        return [r for r in self.intervals(workload) if r["end"] is None]

    def close(self, workload: str, *, at: float, node_type: str | None = None) -> int:
        """End the workload's open intervals (on one node type, or all); returns how many."""
        if self._closed is not None:
            for tenant, hourly, start, kind in self._db.execute(
                    "SELECT tenant, hourly_cost, start, node_type FROM intervals WHERE workload = ? AND end IS NULL",
                    (workload,)):
                if node_type is None or kind == node_type:
                    self._closed[tenant] = self._closed.get(tenant, 0.0) + hourly * (at - start) / 3600.0
        if node_type is None:
            cur = self._write("UPDATE intervals SET end = ? WHERE workload = ? AND end IS NULL", (at, workload))
        else:
            cur = self._write("UPDATE intervals SET end = ? WHERE workload = ? AND node_type = ? AND end IS NULL",
                              (at, workload, node_type))
        return cur.rowcount

    def intervals(self, workload: str | None = None) -> list[dict[str, object]]:
        if workload is None:
            cur = self._db.execute("SELECT * FROM intervals ORDER BY id")
        else:
            cur = self._db.execute("SELECT * FROM intervals WHERE workload = ? ORDER BY id", (workload,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def report(self, *, now: float) -> dict[str, object]:
        """Cost per tenant, workload and market, with savings against all on-demand, as of `now`."""
        report: dict[str, object] = {}
        for column in ("tenant", "workload", "market"):
            report[column] = [{"key": r.key, "cost": r.cost, "on_demand_cost": r.on_demand_cost,
                               "savings": r.savings, "worker_hours": r.hours} for r in self.costs_by(column, now=now)]
        rows = cast("list[dict[str, Any]]", report["tenant"])  # built just above
        total = sum(r["cost"] for r in rows)
        od = sum(r["on_demand_cost"] for r in rows)
        report["total"] = {"cost": total, "on_demand_cost": od, "savings": od - total,
                           "savings_pct": 100 * (od - total) / od if od else 0.0}
        report["intervals"] = len(self.intervals())
        return report

    def forget_cache(self) -> None:
        self._closed = None

    def spend_by_tenant(self, *, now: float) -> dict[str, float]:
        """Dollars per tenant as of `now` (what budgets are checked against)."""
        if self._closed is None:
            self._closed = dict(self._db.execute(
                "SELECT tenant, SUM(hourly_cost * (end - start) / 3600.0) FROM intervals WHERE end IS NOT NULL"
                " GROUP BY tenant").fetchall())
        spend = dict(self._closed)
        for tenant, hourly, start in self._db.execute(
                "SELECT tenant, hourly_cost, start FROM intervals WHERE end IS NULL"):
            spend[tenant] = spend.get(tenant, 0.0) + hourly * (now - start) / 3600.0
        return spend

    def last_recorded(self) -> float | None:
        """The latest start or end in the ledger: where a ledger of a cluster that is gone stops."""
        row = self._db.execute("SELECT MAX(MAX(start, COALESCE(end, start))) FROM intervals").fetchone()
        return row[0] if row else None

    def cost_by_tenant_and_market(self, *, now: float) -> dict[tuple[str, str], float]:
        cur = self._db.execute("SELECT tenant, market, SUM(hourly_cost * (COALESCE(end, ?) - start) / 3600.0)"
                               " FROM intervals GROUP BY tenant, market", (now,))
        return {(t, m): c or 0.0 for t, m, c in cur.fetchall()}

    def costs_by(self, column: str, *, now: float) -> list[CostRow]:
        if column not in ("tenant", "workload", "market", "node_type"):
            raise ValueError(f"cannot group costs by {column!r}")
        cur = self._db.execute(
            f"SELECT {column}, SUM(hourly_cost * (COALESCE(end, ?) - start) / 3600.0),"
            f" SUM(on_demand_hourly_cost * (COALESCE(end, ?) - start) / 3600.0),"
            f" SUM(workers * (COALESCE(end, ?) - start) / 3600.0)"
            f" FROM intervals GROUP BY {column} ORDER BY {column}",
            (now, now, now),
        )
        return [CostRow(key=k, cost=c or 0.0, on_demand_cost=o or 0.0, hours=h or 0.0) for k, c, o, h in cur.fetchall()]
