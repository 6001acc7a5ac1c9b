"""The replay command refuses bad input before any cluster starts, naming the field and the numbers."""

import json
import re

import pytest

from elasticml.scheduler.replay import main

BASE = ["--job-hours", "1", "--deadline-hours", "2", "--restart-hours", "0.1", "--price-ratio", "3",
        "--seconds-per-hour", "20"]


def write(tmp_path, body) -> str:
    path = tmp_path / "t.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return str(path)


@pytest.mark.parametrize("body,extra,match", [
    ("{not json", [], "not valid JSON"),
    ({"metadata": {"gap_seconds": 600}, "data": [0, 2, 1] * 10}, [], r"data\[1\] is '2'"),
    ({"metadata": {"gap_seconds": 600}, "data": [0, True] * 10}, [], r"data\[1\] is 'True'"),
    ({"metadata": {"gap_seconds": 600}, "data": [0] * 6}, [], "covers 1h; start 0h \\+ deadline 2h runs past its end"),
    ({"metadata": {"gap_seconds": 600}, "data": [0] * 60}, ["--start-hour", "9"], "runs past its end"),
    ({"metadata": {"gap_seconds": float("nan")}, "data": [0] * 60}, [], "gap_seconds"),
    ({"metadata": {"gap_seconds": 600}, "data": [0] * 60}, ["--deadline-hours", "1.05"], "deadline 1.05h leaves no room for 1.0h of work plus one 0.1h restart"),
    ({"metadata": {"gap_seconds": 60}, "data": [0] * 600}, [], "seconds_per_hour"),
    ({"metadata": {"gap_seconds": 600}, "data": [0] * 60}, ["--policy", "yolo"], "policy"),
])
def test_bad_traces_and_numbers_are_refused_up_front(tmp_path, capsys, body, extra, match):
    assert main(["--trace", write(tmp_path, body), *BASE, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("replay: error: ")
    assert re.search(match, err), err
