"""The locks agree with pyproject.toml: a range edited without `./dev lock` fails here, offline."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("elasticml_lock", REPO / "requirements" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def _copy(tmp_path: Path) -> Path:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "requirements", tmp_path / "requirements")
    return tmp_path


def test_every_lock_matches_pyproject_and_pins_each_package_with_a_hash():
    assert lock.check() == []
    out = subprocess.run([sys.executable, str(REPO / "requirements" / "lock.py"), "check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_installed_environment_is_the_lock():
    """What ./dev setup installed is what dev.lock says, version for version."""
    from importlib.metadata import distributions

    pins = lock.pins((REPO / "requirements" / "dev.lock").read_text())
    installed = {lock._norm(d.metadata["Name"]): d.version for d in distributions()}
    wrong = {p: (v, installed.get(p)) for p, v in pins.items() if installed.get(p) != v}
    assert not wrong, wrong


def test_a_range_changed_without_a_refresh_fails_naming_the_lock(tmp_path):
    root = _copy(tmp_path)
    py = root / "pyproject.toml"
    py.write_text(py.read_text().replace('"pyarrow>=18,<27"', '"pyarrow>=18,<26"'))
    problems = lock.check(root)
    assert any(p.startswith("dev.lock: made from other inputs") for p in problems), problems
    assert "dev.lock: pyarrow==26.0.1 is outside <26,>=18" in problems, problems


def test_a_new_dependency_missing_from_the_lock_is_named(tmp_path):
    root = _copy(tmp_path)
    py = root / "pyproject.toml"
    py.write_text(py.read_text().replace('"pyyaml>=6,<7",', '"pyyaml>=6,<7",\n    "rich>=13",'))
    problems = lock.check(root)
    assert "runtime-cpu.lock: rich is required but not locked" in problems, problems


def test_a_hand_edited_pin_is_caught(tmp_path):
    """A lock edited by hand (a hash dropped, a version that differs between locks) does not pass."""
    root = _copy(tmp_path)
    cpu = root / "requirements" / "runtime-cpu.lock"
    text = cpu.read_text()
    version = lock.pins(text)["pyyaml"]
    cpu.write_text(text.replace(f"pyyaml=={version} \\", "pyyaml==6.0.0 \\"))
    problems = lock.check(root)
    assert f"runtime-cpu.lock: pyyaml==6.0.0 but dev.lock has {version}" in problems, problems
    dev = root / "requirements" / "dev.lock"
    dev.write_text(dev.read_text().replace(f"pyyaml=={version} \\", f"pyyaml=={version}"))
    assert f"dev.lock: pyyaml=={version} has no hash" in lock.check(root)


def test_the_emulator_release_that_denies_multipart_writes_is_never_locked():
    pins = lock.pins((REPO / "requirements" / "dev.lock").read_text())
    assert pins["moto"] != "5.2.6"
    assert "!=5.2.6" in (REPO / "pyproject.toml").read_text()
