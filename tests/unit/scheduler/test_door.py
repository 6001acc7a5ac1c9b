"""The scheduler's door without Ray: identities, roles, ownership, and the audit trail of every change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from elasticml.cluster.config import load_cluster_spec
from elasticml.errors import AccessDenied, AuthError, ConfigError
from elasticml.scheduler.audit import AuditLog
from elasticml.scheduler.principals import add_principal
from elasticml.scheduler.identity import digest, new_token, read_credential, verify, write_credential
from elasticml.scheduler.requests import ROUTES
from elasticml.scheduler.shell import open_shell
from elasticml.scheduler.spec import TenantPolicy, WorkloadSpec
from tests.support.scheduler import Sched as SchedulerState

REPO = Path(__file__).resolve().parents[3]
CONFIG = load_cluster_spec(REPO / "cluster_configs" / "local.yaml")


class Ticks:
    """The door's burst clock: each reading a burst later than the last, unless held."""

    def __init__(self) -> None:
        self.t, self.step = 0.0, 100.0

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.fixture
def door(tmp_path):
    tokens = {name: new_token(name) for name in ("admin", "acme", "globex", "watcher")}
    shell = open_shell(CONFIG, tmp_path / "ledger.sqlite", admin_digest=digest(tokens["admin"]),
                       audit_key_path=tmp_path / "keys" / "audit.key")
    state = shell.scheduler
    for name, role in (("acme", "tenant"), ("globex", "tenant"), ("watcher", "agent")):
        add_principal(state, name, role, digest(tokens[name]))
    d = shell.door
    d._clock = Ticks()
    d.state, d.tokens, d.tmp, d.key = state, tokens, tmp_path, state.audit.key  # type: ignore[attr-defined]
    return d


def wire(method: str, args: tuple) -> dict:
    """Positional arguments as the route's request fields, in their declared order."""
    if method not in ROUTES:
        return {}
    from dataclasses import fields

    return dict(zip([f.name for f in fields(ROUTES[method].request)], args))


def call(door, who: str, method: str, *args):
    return door.call(door.tokens[who], method, wire(method, args))


def job(name: str, tenant: str, **kw) -> WorkloadSpec:
    return WorkloadSpec(name=name, tenant=tenant, max_workers=1, **kw)


def audit(door) -> list[dict]:
    return door.state.audit.records()


def test_a_tenant_acts_on_its_own_workloads_and_every_cross_tenant_action_is_refused_and_audited(door):
    assert call(door, "globex", "place", job("b-train", "globex")).workload == "globex/b-train"
    assert call(door, "acme", "place", job("a-train", "acme")).placed
    hostile = [
        ("place", (job("c-train", "globex"),), "its own workloads only"),  # act as another tenant
        ("finish", ("b-train",), "its own workloads only"),  # acme's b-train: there is none
        ("finish", ("globex/b-train",), "its own workloads only"),  # naming into globex's namespace
        ("placement", ("b-train",), "its own workloads only"),
        ("explain", ("globex/b-train",), "its own workloads only"),
        ("intervals", ("b-train",), "its own workloads only"),
        ("report_progress", ("globex/b-train", 1.0), "its own workloads only"),
        ("explain", ("_events",), "for an admin"),
        ("set_tenant", (TenantPolicy(tenant="globex", budget=0.0),), "only an admin"),
        ("set_tenant", (TenantPolicy(tenant="acme", budget=1e9),), "only an admin"),
        ("interrupt", ("cpu_spot",), "only an admin or a node agent"),
        ("interrupt", ("cpu_reserved",), "only an admin or a node agent"),
        ("add_principal", ("mallory", "admin", "0" * 64), "only an admin"),
        ("tick", (), "only an admin"),
        ("ledger", (), "no such call"),
        ("_apply", ([],), "no such call"),
    ]
    for method, args, words in hostile:
        with pytest.raises(AccessDenied, match=words):
            door.call(door.tokens["acme"], method, wire(method, args))
    assert door.state.placement("globex/b-train").placed and "globex/b-train" in door.state.specs  # untouched
    denied = [r for r in audit(door) if r["outcome"] == "denied"]
    assert [(r["action"], r["who"]) for r in denied] == [(m, "tenant acme") for m, _, _ in hostile]
    assert all(r["why"] for r in denied)
    with pytest.raises(ConfigError, match="tenant's, acme/"):  # a spec cannot name into another namespace
        call(door, "acme", "place", job("globex/b-train", "acme"))
    # Names are scoped: acme's own b-train is another workload, and globex's is untouched by it.
    assert call(door, "acme", "place", job("b-train", "acme")).workload == "acme/b-train"
    assert call(door, "acme", "finish", "b-train") is None
    assert "globex/b-train" in door.state.allocations and "acme/b-train" not in door.state.specs
    # What a tenant reads is its own.
    status = call(door, "acme", "status")
    assert set(status["running"]) == {"acme/a-train"}
    costs = call(door, "acme", "cost_report")
    assert [r["key"] for r in costs["tenant"]] == ["acme"] and {r["key"] for r in costs["workload"]} == {"acme/a-train", "acme/b-train"}
    assert call(door, "acme", "placement", "a-train").workload == "acme/a-train"
    assert call(door, "acme", "finish", "a-train") is None


