"""Prices as data: the versioned catalog (data/prices.csv) behind one typed accessor.

`PriceCatalog.hourly(instance_type, market, region)` is the only way the
scheduler reads a price. The catalog's header records its source and date; a
live source (`aws_prices.LiveSpotPrices`) offers the same accessor for spot.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from elasticml.errors import ConfigError
from elasticml.labels import Market

CATALOG_PATH = Path(__file__).with_name("data") / "prices.csv"


@dataclass(kw_only=True, frozen=True)
class InstancePrice:
    instance_type: str
    region: str
    vcpus: int
    gpus: int
    memory_gib: float
    on_demand: float
    reserved: float
    spot_typical: float
    interruption_per_hour: float


class PriceCatalog:
    def __init__(self, rows: list[InstancePrice], *, version: str) -> None:
        self.version = version
        self._rows = {(r.instance_type, r.region): r for r in rows}

    @classmethod
    def load(cls, path: str | Path = CATALOG_PATH) -> PriceCatalog:
        return _load(str(path))

    def entry(self, instance_type: str, region: str) -> InstancePrice:
        try:
            return self._rows[(instance_type, region)]
        except KeyError:
            raise ConfigError(
                f"no price for {instance_type} in {region} in the catalog (version {self.version}); add it to {CATALOG_PATH.name}",
                field="instance_type",
            ) from None

    def hourly(self, instance_type: str, market: Market, region: str) -> float:
        """Dollars per node-hour in that market."""
        e = self.entry(instance_type, region)
        return {"on-demand": e.on_demand, "reserved": e.reserved, "spot": e.spot_typical}[market]

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._rows


@lru_cache(maxsize=4)
def _load(path: str) -> PriceCatalog:
    lines = Path(path).read_text().splitlines()
    version = next((l.split("version", 1)[1].strip() for l in lines if l.startswith("#") and "version" in l), "unknown")
    reader = csv.DictReader(l for l in lines if not l.startswith("#"))
    rows = [
        InstancePrice(
            instance_type=r["instance_type"], region=r["region"], vcpus=int(r["vcpus"]), gpus=int(r["gpus"]),
            memory_gib=float(r["memory_gib"]), on_demand=float(r["on_demand"]), reserved=float(r["reserved"]),
            spot_typical=float(r["spot_typical"]), interruption_per_hour=float(r["interruption_per_hour"]),
        )
        for r in reader
    ]
    return PriceCatalog(rows, version=version)
