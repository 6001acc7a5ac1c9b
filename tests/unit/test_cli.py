"""Bad input to the CLI: one line naming the problem, exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ELASTICML = str(Path(sys.executable).with_name("elasticml"))


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ELASTICML, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("elasticml: error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def test_missing_cluster_yaml(tmp_path):
    assert_one_line_error(run("cluster", "up", "--config", str(tmp_path / "nope.yaml")), "nope.yaml", "no such file")


def test_malformed_cluster_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: [unclosed\n")
    assert_one_line_error(run("cluster", "up", "--config", str(bad)), "bad.yaml", "not valid YAML", "line 2")


def test_unknown_node_type(tmp_path):
    raw = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    raw["head_node_type"] = "head_that_does_not_exist"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert_one_line_error(run("cluster", "up", "--config", str(path)), "head_node_type", "head_that_does_not_exist")


def test_worker_type_without_market_label(tmp_path):
    raw = yaml.safe_load((REPO / "cluster_configs" / "local.yaml").read_text())
    del raw["available_node_types"]["cpu_reserved"]["labels"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert_one_line_error(run("cluster", "up", "--config", str(path)), "cpu_reserved", "ray.io/market-type")


@pytest.mark.parametrize("sub", ["status", "down", "env"])
def test_commands_on_a_cluster_that_is_not_up(sub):
    assert_one_line_error(run("cluster", sub, "--name", "never-started"), "'never-started' is not up")


def test_click_usage_errors_also_exit_2():
    proc = run("cluster", "frobnicate")
    assert proc.returncode == 2 and "No such command" in proc.stderr


def test_serve_keygen_prints_a_key_and_the_digest_that_accepts_it():
    from elasticml.serve.auth import KeyRing

    proc = run("serve", "keygen", "acme")
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.splitlines()[0].rsplit(" ", 1)[-1]
    entry = yaml.safe_load(proc.stdout.splitlines()[1].split(": ", 1)[1])
    assert KeyRing(entry).tenant_for(f"Bearer {key}", None) == "acme"


@pytest.mark.parametrize("body, field", [
    ("max_workers: true", "max_workers"),  # a bool is not a count
    ("max_workers: 2.5", "max_workers"),
    ("max_workers: two", "max_workers"),
    ("expected_hours: .nan", "expected_hours"),
    ("expected_hours: .inf", "expected_hours"),
    ("tenant_override: 1", "tenant_override"),
], ids=["bool", "float", "word", "nan", "inf", "unknown-field"])
def test_scheduler_validate_names_the_field_offline(tmp_path, body, field):
    spec = tmp_path / "w.yaml"
    spec.write_text(f"name: job\ntenant: acme\n{body}\n")
    assert_one_line_error(run("scheduler", "validate", str(spec)), field)


def test_scheduler_validate_refuses_bad_names_and_accepts_a_good_spec(tmp_path):
    spec = tmp_path / "w.yaml"
    spec.write_text(f"name: {'x' * 100_000}\ntenant: acme\n")
    assert_one_line_error(run("scheduler", "validate", str(spec)), "name")
    spec.write_text("name: job\ntenant: 123\n")
    assert_one_line_error(run("scheduler", "validate", str(spec)), "tenant")
    spec.write_text("name: job\ntenant: acme\nmax_workers: 2\n")
    good = run("scheduler", "validate", str(spec))
    assert good.returncode == 0 and "valid" in good.stdout, good.stderr


def test_cluster_credentials_makes_the_agent_file_the_tls_ca_and_the_checkpoint_key_once_and_private(tmp_path):
    import os

    env = {**os.environ, "ELASTICML_HOME": str(tmp_path)}
    made = [subprocess.run([ELASTICML, "cluster", "credentials", "elasticml-aws-cpu"], capture_output=True,
                           text=True, timeout=60, env=env) for _ in range(2)]
    assert all(p.returncode == 0 for p in made), made[0].stderr
    agent = tmp_path / "credentials" / "elasticml-aws-cpu" / "agent"
    assert agent.stat().st_mode & 0o777 == 0o600 and agent.read_text().startswith("eml1.node-agent.")
    assert str(agent) in made[0].stdout and agent.read_text().split(".")[2] not in made[0].stdout  # path, not secret
    ca = tmp_path / "credentials" / "elasticml-aws-cpu" / "tls"
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600 and "BEGIN CERTIFICATE" in (ca / "ca.crt").read_text()
    # The checkpoint key: the one place a cloud cluster's is made, kept by the second call, never printed.
    key = tmp_path / "credentials" / "elasticml-aws-cpu" / "checkpoint.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(bytes.fromhex(key.read_text())) == 32
    assert f"checkpoint key: {key}" in made[1].stdout and key.read_text().strip() not in made[0].stdout + made[1].stdout
    bad = subprocess.run([ELASTICML, "cluster", "credentials", "../etc"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert bad.returncode == 2 and "CLUSTER_NAME" in bad.stderr


def test_every_offline_command_prints_one_json_document_with_json(tmp_path):
    """`--json` on what prints a result: one parseable document, and nothing else on stdout."""
    import json
    import os

    env = {**os.environ, "ELASTICML_HOME": str(tmp_path / "home")}

    def as_json(*args: str) -> dict:
        proc = subprocess.run([ELASTICML, *args, "--json"], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        assert proc.returncode == 0, (args, proc.stderr)
        return json.loads(proc.stdout)

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: nightly\ntenant: research\npriority: low\nmax_workers: 2\n")
    assert as_json("scheduler", "validate", str(spec))["spec"]["max_workers"] == 2
    built = as_json("data", "build", "--out", str(tmp_path / "corpus"), "--shards", "2", "--max-mb", "0.2")
    assert built["documents"] > 0 and len(built["shards"]) == 2
    assert as_json("cluster", "render", "--check")["stale"] == []
    made = as_json("cluster", "credentials", "elasticml-aws-cpu")
    assert made["agent_credential"].endswith("/agent") and made["checkpoint_key"].endswith("/checkpoint.key")
    key = as_json("serve", "keygen", "acme")
    assert key["tenant"] == "acme" and len(key["digest"]) == 64
    from elasticml.models import SIZES, build_model
    from elasticml.train.checkpoint import write_checkpoint

    write_checkpoint(tmp_path / "ckpt", model_state=build_model("tiny").state_dict(), optim_state=None,
                     model_config=SIZES["tiny"], step=3)  # with the session's key, which `env` hands on
    assert as_json("checkpoint", "verify", str(tmp_path / "ckpt")) == {"path": str(tmp_path / "ckpt"), "step": 3,
                                                                       "files": 2, "intact": True}