def test_a_workload_an_admin_placed_for_a_tenant_is_the_tenants_by_its_bare_name(door):
    call(door, "admin", "place", job("shared-eval", "acme"))
    assert call(door, "acme", "placement", "shared-eval").workload == "shared-eval"
    with pytest.raises(AccessDenied, match="its own workloads only"):
        call(door, "globex", "finish", "shared-eval")
    assert call(door, "acme", "finish", "shared-eval") is None


def test_unknown_forged_or_malformed_credentials_are_refused_and_audited(door):
    admin = door.tokens["admin"]
    forged = admin[:-4] + ("aaaa" if not admin.endswith("aaaa") else "bbbb")
    for token in (None, "", "eml1.admin", forged, new_token("admin"), new_token("nobody"), 42, "x" * 10_000):
        with pytest.raises(AccessDenied, match="not recognised"):
            door.call(token, "status", {})
    assert sum(r["outcome"] == "denied" and r["who"] == "an unknown caller" for r in audit(door)) == 8
    with pytest.raises(ConfigError, match="method"):
        door.call(admin, 12, {})
    with pytest.raises(ConfigError, match="args"):
        door.call(admin, "status", ["not", "a", "tuple"])


def test_an_agent_signals_spot_pools_only_and_sees_only_pools(door):
    call(door, "acme", "place", job("a-train", "acme"))
    assert call(door, "watcher", "interrupt", "cpu_spot")["decisions"] is not None
    with pytest.raises(ConfigError, match="only spot pools"):
        call(door, "watcher", "interrupt", "cpu_reserved")  # a non-spot pool is never 'preempted'
    for method, args in (("finish", ("a-train",)), ("place", (job("w", "acme"),)), ("cost_report", ()),
                         ("set_tenant", (TenantPolicy(tenant="acme", budget=0.0),))):
        with pytest.raises(AccessDenied):
            door.call(door.tokens["watcher"], method, wire(method, args))
    assert set(call(door, "watcher", "status")) == {"cluster", "pools", "market_hour"}
    done = [r for r in audit(door) if r["outcome"] == "done" and r["action"] == "interrupt"]
    assert done and done[0]["who"] == "agent watcher" and done[0]["target"] == "cpu_spot"


def test_every_change_is_audited_with_who_what_and_why(door):
    call(door, "admin", "set_tenant", TenantPolicy(tenant="acme", budget=50.0))
    call(door, "acme", "place", job("a-train", "acme"))
    call(door, "admin", "interrupt", "cpu_spot")
    call(door, "acme", "finish", "a-train")
    call(door, "admin", "add_principal", "initech", "tenant", digest(new_token("initech")))
    call(door, "admin", "remove_principal", "initech")
    records = audit(door)
    actions = [(r["who"], r["action"], r["target"]) for r in records]
    assert ("admin admin", "set_tenant", "acme") in actions
    assert ("tenant acme", "place", "acme/a-train") in actions  # the placement decision, by its caller
    assert ("admin admin", "interrupt", "cpu_spot") in actions
    assert ("tenant acme", "finish", "acme/a-train") in actions
    assert ("admin admin", "add_principal", "initech") in actions and ("admin admin", "remove_principal", "initech") in actions
    place = next(r for r in records if r["action"] == "place")
    assert place["tenant"] == "acme" and place["why"]
    assert AuditLog.verify(door.tmp / "audit.jsonl", door.key, _tip(door)).ok
    with pytest.raises(ConfigError, match="last admin"):
        call(door, "admin", "remove_principal", "admin")


