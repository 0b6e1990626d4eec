"""Off the hot path: the frame ring (the last K frames by sequence number) and the latest-wins worker (one
thread behind one waiting slot; submit() never blocks)."""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


# -- frames --------------------------------------------------------------------------------------------------
class FrameRing:
    """The last `capacity` frames by sequence number. Thread-safe; put() and get() are O(1).

    Frames are kept as given: the caller hands in an array it owns (a private copy from the shared-memory
    ring, a decoded image, or the camera's own array in composed mode, which is never written again)."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise ValueError(f'frame ring capacity must be >= 1, got {capacity}')
        self.capacity = capacity
        self._frames: collections.OrderedDict[int, tuple[float, np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.newest: int | None = None
        self.restarts = 0

    def put(self, sequence: int, stamp_s: float, frame: np.ndarray) -> None:
        with self._lock:
            if self.newest is not None and sequence < self.newest:
                # The camera restarted (sequences start at 0 again): old numbers now name other frames.
                self._frames.clear()
                self.restarts += 1
            self._frames[sequence] = (stamp_s, frame)
            self._frames.move_to_end(sequence)
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)
            self.newest = sequence

    def get(self, sequence: int) -> np.ndarray | None:
        with self._lock:
            item = self._frames.get(sequence)
            return None if item is None else item[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)


# -- the queue -----------------------------------------------------------------------------------------------
@dataclass
class Job:
    item: Any
    enqueued: float                 # time.monotonic() at submit
    dropped_before: int = 0         # filled in when the worker takes it


class LatestWinsWorker:
    """One worker thread behind one waiting slot; submit() never blocks the caller.

    While `handle` runs, a submitted job waits in the slot; a newer one replaces it (the replaced job is
    counted in `dropped` and in the next handled job's `dropped_before`). An exception in `handle` is
    logged and the worker carries on. `nice` (Linux) lowers the worker thread's CPU priority, so on a
    loaded machine the hot-path processes win the CPU; threads it starts (OpenCV, torch pools created
    lazily from it) inherit the niceness."""

    def __init__(self, handle: Callable[[Job], None], name: str = 'escalation-worker', nice: int = 0,
                 logger=None):
        if not 0 <= nice <= 19:
            raise ValueError(f'nice must be in 0..19, got {nice}')
        self._handle = handle
        self._nice = nice
        self._log = logger or logging.getLogger('vidaction_ros.escalation')
        self._cond = threading.Condition()
        self._pending: Job | None = None
        self._dropped_since = 0
        self._stop = False
        self.busy = False
        self.submitted = 0
        self.dropped = 0
        self.handled = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """Queue `item`; False when it replaced a waiting job (that one is dropped). Never blocks."""
        job = Job(item, time.monotonic())
        with self._cond:
            if self._stop:
                raise RuntimeError('worker is closed')
            replaced = self._pending is not None
            if replaced:
                self.dropped += 1
                self._dropped_since += 1
            self._pending = job
            self.submitted += 1
            self._cond.notify()
        return not replaced

    def _run(self) -> None:
        if self._nice:
            try:
                # Linux: a thread is a task with its own nice value (setpriority on its TID).
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._nice)
            except (OSError, AttributeError) as err:
                self._log.warning(f'could not lower the escalation worker priority: {err}')
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._pending is None:      # stopping and nothing left
                    return
                job, self._pending = self._pending, None
                job.dropped_before, self._dropped_since = self._dropped_since, 0
                self.busy = True
            try:
                self._handle(job)
            except Exception as err:   # noqa: BLE001 - one failed analysis must not stop the worker
                self.failed += 1
                self._log.error(f'escalation handler failed: {err!r}')
            finally:
                with self._cond:
                    self.busy = False
                    self.handled += 1
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is waiting or running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self.busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 10.0, drain: bool = False) -> None:
        """Stop the worker. The job running finishes; a waiting one runs only with drain=True."""
        with self._cond:
            self._stop = True
            if not drain and self._pending is not None:
                self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)
