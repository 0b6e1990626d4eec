"""Reasoning-rate subsampling: pick frames at 10-15 Hz out of a 30-60 fps stream by their stamps."""
from __future__ import annotations


class RateLimiter:
    """Lets a frame through when at least 1/rate_hz has passed (in frame time) since the last one.

    Scheduling on the stamp grid (next = last + period, not now + period) keeps the long-run rate exact
    when frame stamps jitter; a gap longer than a period resynchronises instead of bursting to catch up.
    """

    def __init__(self, rate_hz: float):
        if not rate_hz > 0:
            raise ValueError(f'rate_hz must be > 0, got {rate_hz}')
        self.period = 1.0 / rate_hz
        self._next: float | None = None

    def ready(self, stamp_s: float) -> bool:
        # Half a millisecond of slack: a 30 fps stamp grid sampled at 10 Hz must not slip a frame to rounding.
        if self._next is None or stamp_s + 5e-4 >= self._next or stamp_s < self._next - 2 * self.period:
            base = self._next if self._next is not None and 0 <= stamp_s - self._next < self.period else stamp_s
            self._next = base + self.period
            return True
        return False

    def reset(self) -> None:
        self._next = None
