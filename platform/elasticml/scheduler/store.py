"""The scheduler's store: typed records in one SQLite file, changed only inside a transaction per command.

Who owns what: the store owns everything the scheduler must remember across a restart,
as typed records (`Workload`, `PoolState`, tenants, principals, owners, reasons) beside the
cost ledger's intervals (ledger.py reads and writes that table through the store's
connection). Nothing is written outside `command()`: one command (a placement, a finish,
a controller tick) is one SQLite transaction, so a crash anywhere leaves the file as it was
before the command or as it is after it, never between. A failed command rolls back and
the in-memory records are read again from the file, so memory never keeps what the file
lost.

Invariants: the in-memory records are what the file holds at the last commit plus the
open command's writes; a record read back from the file is checked as strictly as one
arriving at the door, and one that fails is set aside (`quarantined`) rather than keep
the scheduler from starting.

Schema versions: 1 was one key/value `state` table written key by key (commit 55d48a7 and
before); 2 is this. `_migrate_v1` moves a v1 file's keys into records in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from elasticml.errors import ConfigError, SchedulerError
from elasticml.scheduler.capacity import Allocation
from elasticml.scheduler.ledger import Ledger
from elasticml.scheduler.spec import TenantPolicy, WorkloadSpec

SCHEMA_VERSION = 2
MAX_REASONS = 200
"""Decisions and events kept per workload for `explain`."""
EVENTS = "_events"
"""The reasons of the cluster itself (a node lost, a pool unfillable), kept like a workload's."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS intervals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workload TEXT NOT NULL,
    tenant TEXT NOT NULL,
    node_type TEXT NOT NULL,
    market TEXT NOT NULL,
    workers INTEGER NOT NULL,
    nodes INTEGER NOT NULL DEFAULT 0,
    hourly_cost REAL NOT NULL,
    on_demand_hourly_cost REAL NOT NULL,
    start REAL NOT NULL,
    end REAL
);
CREATE INDEX IF NOT EXISTS intervals_open ON intervals(workload) WHERE end IS NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workloads (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (name TEXT PRIMARY KEY, tenant TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reasons (id INTEGER PRIMARY KEY AUTOINCREMENT, workload TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reasons_of ON reasons(workload, id);
CREATE TABLE IF NOT EXISTS tenants (name TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS principals (name TEXT PRIMARY KEY, role TEXT NOT NULL, digest TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (node_type TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT NOT NULL, body TEXT NOT NULL,
                                       why TEXT NOT NULL);
"""


@dataclass(kw_only=True)
class Workload:
    """One workload the scheduler knows: its spec, where it runs and what it has done."""

    spec: WorkloadSpec
    state: str = "queued"
    """placed, queued or paused."""
    epoch: int = 0
    """Grows with every placement change, so running work can tell it must follow."""
    attach: str | None = None
    """The Ray job (hex id) or Serve app (`serve:NAME`) whose workers run it, as the platform started it."""
    progress: float | None = None
    moves: list[float] = field(default_factory=list)
    """Clock times of its voluntary moves (the last 32), for the per-hour bound."""
    submitted: float = 0.0
    allocations: list[Allocation] = field(default_factory=list)
    next_tick: float | None = None
    """A steered job's next policy tick (clock seconds)."""
    seen: bool = False
    """A Serve app's replicas have been seen at least once."""
    absent_since: float | None = None
    stepper: dict[str, Any] | None = None
    """A steered job's `JobStepper`, saved (controller.save_stepper)."""

    def to_json(self) -> str:
        # By hand, not asdict: this runs at every change of every workload.
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        body["spec"] = self.spec.to_dict()
        body["allocations"] = [dict(vars(a)) for a in self.allocations]
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Workload:
        raw = json.loads(text)
        _expect(raw, dict, "workload")
        raw["spec"] = WorkloadSpec.from_dict(raw["spec"], source="ledger")
        raw["allocations"] = [Allocation(**a) for a in _expect(raw.get("allocations", []), list, "allocations")]
        w = cls(**raw)
        _check_workload(w)
        return w


@dataclass(kw_only=True)
class PoolState:
    """What the scheduler has learned about one pool at run time."""

    node_type: str
    interrupted: bool = False
    """A spot interruption notice, or a lost node, is live: nothing new goes there."""
    retry_at: float | None = None
    """An interruption from a lost node (no notice will clear it) is tried again at this clock time."""
    unfillable: bool = False
    """The autoscaler's launches into it have been failing."""
    price: float | None = None
    score: int | None = None
    """Live spot price ($/node-hour) and placement score (1-10), when a feed gave them."""
    history: str = ""
    """Spot availability, tick by tick ('1' up, '0' down), newest last: the policies' model of the pool."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PoolState:
        raw = _expect(json.loads(text), dict, "pool")
        p = cls(**raw)
        if type(p.node_type) is not str or not set(p.history) <= {"0", "1"} or type(p.interrupted) is not bool \
                or type(p.unfillable) is not bool:
            raise ConfigError("a pool record of the wrong shape", field="pools")
        return p


def _expect(value: Any, kind: type, what: str) -> Any:
    if type(value) is not kind:
        raise ConfigError(f"expected {kind.__name__}, got {type(value).__name__}", field=what)
    return value


def _check_workload(w: Workload) -> None:
    if w.state not in ("placed", "queued", "paused") or type(w.epoch) is not int or w.epoch < 0:
        raise ConfigError("a workload record of the wrong shape", field="workloads")
    if w.attach is not None and type(w.attach) is not str:
        raise ConfigError("attach must be a string", field="workloads")


class Store:
    """Typed records in memory, mirrored in SQLite, changed only inside `command()`."""

    def __init__(self, path: str | Path, *, on_write: Callable[[str], None] | None = None) -> None:
        """`on_write` is called with each write's SQL before it runs (and with "COMMIT"): the seam
        fault-injection tests use to fail every write point in turn."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._on_write = on_write
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.ledger = Ledger(self.db, self.write)
        self._depth = 0
        self._in_batch = False
        self.outbox: list[dict[str, Any]] = []
        """Audit entries of the open batch's commands, flushed to the trail just before it commits."""
        self.flush_outbox: Callable[[list[dict[str, Any]]], None] = lambda records: None
        """Appends a batch's audit entries to the trail (and records its tip), inside the batch."""
        self.batch_undone: Callable[[], None] = lambda: None
        """Told when a batch whose audit entries were already appended did not commit."""
        self.quarantined: list[str] = []
        """Records the file holds that failed their checks when read (name: why)."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        with self.command():
            for statement in SCHEMA.strip().split(";"):
                if statement.strip():
                    self.db.execute(statement)
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(intervals)")}
            if "nodes" not in columns:  # a ledger written before nodes were recorded
                self.db.execute("ALTER TABLE intervals ADD COLUMN nodes INTEGER NOT NULL DEFAULT 0")
            version = self._meta_raw("schema_version")
            if version is None and "state" in tables:
                _migrate_v1(self)
            elif version is not None and int(version) > SCHEMA_VERSION:
                raise SchedulerError(f"the ledger {self.path} has schema {version}; this scheduler reads up to "
                                     f"{SCHEMA_VERSION}: run a newer elasticml")
            self.write("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.load()

    # -- transactions ------------------------------------------------------------
    @contextmanager
    def command(self) -> Iterator[None]:
        """One command: everything written inside is committed together, or none of it is.
        Nested uses join the outer command. Inside a `batch` it is a savepoint: a failure undoes
        this command alone."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self._in_batch:
            if not self.db.in_transaction:  # SQLite ended the batch (a full disk): nothing more may run in it
                raise SchedulerError("the batch's transaction was lost; the batch is undone")
            mark = len(self.outbox)
            self.db.execute("SAVEPOINT command")
            self._depth = 1
            try:
                yield
                self.db.execute("RELEASE command")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK TO command")
                    self.db.execute("RELEASE command")
                    del self.outbox[mark:]
                    self._reload_after_failure()  # memory back to what the batch holds so far
                raise
            finally:
                self._depth = 0
            return
        with self.batch():
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Commands committed together (group commit): one append to the audit trail and one SQLite
        commit, so one fsync each, for all of them. Nothing in it is durable, so nothing may be
        answered, before the batch has left this block."""
        self.db.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        flushed = False
        try:
            yield
            self._in_batch = False
            if not self.db.in_transaction:
                raise SchedulerError("the batch's transaction was lost; the batch is undone")
            self._depth = 1
            if self.outbox:
                records, self.outbox = self.outbox, []
                self.flush_outbox(records)
                flushed = True
            self._fault("COMMIT")
            self.db.execute("COMMIT")
        except BaseException:
            self.outbox = []
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self._reload_after_failure()  # memory back to what the file holds
            if flushed:
                self.batch_undone()
            raise
        finally:
            self._in_batch = False
            self._depth = 0

    def _reload_after_failure(self) -> None:
        """`load()`, but never in place of the failure being handled (a schema not there yet, say)."""
        try:
            self.load()
        except sqlite3.Error:
            pass

    def write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if not self._depth:
            raise SchedulerError("a write outside a command (the store changes only inside store.command())")
        if self._in_batch and not self.db.in_transaction:
            raise SchedulerError("the batch's transaction was lost; the batch is undone")
        self._fault(sql)
        return self.db.execute(sql, params)

    def _fault(self, what: str) -> None:
        if self._on_write is not None:
            self._on_write(what)

    # -- loading -------------------------------------------------------------------
    def load(self) -> None:
        """Every record, read again from the file."""
        self.generation = getattr(self, "generation", 0) + 1
        """Grows at every load: what callers cache from records is stale once it has."""
        self.ledger.forget_cache()
        self.quarantined = []
        self.workloads: dict[str, Workload] = {}
        for name, body in self.db.execute("SELECT name, body FROM workloads"):
            try:
                self.workloads[name] = Workload.from_json(body)
            except (ConfigError, ValueError, TypeError, KeyError) as exc:
                self.quarantined.append(f"workload {name[:80]}: {str(exc)[:200]}")
        self.owners: dict[str, str] = dict(self.db.execute("SELECT name, tenant FROM owners"))
        self.tenants: dict[str, TenantPolicy] = {}
        for name, body in self.db.execute("SELECT name, body FROM tenants"):
            try:
                raw = _expect(json.loads(body), dict, "tenant")
                self.tenants[name] = TenantPolicy(**{**raw, "regions": tuple(raw.get("regions", ()))})
            except (ConfigError, ValueError, TypeError) as exc:
                self.quarantined.append(f"tenant {name[:80]}: {str(exc)[:200]}")
        self.principals: dict[str, tuple[str, str]] = {
            n: (r, d) for n, r, d in self.db.execute("SELECT name, role, digest FROM principals")}
        self.pools: dict[str, PoolState] = {}
        for name, body in self.db.execute("SELECT node_type, body FROM pools"):
            try:
                self.pools[name] = PoolState.from_json(body)
            except (ConfigError, ValueError, TypeError) as exc:
                self.quarantined.append(f"pool {name[:80]}: {str(exc)[:200]}")
        self.queue: list[str] = json.loads(self._meta_raw("queue") or "[]")
        self.quarantined += [f"{what} (migration): {why}" for what, why in self.db.execute("SELECT what, why FROM quarantine")]
        self.quarantined_tenants = {q.split(" ", 2)[1].rstrip(":") for q in self.quarantined if q.startswith("tenant ")}
        """Tenants whose policy could not be read: nothing of theirs is placed until an admin sets it again."""

    def _meta_raw(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- records -----------------------------------------------------------------------
    def meta(self, key: str) -> Any:
        raw = self._meta_raw(key)
        return None if raw is None else json.loads(raw)

    def set_meta(self, key: str, value: Any) -> None:
        self.write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def put_workload(self, w: Workload) -> None:
        self.write("INSERT OR REPLACE INTO workloads (name, body) VALUES (?, ?)", (w.spec.name, w.to_json()))
        self.workloads[w.spec.name] = w

    def drop_workload(self, name: str) -> None:
        if self.workloads.pop(name, None) is not None:
            self.write("DELETE FROM workloads WHERE name = ?", (name,))

    def set_owner(self, name: str, tenant: str) -> None:
        if self.owners.get(name) != tenant:
            self.write("INSERT OR REPLACE INTO owners (name, tenant) VALUES (?, ?)", (name, tenant))
            self.owners[name] = tenant

    def put_tenant(self, policy: TenantPolicy) -> None:
        body = {**asdict(policy), "regions": list(policy.regions)}
        self.write("INSERT OR REPLACE INTO tenants (name, body) VALUES (?, ?)", (policy.tenant, json.dumps(body)))
        self.tenants[policy.tenant] = policy
        self.quarantined_tenants.discard(policy.tenant)

    def put_principal(self, name: str, role: str, digest: str) -> None:
        self.write("INSERT OR REPLACE INTO principals (name, role, digest) VALUES (?, ?, ?)", (name, role, digest))
        self.principals[name] = (role, digest)

    def drop_principal(self, name: str) -> None:
        self.write("DELETE FROM principals WHERE name = ?", (name,))
        self.principals.pop(name, None)

    def pool(self, node_type: str) -> PoolState:
        """The pool's record (a fresh one, unsaved, for a pool nothing was learned about yet)."""
        return self.pools.get(node_type) or PoolState(node_type=node_type)

    def put_pool(self, p: PoolState) -> None:
        self.write("INSERT OR REPLACE INTO pools (node_type, body) VALUES (?, ?)", (p.node_type, p.to_json()))
        self.pools[p.node_type] = p

    def set_queue(self, queue: list[str]) -> None:
        self.queue = list(queue)
        self.set_meta("queue", self.queue)

    def reasons(self, name: str) -> list[dict[str, Any]]:
        """The workload's kept decisions and events, oldest first (read from the file: they are many,
        and only `explain` and `placement` read them)."""
        rows = self.db.execute("SELECT body FROM reasons WHERE workload = ? ORDER BY id DESC LIMIT ?", (name, MAX_REASONS))
        return [json.loads(b) for (b,) in reversed(rows.fetchall())]

    def last_reason(self, name: str, actions: tuple[str, ...]) -> dict[str, Any] | None:
        for (body,) in self.db.execute("SELECT body FROM reasons WHERE workload = ? ORDER BY id DESC", (name,)):
            record: dict[str, Any] = json.loads(body)
            if record.get("action") in actions:
                return record
        return None

    def add_reason(self, name: str, record: dict[str, Any]) -> None:
        """A decision or event, kept for `explain` (the last MAX_REASONS per workload)."""
        cur = self.write("INSERT INTO reasons (workload, body) VALUES (?, ?)", (name, json.dumps(record)))
        if cur.lastrowid is not None and cur.lastrowid % 64 == 0:  # trimmed now and then, not at every write
            self.write("DELETE FROM reasons WHERE workload = ? AND id NOT IN (SELECT id FROM reasons WHERE workload = ?"
                       " ORDER BY id DESC LIMIT ?)", (name, name, MAX_REASONS))

    def dump(self) -> dict[str, Any]:
        """Everything the file holds, as plain data (tests compare states with it)."""
        out: dict[str, Any] = {}
        for table in ("meta", "workloads", "owners", "reasons", "tenants", "principals", "pools", "intervals"):
            cur = self.db.execute(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608 (names from this tuple)
            out[table] = [list(r) for r in cur.fetchall()]
        return out


def _migrate_v1(store: Store) -> None:
    """A schema-1 ledger's key/value rows as records, in the open command (all or nothing). A row that
    does not read as a record is kept aside in `quarantine`, named, rather than stop the migration."""
    rows = dict(store.db.execute("SELECT key, value FROM state"))

    def family(prefix: str) -> dict[str, Any]:
        return {k.removeprefix(prefix): v for k, v in rows.items() if k.startswith(prefix)}

    def aside(what: str, body: str, exc: Exception) -> None:
        store.write("INSERT INTO quarantine (what, body, why) VALUES (?, ?, ?)",
                    (what[:200], body[:100_000], f"{type(exc).__name__}: {str(exc)[:300]}"))

    allocs, steer = family("alloc:"), family("steer:")
    for name, spec_text in family("spec:").items():
        try:
            meta = json.loads(rows.get(f"meta:{name}", "{}"))
            w = {"spec": json.loads(spec_text), "state": meta.get("state", "queued"), "epoch": meta.get("epoch", 0),
                 "attach": meta.get("attach"), "progress": meta.get("progress"), "moves": meta.get("moves", []),
                 "submitted": meta.get("submitted", 0.0), "allocations": json.loads(allocs.get(name, "[]")),
                 "next_tick": meta.get("next_tick"), "seen": bool(meta.get("seen", False)),
                 "absent_since": meta.get("absent_since"),
                 "stepper": json.loads(steer[name]) if name in steer else None}
            Workload.from_json(json.dumps(w))  # it reads back as a record, or it is set aside
        except (ConfigError, ValueError, TypeError, KeyError, AttributeError) as exc:
            aside(f"workload {name}", spec_text, exc)
            continue
        store.write("INSERT OR REPLACE INTO workloads (name, body) VALUES (?, ?)", (name, json.dumps(w)))
    for name, tenant in family("owner:").items():
        store.write("INSERT OR REPLACE INTO owners (name, tenant) VALUES (?, ?)", (name, tenant))
    for name, records in family("why:").items():
        try:
            kept = [r for r in json.loads(records) if type(r) is dict][-MAX_REASONS:]
        except ValueError as exc:
            aside(f"reasons {name}", records, exc)
            continue
        for record in kept:
            store.write("INSERT INTO reasons (workload, body) VALUES (?, ?)", (name, json.dumps(record)))
    for name, body in family("tenant:").items():
        store.write("INSERT OR REPLACE INTO tenants (name, body) VALUES (?, ?)", (name, body))  # checked at load
    for name, body in family("principal:").items():
        try:
            role, dig = json.loads(body)
        except (ValueError, TypeError) as exc:
            aside(f"principal {name}", body, exc)
            continue
        store.write("INSERT OR REPLACE INTO principals (name, role, digest) VALUES (?, ?, ?)", (name, str(role), str(dig)))
    try:
        interrupted = set(json.loads(rows.get("interrupted", "[]")))
        unfillable = set(json.loads(rows.get("unfillable", "[]")))
        expiry = dict(json.loads(rows.get("interrupt_expiry", "{}")))
        live = dict(json.loads(rows.get("live_prices", "{}")))
    except (ValueError, TypeError) as exc:
        aside("pools", json.dumps({k: rows.get(k) for k in ("interrupted", "unfillable", "interrupt_expiry",
                                                             "live_prices")}), exc)
        interrupted, unfillable, expiry, live = set(), set(), {}, {}
    history = family("history:")
    for node_type in sorted(interrupted | unfillable | set(expiry) | set(live) | set(history)):
        try:
            price, score = live.get(node_type, (None, None))
            p = PoolState(node_type=node_type, interrupted=node_type in interrupted, retry_at=expiry.get(node_type),
                          unfillable=node_type in unfillable, price=price, score=score,
                          history="".join("1" if b else "0" for b in json.loads(history.get(node_type, "[]"))))
            PoolState.from_json(p.to_json())
        except (ConfigError, ValueError, TypeError) as exc:
            aside(f"pool {node_type}", str(history.get(node_type, ""))[:1000], exc)
            continue
        store.write("INSERT OR REPLACE INTO pools (node_type, body) VALUES (?, ?)", (node_type, p.to_json()))
    for key in ("queue", "incarnation", "audit_tip"):
        if key in rows:
            store.write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (key, rows[key] if key != "incarnation" else json.dumps(rows[key])))
    store.write("DROP TABLE state")
