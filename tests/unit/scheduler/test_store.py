"""The store: one transaction per command, a failure at any write leaves the state before or after
the command, and a ledger written by the scheduler of schema 1 still opens."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elasticml.cluster.config import load_cluster_spec
from elasticml.errors import SchedulerError
from elasticml.scheduler.audit import AuditLog, store_tip
from elasticml.scheduler.principals import add_principal, list_principals
from elasticml.scheduler.identity import digest, new_token
from elasticml.scheduler.shell import open_shell
from elasticml.scheduler.spec import TenantPolicy, WorkloadSpec
from elasticml.scheduler.store import SCHEMA_VERSION, Store

REPO = Path(__file__).resolve().parents[3]
CONFIG = load_cluster_spec(REPO / "cluster_configs" / "local.yaml")
FIXTURES = REPO / "tests" / "fixtures"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def open_at(folder: Path, *, on_write=None, clock=None):
    return open_shell(CONFIG, folder / "ledger.sqlite", admin_digest=digest("eml1.admin.x"),
                      audit_key_path=folder / "audit.key", clock=clock or Clock(), on_write=on_write)


def commands(shell, clock: Clock) -> list:
    """A scripted day: placements that preempt and queue, a deadline job, a notice, a tick, a finish."""
    s, c = shell.scheduler, shell.controller

    def tick() -> None:
        clock.t += 600
        c.tick()

    return [
        lambda: s.set_tenant(TenantPolicy(tenant="acme", budget=100.0)),
        lambda: s.place(WorkloadSpec(name="nightly", tenant="acme", priority="low", max_workers=2,
                                     checkpoint_interval_hours=0.1)),
        lambda: s.place(WorkloadSpec(name="fraud", tenant="p", priority="critical", max_workers=2)),
        lambda: s.place(WorkloadSpec(name="dl", tenant="acme", expected_hours=2, deadline_hours=6,
                                     checkpoint_interval_hours=0.2)),
        lambda: s.report_progress("nightly", 0.5),
        lambda: s.interrupt("cpu_spot"),
        tick,
        lambda: s.clear_interruption("cpu_spot"),
        lambda: s.finish("fraud"),
        tick,
    ]


def state_of(store: Store) -> dict:
    """Everything the file holds but the audit tip (its MACs depend on the run's key)."""
    dump = store.dump()
    dump["meta"] = [row for row in dump["meta"] if row[0] != "audit_tip"]
    return dump


def fault_free(folder: Path) -> list[dict]:
    clock = Clock()
    shell = open_at(folder, clock=clock)
    states = [state_of(shell.store)]
    for command in commands(shell, clock):
        command()
        states.append(state_of(shell.store))
    return states


def test_a_ledger_written_by_schema_1_opens_with_everything_it_held(tmp_path):
    shutil.copy(FIXTURES / "ledger_v1.sqlite", tmp_path / "l.sqlite")
    expected = json.loads((FIXTURES / "ledger_v1.expected.json").read_text())
    from tests.support.scheduler import Sched

    clock = Clock()
    clock.t = 1_000_960.0
    s = Sched(CONFIG, str(tmp_path / "l.sqlite"), clock=clock, incarnation="session-1")
    status = json.loads(json.dumps(s.status()))
    assert status.pop("config").endswith(expected["status"].pop("config"))
    assert status == expected["status"]
    for name, placement in expected["placements"].items():
        assert json.loads(json.dumps(s.placement(name).to_dict())) == placement
        assert json.loads(json.dumps(s.explain(name))) == expected["explain"][name]
    assert s.explain("_events") == expected["explain"]["_events"]
    assert s.ledger.intervals() == expected["intervals"] and list_principals(s.scheduler) == expected["principals"]
    assert s.owners == expected["owners"] and s.queue == expected["queue"]
    assert s.steppers["dl"].tick == expected["steered"]["dl"]["tick"]
    assert s.steppers["dl"].past == expected["steered"]["dl"]["past"]
    assert s.store.meta("schema_version") == SCHEMA_VERSION
    tables = {r[0] for r in s.store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "state" not in tables and not s.store.quarantined
    s.controller_tick()  # and it goes on from there


def test_a_newer_schema_is_refused_rather_than_misread(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    with store.command():
        store.set_meta("schema_version", SCHEMA_VERSION + 1)
    store.db.close()
    with pytest.raises(SchedulerError, match="newer elasticml"):
        Store(tmp_path / "l.sqlite")


def test_nothing_is_written_outside_a_command(tmp_path):
    store = Store(tmp_path / "l.sqlite")
    with pytest.raises(SchedulerError, match="outside a command"):
        store.set_queue(["x"])


def test_a_failure_at_every_write_point_leaves_the_state_before_the_command_and_the_next_try_lands(tmp_path):
    states = fault_free(tmp_path / "clean")
    points: list[str] = []
    clock = Clock()
    shell = open_at(tmp_path / "count", clock=clock, on_write=points.append)
    per_command = []
    for command in commands(shell, clock):
        before = len(points)
        command()
        per_command.append(len(points) - before)
    assert all(n >= 1 for n in per_command)  # every command writes, and commits once

    tried = 0
    for k, writes in enumerate(per_command):
        for i in range(writes):
            fail_at = {"n": i}
            seen = {"n": -1}

            def hook(sql: str) -> None:
                seen["n"] += 1
                if armed["on"] and seen["n"] == fail_at["n"]:
                    raise OSError(f"injected at write {i} ({sql[:30]})")

            armed = {"on": False}
            folder = tmp_path / f"c{k}-w{i}"
            clock = Clock()
            shell = open_at(folder, clock=clock, on_write=hook)
            script = commands(shell, clock)
            for command in script[:k]:
                command()
            assert state_of(shell.store) == states[k]
            t_before = clock.t
            armed["on"], seen["n"] = True, -1
            with pytest.raises(OSError, match="injected"):
                script[k]()
            armed["on"] = False
            assert state_of(shell.store) == states[k]  # memory rolled back with the file
            assert state_of(Store(folder / "ledger.sqlite")) == states[k]  # and the file is as before
            clock.t = t_before  # the same command again, at the same time: it lands
            script[k]()
            assert state_of(shell.store) == states[k + 1]
            tip, last = store_tip(folder / "ledger.sqlite")
            assert AuditLog.verify(folder / "audit.jsonl", shell.scheduler.audit.key, tip, last_decision_at=last).ok
            tried += 1
    assert tried == sum(per_command)


CHILD = r"""
import sys, os
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.unit.scheduler.test_store import Clock, open_at, commands
kill_at = int(sys.argv[1])
count = {{"n": 0}}
def hook(sql):
    count["n"] += 1
    if count["n"] == kill_at:
        os._exit(9)
clock = Clock()
shell = open_at(Path(sys.argv[2]), clock=clock, on_write=hook)
for k, command in enumerate(commands(shell, clock)):
    command()
    print(f"ack {{k}}", flush=True)
"""


def test_a_process_killed_at_any_write_of_a_command_loses_no_acknowledged_command(tmp_path):
    """Killed (os._exit) at each write point of a placement that preempts another:
    the file reopens at the last acknowledged command or the one in flight, and the trail verifies."""
    states = fault_free(tmp_path / "clean")
    points: list[str] = []
    clock = Clock()
    shell = open_at(tmp_path / "count", clock=clock, on_write=points.append)
    bounds = [len(points)]
    for command in commands(shell, clock):
        command()
        bounds.append(len(points))
    targets = [2]  # the critical placement: it preempts, re-places and charges (ticks are killed in the group test)
    for k in targets:
        for kill_at in range(bounds[k] + 1, bounds[k + 1] + 1):
            folder = tmp_path / f"kill-{kill_at}"
            proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), str(kill_at), str(folder)],
                                  capture_output=True, text=True, timeout=120, cwd=REPO)
            assert proc.returncode == 9, proc.stderr[-2000:]
            acked = len([line for line in proc.stdout.splitlines() if line.startswith("ack ")])
            assert acked == k
            reopened = state_of(Store(folder / "ledger.sqlite"))
            assert reopened in (states[acked], states[acked + 1]), f"killed at write {kill_at}"
            key = (folder / "audit.key").read_bytes()
            tip, last = store_tip(folder / "ledger.sqlite")
            assert AuditLog.verify(folder / "audit.jsonl", bytes.fromhex(key.decode().strip()), tip,
                                   last_decision_at=last).ok


