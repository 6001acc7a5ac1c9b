"""The one YAML loader (elasticml.yamlio): what a hostile file can make the platform do, through
the loader, the typed configs and the real CLI, and every YAML the repository ships still loading."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import pytest
import yaml

from elasticml.errors import ConfigError
from elasticml.yamlio import MAX_BYTES, dump_yaml, load_yaml, load_yaml_documents
from tests.unit.test_cli import assert_one_line_error, run

REPO = Path(__file__).resolve().parents[2]


def bomb(levels: int = 9) -> str:
    """"Billion laughs": each level lists the one before nine times, so 9 levels are 9**9 "lol"s
    (gigabytes once anything formats it) in about 330 bytes, inside a field the spec checks."""
    names = "abcdefghijklmnop"[:levels]
    lists = [f"&a [{', '.join(['lol'] * 9)}]"]
    lists += [f"&{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return "name: job\ntenant: acme\nmax_workers: [" + ", ".join(lists) + "]\n"


def refused(text: str | bytes, *words: str, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_yaml(text, source="t.yaml", **kw)  # type: ignore[arg-type]
    msg = str(info.value)
    assert msg.startswith("t.yaml: ") and "\n" not in msg and len(msg) < 400, msg
    for w in words:
        assert w in msg, msg
    return msg


# -- the hostile cases, at the loader ----------------------------------------------
def test_an_alias_bomb_is_refused_at_its_first_anchor_without_expanding_anything():
    tracemalloc.start()
    try:
        refused(bomb(), "YAML refused at line 3, column 15", "anchor &a", "not allowed")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, peak  # bytes: nothing was expanded
    refused("a: 1\nb: *a\n", "line 2, column 4", "alias *a")  # an alias is refused even without its anchor


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "{a: " * 5000 + "}" * 5000,
                                  "".join(" " * i + f"k{i}:\n" for i in range(100)) + " " * 100 + "v\n"])
def test_deep_nesting_is_refused_before_pythons_recursion_limit(text):
    refused(text, "nested deeper than 64 levels", "line ")


@pytest.mark.parametrize("key, kind", [("1", "integer"), ("true", "boolean"), ("null", "null"), ("1.5", "float"),
                                       ("[a, b]", "sequence"), ("{a: 1}", "mapping")])
def test_mapping_keys_must_be_strings(key, kind):
    refused(f"name: x\n? {key}\n: value\n", "line 2, column 3", f"must be a string, got {kind}")
    assert load_yaml(f"'{key}': v\n", source="t.yaml") == {key: "v"}  # quoted, it is a string


@pytest.mark.parametrize("digits", [21, 4000, 5000, 100_000])
def test_integers_longer_than_20_digits_are_refused_before_int_reads_them(digits):
    refused(f"n: {'9' * digits}\n", f"an integer of {digits} digits; at most 20", "line 1, column 4")
    refused(f"n: !!int {'1' * digits}\n", f"{digits} digits")  # an explicit tag goes the same way
    assert load_yaml(f"n: '{'9' * digits}'\n", source="t.yaml") == {"n": "9" * digits}
    assert load_yaml("n: -99999999999999999999\n", source="t.yaml") == {"n": -(10**20 - 1)}


@pytest.mark.parametrize("data", ["name: café\n".encode("latin-1"), "name: x\n".encode("utf-16"), b"a: \xff\xfe\n"])
def test_bytes_that_are_not_utf8_are_refused(data, tmp_path):
    refused(data, "not UTF-8")
    path = tmp_path / "t.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_yaml(path, source="t.yaml")
    assert load_yaml("\ufeffname: café\n".encode(), source="t.yaml") == {"name": "café"}  # a BOM is fine


def test_control_characters_and_lone_surrogates_are_refused():
    refused("a: b\nc: d\x07e\n", "not valid YAML at line 2, column 5", "#x0007")
    refused("a: \ud800\n", "lone surrogates")


def test_duplicate_keys_are_refused_naming_the_key_and_both_lines():
    refused("name: job\ntenant: acme\nmax_workers: 2\ntenant: payments\n",
            "line 4, column 1", "duplicate key 'tenant' (first at line 2)")
    refused("a:\n  b: 1\n  b: 2\n", "line 3, column 3", "duplicate key 'b'")
    refused("{x: 1, x: 1}", "duplicate key 'x'")


def test_plain_scalars_follow_the_yaml_1_2_core_schema():
    doc = load_yaml(
        "sexagesimal: 1:30\nyes_: yes\nno_: no\non_: on\noff_: off\ny: y\nYes_: Yes\ndate: 2001-12-14\n"
        "stamp: 2001-12-14t21:59:43.10-05:00\nunderscore: 1_000\nbinary: 0b101\nmerge: <<\nvalue: =\n"
        "t1: true\nt2: True\nt3: TRUE\nf1: false\nn1: null\nn2: ~\nn3:\nn4: NULL\n"
        "decimal: 010\noctal: 0o17\nhex: 0x1F\nsigned: -42\nplus: +7\n"
        "f: 1.5\ne: 1e5\ndot: .5\ntrail: 1.\ninf: .inf\nninf: -.Inf\nnan: .NaN\n",
        source="t.yaml")
    assert {k: doc[k] for k in ("sexagesimal", "yes_", "no_", "on_", "off_", "y", "Yes_", "date", "stamp",
                                "underscore", "binary", "merge", "value")} == {
        "sexagesimal": "1:30", "yes_": "yes", "no_": "no", "on_": "on", "off_": "off", "y": "y", "Yes_": "Yes",
        "date": "2001-12-14", "stamp": "2001-12-14t21:59:43.10-05:00", "underscore": "1_000", "binary": "0b101",
        "merge": "<<", "value": "="}
    assert [doc[k] for k in ("t1", "t2", "t3", "f1")] == [True, True, True, False]
    assert [doc[k] for k in ("n1", "n2", "n3", "n4")] == [None] * 4
    assert [doc[k] for k in ("decimal", "octal", "hex", "signed", "plus")] == [10, 15, 31, -42, 7]
    assert [doc[k] for k in ("f", "e", "dot", "trail", "inf", "ninf")] == [1.5, 1e5, 0.5, 1.0, math.inf, -math.inf]
    assert math.isnan(doc["nan"])
    assert load_yaml("<<: {a: 1}\n", source="t.yaml") == {"<<": {"a": 1}}  # no merge keys: a plain key


@pytest.mark.parametrize("text, words", [
    ("a: !!binary aGVsbG8=\n", "tag '!!binary' is not allowed"),
    ("a: !!set {x, y}\n", "tag '!!set'"),
    ("a: !!timestamp 2001-12-14\n", "tag '!!timestamp'"),
    ("a: !!python/object/apply:os.system [echo]\n", "tag '!!python/object/apply:os.system'"),
    ("a: !local x\n", "tag '!local'"),
    ("a: !!bool yes\n", "'yes' is not true or false"),
    ("a: !!int 1:30\n", "'1:30' is not a YAML 1.2 integer"),
    ("a: !!float 1_000.5\n", "is not a YAML 1.2 float"),
])
def test_only_the_core_schemas_tags_and_forms(text, words):
    refused(text, "line 1, column 4", words)


def test_the_size_cap(tmp_path):
    refused("a: " + "x" * MAX_BYTES + "\n", f"YAML larger than {MAX_BYTES} bytes")
    refused(("é" * (MAX_BYTES // 2 + 1)).encode(), "larger than")  # counted in bytes, not characters
    assert load_yaml("a: " + "x" * MAX_BYTES + "\n", source="t.yaml", max_bytes=2 * MAX_BYTES)["a"] == "x" * MAX_BYTES
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml(path, source=str(path))
    if Path("/dev/zero").exists():  # endless: only the cap's worth is read
        with pytest.raises(ConfigError, match="larger than"):
            load_yaml(Path("/dev/zero"), source="/dev/zero")


def test_missing_files_folders_and_syntax_errors_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_yaml(tmp_path / "nope.yaml", source="nope.yaml")
    with pytest.raises(ConfigError, match="cannot read it"):
        load_yaml(tmp_path, source="dir")
    refused("a: [unclosed\n", "not valid YAML at line 2, column 1", "expected ',' or ']'")
    refused("a: 1\n---\nb: 2\n", "expected a single document")
    assert load_yaml_documents("a: 1\n---\nb: 2\n", source="t.yaml") == [{"a": 1}, {"b": 2}]
    assert load_yaml("", source="t.yaml") is None


# -- files Ray reads too, and what we write ------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("a: yes\n", "'yes' reads as string here but as boolean to YAML 1.1 readers"),
    ("a: off\n", "'off' reads as string here but as boolean"),
    ("a: 1:30\n", "'1:30' reads as string here but as integer"),
    ("a: 2001-12-14\n", "as timestamp"),
    ("a: 1e5\n", "'1e5' reads as float here but as string"),
    ("a: 0o17\n", "as integer here but as string"),
    ("a: 010\n", "'010' reads as decimal here but as octal"),
    ("a: <<\n", "as merge"),
])
def test_what_ray_also_reads_may_not_mean_one_thing_to_yaml_1_1_and_another_here(text, words):
    refused(text, "line 1, column 4", words, "quote it", agree_with_yaml11=True)
    quoted = text.replace(": ", ": '").replace("\n", "'\n")
    assert load_yaml(quoted, source="t.yaml", agree_with_yaml11=True) == yaml.safe_load(quoted)
    assert load_yaml("a: true\nb: 12\nc: 1.5\nd: null\ne: word\n", source="t.yaml", agree_with_yaml11=True) == {
        "a": True, "b": 12, "c": 1.5, "d": None, "e": "word"}


def test_dump_yaml_writes_no_aliases_and_quotes_what_either_schema_would_misread():
    shared = {"karpenter.sh/discovery": "x"}
    tricky = ["yes", "no", "on", "1:30", "010", "0o17", "1e5", "2001-12-14", "1_000", "<<", "=", "~", "", "true",
              "null", "12", "1.5", ".inf"]
    obj = {"a": shared, "b": shared, "tricky": tricky, "n": [1, 1.5, 1e20, True, None]}
    text = dump_yaml(obj, sort_keys=False)
    assert "&" not in text and "*" not in text
    assert load_yaml(text, source="t.yaml", agree_with_yaml11=True) == obj == yaml.safe_load(text)


# -- through the typed configs -----------------------------------------------------------
def test_the_train_config_refuses_what_yaml_1_2_reads_as_strings_and_non_finite_numbers(tmp_path):
    from elasticml.train.config import TrainConfig

    path = tmp_path / "t.yaml"
    for body, field in [("steps: 1:30", "steps"), ("compile: no", "compile"), ("use_gpu: yes", "use_gpu"),
                        ("lr: .inf", "lr"), ("lr: .nan", "lr"), ("cpus_per_worker: .inf", "cpus_per_worker"),
                        ("weight_decay: -.inf", "weight_decay"), ("peak_tflops: .nan", "peak_tflops"),
                        ("market: [spot]", "market"), ("model_size: [tiny]", "model_size")]:
        path.write_text(f"data: /d\nstorage_path: /s\n{body}\n")
        with pytest.raises(ConfigError) as info:
            TrainConfig.from_yaml(path)
        assert f"{field}: " in str(info.value) and str(info.value).startswith(str(path)), (body, info.value)
    path.write_text("data: /d\nstorage_path: /s\nsteps: 30\ncompile: false\nlr: 1e-3\n")
    cfg = TrainConfig.from_yaml(path)
    assert (cfg.steps, cfg.compile, cfg.lr) == (30, False, 1e-3)


def test_cluster_configs_refuse_non_finite_numbers_and_scalars_ray_would_read_otherwise(tmp_path):
    from elasticml.cluster.config import load_cluster_spec

    local = (REPO / "cluster_configs" / "local.yaml").read_text()
    for old, new, words in [("idle_timeout_minutes: 0.25", "idle_timeout_minutes: .inf", "idle_timeout_minutes"),
                            ("idle_timeout_minutes: 0.25", "idle_timeout_minutes: .nan", "finite"),
                            ("  launch_multiple: true", "  launch_multiple: yes", "'yes' reads as string"),
                            ("max_workers: 6", "max_workers: 1:30", "'1:30'"),
                            ("max_workers: 6", "max_workers: 6\nmax_workers: 60", "duplicate key 'max_workers'")]:
        path = tmp_path / "c.yaml"
        path.write_text(local.replace(old, new, 1))
        with pytest.raises(ConfigError, match=words):
            load_cluster_spec(path)


def test_yaml_embedded_in_kuberay_manifests_goes_through_the_same_loader():
    from elasticml.provision.kuberay_rules import ManifestError, validate_manifest

    for kind, key, text, words in [
        ("rayjob", "runtimeEnvYAML", "env_vars: &e {A: '1'}\nconfig: *e\n", "anchor &e"),
        ("rayjob", "runtimeEnvYAML", "pip: [a]\npip: [b]\n", "duplicate key 'pip'"),
        ("rayservice", "serveConfigV2", "applications:\n- name: a\n  args: {flag: off}\n", "'off' reads as string"),
        ("rayservice", "serveConfigV2", "applications: [" * 100 + "]" * 100, "nested deeper"),
    ]:
        doc = load_yaml((REPO / f"cluster_configs/kuberay/aws-cpu-{kind}.yaml"), source=kind)
        doc["spec"][key] = text
        with pytest.raises(ManifestError, match=words) as info:
            validate_manifest(doc)
        assert info.value.field == f"spec.{key}"


def test_a_serve_deploy_file_read_as_a_release_base_goes_through_the_same_loader(tmp_path):
    from elasticml.serve.release import read_base

    path = tmp_path / "serve.yaml"
    path.write_text("applications:\n- name: completion\n  args: {checkpoint: /a, checkpoint: /b}\n")
    with pytest.raises(ConfigError, match="base: .*duplicate key 'checkpoint'"):
        read_base(path, "completion")
    with pytest.raises(ConfigError, match="no such file"):
        read_base(tmp_path / "nope.yaml", "completion")


# -- the same through the real CLI: one line on stderr, exit 2 ---------------------------
@pytest.mark.parametrize("body, words", [
    (bomb(), ["line 3, column 15", "anchor &a"]),
    ("name: job\ntenant: acme\nregions: " + "[" * 5000 + "]" * 5000 + "\n", ["nested deeper than 64"]),
    ("name: job\ntenant: acme\n1: x\n", ["line 3, column 1", "must be a string, got integer"]),
    ("name: job\ntenant: acme\nmax_workers: " + "9" * 4000 + "\n", ["an integer of 4000 digits"]),
    ("name: job\ntenant: acme\nmax_workers: " + "9" * 5000 + "\n", ["an integer of 5000 digits"]),
    ("name: job\ntenant: acme\ntenant: payments\n", ["line 3, column 1", "duplicate key 'tenant'"]),
    ("name: job\ntenant: acme\nmax_workers: 1:30\n", ["max_workers", "must be an integer, got str '1:30'"]),
    ("name: job\ntenant: acme\n# " + "x" * MAX_BYTES + "\n", [f"larger than {MAX_BYTES} bytes"]),
    ("name: job\ntenant: acme\nspot_policy: [a]\n", ["spot_policy", "must be one of"]),
], ids=["alias-bomb", "deep", "int-key", "4000-digits", "5000-digits", "duplicate", "sexagesimal", "size",
        "unhashable"])
def test_scheduler_validate_refuses_hostile_yaml_in_one_line_with_exit_2(tmp_path, body, words):
    spec = tmp_path / "w.yaml"
    spec.write_text(body)
    assert_one_line_error(run("scheduler", "validate", str(spec)), "w.yaml", *words)


def test_scheduler_validate_refuses_a_file_that_is_not_utf8(tmp_path):
    spec = tmp_path / "w.yaml"
    spec.write_bytes("name: café\ntenant: acme\n".encode("latin-1"))
    assert_one_line_error(run("scheduler", "validate", str(spec)), "w.yaml", "not UTF-8")


# -- error messages cut a value before they format it --------------------------------------
def test_config_errors_format_a_huge_value_cut_never_whole():
    from elasticml.dataconf import check_choice, check_number, check_text, from_mapping, shown
    from elasticml.scheduler.spec import WorkloadSpec

    huge = "x" * 10_000_000
    huge_bytes = huge.encode()
    tracemalloc.start()
    try:
        for check in (lambda: check_number([huge] * 3, field="f", lo=0, hi=1),
                      lambda: check_number(huge_bytes, field="f", lo=0, hi=1),
                      lambda: check_choice(huge, ("a", "b"), field="f"),
                      lambda: check_text(huge, field="f", max_len=10),
                      lambda: WorkloadSpec(name="job", tenant="acme", kind=[huge]),  # type: ignore[arg-type]
                      lambda: from_mapping(WorkloadSpec, {huge: 1, 2: 3, **{f"k{i}": 0 for i in range(1000)}},
                                           source="s")):
            with pytest.raises(ConfigError) as info:
                check()
            assert len(str(info.value)) < 700, len(str(info.value))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, peak  # bytes: not one copy of the 10 MB value
    with pytest.raises(ConfigError, match=r"got <an integer of about 5001 digits>"):
        check_number(10**5000, field="f", lo=0, hi=1, integer=True)  # repr() itself would raise past 4,300
    assert "and 991 more" in str(pytest.raises(ConfigError, from_mapping, WorkloadSpec,
                                               {f"k{i}": 0 for i in range(1001)}, source="s").value)
    assert shown(1.5) == "1.5" and shown(None) == "None" and shown("ab") == "'ab'" and shown(object()) == "<object>"


# -- every YAML the repository ships ------------------------------------------------------
SHIPPED = sorted(p for d in ("cluster_configs", "serve_apps", "jobs") for p in (REPO / d).rglob("*.y*ml"))


def test_the_repository_ships_yaml_to_check():
    assert len(SHIPPED) >= 20 and any(p.parent.name == "serve_apps" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_every_shipped_yaml_loads_strictly_the_same_as_before_and_validates(path):
    from elasticml.cluster.config import load_cluster_spec
    from elasticml.provision.kuberay_rules import CRD_FILES, validate_manifest
    from elasticml.provision.values import load_values
    from elasticml.repo import SITE_VALUES_EXAMPLE, cluster_yamls
    from elasticml.serve.release import read_base

    docs = load_yaml_documents(path, source=str(path), agree_with_yaml11=True)
    assert docs == list(yaml.safe_load_all(path.read_text()))  # the same values under YAML 1.1 and 1.2
    if path in cluster_yamls():
        load_cluster_spec(path)
    elif path == SITE_VALUES_EXAMPLE:
        load_values(path)
    for doc in docs:
        if (doc.get("apiVersion"), doc.get("kind")) in CRD_FILES:
            validate_manifest(doc)  # with its serveConfigV2 / runtimeEnvYAML through the loader
    if path.parent.name == "serve_apps":
        for app in docs[0]["applications"]:
            assert read_base(path, app["name"])[0] == (app.get("args") or {})
