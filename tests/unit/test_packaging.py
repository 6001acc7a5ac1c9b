"""The layout docs/developers.md fixes: `platform/` must never shadow Python's own module."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_platform_from_repo_root_is_stdlib():
    # `python -c` puts the current directory first on sys.path, as a user at the repo root has it.
    out = subprocess.run(
        [sys.executable, "-c", "import platform, sys; print(platform.__file__); print(platform.python_version())"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert not out[0].startswith(str(REPO)), out[0]
    assert out[1] == ".".join(map(str, sys.version_info[:3]))


def test_no_platform_package_marker():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_elasticml_imports_from_platform_folder():
    import elasticml

    assert Path(elasticml.__file__).resolve().is_relative_to(REPO / "platform" / "elasticml")


def test_console_script_runs():
    exe = Path(sys.executable).with_name("elasticml")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout
    assert "0.1.0" in out


def test_public_errors_are_exported():
    import elasticml

    for name in elasticml.__all__:
        assert hasattr(elasticml, name), name
    assert issubclass(elasticml.ClusterNotRunning, elasticml.ElasticMLError)
