"""Two-tier temporal memory: the short window plus a long-horizon keyframe tier (no ROS imports).

The short window (:class:`~vidaction_ros.memory.window.TemporalMemory`, e.g. 300 frames / 30 s) answers "what
is around me now" and forgets quickly on purpose, so a scene from minutes ago never passes for the
present. Some questions need a longer horizon: "what did the scene look like 2 min ago?", "have I seen
this place before?". The long tier is a second, bounded ``TemporalMemory`` holding *keyframes* only,
with its own (longer) TTL and its own capacity, so RAM and latency stay flat however long the robot runs.

Keyframe rule (:func:`is_keyframe`), per inserted frame, against the last keyframe:

* the first frame after start / reset is a keyframe;
* a frame ``keyframe_interval_s`` or more after the last keyframe is one (downsampling: the tier covers
  its whole horizon at a known spacing, so a time lookup N minutes back lands within interval/2);
* a frame whose cosine to the last keyframe is ``keyframe_novelty_cos`` or less is one, provided
  ``keyframe_min_interval_s`` has passed (novelty: a new place is kept even between interval ticks; the
  minimum spacing stops a flickering scene from flooding the tier and shrinking its horizon).

Novelty is measured against the last keyframe rather than the window: during a smooth pan every frame is
close to its predecessor, so "far from everything in the window" would never fire, while the drift from
the last keyframe accumulates until it does. It also costs one dot product per frame.

Queries take the same arguments as ``TemporalMemory`` (ages relative to the newest inserted frame) and
search both tiers; a keyframe still inside the window is reported once. The ``tiers`` argument restricts a
query to ``'recent'`` or ``'long'``.
"""
from __future__ import annotations

import threading

import numpy as np

from .entries import InsertResult, MemoryEntry, MemoryInputError
from .validation import _finite_float, _nonnegative_float, _positive_float
from .window import TemporalMemory

__all__ = ['TieredMemory', 'is_keyframe', 'TIERS']

TIERS = ('all', 'recent', 'long')


def is_keyframe(stamp_s: float, vector: np.ndarray, last_stamp_s: float | None, last_vector: np.ndarray | None,
                interval_s: float, novelty_cos: float, min_interval_s: float) -> bool:
    """The keyframe rule (see the module docstring); vectors are unit length."""
    if last_stamp_s is None or last_vector is None:
        return True
    dt = stamp_s - last_stamp_s
    if dt >= interval_s:
        return True
    return dt >= min_interval_s and float(np.dot(vector, last_vector)) <= novelty_cos


