"""Every Serve config in serve_apps/ is valid against Serve's own deploy schema."""

import inspect
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from elasticml.errors import CheckpointError
from elasticml.train.checkpoint import resolve_checkpoint

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


def _shipped_apps():
    for path in sorted((REPO / "serve_apps").glob("*.yaml")):
        for app in yaml.safe_load(path.read_text())["applications"]:
            yield path.name, app
    for path in sorted((REPO / "cluster_configs" / "kuberay").glob("*-rayservice.yaml")):
        doc = yaml.safe_load(path.read_text())
        for app in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]:
            yield path.name, app


def test_every_shipped_serve_config_requires_api_keys_from_a_file():
    apps = list(_shipped_apps())
    assert len(apps) >= 5
    for name, app in apps:
        args = app["args"]
        assert args.get("api_keys_file"), f"{name}: {app['name']} is open to anyone"
        assert not args.get("api_keys"), f"{name}: keys belong in the key file, not the config"


def test_the_rayservice_head_mounts_the_key_files_secret():
    from elasticml.provision.kuberay import API_KEYS_MOUNT

    for path in sorted((REPO / "cluster_configs" / "kuberay").glob("*-rayservice.yaml")):
        doc = yaml.safe_load(path.read_text())
        pod = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
        assert volume["secret"]["secretName"].endswith("-api-keys")
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-keys")
        assert mount["mountPath"] == API_KEYS_MOUNT and mount["readOnly"] is True
        app = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]
        assert app["args"]["api_keys_file"].startswith(API_KEYS_MOUNT + "/")


def test_key_files_are_refused_clearly_and_keygen_adds_to_them(tmp_path):
    import json
    import stat

    from click.testing import CliRunner

    from elasticml.cli import main as cli
    from elasticml.errors import ConfigError
    from elasticml.serve.auth import KeyRing, read_key_file

    path = tmp_path / "keys.json"
    with pytest.raises(ConfigError, match="elasticml serve keygen TENANT --file"):
        read_key_file(path)
    for body, words in (("[1]", "non-empty JSON object"), ("{", "not a JSON object"),
                        ('{"acme": "eml_plainkeypasted"}', "not a sha256 hex digest")):
        path.write_text(body)
        with pytest.raises(ConfigError, match=words) as info:
            read_key_file(path)
        assert "eml_plainkeypasted" not in str(info.value)  # a pasted key is never echoed
    path.unlink()
    keys = {}
    for tenant in ("acme", "globex"):
        out = CliRunner().invoke(cli, ["serve", "keygen", tenant, "--file", str(path)])
        assert out.exit_code == 0, out.output
        keys[tenant] = out.output.split("shown once): ")[1].split()[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring = KeyRing(read_key_file(path))
    assert {t: ring.tenant_for(f"Bearer {k}", None) for t, k in keys.items()} == {"acme": "acme", "globex": "globex"}
    assert set(json.loads(path.read_text())) == {"acme", "globex"} and keys["acme"] not in path.read_text()
    assert CliRunner().invoke(cli, ["serve", "keygen", "bad tenant", "--file", str(path)]).exit_code != 0


@pytest.mark.parametrize("value", ["shop_models", ["a b"], ["x"] * 65, [5], ["os; rm"], ["a..b"]])
def test_allowed_model_modules_must_be_a_short_list_of_module_names(value):
    from elasticml.errors import ConfigError
    from elasticml.serve.config import ServeConfig

    with pytest.raises(ConfigError, match="allowed_model_modules"):
        ServeConfig(checkpoint="c", allowed_model_modules=value)
    assert ServeConfig(checkpoint="c", allowed_model_modules=["shop.models", "_x"]).allowed_model_modules


def test_every_shipped_serve_config_that_listens_beyond_loopback_answers_https_only():
    for path in sorted((REPO / "serve_apps").glob("*.yaml")):
        http = yaml.safe_load(path.read_text()).get("http_options", {})
        if http.get("host", "127.0.0.1") in ("127.0.0.1", "localhost", "::1"):
            continue
        assert http.get("ssl_keyfile") and http.get("ssl_certfile"), f"{path.name} listens on {http['host']} without TLS"


@pytest.mark.parametrize("field, value, message", [
    ("upscale_delay_s", float("nan"), "must be in"), ("downscale_delay_s", float("inf"), "must be in"),
    ("num_cpus", float("inf"), "must be in"), ("num_cpus", 0, "must be in"), ("batch_wait_ms", 1e300, "must be in"),
    ("num_replicas", "two", "must be an integer"), ("num_replicas", True, "must be an integer"),
    ("max_replicas", 2.5, "must be an integer"), ("max_queued_requests", 0, "must be in"),
    ("request_timeout_s", float("nan"), "must be in"), ("retry_after_s", -1, "must be in"),
    ("metrics_interval_s", 0.01, "must be in"), ("look_back_period_s", "1", "must be a number"),
    ("router_max_backoff_s", 0, "must be in"), ("router_max_backoff_s", float("nan"), "must be in"),
    ("router_max_backoff_s", 0.0049, "must be in"), ("router_max_backoff_s", 0.51, "must be in"),
    ("router_max_backoff_s", True, "must be a number"),
    # a YAML key left empty reads as null: refused where the field has a value by default, not passed on
    ("router_max_backoff_s", None, "must be a number"), ("max_batch_size", None, "must be an integer"),
    ("max_queued_requests", None, "must be an integer"),
])
def test_every_number_in_a_serve_config_is_finite_bounded_and_named_when_wrong(field, value, message):
    from elasticml.errors import ConfigError
    from elasticml.serve.config import ServeConfig

    with pytest.raises(ConfigError, match=f"{field}: {message}"):
        ServeConfig.from_dict({"checkpoint": "ckpt", "preset": "latency", field: value})


def test_the_load_report_interval_and_look_back_reach_serve_and_must_agree():
    from elasticml.errors import ConfigError
    from elasticml.serve.config import ServeConfig

    cfg = ServeConfig.from_dict({"checkpoint": "c", "preset": "latency", "autoscaling": "predictive",
                                 "metrics_interval_s": 1.0, "look_back_period_s": 2.0})
    scaling = cfg.autoscaling_config()
    assert (scaling["metrics_interval_s"], scaling["look_back_period_s"]) == (1.0, 2.0)
    assert "metrics_interval_s" not in ServeConfig.from_dict({"checkpoint": "c", "preset": "latency"}).autoscaling_config()
    # A look-back shorter than the interval averages over no report at all (Serve warns, and will refuse).
    with pytest.raises(ConfigError, match="look_back_period_s: must be at least metrics_interval_s"):
        ServeConfig.from_dict({"checkpoint": "c", "preset": "latency", "metrics_interval_s": 5.0, "look_back_period_s": 2.0})
    with pytest.raises(ConfigError, match="metrics_interval_s: only an autoscaling preset"):
        ServeConfig.from_dict({"checkpoint": "c", "metrics_interval_s": 1.0})
