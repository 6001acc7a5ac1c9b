"""The locks: every package `./dev setup`, CI and the image install, pinned with hashes.

pyproject.toml keeps ranges for people installing elasticml into an environment of their own; the
locks are what this repository installs, so a fresh machine next month resolves what CI resolved
the day the lock was made, whatever was published since.

    python requirements/lock.py refresh --uv PATH   re-resolve every lock (`./dev lock` does this)
    python requirements/lock.py check               fail when a lock disagrees with pyproject.toml

Three locks, one resolution date:
    dev.lock           runtime + test extra + build backend, torch's CPU build (./dev setup, CI)
    runtime-cpu.lock   runtime + build backend, torch's CPU build (the image's default flavour)
    runtime-cuda.lock  runtime + build backend, PyPI's torch, which is the CUDA build on Linux
                       (the image's gpu flavour)
Each lock's header carries a digest of the inputs it was made from (pyproject's requirements and
this file's torch pins); `check` recomputes it, so editing a range without refreshing fails a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PYTHON = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
# The CPU build's local version (+cpu) is what pip finds on this machine's disk (PIP_FIND_LINKS) or on
# PyTorch's CPU index; PyPI's 2.13.0 for Linux is the CUDA build, several GB of nvidia-* packages.
TORCH = {"cpu": "torch==2.13.0+cpu", "cuda": "torch==2.13.0"}
LOCKS = {
    # name: (extras, torch flavour)
    "dev.lock": (("test",), "cpu"),
    "runtime-cpu.lock": ((), "cpu"),
    "runtime-cuda.lock": ((), "cuda"),
}
# pip is locked too: the venv's own pip is whatever the interpreter shipped.
TOOLS = ("pip",)
DIGEST_LINE = "# inputs-sha256: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


class LockError(Exception):
    """A lock that does not match its inputs; the message names the lock and what differs."""


def inputs(name: str, root: Path = REPO) -> dict:
    """What a lock is resolved from: the only things whose change calls for a refresh."""
    extras, flavour = LOCKS[name]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    return {
        "requires-python": project["project"]["requires-python"],
        "dependencies": project["project"]["dependencies"],
        "extras": {e: project["project"]["optional-dependencies"][e] for e in extras},
        "build": project["build-system"]["requires"],
        "tools": list(TOOLS),
        "torch": TORCH[flavour],
        "python": PYTHON,
        "platform": PLATFORM,
    }


def digest(name: str, root: Path = REPO) -> str:
    return hashlib.sha256(json.dumps(inputs(name, root), sort_keys=True).encode()).hexdigest()


def pins(text: str) -> dict[str, str]:
    """{normalised name: version} of a lock's text."""
    out = {}
    for line in text.splitlines():
        m = PIN.match(line)
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def refresh(uv: str) -> None:
    """Resolve every lock: dev.lock first, the runtime locks held to its versions; what a lock already pins
    stays pinned (delete a lock, or its line, to take a newer release)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_pins: dict[str, str] = {}
        for name in LOCKS:
            extras, flavour = LOCKS[name]
            src = tmp / f"{name}.in"
            src.write_text("\n".join([*inputs(name)["build"], *TOOLS]) + "\n")
            cons = tmp / f"{name}.constraints"
            # The runtime locks take dev.lock's version of every package they share, torch and what
            # only one torch build needs aside.
            held = [f"{p}=={v}" for p, v in base_pins.items() if p != "torch"]
            cons.write_text("\n".join([TORCH[flavour], *held]) + "\n")
            out = tmp / name
            if (HERE / name).exists():  # uv keeps the versions an existing output pins: a refresh adds, not upgrades
                out.write_text((HERE / name).read_text())
            cmd = [uv, "pip", "compile", str(REPO / "pyproject.toml"), str(src), "-c", str(cons),
                   *[a for e in extras for a in ("--extra", e)], "--generate-hashes",
                   "--python-version", PYTHON, "--python-platform", PLATFORM, "--no-header", "--quiet",
                   "--index-url", "https://pypi.org/simple", "-o", str(out)]
            if flavour == "cpu":
                cmd += ["--find-links", os.environ.get("ELASTICML_TORCH_CPU_WHEELS", "/opt/wheels")]
            subprocess.run(cmd, check=True)
            body = out.read_text()
            # The temporary input files' paths are noise in the annotations.
            body = body.replace(str(tmp) + "/", "")
            header = (f"# {name}: made by `./dev lock` (requirements/lock.py); do not edit by hand.\n"
                      f"{DIGEST_LINE}{digest(name)}\n")
            (HERE / name).write_text(header + body)
            if name == "dev.lock":
                base_pins = pins(body)
            print(f"lock: wrote requirements/{name} ({len(pins(body))} packages)")


def check(root: Path = REPO) -> list[str]:
    """Every way a lock can disagree with pyproject.toml, as messages; empty when all agree."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.version import Version

    env = {**default_environment(), "python_version": PYTHON, "python_full_version": f"{PYTHON}.0",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
           "os_name": "posix"}
    problems = []
    locked = {}
    for name in LOCKS:
        path = root / "requirements" / name
        if not path.is_file():
            problems.append(f"{name}: missing; run ./dev lock")
            continue
        text = path.read_text()
        found = next((ln[len(DIGEST_LINE):].strip() for ln in text.splitlines() if ln.startswith(DIGEST_LINE)), None)
        if found != digest(name, root):
            problems.append(f"{name}: made from other inputs than pyproject.toml has now; run ./dev lock")
        got = locked[name] = pins(text)
        want = inputs(name, root)
        for spec in [*want["dependencies"], *[r for rs in want["extras"].values() for r in rs], *want["build"],
                     want["torch"]]:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            version = got.get(_norm(req.name))
            if version is None:
                problems.append(f"{name}: {req.name} is required but not locked")
            elif not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"{name}: {req.name}=={version} is outside {req.specifier}")
        for line in text.splitlines():
            if PIN.match(line) and not line.rstrip().endswith("\\"):
                problems.append(f"{name}: {line.split()[0]} has no hash")
    if "dev.lock" in locked:
        for name, got in locked.items():
            for pkg, version in got.items():
                other = locked["dev.lock"].get(pkg)
                if pkg != "torch" and other is not None and other != version:
                    problems.append(f"{name}: {pkg}=={version} but dev.lock has {other}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="requirements/lock.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("refresh", help="re-resolve every lock from pyproject.toml (needs PyPI)")
    ref.add_argument("--uv", default="uv", help="the uv executable (./dev lock installs a pinned one)")
    sub.add_parser("check", help="exit 1 naming each way a lock disagrees with pyproject.toml")
    args = parser.parse_args(argv)
    if args.command == "refresh":
        refresh(args.uv)
        return 0
    problems = check()
    for p in problems:
        print(f"lock: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
