"""The package type-checks: mypy, configured in pyproject.toml ([tool.mypy]), finds nothing, strict on
the scheduler and Serve; and every `# type: ignore` left names its error code and says why on its line."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import tokenize
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "platform"
# `# type: ignore[code, code]  # why` and nothing less: a bare ignore hides every error on its line,
# and one without a reason leaves the next reader to rediscover it.
JUSTIFIED = re.compile(r"#\s*type:\s*ignore\[[a-z0-9-]+(\s*,\s*[a-z0-9-]+)*\]\s+#\s*\S")
STRICT_MODULES = ("elasticml.scheduler.*", "elasticml.serve.*")
STRICT_FLAGS = ("disallow_untyped_defs", "disallow_incomplete_defs", "disallow_untyped_calls", "disallow_any_generics",
                "warn_return_any")


def _ignores(path: Path) -> list[tuple[int, str]]:
    """(line, comment) of each `type: ignore` comment (tokens, so a string that mentions one is not one)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [(t.start[0], t.string) for t in tokens
            if t.type == tokenize.COMMENT and re.search(r"type:\s*ignore", t.string)]


def test_every_type_ignore_names_its_code_and_says_why():
    bad = [f"{path.relative_to(REPO)}:{line}: {comment}"
           for path in sorted(PACKAGE.rglob("*.py")) for line, comment in _ignores(path)
           if not JUSTIFIED.match(comment)]
    assert not bad, "write `# type: ignore[code]  # why` (or fix the type):\n" + "\n".join(bad)


def test_the_scheduler_and_serve_stay_strict():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = [o for o in config["overrides"] if set(STRICT_MODULES) <= set(o["module"])]
    assert strict, f"no [[tool.mypy.overrides]] for {STRICT_MODULES}"
    off = [flag for flag in STRICT_FLAGS if strict[0].get(flag) is not True]
    assert not off, f"strict flags off for {STRICT_MODULES}: {off}"


def test_mypy_finds_nothing():
    try:
        import mypy  # noqa: F401
    except ImportError:
        raise AssertionError("mypy is not installed: `./dev setup` installs it from requirements/dev.lock") from None
    t0 = time.monotonic()
    # The cache (.mypy_cache, ignored by git) makes a second run take seconds; a cold one takes tens.
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (f"mypy exited {run.returncode} after {time.monotonic() - t0:.0f}s:\n"
                                 f"{run.stdout[-20000:]}{run.stderr[-5000:]}")
