"""In-process frame store: pixels handed between composed nodes by reference (zero copies).

The camera puts the very array its capture thread produced; the embedder gets that same object back from
(slot, generation). Slots are a ring: a slot is reused after `slots` newer frames, and its generation
counter tells a late reader that its frame is gone instead of handing it a different frame. Arrays are
never written in place — the ring only drops its reference — so a consumer still holding a frame keeps it
alive and unchanged however far the ring moves on.
"""
from __future__ import annotations

import threading
from typing import Any

_STORES: dict[str, 'InprocFrameStore'] = {}
_STORES_LOCK = threading.Lock()


class FrameLost(LookupError):
    """The referenced frame is no longer available (slot overwritten, or store not in this process)."""


class InprocFrameStore:
    def __init__(self, name: str, slots: int = 8):
        if slots < 2:
            raise ValueError(f'slots must be >= 2, got {slots}')
        self.name = name
        self.slots = slots
        self._lock = threading.Lock()
        self._frames: list[Any] = [None] * slots
        self._generations = [0] * slots
        self._next = 0
        self.lost = 0

    def put(self, frame: Any) -> tuple[int, int]:
        with self._lock:
            slot = self._next
            self._next = (self._next + 1) % self.slots
            self._generations[slot] += 1
            self._frames[slot] = frame
            return slot, self._generations[slot]

    def get(self, slot: int, generation: int) -> Any:
        with self._lock:
            if not 0 <= slot < self.slots:
                raise FrameLost(f'store {self.name!r}: slot {slot} out of range (0..{self.slots - 1})')
            if self._generations[slot] != generation:
                self.lost += 1
                raise FrameLost(f'store {self.name!r}: slot {slot} now holds generation '
                                f'{self._generations[slot]}, frame of generation {generation} was overwritten')
            return self._frames[slot]


def open_store(name: str, slots: int = 8) -> InprocFrameStore:
    """The process-wide store of that name, created on first use."""
    with _STORES_LOCK:
        store = _STORES.get(name)
        if store is None:
            store = _STORES[name] = InprocFrameStore(name, slots)
        return store


def find_store(name: str) -> InprocFrameStore:
    with _STORES_LOCK:
        store = _STORES.get(name)
    if store is None:
        raise FrameLost(f'in-process frame store {name!r} is not in this process: the camera runs in another '
                        f'process, so run the nodes composed or set the camera parameter transport:=iox (same '
                        f'host) or transport:=image')
    return store


def close_store(name: str) -> None:
    with _STORES_LOCK:
        _STORES.pop(name, None)
