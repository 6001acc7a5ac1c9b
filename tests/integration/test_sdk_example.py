"""The README's Python API example runs as it stands, on a local cluster of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_the_readme_python_api_example_runs():
    section = (REPO / "README.md").read_text().split("### The Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^placed reserved ", out, re.M), out
    assert "trained to step 4 loss" in out and "cost so far {'cost': " in out


def test_import_elasticml_imports_neither_ray_nor_torch():
    code = "import sys, elasticml; print('ray' in sys.modules, 'torch' in sys.modules, len(elasticml.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
    assert out[:2] == ["False", "False"] and int(out[2]) > 20
