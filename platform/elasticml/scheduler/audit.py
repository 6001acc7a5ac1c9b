"""The audit trail: an append-only, tamper-evident log of who did what to the scheduler, and why.

One JSON record a line, each with its sequence number and an HMAC-SHA256 (the cluster's audit
key) over the previous record's MAC and its own content: editing, removing, inserting or
reordering a record breaks the chain from there on, and nobody without the key can mend it.

The tip: the last record's sequence, MAC and clock time, authenticated with the same key, is
committed in the scheduler's store with the command that wrote the records. `verify` needs
it: a missing tip, one not made with the key, one the trail does not reach (records cut off
the end) or one older than the store's last recorded decision (a tip rolled back) fails.
Records after the tip are a command's whose commit did not happen (a crash between the
trail's fsync and the store's commit): over-recorded, never lost.

A command's records are written in one append and fsynced before the command commits and
is answered, so an acknowledged record survives an actor kill or a crash. A crash in the
middle of a write leaves at most a torn last line: cut when the log is next opened, unless
it is a complete record that verifies (only its newline missing), which is kept.

The key (`audit_key_path`) lives apart from the trail and the store: with the credentials,
or where `ELASTICML_AUDIT_KEY_PATH` says. Whoever can write both the trail and the key can
rewrite history. Whoever can write the trail and the store, without the key, can still put
back an earlier trail with the genuine tip it had: `verify` catches that only when the store
holds decisions after that tip (a changed principal or tenant policy writes none). So an
operator who must prove the trail ships it off the host as it grows (e.g. `aws s3 cp` to a
bucket with S3 Object Lock in compliance mode) and checks copies with `elasticml audit verify`:
a later copy that is shorter than an earlier one is the rollback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elasticml.errors import AuditError

MAX_TEXT = 500
"""Longest `why` kept a record (a reason, never an input echoed whole)."""
GENESIS = "0" * 64


def load_key(path: Path) -> bytes:
    """The cluster's audit key (32 random bytes, hex, mode 0600), made on first use."""
    from elasticml.secret_file import make_secret, read_secret

    return read_secret(make_secret(path), what="the audit key", error=AuditError, min_bytes=32)


KEY_ENV = "ELASTICML_AUDIT_KEY_PATH"


def audit_key_path(cluster: str) -> Path:
    """Where the audit key of the scheduler whose folder is `$ELASTICML_HOME/scheduler/CLUSTER` lives:
    $ELASTICML_AUDIT_KEY_PATH, else with the credentials (never in that folder, beside the trail it signs)."""
    from elasticml.scheduler.identity import credentials_dir

    return Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else credentials_dir(cluster) / "audit.key"


def _tip_tag(key: bytes, seq: int, mac: str, at: float) -> str:
    return hmac.new(key, f"tip|{seq}|{mac}|{at!r}".encode(), hashlib.sha256).hexdigest()


def _mac(key: bytes, prev: str, body: dict[str, Any]) -> str:
    content = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, (prev + content).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    problem: str | None = None
    """What is wrong and where (the first bad record's line), when not ok."""
    after_tip: int = 0
    """Records after the store's tip: a command's that did not commit (a crash), or one under way."""


