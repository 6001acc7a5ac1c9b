"""Small files replaced atomically, on disk and on the S3 protocol."""

import os

import boto3
import pytest

from elasticml.storage import exists, read_text, write_text_atomic


def test_a_local_file_is_replaced_whole_and_leaves_no_temporary_behind(tmp_path):
    target = tmp_path / "deep" / "verdict.json"
    assert not exists(str(target))
    write_text_atomic(str(target), "first")
    write_text_atomic(str(target), "second")
    assert exists(str(target)) and read_text(str(target)) == "second"
    assert [p.name for p in target.parent.iterdir()] == ["verdict.json"]


def test_a_write_that_fails_before_the_rename_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "verdict.json"
    write_text_atomic(str(target), "old")

    def crash(*args):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        write_text_atomic(str(target), "new")
    assert read_text(str(target)) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["verdict.json"]


@pytest.mark.integration
def test_a_file_on_s3_is_written_and_replaced(s3_env):
    boto3.client("s3", endpoint_url=s3_env["ELASTICML_S3_ENDPOINT"]).create_bucket(Bucket="verdicts")
    uri = "s3://verdicts/canary/completion.json"
    assert not exists(uri)
    write_text_atomic(uri, '{"state": "rolled_back"}')
    write_text_atomic(uri, '{"state": "promoted"}')
    assert exists(uri) and read_text(uri) == '{"state": "promoted"}'


def test_write_atomic_keeps_the_mode_and_leaves_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    import os
    import stat

    from elasticml.atomic import write_atomic

    target = tmp_path / "secret"
    write_atomic(target, "one", mode=0o600)
    assert target.read_text() == "one" and stat.S_IMODE(target.stat().st_mode) == 0o600

    def crash(src, dst):  # type: ignore[no-untyped-def]
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(target, "two")
    assert target.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["secret"]
