"""A spot market on the local cluster: a real availability trace replayed, time-compressed.

Who owns what: one JSON file per cluster (`spot_market.json` in its folder),
written by `elasticml cluster up --spot-trace T` and afterwards only by the
scheduler, which holds and releases the market's clock. Three parties read it
and act on it:

- the node provider (`SpotMarketProvider`, inside Ray's autoscaler): while the
  trace says spot is unavailable, launching a spot node fails as a cloud's
  capacity error does (the autoscaler records a failed launch and retries),
  and spot nodes still running `notice_seconds` after an outage began are
  taken away, as a cloud reclaims them;
- the market driver (`MarketDriver`, a detached actor on the head): at each
  change it gives the scheduler the interruption notice a spot node's IMDS
  watcher would (the scheduler re-places the work and drains the nodes as
  preempted, so training checkpoints at once), and tells it when the pool can
  be launched again;
- the scheduler: its clock, the pool's price and history come from the market.

The clock: market seconds are wall seconds less the time the clock was held;
trace hour = start_hour + (market seconds - t0) / seconds_per_hour. The
scheduler holds it while it carries out a move (seconds of real time that the
compression would inflate into hours) and charges the move as the job's restart
hours instead, as the simulator does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from elasticml.dataconf import check_number
from elasticml.errors import ConfigError, ElasticMLError, SpotCapacityError

log = logging.getLogger(__name__)

FILE_NAME = "spot_market.json"
_EPS = 1e-9


@dataclass(kw_only=True, frozen=True)
class MarketSettings:
    """What `cluster up --spot-trace` is told; validated here, once."""

    trace: str
    """A trace file: {"metadata": {"gap_seconds": G}, "data": [0/1, ...]}, 0 = spot available."""
    start_hour: float = 0.0
    """The trace hour the replay starts at; the trace before it is the pool's history."""
    seconds_per_hour: float = 20.0
    """Wall seconds per trace hour."""
    price_ratio: float = 3.0
    """On-demand price per hour / spot price per hour."""
    notice_seconds: float = 8.0
    """Market seconds between an outage's start and the reclaim of spot nodes still running."""
    notices: bool = True
    """Give the scheduler interruption notices; off, it learns of outages only from failed launches
    and lost nodes (a cloud without a notice, or a watcher that is not running)."""

    def __post_init__(self) -> None:
        check_number(self.start_hour, field="start_hour", lo=0, hi=8760 * 10)
        check_number(self.seconds_per_hour, field="seconds_per_hour", lo=0.5, hi=3600)
        check_number(self.price_ratio, field="price_ratio", lo=1, hi=1000)
        check_number(self.notice_seconds, field="notice_seconds", lo=0, hi=3600)
        if not isinstance(self.notices, bool):
            raise ConfigError(f"must be true or false, got {self.notices!r}", field="notices")


@dataclass(kw_only=True, frozen=True)
class MarketClock:
    t0: float
    """Wall time at which the replay started (trace hour = start_hour)."""
    held_s: float = 0.0
    """Wall seconds the clock was held, in total, not counting a hold in progress."""
    hold_since: float | None = None


