"""The audit trail: an append-only, tamper-evident log of who did what to the scheduler, and why.

One JSON record a line, each with its sequence number and an HMAC-SHA256 (the cluster's audit
key) over the previous record's MAC and its own content: editing, removing, inserting or
reordering a record breaks the chain from there on, and nobody without the key can mend it.
The last record's sequence and MAC are also kept in the scheduler's ledger (`tip`), so cutting
records off the end is caught too. Each append is written and fsynced before the action it
records is answered, so an acknowledged record survives an actor kill or a crash; a crash in
the middle of a write leaves at most a torn last line, which was never acknowledged and is cut
off when the log is next opened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elasticml.atomic import write_atomic
from elasticml.errors import AuditError

MAX_TEXT = 500
"""Longest `why` kept a record (a reason, never an input echoed whole)."""
GENESIS = "0" * 64


def load_key(path: Path) -> bytes:
    """The cluster's audit key (32 random bytes, hex, mode 0600), made on first use."""
    if not path.exists():
        write_atomic(path, secrets.token_hex(32), mode=0o600)
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the audit key {path}: {type(exc).__name__}") from None


def _mac(key: bytes, prev: str, body: dict[str, Any]) -> str:
    content = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hmac.new(key, (prev + content).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int
    problem: str | None = None
    """What is wrong and where (the first bad record's line), when not ok."""


class AuditLog:
    def __init__(self, path: str | Path, key: bytes) -> None:
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()
        self.seq, self.mac = 0, GENESIS
        for record in self.records():  # an unreadable (tampered) line is for `verify` to report
            if type(record.get("seq")) is int and type(record.get("mac")) is str:
                self.seq, self.mac = record["seq"], record["mac"]

    def _cut_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, *, at: float, who: str, action: str, target: str | None = None, why: str = "",
               tenant: str | None = None, outcome: str = "done") -> dict[str, Any]:
        body = {"seq": self.seq + 1, "at": round(float(at), 6), "who": who[:80], "action": action[:40],
                "target": None if target is None else str(target)[:80], "tenant": tenant,
                "outcome": outcome[:20], "why": str(why)[:MAX_TEXT], "prev": self.mac}
        record = {**body, "mac": _mac(self.key, self.mac, body)}
        line = (json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"cannot append to the audit trail {self.path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        self.seq, self.mac = record["seq"], record["mac"]
        return record

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)

    @staticmethod
    def verify(path: str | Path, key: bytes, tip: tuple[int, str] | None = None) -> Verdict:
        """Whether every record is the one the chain says, in order, and the last is `tip` (when known)."""
        file = Path(path)
        if not file.exists():
            return Verdict(tip is None or tip[0] == 0, 0, None if tip is None or tip[0] == 0 else
                           f"the audit trail {file} is missing; the ledger says it held {tip[0]} records")
        prev, n = GENESIS, 0
        raw = file.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
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
        if tip is not None and (n, prev) != (tip[0], tip[1] if tip[0] else GENESIS):
            return Verdict(False, n, f"the trail ends at record {n} but the ledger says it ends at record {tip[0]}: "
                                     "records were cut off the end (or the trail was replaced)")
        return Verdict(True, n)


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


def ledger_tip(ledger: str | Path) -> tuple[int, str] | None:
    """The (seq, mac) the scheduler last wrote to its ledger, read without changing the file."""
    import sqlite3

    file = Path(ledger)
    if not file.exists():
        return None
    db = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM state WHERE key = 'audit_tip'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    if row is None:
        return None
    seq, mac = json.loads(row[0])
    return int(seq), str(mac)