def _tip(door) -> dict:
    return door.state.store.meta("audit_tip")


def test_verify_finds_an_edit_a_reorder_an_insert_and_a_cut(door):
    for i in range(4):
        call(door, "acme", "place", job(f"a{i}", "acme"))
    path, key, tip = door.tmp / "audit.jsonl", door.key, _tip(door)
    good = path.read_bytes()
    lines = good.splitlines(keepends=True)
    assert AuditLog.verify(path, key, tip).ok and len(lines) >= 4

    def check(data: bytes, words: str) -> None:
        path.write_bytes(data)
        verdict = AuditLog.verify(path, key, tip)
        assert not verdict.ok and words in verdict.problem, verdict

    edited = lines[1].replace(b"tenant acme", b"tenant globe")
    check(b"".join([lines[0], edited, *lines[2:]]), "record 2")
    check(b"".join([lines[0], lines[2], lines[1], *lines[3:]]), "record 2")
    check(b"".join([lines[0], lines[1], lines[1], *lines[2:]]), "record 3")
    check(b"".join(lines[:-1]), "cut off the end")
    check(b"", "cut off the end")
    path.write_bytes(good)
    assert AuditLog.verify(path, key, tip).ok
    assert not AuditLog.verify(path, b"another key" * 3, tip).ok  # a chain written without the key


def test_a_torn_last_line_is_cut_when_the_log_reopens_and_the_chain_goes_on(door):
    call(door, "acme", "place", job("a0", "acme"))
    path = door.tmp / "audit.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"seq": 99, "half a rec')  # a crash in the middle of a write (never acknowledged)
    log = AuditLog(path, door.key)
    log.append(at=1.0, who="admin admin", action="test")
    assert AuditLog.verify(path, door.key, _tip(door)).ok


def test_credential_files_are_private_and_never_echoed(tmp_path):
    token = new_token("acme")
    path = write_credential(tmp_path / "acme", token)
    assert os.stat(path).st_mode & 0o777 == 0o600 and read_credential(path) == token
    os.chmod(path, 0o644)
    with pytest.raises(AuthError, match="readable by others") as err:
        read_credential(path)
    assert token not in str(err.value)
    (tmp_path / "junk").write_text("hello")
    os.chmod(tmp_path / "junk", 0o600)
    with pytest.raises(AuthError, match="does not hold"):
        read_credential(tmp_path / "junk")
    assert verify(token, {"acme": ("tenant", digest(token))}).role == "tenant"
    assert verify(token, {"acme": ("tenant", digest("other"))}) is None


def test_residency_is_the_tenants_and_a_spec_cannot_widen_it(door):
    from elasticml.errors import PlacementRefused

    call(door, "admin", "set_tenant", TenantPolicy(tenant="acme", regions=("me-central-1",)))
    with pytest.raises(PlacementRefused, match="kept to"):
        call(door, "acme", "place", WorkloadSpec(name="a1", tenant="acme", max_workers=1, regions=("us-east-1",)))
    # With no regions in the spec the tenant's apply: the local pools are in no UAE region, so it is refused.
    with pytest.raises(PlacementRefused, match="data residency"):
        call(door, "acme", "place", job("a2", "acme"))
    with pytest.raises(PlacementRefused, match="is in eu-west-1"):
        call(door, "acme", "check_residency", "acme", "eu-west-1", "s3://eu-bucket/runs")
    assert call(door, "acme", "check_residency", "acme", "me-central-1", "s3://uae-bucket/runs") is None
    with pytest.raises(AccessDenied, match="its own residency"):
        call(door, "globex", "check_residency", "acme", "me-central-1")
    failed = [r for r in audit(door) if r["outcome"] == "failed"]
    assert [r["action"] for r in failed] == ["place", "place", "check_residency"]
    assert all("residency" in r["why"] for r in failed)
    again = SchedulerState(CONFIG, str(door.tmp / "ledger.sqlite"))  # the tenant's regions persist
    assert again.tenants.of("acme").regions == ("me-central-1",)
