"""The one maker and reader of secret files: made once and kept, read with the same checks everywhere."""

from __future__ import annotations

import stat

import pytest

from elasticml.errors import AuditError, CheckpointError
from elasticml.scheduler.audit import load_key
from elasticml.secret_file import MAX_BYTES, make_secret, read_secret


def test_a_secret_is_made_once_private_and_random_and_never_replaced(tmp_path):
    a, b = make_secret(tmp_path / "a.key"), make_secret(tmp_path / "b.key")
    assert stat.S_IMODE(a.stat().st_mode) == 0o600 and a.read_text() != b.read_text()
    first = a.read_text()
    make_secret(a)
    assert a.read_text() == first
    assert len(read_secret(a, what="the key", error=CheckpointError, min_bytes=32)) == 32


@pytest.mark.parametrize("content, mode, words", [
    (None, 0o600, "does not exist"),
    ("ab" * 32, 0o644, "readable by others"),
    ("", 0o600, "not 32 or more bytes"),
    ("zz" * 32, 0o600, "not 32 or more bytes"),
    ("ab" * 8, 0o600, "not 32 or more bytes"),
    ("ab" * (MAX_BYTES // 2 + 1), 0o600, "not 32 or more bytes"),
    (b"\xff\xfe" * 40, 0o600, "not 32 or more bytes"),
])
def test_a_secret_that_is_missing_exposed_short_or_not_hex_is_refused_naming_the_file(tmp_path, content, mode, words):
    path = tmp_path / "k.key"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        path.chmod(mode)
    with pytest.raises(AuditError) as err:
        read_secret(path, what="the audit key", error=AuditError, min_bytes=32)
    assert words in str(err.value) and str(path) in str(err.value) and "ab" * 8 not in str(err.value)


def test_the_audit_key_is_made_on_first_use_and_refused_when_others_may_read_it(tmp_path):
    key = load_key(tmp_path / "audit.key")
    assert load_key(tmp_path / "audit.key") == key and len(key) == 32
    (tmp_path / "audit.key").chmod(0o640)
    with pytest.raises(AuditError, match="readable by others"):
        load_key(tmp_path / "audit.key")