def test_concurrent_commands_share_commits_and_each_answer_waits_for_its_own(tmp_path):
    import threading

    from elasticml.scheduler.group_commit import GroupCommit

    shell = open_at(tmp_path)
    token = new_token("admin")
    add_principal(shell.scheduler, "ops", "admin", digest(token))
    commits = {"n": 0}
    shell.store._on_write = lambda sql: commits.__setitem__("n", commits["n"] + (sql == "COMMIT"))
    committer = GroupCommit(shell.store)
    answers: dict[int, object] = {}

    def caller(i: int) -> None:
        spec = WorkloadSpec(name=f"w{i}", tenant=f"t{i % 3}", max_workers=1, priority="low")
        try:
            answers[i] = committer.run(lambda: shell.door.call(token, "place", {"spec": spec}))
        except Exception as exc:  # a refusal is an answer too
            answers[i] = exc

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(answers) == 40 and committer.commands == 40
    assert committer.batches < 40 and commits["n"] == committer.batches  # shared: one commit a batch
    placed = {n for n in shell.store.workloads}
    assert placed == {f"w{i}" for i, a in answers.items() if not isinstance(a, Exception)}
    reopened = Store(tmp_path / "ledger.sqlite")
    assert set(reopened.workloads) == placed
    tip, last = store_tip(tmp_path / "ledger.sqlite")
    assert AuditLog.verify(tmp_path / "audit.jsonl", shell.scheduler.audit.key, tip, last_decision_at=last).ok


