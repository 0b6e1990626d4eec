"""Playback pacing for the bag player: bag time to wall-clock deadlines (pure; the player node is bag_player)."""
from __future__ import annotations

import math

from ..ingest.bags import NS


class Pacer:
    """Maps bag time to wall-clock deadlines at `rate` (2.0 = twice as fast; 0 = as fast as possible).

    Anchored at the first message of each pass (`restart`), so looping and late starts never make the player
    race to catch up with time that passed before it began.
    """

    def __init__(self, rate: float = 1.0):
        if not (rate >= 0 and math.isfinite(rate)):
            raise ValueError(f'rate must be a finite number >= 0 (0 = as fast as possible), got {rate}')
        self.rate = rate
        self._bag0: int | None = None
        self._wall0 = 0.0

    def restart(self, bag_time_ns: int, wall_s: float) -> None:
        self._bag0, self._wall0 = bag_time_ns, wall_s

    def deadline(self, bag_time_ns: int, wall_s: float) -> float:
        """Wall time at which the message stamped `bag_time_ns` is due (anchoring on the first call)."""
        if self._bag0 is None:
            self.restart(bag_time_ns, wall_s)
        if self.rate == 0:
            return wall_s
        return self._wall0 + (bag_time_ns - self._bag0) / NS / self.rate

    def bag_time_at(self, wall_s: float) -> int | None:
        """Playback (bag) time at wall time `wall_s`, for /clock; None before the first message."""
        if self._bag0 is None:
            return None
        if self.rate == 0:
            return self._bag0
        return self._bag0 + int(round((wall_s - self._wall0) * self.rate * NS))
