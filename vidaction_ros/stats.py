"""Bounded latency samples with percentiles (pure; used by nodes' logs and diagnostics and the benches)."""
from __future__ import annotations

import collections
import math

import numpy as np


class LatencyWindow:
    def __init__(self, size: int = 1000):
        self._samples = collections.deque(maxlen=size)

    def add(self, ms: float) -> None:
        if ms == ms and not math.isinf(ms):  # NaN marks an unmeasured stage: skip it
            self._samples.append(ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self._samples, q)) if self._samples else float('nan')

    def __len__(self) -> int:
        return len(self._samples)

    def summary(self) -> dict:
        return {'n': len(self._samples), 'p50_ms': self.percentile(50), 'p99_ms': self.percentile(99)}