GROUP_CHILD = r"""
import sys, os, threading
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.unit.scheduler.test_store import open_at
from elasticml.scheduler.group_commit import GroupCommit
from elasticml.scheduler.spec import WorkloadSpec
kill_at = int(sys.argv[1])
shell = open_at(Path(sys.argv[2]))
count = {{"n": 0}}
def hook(sql):
    count["n"] += 1
    if count["n"] == kill_at:
        os._exit(9)
shell.store._on_write = hook
committer = GroupCommit(shell.store)
def caller(i):
    spec = WorkloadSpec(name=f"w{{i}}", tenant="t", max_workers=1, priority="preemptible", kind="batch")
    committer.run(lambda: shell.scheduler.place(spec))
    os.write(1, f"ack w{{i}}\n".encode())  # one write: lines from threads never interleave
threads = [threading.Thread(target=caller, args=(i,)) for i in range(30)]
for t in threads: t.start()
for t in threads: t.join()
os._exit(0)
"""


@pytest.mark.parametrize("kill_at", [15, 40, 80, 120])
def test_a_kill_during_a_group_commit_loses_no_acknowledged_command(tmp_path, kill_at):
    proc = subprocess.run([sys.executable, "-c", GROUP_CHILD.format(repo=str(REPO)), str(kill_at), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 9, proc.stderr[-2000:]  # killed mid-run, at a write of some batch
    acked = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ack ")}
    kept = set(Store(tmp_path / "ledger.sqlite").workloads)
    assert acked <= kept
    tip, last = store_tip(tmp_path / "ledger.sqlite")
    key = bytes.fromhex((tmp_path / "audit.key").read_text().strip())
    assert AuditLog.verify(tmp_path / "audit.jsonl", key, tip, last_decision_at=last).ok


def test_a_schema_1_scheduler_folder_keeps_its_trail_verifiable_and_its_key_moves_apart(tmp_path):
    """Its key beside the trail and its tip unsigned: the key moves to its own place, the tip is
    checked against the trail and signed, and verify passes with the moved key."""
    from elasticml.scheduler.audit import AuditLog as Log
    from elasticml.scheduler.audit import load_key

    folder = tmp_path / "sched"
    folder.mkdir()
    shutil.copy(FIXTURES / "ledger_v1.sqlite", folder / "ledger.sqlite")
    key = load_key(folder / "audit.key")
    log = Log(folder / "audit.jsonl", key)
    for i in range(3):
        last = log.append(at=2_000_000.0 + i, who="admin admin", action="place", target=f"w{i}")
    import sqlite3

    db = sqlite3.connect(folder / "ledger.sqlite")
    with db:
        db.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('audit_tip', ?)", (json.dumps([3, last["mac"]]),))
    db.close()
    shell = open_shell(CONFIG, folder / "ledger.sqlite", admin_digest="0" * 64, audit_key_path=tmp_path / "keys" / "k")
    assert not (folder / "audit.key").exists() and bytes.fromhex((tmp_path / "keys" / "k").read_text()) == key
    tip, at = store_tip(folder / "ledger.sqlite")
    assert tip["seq"] >= 3 and Log.verify(folder / "audit.jsonl", key, tip, last_decision_at=at).ok
    assert shell.store.meta("schema_version") == SCHEMA_VERSION


def test_a_schema_1_row_that_is_not_a_record_is_set_aside_and_its_tenant_is_not_placed(tmp_path):
    import sqlite3

    shutil.copy(FIXTURES / "ledger_v1.sqlite", tmp_path / "l.sqlite")
    db = sqlite3.connect(tmp_path / "l.sqlite")
    with db:
        db.execute("UPDATE state SET value = '{\"tenant\": \"acme\", \"budget\": -5}' WHERE key = 'tenant:acme'")
        db.execute("UPDATE state SET value = 'not json' WHERE key = 'meta:fraud'")
    db.close()
    from tests.support.scheduler import Sched

    s = Sched(CONFIG, str(tmp_path / "l.sqlite"))
    assert "fraud" not in s.specs and "q" in s.specs  # the bad one aside, the rest read
    assert any(q.startswith("workload fraud") for q in s.store.quarantined)
    assert "acme" in s.store.quarantined_tenants
    from elasticml.errors import PlacementRefused

    with pytest.raises(PlacementRefused, match="could not be read"):
        s.place(WorkloadSpec(name="new", tenant="acme"))
    s.set_tenant(TenantPolicy(tenant="acme", budget=5.0))  # an admin sets it again
    assert Sched(CONFIG, str(tmp_path / "l.sqlite")).place(WorkloadSpec(name="new", tenant="acme")) is not None


def test_a_batch_that_fails_after_its_records_were_written_says_so_in_the_trail(tmp_path):
    shell = open_at(tmp_path)

    def fail_commit(sql: str) -> None:
        if sql == "COMMIT":
            raise OSError("disk gone at the commit")

    shell.store._on_write = fail_commit
    with pytest.raises(OSError):
        shell.scheduler.place(WorkloadSpec(name="lost", tenant="t"))
    shell.store._on_write = None
    assert "lost" not in shell.store.workloads
    records = shell.scheduler.audit.records()
    assert records[-1]["action"] == "undone" and records[-2]["target"] == "lost"
    shell.scheduler.place(WorkloadSpec(name="kept", tenant="t"))
    tip, last = store_tip(tmp_path / "ledger.sqlite")
    assert AuditLog.verify(tmp_path / "audit.jsonl", shell.scheduler.audit.key, tip, last_decision_at=last).ok
