"""The AWS YAMLs' node set-up on a bare Debian root, run as `ray up` runs it: as the ssh user, through
Ray's own login-shell wrapper, each rendered set-up command in order.

Canonical's Ubuntu 24.04 image has python3 and sudo but not python3-venv: `python3 -m venv --help`
works there while `python3 -m venv DIR` fails for want of ensurepip, leaving `DIR/bin/python`
behind. Debian splits Python alike, so a minimal Debian root (python3, sudo, ca-certificates,
nothing else) built with mmdebstrap stands in for the image: the `ubuntu` user gets passwordless
sudo as cloud-init gives it, a failed earlier try leaves a venv without pip, then every command
of the rendered `setup_commands` and the head's `head_setup_commands` runs in a chroot and must succeed,
and once more must change nothing.

Packages: python3-venv from Debian's registry (a node gets it from Ubuntu's), pip from PyPI or
this machine's index, torch and the platform's dependencies from this machine's pip index where
it has one (bind-mounted read-only; the same releases a node gets from PyPI). Debian bookworm's
Python is 3.11, Ubuntu 24.04's 3.12: the commands are the same.

The root is built once a day and kept (a tarball under ~/.cache/elasticml/node-root/); each run
unpacks a fresh copy. Mounts live in a private mount namespace per command (`unshare -m`), so none
outlives it. Skips where it cannot run: not root, no mmdebstrap, no mount namespaces, no route to
Debian's registry.
"""

from __future__ import annotations

import datetime
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from elasticml.provision.render import render

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
PACKAGES = "python3,sudo,ca-certificates"
"""What Canonical's image has of what the set-up uses; python3-venv deliberately not."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "elasticml" / "node-root"
USER, HOME = "ubuntu", "/home/ubuntu"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _why_not() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (chroot, mount namespaces)"
    for tool in ("mmdebstrap", "unshare", "chroot", "tar"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install -y mmdebstrap)"
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return "cannot make a mount namespace here (unshare -m)"
    try:
        socket.create_connection(("deb.debian.org", 80), timeout=5).close()
    except OSError as exc:
        return f"no route to Debian's registry deb.debian.org ({exc})"
    return None


def _bare_root_tarball() -> Path:
    """Today's minimal root, built once: a tarball, published by rename when whole."""
    tarball = CACHE / f"{SUITE}-{PACKAGES.replace(',', '-')}-{datetime.date.today():%Y%m%d}.tar"
    if tarball.is_file():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    part = tarball.with_name(f"{tarball.stem}.{os.getpid()}.part")
    built = subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={PACKAGES}", SUITE, str(part),
                            MIRROR],
                           capture_output=True, text=True, timeout=900)
    if built.returncode != 0:
        part.unlink(missing_ok=True)
        pytest.fail(f"mmdebstrap failed: {built.stderr[-2000:]}")
    part.rename(tarball)
    for old in CACHE.glob(f"{SUITE}-*.tar"):  # yesterday's
        if old != tarball and old.is_file():
            old.unlink()
    return tarball


