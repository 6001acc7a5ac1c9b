"""Live spot prices and placement scores from EC2.

`LiveSpotPrices` offers the catalog's accessor shape for spot
(`hourly(instance_type, "spot", region)`), backed by EC2's
`DescribeSpotPriceHistory` (the newest price per availability zone; the
cheapest zone wins), and `placement_scores` from `GetSpotPlacementScores`
(1-10: how likely a spot request of that size is to succeed). Anything that
is not spot falls through to the versioned catalog.

Its EC2 client comes from `aws_client.py`, where every boto3 client is made;
`endpoint_url` points it elsewhere (tests use a server on 127.0.0.1).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from elasticml.labels import Market
from elasticml.scheduler.catalog import PriceCatalog


class LiveSpotPrices:
    def __init__(self, *, catalog: PriceCatalog | None = None, endpoint_url: str | None = None,
                 client_factory: Any = None, **client_kwargs: Any) -> None:
        self.catalog = catalog or PriceCatalog.load()
        self._endpoint_url = endpoint_url
        self._client_kwargs = client_kwargs
        self._factory = client_factory
        self._clients: dict[str, Any] = {}

    def _ec2(self, region: str) -> Any:
        if region not in self._clients:
            if self._factory is not None:
                self._clients[region] = self._factory(region)
            else:
                from elasticml.aws_client import client

                self._clients[region] = client("ec2", region=region, endpoint_url=self._endpoint_url,
                                               **self._client_kwargs)
        return self._clients[region]

    def spot_prices(self, instance_types: list[str], region: str) -> dict[str, dict[str, float]]:
        """{instance_type: {availability_zone: newest $/h}} from the last day of history."""
        paginator = self._ec2(region).get_paginator("describe_spot_price_history")
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
        newest: dict[tuple[str, str], tuple[dt.datetime, float]] = {}
        for page in paginator.paginate(InstanceTypes=instance_types, ProductDescriptions=["Linux/UNIX"], StartTime=since):
            for item in page.get("SpotPriceHistory", []):
                key = (item["InstanceType"], item.get("AvailabilityZone", region))
                stamp = item.get("Timestamp") or since
                if key not in newest or stamp > newest[key][0]:
                    newest[key] = (stamp, float(item["SpotPrice"]))
        out: dict[str, dict[str, float]] = {}
        for (itype, zone), (_, price) in newest.items():
            out.setdefault(itype, {})[zone] = price
        return out

    def hourly(self, instance_type: str, market: Market, region: str) -> float:
        """The catalog's accessor, live for spot (cheapest zone), catalog otherwise and as fallback."""
        if market == "spot":
            zones = self.spot_prices([instance_type], region).get(instance_type)
            if zones:
                return min(zones.values())
        return self.catalog.hourly(instance_type, market, region)

    def placement_scores(self, instance_types: list[str], region: str, target_capacity: int) -> dict[str, int]:
        """{availability zone or region: score 1-10} for a spot request of target_capacity instances."""
        resp = self._ec2(region).get_spot_placement_scores(
            InstanceTypes=instance_types, TargetCapacity=target_capacity, TargetCapacityUnitType="units",
            SingleAvailabilityZone=True, RegionNames=[region],
        )
        return {s.get("AvailabilityZoneId") or s["Region"]: int(s["Score"]) for s in resp.get("SpotPlacementScores", [])}
