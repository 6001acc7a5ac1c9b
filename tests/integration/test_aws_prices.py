"""The boto3 adaptor against EC2 endpoints on loopback: moto's server, and a fake for what moto lacks."""

from __future__ import annotations

import http.server
import threading
import urllib.parse

import pytest

from elasticml.scheduler.aws_prices import LiveSpotPrices

pytestmark = pytest.mark.integration
CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_ec2(s3_server):
    return s3_server  # moto's server speaks EC2 on the same endpoint


def test_spot_prices_through_describe_spot_price_history(moto_ec2):
    live = LiveSpotPrices(endpoint_url=moto_ec2, **CREDS)
    prices = live.spot_prices(["m7i.large", "g5.xlarge"], "us-east-1")
    assert set(prices) <= {"m7i.large", "g5.xlarge"} and prices
    for zones in prices.values():
        assert all(z.startswith("us-east-1") for z in zones)
        assert all(p > 0 for p in zones.values())
    spot = live.hourly("m7i.large", "spot", "us-east-1")
    assert spot == min(prices["m7i.large"].values())
    # Other markets come from the versioned catalog.
    assert live.hourly("m7i.large", "on-demand", "us-east-1") == live.catalog.hourly("m7i.large", "on-demand", "us-east-1")


class _PlacementScores(http.server.BaseHTTPRequestHandler):
    """EC2's query protocol for GetSpotPlacementScores, which moto does not implement."""

    seen: list[dict[str, list[str]]] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        params = urllib.parse.parse_qs(body)
        type(self).seen.append(params)
        assert params["Action"] == ["GetSpotPlacementScores"]
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<GetSpotPlacementScoresResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            "<requestId>r-1</requestId><spotPlacementScoreSet>"
            "<item><region>us-east-1</region><availabilityZoneId>use1-az1</availabilityZoneId><score>9</score></item>"
            "<item><region>us-east-1</region><availabilityZoneId>use1-az4</availabilityZoneId><score>3</score></item>"
            "</spotPlacementScoreSet></GetSpotPlacementScoresResponse>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        self.wfile.write(xml)

    def log_message(self, *args):
        pass


def test_placement_scores_through_get_spot_placement_scores():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PlacementScores)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        live = LiveSpotPrices(endpoint_url=f"http://127.0.0.1:{server.server_port}", **CREDS)
        scores = live.placement_scores(["m7i.large"], "us-east-1", target_capacity=4)
    finally:
        server.shutdown()
    assert scores == {"use1-az1": 9, "use1-az4": 3}
    sent = _PlacementScores.seen[-1]
    assert sent["TargetCapacity"] == ["4"] and sent["InstanceType.1"] == ["m7i.large"]


def test_the_scheduler_refreshes_spot_pools_from_ec2(moto_ec2, tmp_path):
    """Prices from moto's DescribeSpotPriceHistory, scores from the fake GetSpotPlacementScores: both
    real EC2 protocol on loopback, through the one adaptor, into the scheduler's pools."""
    import boto3

    from elasticml.cluster import load_cluster_spec
    from tests.support.scheduler import Sched as SchedulerState

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PlacementScores)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        def ec2(region: str, endpoint: str):  # type: ignore[no-untyped-def]
            return boto3.client("ec2", region_name=region, endpoint_url=endpoint, **CREDS)

        class Split:
            """Spot prices from moto, placement scores from the fake: one client each, as one."""

            def __init__(self, region: str) -> None:
                self.prices = ec2(region, moto_ec2)
                self.scores = ec2(region, f"http://127.0.0.1:{server.server_port}")

            def get_paginator(self, name: str):  # type: ignore[no-untyped-def]
                return self.prices.get_paginator(name)

            def get_spot_placement_scores(self, **kw):  # type: ignore[no-untyped-def]
                return self.scores.get_spot_placement_scores(**kw)

        live = LiveSpotPrices(client_factory=Split)
        spec = load_cluster_spec(__import__("pathlib").Path(__file__).resolve().parents[2] / "cluster_configs" / "aws-cpu.yaml")
        state = SchedulerState(spec, str(tmp_path / "l.sqlite"))
        spot = next(p for p in state.pools if p.market == "spot")
        state.refresh_live_prices(live)
    finally:
        server.shutdown()
    zones = live.spot_prices([spot.instance_type], spot.region)[spot.instance_type]
    now = next(p for p in state.pools if p.node_type == spot.node_type)
    assert now.hourly_price == min(zones.values()) and now.placement_score == 9
    assert _PlacementScores.seen[-1]["InstanceType.1"] == [spot.instance_type]