def _local_pip_sources() -> tuple[dict[str, str], list[str]]:
    """This machine's pip settings (indexes, wheels, constraints, the CA bundle a proxy needs), as PIP_*
    variables, and the local folders they name, to mount read-only at the same place in the root."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    env, folders = {}, []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name not in ("find-links", "extra-index-url", "index-url", "constraint", "cert"):
            continue
        items = value.strip().strip("'\"").split()
        for item in items:
            path = Path(item.removeprefix("file://"))
            if path.is_absolute() and path.exists():
                # An index's pages link its files beside `simple/`; a file's folder comes whole.
                folders.append(str(path.parent if path.name == "simple" or path.is_file() else path))
        env["PIP_" + name.upper().replace("-", "_")] = " ".join(items)
    return env, sorted(set(folders))


class BareNode:
    """A chroot on an unpacked root; `run` is one command as the ssh user, as Ray's launcher sends it."""

    def __init__(self, root: Path, pip_env: dict[str, str], pip_folders: list[str]):
        self.root, self.pip_env, self.pip_folders = root, pip_env, pip_folders

    def home(self, rel: str = "") -> Path:
        return self.root / HOME.lstrip("/") / rel

    def as_root(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self._chroot(["bash", "-c", command], user=None, timeout=timeout)

    def run(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        from ray.autoscaler._private.command_runner import (
            _with_interactive,  # what Ray's SSH runner sends
        )

        env = {"HOME": HOME, "USER": USER, "LOGNAME": USER, "SHELL": "/bin/bash", "PATH": PATH, **self.pip_env}
        # Ray joins its words into one line for the ssh user's shell to run.
        line = " ".join(_with_interactive(command))
        return self._chroot(["env", "-i", *(f"{k}={v}" for k, v in env.items()), "/bin/bash", "-c", line],
                            user=USER, timeout=timeout)

    def _chroot(self, argv: list[str], *, user: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
        r = shlex.quote(str(self.root))
        mounts = [f"mount -t proc proc {r}/proc", f"mount --rbind /dev {r}/dev"]
        for folder in self.pip_folders:
            mounts.append(f"mkdir -p {r}{shlex.quote(folder)} && mount --bind -o ro {shlex.quote(folder)} "
                          f"{r}{shlex.quote(folder)}")
        who = [f"--userspec={user}:{user}"] if user else []
        script = " && ".join(mounts) + " && exec chroot " + " ".join(shlex.quote(a) for a in [*who, str(self.root), *argv])
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def bare_node(tmp_path):
    why = _why_not()
    if why:
        pytest.skip(why)
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(_bare_root_tarball())], check=True, timeout=600)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    node = BareNode(root, *_local_pip_sources())
    # The image's ssh user, with the sudo rule cloud-init writes for it.
    made = node.as_root(f"useradd -m -s /bin/bash {USER} && echo '{USER} ALL=(ALL) NOPASSWD:ALL' "
                        f"> /etc/sudoers.d/90-cloud-init-users && chmod 440 /etc/sudoers.d/90-cloud-init-users")
    assert made.returncode == 0, made.stderr
    yield node
    # Every mount was in a namespace of its own that ended with its command: nothing of the host is below.
    assert str(root) not in Path("/proc/mounts").read_text()
    shutil.rmtree(root, ignore_errors=True)


def _file_mounts(node: BareNode, launcher: dict) -> None:
    """What the launcher syncs before the set-up: the working tree (less rsync_exclude) and the secrets."""
    from elasticml.provision.tls import make_ca

    for remote in launcher["file_mounts"]:
        target = node.home(remote.removeprefix("~/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        if remote == "~/elasticml":
            shutil.copytree(REPO, target, symlinks=True, ignore=shutil.ignore_patterns(
                *(p.removeprefix("**/") for p in launcher["rsync_exclude"]), "*.egg-info", ".pytest_cache"))
        elif remote.endswith("/tls"):
            make_ca(target, "bare-node")
        else:
            target.write_text("not a real secret\n")
    assert node.as_root(f"chown -R {USER}:{USER} {HOME}").returncode == 0


def test_the_rendered_setup_makes_a_working_venv_on_a_bare_root_as_the_ssh_user(bare_node):
    node = bare_node
    launcher = yaml.safe_load(render("aws", "aws-cpu")["cluster_configs/aws-cpu.yaml"])
    # The head's sequence: the shared set-up, then the head's own (it signs its certificate with the CA key
    # only it keeps); a worker's last step asks the head's API server instead (tests/unit/api/test_node_certs.py).
    commands = launcher["setup_commands"] + launcher["head_setup_commands"]
    # The root is what the image is: python3 without ensurepip; a try before left a venv with no pip.
    assert node.as_root("python3 -c 'import ensurepip'").returncode != 0
    broken = node.run("python3 -m venv $HOME/venv")
    assert broken.returncode != 0 and node.home("venv/bin/python").exists(), broken.stderr
    _file_mounts(node, launcher)

    took = {}
    for command in commands:
        start = time.monotonic()
        proc = node.run(command)
        took[command[:60]] = round(time.monotonic() - start, 1)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    print("set-up commands, seconds each:", took)

    assert node.as_root("dpkg -s python3-venv >/dev/null").returncode == 0  # installed through sudo as ubuntu
    pip = node.run("$HOME/venv/bin/python -m pip --version")
    assert pip.returncode == 0 and "venv" in pip.stdout, pip.stderr
    ray = node.run("ray --version")  # on PATH from ~/.bashrc, as the start commands' shells see it
    assert ray.returncode == 0 and "2.60" in ray.stdout, ray.stderr
    assert node.home(".elasticml/tls/node.crt").is_file()
    assert (node.home(".ray/auth_token").stat().st_mode & 0o777) == 0o600

    # `ray up` reruns the set-up on a node that has it: the venv is kept, nothing is installed again.
    node.home("venv/kept").write_text("")
    for command in commands[:2]:
        again = node.run(command)
        assert again.returncode == 0, again.stderr
    assert node.home("venv/kept").exists()
