"""The cluster's checkpoint key: where it lives, who makes it, how every node finds it.

Every checkpoint's manifest carries an HMAC-SHA256 under this key (`elasticml.train.checkpoint`);
a folder without a valid one is not a checkpoint. Who owns what:

- One key per cluster, made once on the launching machine, in the cluster's credentials folder
  beside the node agents' credential and the Ray TLS CA:
  `$ELASTICML_HOME/credentials/<cluster>/checkpoint.key` (64 hex digits, mode 0600), named by the
  launcher's `cluster_name` (`elasticml-local` for every local cluster of this machine). Only
  `make_cluster_key` writes it, and only `elasticml cluster up` (a local cluster) and
  `elasticml cluster credentials` (before `ray up`, or before making the KubeRay Secret) call it.
- A process finds the key through `$ELASTICML_CHECKPOINT_KEY_PATH` and nothing else. The local
  cluster sets it for its head, so for every node, job and replica, and for its clients
  (`elasticml cluster env`, `ClusterInfo.connect`); the AWS launcher mounts the file on every node
  and sets the variable for Ray there; on KubeRay the Secret `elasticml-<cluster>-checkpoint-key`
  is mounted read-only in every Ray pod and the variable points at it.
- Without the key, reading, verifying, loading, signing and writing all fail (CheckpointError,
  saying how to provide it). Before, a node without one skipped the MAC check and a writer made a
  key of its own wherever it ran: a node that cannot check must not trust, and one that signs with a
  key nobody else has makes checkpoints nobody else can load.
"""

from __future__ import annotations

import os
from pathlib import Path

from elasticml.errors import CheckpointError
from elasticml.secret_file import make_secret

KEY_ENV = "ELASTICML_CHECKPOINT_KEY_PATH"
KEY_FILE = "checkpoint.key"
MIN_KEY_BYTES = 32
"""What `make_cluster_key` makes; a shorter key (an empty file mounted by mistake) is refused."""
MAX_KEY_FILE = 4096

HOW = (f"the platform makes the key on the launching machine at $ELASTICML_HOME/credentials/<cluster>/{KEY_FILE} "
       "(`elasticml cluster up`, or `elasticml cluster credentials <cluster>` before `ray up` or the KubeRay Secret) "
       f"and sets {KEY_ENV} on every node; in a shell, `eval \"$(elasticml cluster env)\"` sets it for a local cluster")
"""How to provide the key, in every message that asks for it."""


def cluster_key_path(cluster: str) -> Path:
    """Where the launching machine keeps `cluster`'s key (the launcher's `cluster_name`)."""
    from elasticml.scheduler.identity import credentials_dir

    return credentials_dir(cluster) / KEY_FILE


def make_cluster_key(cluster: str) -> Path:
    """`cluster`'s key file, made (random, mode 0600) unless it is there; returns its path.

    The one place a key is made: a second call, or a second `cluster up`, keeps the key, so the
    checkpoints already signed stay loadable."""
    path = cluster_key_path(cluster)
    make_secret(path, nbytes=MIN_KEY_BYTES)
    _read(path)  # refuse a damaged key now, not at the first checkpoint
    return path


def key_path() -> Path:
    """The key file $ELASTICML_CHECKPOINT_KEY_PATH names; CheckpointError when it names none."""
    where = os.environ.get(KEY_ENV, "").strip()
    if not where:
        raise CheckpointError(f"no checkpoint key: set {KEY_ENV} to the cluster's key file; {HOW}")
    return Path(where).expanduser()


def checkpoint_key() -> bytes:
    """The cluster's checkpoint key; CheckpointError (saying how to provide it) when there is none."""
    return _read(key_path())


def _read(path: Path) -> bytes:
    from elasticml.secret_file import read_secret

    return read_secret(path, what="the checkpoint key", error=CheckpointError, min_bytes=MIN_KEY_BYTES, hint=HOW,
                       shown=f"{path} ({KEY_ENV})")
