"""The AWS YAMLs' node set-up, run as `ray up` runs it on a fresh Ubuntu 24.04 node: a new virtualenv
in a home of its own, the platform installed into it from the synced working tree, then the node's own
Ray TLS certificate made with it. (Here the packages come from this machine's index; on a node, PyPI.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from elasticml.provision.aws import setup_environment

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_setup_commands_install_the_platform_into_a_fresh_venv(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "elasticml").symlink_to(REPO)  # the launcher's file mount of the working tree
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(HOME=str(home), PATH="/usr/local/bin:/usr/bin:/bin")
    for command in setup_environment():
        proc = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
    venv = home / "venv" / "bin"
    ray = subprocess.run([str(venv / "ray"), "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert "2.60" in ray.stdout
    (home / "ca").mkdir()
    made = subprocess.run([str(venv / "python"), "-c", "from pathlib import Path; from elasticml.provision.tls "
                           f"import make_ca; make_ca(Path({str(home / 'ca')!r}), 'x')"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    cert = subprocess.run([str(venv / "python"), "-m", "elasticml.provision.tls", "node", "--ca-dir", str(home / "ca"),
                           "--out", str(home / "tls")], env=env, capture_output=True, text=True, timeout=120)
    assert cert.returncode == 0 and (home / "tls" / "node.crt").is_file(), cert.stderr
