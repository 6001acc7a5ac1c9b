"""`elasticml audit`: read and verify the scheduler's tamper-evident audit trail."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from elasticml.cli.options import json_option, name_option


@click.group()
def audit() -> None:
    """The scheduler's audit trail: who did what, when and why; tamper-evident."""


def _audit_files(name: str, ledger: Path | None) -> tuple[Path, Path, Path]:
    from elasticml.home import home
    from elasticml.scheduler.audit import audit_key_path

    folder = ledger.parent if ledger else home() / "scheduler" / name
    return folder / "audit.jsonl", audit_key_path(name), ledger or folder / "ledger.sqlite"


_ledger_option = click.option("--ledger", type=click.Path(path_type=Path, dir_okay=False), default=None,
                              help="The scheduler's ledger (the trail lies beside it) [default: "
                                   "$ELASTICML_HOME/scheduler/NAME/ledger.sqlite]; read on the head, offline. The "
                                   "key is apart: $ELASTICML_AUDIT_KEY_PATH, else $ELASTICML_HOME/credentials/NAME/audit.key.")


@audit.command("show")
@name_option
@_ledger_option
@click.option("--tenant", default=None, help="Only records about this tenant's workloads or by it.")
@click.option("--since", type=float, default=None, help="Only records at or after this Unix time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record, a line each.")
def audit_show(name: str, ledger: Path | None, tenant: str | None, since: float | None, as_json: bool) -> None:
    """The audit trail, oldest first."""
    trail, _, _ = _audit_files(name, ledger)
    from elasticml.scheduler.audit import escape_controls, read_records

    for r in read_records(trail):
        if tenant is not None and r.get("tenant") != tenant and r.get("who") != f"tenant {tenant}":
            continue
        if since is not None and r.get("at", 0) < since:
            continue
        if as_json:
            click.echo(json.dumps(r, sort_keys=True))
            continue
        at = r.get("at", 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at if type(at) in (int, float) else 0))
        # Every field a caller wrote is shown with its control characters escaped: a newline in a
        # reason must not print a forged record below it.
        e = {k: escape_controls(str(r.get(k))) for k in ("seq", "who", "action", "target", "outcome", "why")}
        target = f" {e['target']}" if r.get("target") else ""
        click.echo(f"{e['seq']:>6} {when} {e['who']}: {e['action']}{target} [{e['outcome']}]"
                   + (f" - {e['why']}" if r.get("why") else ""))


@audit.command("verify")
@name_option
@_ledger_option
@json_option
def audit_verify(name: str, ledger: Path | None, as_json: bool) -> None:
    """Exit 0 when the trail is intact; 1, naming the first bad record, when it was edited, cut or reordered."""
    from elasticml.scheduler.audit import AuditLog, load_key, store_tip

    trail, key_file, ledger_file = _audit_files(name, ledger)
    if not key_file.exists():
        raise click.ClickException(f"no audit key at {key_file}: run this on the scheduler's head, or set "
                                   "ELASTICML_AUDIT_KEY_PATH to where the key is kept")
    tip, last = store_tip(ledger_file)
    verdict = AuditLog.verify(trail, load_key(key_file), tip, last_decision_at=last)
    if as_json:
        click.echo(json.dumps({"intact": verdict.ok, "records": verdict.records, "problem": verdict.problem,
                               "after_tip": verdict.after_tip}))
        sys.exit(0 if verdict.ok else 1)
    if verdict.ok:
        extra = (f"; {verdict.after_tip} record(s) after it, of a command that did not commit (a crash) or "
                 "one under way") if verdict.after_tip else ""
        click.echo(f"intact: {verdict.records} records, chained and signed, reaching the store's signed tip{extra}")
        return
    click.echo(f"NOT intact after {verdict.records} good records: {verdict.problem}", err=True)
    sys.exit(1)
