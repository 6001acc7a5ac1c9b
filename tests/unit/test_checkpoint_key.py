"""The checkpoint key: made in one place, once, private; handed by the local cluster to its nodes and clients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from elasticml.checkpoint_key import KEY_ENV, checkpoint_key, cluster_key_path, make_cluster_key
from elasticml.errors import CheckpointError
from elasticml.home import home


def test_the_cluster_key_is_made_once_private_beside_the_clusters_credentials():
    path = make_cluster_key("keyed")
    assert path == home() / "credentials" / "keyed" / "checkpoint.key" == cluster_key_path("keyed")
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_text()
    assert len(bytes.fromhex(first.strip())) == 32
    assert make_cluster_key("keyed") == path and path.read_text() == first  # a second `up` keeps it


def test_only_the_variable_finds_the_key(monkeypatch):
    """No default location: a key lying in $ELASTICML_HOME is not used unless the variable names it."""
    path = make_cluster_key("found")
    monkeypatch.setenv(KEY_ENV, str(path))
    assert checkpoint_key() == bytes.fromhex(path.read_text())
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(CheckpointError, match="no checkpoint key"):
        checkpoint_key()


def test_the_local_cluster_hands_its_key_to_every_node_and_to_its_clients(tmp_path, monkeypatch):
    from elasticml.cluster.local import ClusterInfo, _head_env

    key = make_cluster_key("elasticml-local")
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "some-other.key"))  # whatever the caller's shell named
    env = _head_env(tmp_path / "auth_token", key)
    assert env[KEY_ENV] == str(key)  # the head's, so every node's, job's and replica's
    fields = dict(name="c", pid=1, create_time=0.0, gcs_address="127.0.0.1:1", dashboard_url="http://127.0.0.1:2",
                  token_path=str(tmp_path / "auth_token"), config_path="x", ray_temp_dir="y", log_path="z",
                  started_at=0.0)
    assert ClusterInfo(**fields, checkpoint_key_path=str(key)).client_env()[KEY_ENV] == str(key)
    assert KEY_ENV not in ClusterInfo(**fields).client_env()  # the state of a cluster started before keys


def test_cluster_env_prints_the_key_for_a_shell(tmp_path):
    """`eval "$(elasticml cluster env)"` is how a shell on this machine gets the key (the errors say so)."""
    import json
    import subprocess
    import sys

    from elasticml.cluster.local import STATE_FILE

    env = {**os.environ, "ELASTICML_HOME": str(tmp_path)}
    env.pop(KEY_ENV)
    state = tmp_path / "clusters" / "up" / STATE_FILE
    state.parent.mkdir(parents=True)
    import psutil

    me = psutil.Process()
    key = tmp_path / "credentials" / "elasticml-local" / "checkpoint.key"
    state.write_text(json.dumps(dict(name="up", pid=me.pid, create_time=me.create_time(), gcs_address="127.0.0.1:1",
                                     dashboard_url="http://127.0.0.1:2", token_path="t", config_path="c",
                                     ray_temp_dir="r", log_path="l", started_at=0.0, checkpoint_key_path=str(key))))
    out = subprocess.run([str(Path(sys.executable).with_name("elasticml")), "cluster", "env", "--name", "up"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert f"export {KEY_ENV}={key}" in out.stdout.splitlines()