class SpotMarket:
    """The replayed market: settings, the trace and the clock, read from the market file."""

    def __init__(self, settings: MarketSettings, clock: MarketClock, path: Path | None = None) -> None:
        from elasticml.scheduler.traces import load_trace

        self.settings = settings
        self.clock = clock
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.availability, self.gap_hours = load_trace(settings.trace)
        start_tick = math.floor(settings.start_hour / self.gap_hours + _EPS)
        if start_tick >= len(self.availability):
            raise ConfigError(
                f"start hour {settings.start_hour:g} is past the trace's end "
                f"({len(self.availability) * self.gap_hours:.1f} h)", field="start_hour", source=settings.trace)

    # -- the file ------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, settings: MarketSettings, *, t0: float | None = None) -> SpotMarket:
        market = cls(settings, MarketClock(t0=time.time() if t0 is None else t0), path)
        market._write()
        return market

    @classmethod
    def load(cls, path: str | Path) -> SpotMarket:
        raw = json.loads(Path(path).read_text())
        return cls(MarketSettings(**raw["settings"]), MarketClock(**raw["clock"]), Path(path))

    def _write(self) -> None:
        from elasticml.storage import write_text_atomic

        assert self.path is not None
        write_text_atomic(str(self.path), json.dumps({"settings": asdict(self.settings), "clock": asdict(self.clock)}))
        self._stamp = _stamp(self.path)

    def reload_clock(self) -> None:
        """Pick up holds, releases and restarts written since this object last read the file."""
        assert self.path is not None
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self.clock = MarketClock(**json.loads(self.path.read_text())["clock"])
            self._stamp = stamp

    def restart(self, *, held: bool) -> None:
        """Start the replay again at start_hour now (held: the clock waits for the first placement)."""
        now = time.time()
        self.clock = MarketClock(t0=now, hold_since=now if held else None)
        self._write()

    # -- the clock -------------------------------------------------------------------
    def now(self, wall: float | None = None) -> float:
        """Market seconds: wall seconds less the time held."""
        wall = time.time() if wall is None else wall
        held = self.clock.held_s + (wall - self.clock.hold_since if self.clock.hold_since is not None else 0.0)
        return wall - held

    def hour(self, now: float | None = None) -> float:
        """The trace hour at market time `now`."""
        now = self.now() if now is None else now
        return self.settings.start_hour + max(0.0, now - self.clock.t0) / self.settings.seconds_per_hour

    def held(self) -> bool:
        return self.clock.hold_since is not None

    def hold(self) -> None:
        if self.clock.hold_since is None:
            self.clock = replace(self.clock, hold_since=time.time())
            self._write()

    def release(self) -> None:
        if self.clock.hold_since is not None:
            wall = time.time()
            self.clock = replace(self.clock, held_s=self.clock.held_s + wall - self.clock.hold_since, hold_since=None)
            self._write()

    # -- the trace ---------------------------------------------------------------------
    def tick(self, hour: float) -> int:
        return math.floor(hour / self.gap_hours + _EPS)

    def available(self, hour: float | None = None) -> bool:
        """Spot available at trace hour `hour` (now when None); past the trace's end it is not."""
        i = self.tick(self.hour() if hour is None else hour)
        return bool(self.availability[i]) if i < len(self.availability) else False

    def history(self, hour: float | None = None) -> list[bool]:
        """Availability of every tick before the one at `hour`: what the zone showed before now."""
        return list(self.availability[: self.tick(self.hour() if hour is None else hour)])

    def outage_began(self, hour: float) -> float | None:
        """The trace hour at which the outage under way at `hour` began; None when spot is available."""
        i = self.tick(hour)
        if i < len(self.availability) and self.availability[i]:
            return None
        j = min(i, len(self.availability))
        while j > 0 and not self.availability[j - 1]:
            j -= 1
        return j * self.gap_hours


def _stamp(path: Path) -> tuple[int, int, int]:
    """Every write is a rename of a new file: a new inode, whatever the clock's granularity."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def market_path(cluster_dir: Path) -> Path:
    return cluster_dir / FILE_NAME


# -- the node provider ---------------------------------------------------------------------
from elasticml.cluster.provider import LocalNodeProvider

try:
    from ray.autoscaler.tags import TAG_RAY_USER_NODE_TYPE
except ImportError:  # pragma: no cover - Ray is a dependency; this keeps the module importable without it
    TAG_RAY_USER_NODE_TYPE = "ray-user-node-type"


class SpotMarketProvider(LocalNodeProvider):
    """The local cluster's provider, with spot node types that follow the replayed market.

    Provider config keys beside the fake provider's: `spot_market` (the market file)
    and `spot_node_types` (the node types that are spot).
    """

    def __init__(self, provider_config: dict[str, Any], cluster_name: str) -> None:
        super().__init__(provider_config, cluster_name)
        self._market = SpotMarket.load(provider_config["spot_market"])
        self._spot_types = frozenset(provider_config["spot_node_types"])
        self._stopping = threading.Event()
        threading.Thread(target=self._reclaim_forever, daemon=True, name="spot-reclaim").start()

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        node_type = tags.get(TAG_RAY_USER_NODE_TYPE)
        if node_type in self._spot_types:
            self._market.reload_clock()
            hour = self._market.hour()
            if not self._market.available(hour):
                raise SpotCapacityError(
                    f"InsufficientInstanceCapacity: no spot capacity for {node_type} at trace hour {hour:.2f}")
        return super().create_node_with_resources_and_labels(node_config, tags, count, resources, labels)

    def _reclaim_forever(self) -> None:
        while not self._stopping.wait(0.25):
            try:
                self._reclaim_once()
            except (OSError, ValueError, KeyError, ElasticMLError):
                continue  # the market file mid-replace, a node going away on its own: look again
            except Exception:  # noqa: BLE001 - a dead reclaim thread would silently end the market: say why, go on
                log.exception("the spot market's reclaim failed; it looks again")

    def _reclaim_once(self) -> None:
        self._market.reload_clock()
        hour = self._market.hour()
        began = self._market.outage_began(hour)
        if began is None:
            return
        notice_h = self._market.settings.notice_seconds / self._market.settings.seconds_per_hour
        if hour + _EPS < max(began, self._market.settings.start_hour) + notice_h:
            return
        with self.lock:
            doomed = [nid for nid, n in self._nodes.items() if n["tags"].get(TAG_RAY_USER_NODE_TYPE) in self._spot_types]
        for node_id in doomed:
            self.terminate_node(node_id)


def provider_overrides(path: Path, spot_node_types: list[str]) -> dict[str, Any]:
    """What the local autoscaling config's provider section gets for a replayed market."""
    return {"module": f"{__name__}.SpotMarketProvider", "spot_market": str(path),
            "spot_node_types": sorted(spot_node_types)}
