"""A progress bar on stderr for the command-line tools: tqdm when it is installed, else a plain one.

No dependency is required: without tqdm a terminal gets a one-line bar redrawn in place, and a log file or
pipe gets a line at every 10 % (a bar redrawn with carriage returns makes an unreadable log).
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int | None, desc: str = '', unit: str = 'frame', enabled: bool = True,
                 stream=None):
        self.total = total if total and total > 0 else None
        self.desc, self.unit = desc, unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tqdm = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=True)

    @property
    def _tty(self) -> bool:
        return bool(getattr(self.stream, 'isatty', lambda: False)())

    def update(self, n: int) -> None:
        """Set the absolute count (not an increment: callers know how many frames are done)."""
        if n <= self.n:
            return
        step, self.n = n - self.n, n
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.update(step)
            return
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= 0.1 or n == self.total:
                self._last_draw = now
                self.stream.write('\r' + self._line(now))
                self.stream.flush()
        elif self.total:
            decile = (10 * n) // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line(now) + '\n')
                self.stream.flush()

    def _line(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.n / elapsed
        if self.total:
            width = 30
            filled = int(width * self.n / self.total)
            bar = '#' * filled + '.' * (width - filled)
            left = (self.total - self.n) / rate if rate > 0 else float('inf')
            eta = f'{left:.0f} s left' if left != float('inf') else ''
            return f'{self.desc} [{bar}] {self.n}/{self.total} {self.unit}s {rate:.1f}/s {eta}'.rstrip()
        return f'{self.desc} {self.n} {self.unit}s {rate:.1f}/s'

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._tty and self.n:
            self.stream.write('\n')
            self.stream.flush()
