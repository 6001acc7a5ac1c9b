"""The holes a hostile tenant found in the scheduler, each closed (on 55d48a7 each of these failed, or
the check it makes did not exist), and the declared table held to its handlers and client."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elasticml.cluster.config import load_cluster_spec
from elasticml.errors import AccessDenied, ConfigError
from elasticml.scheduler.audit import AuditLog, store_tip
from elasticml.scheduler.client import SchedulerClient
from elasticml.scheduler.door import HANDLERS
from elasticml.scheduler.principals import add_principal, list_principals
from elasticml.scheduler.identity import digest, new_token
from elasticml.scheduler.requests import ROUTES
from elasticml.scheduler.shell import open_shell
from elasticml.scheduler.spec import TenantPolicy, WorkloadSpec

REPO = Path(__file__).resolve().parents[3]
CONFIG = load_cluster_spec(REPO / "cluster_configs" / "local.yaml")


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(tmp_path):
    tokens = {n: new_token(n) for n in ("admin", "acme", "globex")}
    burst = Clock()
    shell = open_shell(CONFIG, tmp_path / "sched" / "ledger.sqlite", admin_digest=digest(tokens["admin"]),
                       audit_key_path=tmp_path / "keys" / "audit.key")
    shell.door._clock = burst
    for n in ("acme", "globex"):
        add_principal(shell.scheduler, n, "tenant", digest(tokens[n]))

    def client(who: str) -> SchedulerClient:
        return SchedulerClient(lambda route, args, wait=True: shell.door.call(tokens[who], route, args))

    shell.tokens, shell.client, shell.burst, shell.tmp = tokens, client, burst, tmp_path  # type: ignore[attr-defined]
    return shell


def test_every_route_has_one_handler_and_one_client_method_and_nothing_else_is_served(world):
    assert set(HANDLERS) == {r.request for r in ROUTES.values()}
    sent: list[str] = []
    client = SchedulerClient(lambda route, args, wait=True: sent.append(route))
    spec = WorkloadSpec(name="w", tenant="acme")
    calls = {"place": (spec,), "placement": ("w",), "report_progress": ("w", 0.5), "run_started": ("w", 1),
             "finish": ("w",), "explain": ("w",), "intervals": ("w",), "status": (), "cost_report": (),
             "interrupt": ("cpu_spot",), "clear_interruption": ("cpu_spot",), "storage_credentials": ("acme", "bucket"),
             "record_event": ("deploy", "w", "why"), "set_tenant": (TenantPolicy(tenant="acme"),),
             "remove_principal": ("x",), "list_principals": (), "tick": (), "whoami": (), "audit_records": (5,)}
    for method, args in calls.items():
        getattr(client, method)(*args)
    client.add_principal("x", "tenant", world.tmp / "x.cred")
    sent.append("check_residency")  # sent only for an s3:// URI whose region is known (test_s3_training)
    assert sorted(sent) == sorted(ROUTES) and len(sent) == len(set(sent))
    for name in ROUTES:
        assert callable(getattr(SchedulerClient, name))


def test_a_spec_subclass_or_one_that_skipped_its_checks_is_built_again_and_refused(world):
    @dataclasses.dataclass(kw_only=True, frozen=True)
    class Sneaky(WorkloadSpec):
        @property
        def tenant_seen(self) -> str:
            return "acme"

    sneaky = Sneaky(name="x", tenant="globex")
    with pytest.raises(ConfigError, match="must be a WorkloadSpec, got Sneaky"):
        world.door.call(world.tokens["acme"], "place", {"spec": sneaky})
    # An unpickled spec never ran __post_init__: the door builds it again, and its checks run.
    bad = WorkloadSpec(name="x", tenant="acme")
    object.__setattr__(bad, "max_workers", -7)
    with pytest.raises(ConfigError, match="max_workers"):
        world.door.call(world.tokens["acme"], "place", {"spec": bad})

    class Str(str):
        pass

    with pytest.raises(ConfigError, match="must be str"):
        world.door.call(world.tokens["acme"], "finish", {"name": Str("x")})
    assert world.scheduler.specs == {}
    # ... and the store reloads (a restarted actor starts): nothing unreadable was written.
    again = open_shell(CONFIG, world.tmp / "sched" / "ledger.sqlite", admin_digest="0" * 64,
                       audit_key_path=world.tmp / "keys" / "audit.key")
    assert again.store.quarantined == []


def test_a_tenant_places_at_most_at_its_priority_ceiling(world):
    acme = world.client("acme")
    with pytest.raises(AccessDenied, match="at most at priority normal"):
        acme.place(WorkloadSpec(name="grab", tenant="acme", priority="critical", max_workers=2))
    world.client("globex").place(WorkloadSpec(name="res", tenant="globex", priority="normal", max_workers=2))
    assert world.scheduler.placement("globex/res").market == "reserved"  # not preempted by acme's critical
    world.client("admin").set_tenant(TenantPolicy(tenant="acme", max_priority="high"))
    assert acme.place(WorkloadSpec(name="urgent", tenant="acme", priority="high")).placed
    with pytest.raises(AccessDenied, match="at most at priority high"):
        acme.place(WorkloadSpec(name="grab", tenant="acme", priority="critical"))
    # An admin may place above a tenant's ceiling.
    assert world.client("admin").place(WorkloadSpec(name="ops", tenant="acme", priority="critical")).placed


def test_a_tenant_attaches_only_what_the_platform_started_for_the_workload(world, tmp_path):
    acme = world.client("acme")
    with pytest.raises(AccessDenied, match="only the platform's own entrypoints"):
        acme.place(WorkloadSpec(name="j", tenant="acme"), attach="deadbeef")  # no way to check here: refused
    with pytest.raises(AccessDenied, match="attaches as its own workload only"):
        acme.place(WorkloadSpec(name="app", tenant="acme", kind="serving"), attach="serve:globex-app")
    assert acme.place(WorkloadSpec(name="app", tenant="acme", kind="serving"), attach="serve:app").placed
    live = {"0a000000": None, "0b000000": "Ray job 0b000000 is not one of the platform's entrypoints"}
    world.door.attach_check = lambda attach, workload: live.get(attach, f"no Ray job {attach} runs on this cluster")
    assert acme.place(WorkloadSpec(name="j", tenant="acme"), attach="0a000000").placed
    for forged, words in (("0b000000", "not one of the platform's"), ("abcdef01", "no Ray job")):
        with pytest.raises(AccessDenied, match=words):
            acme.place(WorkloadSpec(name="k", tenant="acme"), attach=forged)
    assert world.client("admin").place(WorkloadSpec(name="adm", tenant="acme"), attach="abcdef01").placed


def test_the_last_admin_can_never_be_demoted_or_removed(world):
    admin = world.client("admin")
    with pytest.raises(ConfigError, match="last admin"):
        world.door.call(world.tokens["admin"], "add_principal",
                        {"name": "admin", "role": "tenant", "credential_digest": "0" * 64})
    with pytest.raises(ConfigError, match="last admin"):
        admin.remove_principal("admin")
    assert {"name": "admin", "role": "admin"} in admin.list_principals()
    admin.add_principal("second", "admin", world.tmp / "second")
    world.door.call(world.tokens["admin"], "add_principal",
                    {"name": "admin", "role": "tenant", "credential_digest": digest(world.tokens["admin"])})
    assert sum(p["role"] == "admin" for p in list_principals(world.scheduler)) == 1


def test_a_flood_of_refusals_is_one_audit_record_per_burst_with_its_count(world):
    before = len(world.scheduler.audit.records())
    for _ in range(2000):
        with pytest.raises(AccessDenied):
            world.door.call("eml1.nobody.guess", "status", {})
    for _ in range(50):
        with pytest.raises(AccessDenied):
            world.client("acme").finish("globex/x")
    records = world.scheduler.audit.records()[before:]
    assert len(records) == 2  # the first of each burst
    world.burst.t += 11
    world.door.flush_refusals()
    summary = world.scheduler.audit.records()[before + 2:]
    assert sorted((r["who"], r["why"].split(" ")[0]) for r in summary) == [("an unknown caller", "1999"),
                                                                           ("tenant acme", "49")]


def _verify(world):
    tip, last = store_tip(world.tmp / "sched" / "ledger.sqlite")
    return AuditLog.verify(world.tmp / "sched" / "audit.jsonl", world.scheduler.audit.key, tip, last_decision_at=last)


def test_the_audit_tip_is_signed_checked_and_kept_apart_from_its_key(world):
    import sqlite3

    acme = world.client("acme")
    for i in range(3):
        acme.place(WorkloadSpec(name=f"a{i}", tenant="acme"))
    early = world.store.meta("audit_tip")
    for i in range(3, 6):
        acme.place(WorkloadSpec(name=f"a{i}", tenant="acme"))
    assert _verify(world).ok
    assert not (world.tmp / "sched" / "audit.key").exists()  # the key is not beside the trail
    trail = world.tmp / "sched" / "audit.jsonl"
    good = trail.read_bytes()
    db = sqlite3.connect(world.tmp / "sched" / "ledger.sqlite")
    tip_row = db.execute("SELECT value FROM meta WHERE key = 'audit_tip'").fetchone()[0]

    def set_tip(value):
        with db:
            if value is None:
                db.execute("DELETE FROM meta WHERE key = 'audit_tip'")
            else:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('audit_tip', ?)", (json.dumps(value),))

    # Cut the last records and roll the tip back to an older, genuine one: the decisions after it betray it.
    lines = good.splitlines(keepends=True)
    trail.write_bytes(b"".join(lines[:early["seq"]]))
    set_tip(early)
    verdict = _verify(world)
    assert not verdict.ok and "rolled back" in verdict.problem
    trail.write_bytes(good)
    set_tip(None)
    assert "no audit tip" in _verify(world).problem
    set_tip({**json.loads(tip_row), "seq": 2})
    assert "not made with the audit key" in _verify(world).problem
    set_tip(json.loads(tip_row))
    trail.write_bytes(b"".join(lines[:-1]))
    assert "cut off the end" in _verify(world).problem
    trail.write_bytes(good)
    assert _verify(world).ok


def test_a_record_whose_newline_was_stripped_is_kept_and_a_torn_one_is_cut(world):
    world.client("acme").place(WorkloadSpec(name="a", tenant="acme"))
    trail = world.tmp / "sched" / "audit.jsonl"
    whole = trail.read_bytes()
    trail.write_bytes(whole[:-1])  # the acknowledged last record, its newline lost
    reopened = AuditLog(trail, world.scheduler.audit.key)
    assert trail.read_bytes() == whole and reopened.seq == whole.count(b"\n")
    trail.write_bytes(whole + b'{"seq": 99, "half')
    AuditLog(trail, world.scheduler.audit.key)
    assert trail.read_bytes() == whole
    assert _verify(world).ok


def test_a_tenant_reads_its_own_audit_records_only(world):
    world.client("acme").place(WorkloadSpec(name="a", tenant="acme"))
    world.client("globex").place(WorkloadSpec(name="g", tenant="globex"))
    with pytest.raises(AccessDenied):
        world.client("acme").finish("globex/g")
    mine = world.client("acme").audit_records(limit=50)
    assert mine and all(r["tenant"] == "acme" or r["who"] == "tenant acme" for r in mine)
    assert any(r["outcome"] == "denied" for r in mine)
    assert {r["tenant"] for r in world.client("admin").audit_records(limit=50)} >= {"acme", "globex"}


def test_audit_show_escapes_control_characters_a_tenant_wrote(world, tmp_path):
    acme = world.client("acme")
    acme.place(WorkloadSpec(name="app", tenant="acme"))
    forged = "ok\n     99 2026-01-01 00:00:00 admin admin: set_tenant acme [done] - budget 1e9"
    acme.record_event("deploy", "app", forged)
    env = {**os.environ, "ELASTICML_AUDIT_KEY_PATH": str(tmp_path / "keys" / "audit.key")}
    proc = subprocess.run([sys.executable, "-m", "elasticml.cli", "audit", "show", "--ledger",
                           str(tmp_path / "sched" / "ledger.sqlite")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert not any(line.lstrip().startswith("99 ") for line in lines)
    assert any("ok\\n     99" in line for line in lines)


def test_rotating_call_names_or_credentials_buys_no_more_audit_records(world):
    before = len(world.scheduler.audit.records())
    for i in range(200):
        with pytest.raises(AccessDenied):
            world.door.call(world.tokens["acme"], f"r{i}", {})
        with pytest.raises(AccessDenied):
            world.door.call(new_token(f"x{i}"), f"r{i}", {})
    assert len(world.scheduler.audit.records()) - before == 2
    assert len(world.door._bursts) == 2


def test_a_tenant_holds_at_most_its_workload_cap_and_attaches_serve_only_as_serving(world):
    world.client("admin").set_tenant(TenantPolicy(tenant="acme", max_workloads=2))
    acme = world.client("acme")
    for name in ("a", "b"):
        acme.place(WorkloadSpec(name=name, tenant="acme", kind="batch", priority="low"))
    with pytest.raises(AccessDenied, match="max_workloads"):
        acme.place(WorkloadSpec(name="c", tenant="acme"))
    acme.place(WorkloadSpec(name="a", tenant="acme", kind="batch", priority="low", max_workers=2))  # a re-placement
    with pytest.raises(AccessDenied, match="only a serving workload"):
        world.client("globex").place(WorkloadSpec(name="web", tenant="globex", max_workers=2), attach="serve:web")


def test_a_serve_apps_workload_is_not_finished_or_replaced_while_its_replicas_run(world):
    """Its replicas run until the app is deleted: a tenant finishing its workload, or placing something
    else under its name, would stop the charges for them and hand their capacity out again."""
    acme = world.client("acme")
    app = WorkloadSpec(name="chat", tenant="acme", kind="serving", priority="normal", max_workers=1)
    with pytest.raises(AccessDenied, match="attaches as its own workload only"):
        acme.place(app, attach="serve:globex.chat")  # another tenant's app of the same name
    acme.place(app, attach="serve:acme.chat")
    with pytest.raises(AccessDenied, match="ends when the app is deleted"):
        acme.finish("chat")
    with pytest.raises(AccessDenied, match="ends when the app is deleted"):
        acme.place(WorkloadSpec(name="chat", tenant="acme", kind="batch", priority="low"))
    assert acme.place(app, attach="serve:acme.chat").placed  # the app's own rebuild places it again
    world.client("admin").finish("acme/chat")  # the controller (as admin) ends it once the app is gone
    assert acme.placement("chat") is None


def test_an_unforeseen_error_in_a_handler_is_undone_audited_and_told_without_a_trace(world, monkeypatch):
    from elasticml.errors import SchedulerError

    def boom(*args, **kwargs):  # a bug in a command, half-way through its writes
        world.store.set_queue(["ghost"])
        raise KeyError("internal detail")

    monkeypatch.setattr(world.scheduler, "finish", boom)
    world.client("acme").place(WorkloadSpec(name="a", tenant="acme"))
    with pytest.raises(SchedulerError, match="finish failed \\(KeyError\\); it was undone") as err:
        world.client("acme").finish("a")
    assert "internal detail" not in str(err.value) and "ghost" not in world.store.queue
    assert world.scheduler.audit.records()[-1]["outcome"] == "error"


def test_a_cancelled_caller_does_not_stop_the_committer(world):
    import threading
    import time

    from elasticml.scheduler.group_commit import GroupCommit

    committer = GroupCommit(world.store)
    gate = threading.Event()
    slow = committer.submit(lambda: gate.wait(5))
    cancelled = committer.submit(lambda: world.scheduler.status())
    assert cancelled.cancel()
    gate.set()
    slow.result(timeout=10)
    assert committer.run(lambda: "still here") == "still here"
    time.sleep(0.1)


def test_a_tenant_that_understates_its_hours_is_paused_when_its_budget_is_spent(tmp_path):
    """A placement's budget check trusts expected_hours; the controller holds the tenant to what it spent."""
    from tests.support.scheduler import Sched

    clock = Clock(1_000_000.0)
    s = Sched(CONFIG, str(tmp_path / "l.sqlite"), clock=clock)
    s.set_tenant(TenantPolicy(tenant="acme", budget=0.01))
    placed = s.place(WorkloadSpec(name="w", tenant="acme", max_workers=2, expected_hours=1e-6))
    assert placed.placed  # expected to cost nothing
    clock.t += 3600
    s.controller_tick()
    assert s.placement("w").state == "paused" and "over budget" in s.placement("w").reason
    spent = s.cost_report()["total"]["cost"]
    clock.t += 36_000
    s.controller_tick()
    assert s.cost_report()["total"]["cost"] == pytest.approx(spent)  # nothing charged while paused
    s.set_tenant(TenantPolicy(tenant="acme", budget=100.0))  # an admin raises it: the work goes on
    assert s.placement("w").placed


def test_a_serve_attachment_counts_its_own_replicas_only():
    """What the controller charges an app for: its own pinned replicas, never another tenant's app of the
    same name, and an operator's attachment never a tenant's app."""
    from elasticml.scheduler.ray_view import serve_replicas

    tenant_app, operator_app = serve_replicas("serve:acme.chat"), serve_replicas("serve:chat")
    for name, acme, operator in (
            ("ServeReplica:acme.chat:chat-pool-cpu_spot", True, False),
            ("ServeReplica:globex.chat:chat-pool-cpu_spot", False, False),
            ("ServeReplica:placed:chat-pool-cpu_reserved", True, True),  # an operator's deployment of it
            ("ServeReplica:acme.chat:PoolRouter", False, False),
            ("ServeReplica:acme.chatter:chatter-pool-cpu_spot", False, False)):
        assert bool(tenant_app.fullmatch(name)) is acme and bool(operator_app.fullmatch(name)) is operator, name
