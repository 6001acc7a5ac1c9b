"""jobs/tune.py refuses bad sweep flags in one line, before it starts anything."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("flags, words", [
    (["--trial-retries", "-1"], "--trial-retries must be >= 0, got -1"),
    (["--lrs", "1e-3,fast"], "--lrs must be comma-separated numbers, got '1e-3,fast'"),
    (["--lrs", "1e-3,0"], "--lrs must all be > 0"),
    (["--samples", "0"], "need --samples >= 1"),
])
def test_bad_sweep_flags_exit_2_with_the_reason(tmp_path, flags, words):
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "tune.py"), "--data", str(tmp_path),
                           "--storage-path", str(tmp_path), *flags], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