class AuditLog:
    def __init__(self, path: str | Path, key: bytes) -> None:
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self.seq, self.mac, self.at = 0, GENESIS, 0.0
        for record in self.records():  # an unreadable (tampered) line is for `verify` to report
            if type(record.get("seq")) is int and type(record.get("mac")) is str:
                self.seq, self.mac, self.at = record["seq"], record["mac"], float(record.get("at", 0.0))

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as fh:
            if self._complete(data[:start], data[start:]):
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")  # a whole record whose newline was lost: it was acknowledged, keep it
            else:
                fh.truncate(start)
            fh.flush()
            os.fsync(fh.fileno())

    def _complete(self, before: bytes, last: bytes) -> bool:
        """Whether `last` is the record the chain expects after `before`."""
        prev, seq = GENESIS, 0
        lines = before.split(b"\n")[:-1]
        if lines:
            try:
                tail = json.loads(lines[-1])
                prev, seq = str(tail["mac"]), int(tail["seq"])
            except (ValueError, KeyError, TypeError):
                return False
        try:
            record = json.loads(last)
            body = {k: v for k, v in record.items() if k != "mac"}
            return (record.get("seq") == seq + 1 and record.get("prev") == prev
                    and hmac.compare_digest(str(record.get("mac", "")), _mac(self.key, prev, body)))
        except (ValueError, AttributeError, TypeError):
            return False

    def append(self, *, at: float, who: str, action: str, target: str | None = None, why: str = "",
               tenant: str | None = None, outcome: str = "done") -> dict[str, Any]:
        return self.append_many([{"at": at, "who": who, "action": action, "target": target, "why": why,
                                  "tenant": tenant, "outcome": outcome}])[-1]

    def append_many(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chain the entries (at, who, action, target, why, tenant, outcome) and write them in one
        append and one fsync."""
        seq, mac, at = self.seq, self.mac, self.at
        records, lines = [], []
        for e in entries:
            at = round(float(e["at"]), 6)
            body = {"seq": seq + 1, "at": at, "who": str(e["who"])[:80], "action": str(e["action"])[:40],
                    "target": None if e.get("target") is None else str(e["target"])[:80], "tenant": e.get("tenant"),
                    "outcome": str(e.get("outcome", "done"))[:20], "why": str(e.get("why", ""))[:MAX_TEXT], "prev": mac}
            new_mac = _mac(self.key, mac, body)
            record = {**body, "mac": new_mac}
            records.append(record)
            lines.append(json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n")
            seq, mac = seq + 1, new_mac
        if not records:
            return []
        data = "".join(lines).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):  # a short write (a full disk) is finished or undone, never left torn
                done += os.write(fd, data[done:])
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)  # the batch is not committed: its records must not stay half written
                os.fsync(fd)
            except OSError:
                pass
            raise AuditError(f"cannot append to the audit trail {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        self.seq, self.mac, self.at = seq, mac, at
        return records

    def tip(self) -> dict[str, Any]:
        """The last record's (seq, mac, at), authenticated: what the store commits with the command."""
        return {"seq": self.seq, "mac": self.mac, "at": self.at, "tag": _tip_tag(self.key, self.seq, self.mac, self.at)}

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)

    @staticmethod
    def verify(path: str | Path, key: bytes, tip: Any, *, last_decision_at: float | None = None) -> Verdict:
        """Whether every record is the one the chain says, in order, and `tip` (the store's, see the
        module's docstring) is authentic, reached by the trail and no older than `last_decision_at`."""
        file = Path(path)
        raw = file.read_bytes() if file.exists() else b""
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        prev, n = GENESIS, 0
        macs = [GENESIS]
        for i, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                body = {k: v for k, v in record.items() if k != "mac"}
                good = (isinstance(record, dict) and record.get("seq") == n + 1 and record.get("prev") == prev
                        and hmac.compare_digest(str(record.get("mac", "")), _mac(key, prev, body)))
            except (ValueError, AttributeError, TypeError):
                good = False
            if not good:
                return Verdict(False, n, f"record {i} (line {i}) is not the one the chain expects: edited, "
                                         "inserted, reordered or written without the audit key")
            prev, n = record["mac"], n + 1
            macs.append(prev)
        if tip is None:
            if n == 0 and last_decision_at is None:
                return Verdict(True, 0)
            return Verdict(False, n, "the store holds no audit tip: it was deleted (or this is not the trail's store)")
        if not (isinstance(tip, dict) and type(tip.get("seq")) is int and type(tip.get("mac")) is str
                and type(tip.get("at")) in (int, float) and type(tip.get("tag")) is str):
            return Verdict(False, n, "the store's audit tip is not an authenticated tip (forged, or written before "
                                     "tips were signed: start the scheduler once to sign it)")
        if not hmac.compare_digest(tip["tag"], _tip_tag(key, tip["seq"], tip["mac"], tip["at"])):
            return Verdict(False, n, "the store's audit tip was not made with the audit key: it was forged or edited")
        if tip["seq"] > n or macs[tip["seq"]] != tip["mac"]:
            return Verdict(False, n, f"the trail holds {n} records but the store's tip is record {tip['seq']}: "
                                     "records were cut off the end (or the trail was replaced)")
        if last_decision_at is not None and last_decision_at > tip["at"] + 1e-6:
            return Verdict(False, n, f"the store's audit tip (record {tip['seq']}) is older than its last decision: "
                                     "the tip was rolled back")
        return Verdict(True, n, None, n - tip["seq"])


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The trail's records as written (for showing; `AuditLog.verify` says whether to trust them)."""
    file = Path(path)
    if not file.exists():
        return []
    out = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        out.append(record if isinstance(record, dict) else {"unreadable": line[:200]})
    return out


def store_tip(ledger: str | Path) -> tuple[Any, float | None]:
    """(the audit tip the scheduler last committed, the clock time of its last decision), read from
    its store without changing the file; (None, None) when there is no store."""
    import sqlite3

    file = Path(ledger)
    if not file.exists():
        return None, None
    db = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'audit_tip'").fetchone()
        elif "state" in tables:
            row = db.execute("SELECT value FROM state WHERE key = 'audit_tip'").fetchone()
        else:
            row = None
        last = None
        if "reasons" in tables:
            ats = [json.loads(b).get("at") for (b,) in db.execute(
                "SELECT body FROM reasons WHERE id IN (SELECT MAX(id) FROM reasons GROUP BY workload)")]
            last = max((a for a in ats if type(a) in (int, float)), default=None)
    except sqlite3.Error:
        return None, None
    finally:
        db.close()
    return (None if row is None else json.loads(row[0])), last


def escape_controls(text: str) -> str:
    """`text` with every control character shown as an escape, so a record cannot forge lines."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)
