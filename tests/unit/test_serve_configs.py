"""Every Serve config in serve_apps/ is valid against Serve's own deploy schema."""

import inspect
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from elasticml.errors import CheckpointError
from elasticml.serve.completion import resolve_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_serve_yamls_validate_against_serve_schema():
    paths = sorted((REPO / "serve_apps").glob("*.yaml"))
    assert paths
    for path in paths:
        schema = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
        for app in schema.applications:
            module, _, attr = app.import_path.partition(":")
            imported = __import__(module, fromlist=[attr])
            builder = getattr(imported, attr)
            # Serve refuses builders that do not take exactly one parameter (the args dict).
            assert len(inspect.signature(builder).parameters) == 1, app.import_path


def test_checkpoint_spec_that_finds_nothing_is_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        resolve_checkpoint(f"latest:{tmp_path}")
    with pytest.raises(CheckpointError, match="not a complete elasticml checkpoint"):
        resolve_checkpoint(str(tmp_path))


def test_every_apps_args_are_a_valid_serve_config():
    from elasticml.serve.canary import CanaryConfig
    from elasticml.serve.config import ServeConfig

    canary_fields = set(CanaryConfig.__dataclass_fields__)
    for path in sorted((REPO / "serve_apps").glob("*.yaml")):
        for app in yaml.safe_load(path.read_text())["applications"]:
            args = app["args"]
            if app["import_path"] == "serve_apps.canary:app":
                CanaryConfig(**{k: v for k, v in args.items() if k in canary_fields})
                args = {k: v for k, v in args.items() if k not in canary_fields}
            cfg = ServeConfig.from_dict(args, source=str(path))
            assert cfg.resolved_precision in ("int8", "bf16")