class TieredMemory:
    """A short window and a long keyframe tier behind the ``TemporalMemory`` query API (thread-safe).

    Parameters
    ----------
    dim, capacity, ttl_s, max_future_s: the short window (as ``TemporalMemory``).
    long_capacity, long_ttl_s: the keyframe tier's bounds; its TTL runs on the stream's message time
        (every insert), not only when a keyframe arrives.
    keyframe_interval_s, keyframe_novelty_cos, keyframe_min_interval_s: the keyframe rule. With
        ``long_capacity >= long_ttl_s / keyframe_min_interval_s`` (the defaults: 1000 >= 600) the tier can
        never fill before its TTL, so its horizon is always the full ``long_ttl_s``. On the demo video
        the CPU backend's frames jump often (a person detection toggling), and the defaults keep ~45
        keyframes a minute, three quarters of them for novelty.
    storage: vector copy element type for both tiers (``STORAGE_CHOICES``).
    **index_kwargs: ``ef_construction``, ``M``, ``ef_search``, ``exact_threshold``, ``random_seed`` for
        both tiers.
    """

    def __init__(self, dim: int, capacity: int = 300, ttl_s: float = 30.0, long_capacity: int = 1000,
                 long_ttl_s: float = 600.0, keyframe_interval_s: float = 2.0, keyframe_novelty_cos: float = 0.8,
                 keyframe_min_interval_s: float = 1.0, max_future_s: float = 5.0, storage: str = 'float32',
                 logger=None, **index_kwargs) -> None:
        self._interval = _positive_float('keyframe_interval_s', keyframe_interval_s)
        self._min_interval = _nonnegative_float('keyframe_min_interval_s', keyframe_min_interval_s)
        if self._min_interval > self._interval:
            raise ValueError(f'keyframe_min_interval_s={keyframe_min_interval_s!r} exceeds '
                             f'keyframe_interval_s={keyframe_interval_s!r}')
        self._novelty = _finite_float('keyframe_novelty_cos', keyframe_novelty_cos, ValueError)
        if not -1.0 <= self._novelty <= 1.0:
            raise ValueError(f'keyframe_novelty_cos must be in [-1, 1], got {keyframe_novelty_cos!r}')
        long_ttl = _positive_float('long_ttl_s', long_ttl_s)
        if long_ttl < self._interval:
            # The tier would hold at most one interval keyframe at a time: almost certainly a unit mistake.
            raise ValueError(f'long_ttl_s={long_ttl_s!r} is shorter than keyframe_interval_s={keyframe_interval_s!r}')
        self.recent = TemporalMemory(dim, capacity=capacity, ttl_s=ttl_s, max_future_s=max_future_s,
                                     storage=storage, logger=logger, **index_kwargs)
        # The long tier only ever sees stamps the window has accepted, so it needs no future check; a reset
        # of the window clears it explicitly (below) before it could see time going backwards itself.
        self.long = TemporalMemory(dim, capacity=long_capacity, ttl_s=long_ttl, max_future_s=max_future_s,
                                   storage=storage, logger=logger, **index_kwargs)
        self._lock = threading.Lock()
        self._newest: float | None = None  # newest stamp inserted since start / reset: the age reference
        self._last_kf_stamp: float | None = None
        self._last_kf_vec: np.ndarray | None = None
        self._n_keyframes = 0

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self.recent.dim

    @property
    def capacity(self) -> int:
        return self.recent.capacity

    @property
    def ttl_s(self) -> float:
        return self.recent.ttl_s

    @property
    def long_capacity(self) -> int:
        return self.long.capacity

    @property
    def long_ttl_s(self) -> float:
        return self.long.ttl_s

    @property
    def storage(self) -> str:
        return self.recent.storage

    @property
    def size(self) -> int:
        """Frames in the short window (the long tier's count is ``long_size``)."""
        return self.recent.size

    def __len__(self) -> int:
        return self.size

    @property
    def long_size(self) -> int:
        return self.long.size

    @property
    def newest_stamp_s(self) -> float | None:
        """The age reference: the newest stamp inserted since start / reset (None when both tiers are empty)."""
        with self._lock:
            if self._newest is None or (self.recent.size == 0 and self.long.size == 0):
                return None
            return self._newest

    @property
    def oldest_stamp_s(self) -> float | None:
        with self._lock:
            olds = [t for t in (self.recent.oldest_stamp_s, self.long.oldest_stamp_s) if t is not None]
            return min(olds) if olds else None

    # ------------------------------------------------------------------ writes

    def insert(self, sequence: int, stamp_s: float, vector, now_s: float | None = None,
               defer_index: bool = False) -> InsertResult:
        """Insert into the window (validation, TTL, capacity, reset as ``TemporalMemory.insert``), apply the
        long tier's TTL at this stamp, and keep the frame in the long tier when it is a keyframe.
        ``defer_index``: the graph inserts of both tiers wait for :meth:`flush_index` (see the window's).

        The result describes the window (``evicted`` counts window evictions) plus ``keyframe``."""
        with self._lock:
            res = self.recent.insert(sequence, stamp_s, vector, now_s=now_s,   # raises on bad input
                                     defer_index=defer_index)
            stamp = float(stamp_s)
            if res.reset:
                # Time went backwards: the long tier's frames are from another "future" too.
                self.long.clear()
                self._last_kf_stamp = self._last_kf_vec = None
                self._newest = None
            self._newest = stamp if self._newest is None else max(self._newest, stamp)
            self.long.evict_expired(self._newest)
            vec = np.asarray(vector, dtype=np.float64).reshape(-1)
            vec = vec / np.linalg.norm(vec)  # validated non-zero and finite by the window above
            keyframe = is_keyframe(stamp, vec, self._last_kf_stamp, self._last_kf_vec, self._interval,
                                   self._novelty, self._min_interval)
            if keyframe:
                self.long.insert(sequence, stamp, vec, defer_index=defer_index)
                self._last_kf_stamp, self._last_kf_vec = stamp, vec
                self._n_keyframes += 1
            return InsertResult(window_size=res.window_size, evicted=res.evicted, reset=res.reset,
                                keyframe=keyframe)

    def flush_index(self) -> None:
        """Add both tiers' deferred frames to their graphs."""
        with self._lock:
            self.recent.flush_index()
            self.long.flush_index()

    def evict_expired(self, now_stamp_s: float) -> int:
        """Apply both TTLs at ``now_stamp_s`` (message time); returns entries evicted from both tiers."""
        with self._lock:
            return self.recent.evict_expired(now_stamp_s) + self.long.evict_expired(now_stamp_s)

    def clear(self) -> None:
        with self._lock:
            self.recent.clear()
            self.long.clear()
            self._newest = self._last_kf_stamp = self._last_kf_vec = None

    # ------------------------------------------------------------------ queries

    def knn(self, vector, k: int = 5, min_age_s: float = 0.0, max_age_s: float | None = None,
            exclude_sequence: int | None = None, at_stamp_s: float | None = None,
            tiers: str = 'all') -> list[MemoryEntry]:
        """Up to ``k`` entries most similar to ``vector`` over the chosen tiers, best first (ties: newer
        first); ages as in ``TemporalMemory.knn``, from ``at_stamp_s`` or the newest inserted stamp."""
        chosen = self._tiers(tiers)
        with self._lock:
            if self._newest is None:
                # Still validate the query (a bad vector is an error even on an empty memory).
                self.recent.knn(vector, k=k, min_age_s=min_age_s, max_age_s=max_age_s,
                                exclude_sequence=exclude_sequence, at_stamp_s=at_stamp_s)
                return []
            ref = self._newest if at_stamp_s is None else at_stamp_s
            found: list[MemoryEntry] = []
            for tier in chosen:
                found += tier.knn(vector, k=k, min_age_s=min_age_s, max_age_s=max_age_s,
                                  exclude_sequence=exclude_sequence, at_stamp_s=ref)
        return _merge(found, lambda e: (-e.similarity, -e.stamp_s))[:k]

    def nearest_in_time(self, stamp_s: float, vector=None, tiers: str = 'all') -> MemoryEntry | None:
        """The entry (over the chosen tiers) whose stamp is nearest to ``stamp_s`` (ties: the newer)."""
        target = _finite_float('stamp_s', stamp_s)
        chosen = self._tiers(tiers)
        with self._lock:
            cands = [e for e in (t.nearest_in_time(target, vector) for t in chosen) if e is not None]
        if not cands:
            return None
        return min(cands, key=lambda e: (abs(e.stamp_s - target), -e.stamp_s))

    def lookback(self, vector, lookback_s: float, tolerance_s: float | None = None,
                 at_stamp_s: float | None = None, tiers: str = 'all') -> MemoryEntry | None:
        """The scene ``lookback_s`` before ``at_stamp_s`` (default: the newest stamp) from either tier, or None
        when nothing lies within ``tolerance_s`` (default ``lookback_s / 2``) of that time.

        Past the window's TTL the answer is the nearest keyframe: with the interval rule it is at most
        ``keyframe_interval_s / 2`` off while the long tier still covers that time."""
        lb = _positive_float('lookback_s', lookback_s, MemoryInputError)
        tol = lb / 2.0 if tolerance_s is None else _nonnegative_float('tolerance_s', tolerance_s, MemoryInputError)
        at = None if at_stamp_s is None else _finite_float('at_stamp_s', at_stamp_s)
        with self._lock:
            ref = self._newest if at is None else at
            if ref is None:
                self.recent.lookback(vector, lb)  # validates the vector; empty -> None
                return None
            target = ref - lb
            chosen = self._tiers(tiers)
            cands = [e for e in (t.nearest_in_time(target, vector) for t in chosen) if e is not None]
        if not cands:
            return None
        best = min(cands, key=lambda e: (abs(e.stamp_s - target), -e.stamp_s))
        return best if abs(best.stamp_s - target) <= tol else None

    def vector_of(self, sequence: int) -> np.ndarray | None:
        with self._lock:
            v = self.recent.vector_of(sequence)
            return v if v is not None else self.long.vector_of(sequence)

    def entries(self, tiers: str = 'all') -> list[MemoryEntry]:
        """Every entry of the chosen tiers, oldest first, each frame once (similarity nan)."""
        chosen = self._tiers(tiers)
        with self._lock:
            found = [e for t in chosen for e in t.entries()]
        return _merge(found, lambda e: e.stamp_s)

    def stats(self) -> dict:
        """The window's stats, plus the long tier's under ``long_*`` keys and the keyframe count."""
        with self._lock:
            out = self.recent.stats()
            for key, value in self.long.stats().items():
                out[f'long_{key}'] = value
            out['keyframes'] = self._n_keyframes
            return out

    # ------------------------------------------------------------------ internals

    def _tiers(self, tiers: str) -> tuple[TemporalMemory, ...]:
        if tiers == 'all':
            return (self.recent, self.long)
        if tiers == 'recent':
            return (self.recent,)
        if tiers == 'long':
            return (self.long,)
        raise MemoryInputError(f'tiers must be one of {TIERS}, got {tiers!r}')


def _merge(entries: list[MemoryEntry], key) -> list[MemoryEntry]:
    """Sort by ``key`` and drop the second report of a frame kept in both tiers (same sequence and stamp)."""
    seen: set[tuple[int, float]] = set()
    out = []
    for e in sorted(entries, key=key):
        ident = (e.sequence, e.stamp_s)
        if ident not in seen:
            seen.add(ident)
            out.append(e)
    return out
