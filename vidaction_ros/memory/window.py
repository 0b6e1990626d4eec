"""Temporal memory: a sliding window of recent frame embeddings.

Pure core (no ROS imports): the memory node and the composed-mode policy both
wrap one :class:`TemporalMemory`.  The window holds the last ``capacity``
L2-normalised frame vectors that are at most ``ttl_s`` seconds older (in
*message* time) than the newest one, indexed by an hnswlib graph of a fixed
size.

Layout, and why it is cheap to keep consistent
----------------------------------------------
Every insert gets an internal label ``0, 1, 2, ...`` (never reused, also the
hnswlib label).  Every eviction rule removes the *oldest* entries (capacity
pops the oldest; TTL removes stamps below a cutoff, and stamps are
non-decreasing in insertion order up to a 1 microsecond jitter; a reset removes
everything), so the window is always the contiguous label range
``[first, next)``.  Label ``L`` lives in ring slot ``L % capacity`` of plain
numpy arrays (vectors, stamps, sequence numbers), so exact checks, time
lookups and ``vector_of`` never need hnswlib's ``get_items`` and a time range
maps to one or two contiguous slices of the vector array.

Query engines
-------------
* unrestricted k-NN: the hnswlib graph (flat latency as the window grows);
* time-restricted k-NN (``min_age_s`` / ``max_age_s`` / ``exclude_sequence``):
  hnswlib with a ``filter`` callable when many entries qualify, otherwise an
  exact numpy scan of the qualifying time slice (see ``exact_threshold``);
* time-strided coarse scan, merged into every HNSW query over a span of more
  than ``coarse_min_span`` entries: an exact scan of at most ``coarse_rows``
  evenly spaced window entries, then of the full neighbourhood (one stride
  either side) of the best ``coarse_top`` of them.  Video-aware: consecutive frames are close,
  so a scene is found through its nearest sample even where HNSW's greedy
  descent has no gradient to follow.  On a smooth 384-d random walk (locally a
  chain, globally like uniform random points) HNSW alone reaches recall@10 0.87
  at 30 000 entries and 0.55 at 300 000; with the merge 1.0 at both, for query
  p50 0.16 -> 0.39 ms and 0.20 -> 0.75 ms (bench/memory.py, 2 shared cores).
  Its cost is bounded by ``coarse_rows`` whatever the window size.  Below
  ``coarse_min_span`` HNSW alone already finds the true neighbours (recall@10
  1.0 at 3 000 entries) and the pass would only add its ~0.2 ms;
* similarities are always recomputed from the stored vectors, so all engines
  report the same numbers for the same entry.

Compact storage (``storage='float16'`` or ``'int8'``)
---------------------------------------------------
The ring keeps its own copy of every vector (exact scans, similarities, time
lookups, ``vector_of``).  That copy may be float16 (half the bytes) or int8 with
one float32 scale per vector (a quarter plus 4 bytes).  hnswlib itself always
stores float32 (its Python binding has no half or 8-bit space), so compact
storage shrinks our copy only.  Measured per 384-d vector at 30 000 entries,
graph included: 3.46 KB (float32) -> 2.69 KB (float16, -22 %) or 2.31 KB (int8,
-33 %).  The cost: reported similarities are off by at most
``scale / 2 * ||q||_1`` (int8; measured max 1.2e-3) or 2^-11 relative per
component (float16; 6e-5), and the exact-scan path ranks on those similarities
(recall@10 against float64 brute force 0.999 for int8, 1.0 for float16).  numpy
has no half or int8 GEMV, so compact copies are widened block by block to scan:
int8 scans about as fast as float32, float16 about 8x slower (numpy's half
conversion is not vectorised) -- prefer int8.  ``bench/memory_storage.py``.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
from dataclasses import dataclass

import hnswlib
import numpy as np

__all__ = [
    "MemoryInputError",
    "MemoryEntry",
    "InsertResult",
    "TemporalMemory",
    "BACKWARDS_TOLERANCE_S",
    "STORAGE_CHOICES",
]

#: An insert whose stamp is older than the newest stored stamp by more than this
#: is "time going backwards" (bag loop, clock jump) and resets the window.  Equal
#: stamps and sub-microsecond jitter (float round-off of sec+nanosec stamps) are
#: accepted as the normal case.
BACKWARDS_TOLERANCE_S = 1e-6

# Smallest vector norm we are willing to normalise: below it the direction is
# numerical noise (and an all-zero vector has no direction at all).
_MIN_NORM = float(np.finfo(np.float32).tiny)

#: Element types of the ring's own vector copy (hnswlib always keeps float32).
STORAGE_CHOICES = ("float32", "float16", "int8")


class MemoryInputError(ValueError):
    """A rejected input (vector, stamp, sequence, query argument).

    Named so it does not shadow the builtin ``MemoryError``; a ``ValueError`` so
    callers that already catch bad values keep working.
    """


@dataclass(frozen=True)
class MemoryEntry:
    """One stored frame returned by a query."""

    sequence: int  #: frame sequence number given at insert
    stamp_s: float  #: capture stamp given at insert (seconds, message time)
    similarity: float  #: cosine similarity to the query vector (nan when no vector was given)


@dataclass(frozen=True)
class InsertResult:
    """What one insert did to the window."""

    window_size: int  #: entries stored after the insert (includes the new one)
    evicted: int  #: entries removed by this insert (TTL + capacity + reset)
    reset: bool  #: time went backwards and the window was cleared before inserting
    keyframe: bool = False  #: also kept in a long-horizon tier (TieredMemory; always False here)


class TemporalMemory:
    """Sliding window of recent L2-normalised frame embeddings (thread-safe).

    Parameters
    ----------
    dim: vector dimension.
    capacity: maximum number of stored frames (the hnswlib graph size).
    ttl_s: entries older than ``newest_stamp - ttl_s`` (message time) are evicted.
    max_future_s: with ``now_s`` given to :meth:`insert`, stamps further than this
        ahead of ``now_s`` are refused.
    ef_construction, M: hnswlib graph parameters.  The defaults (60, 12) keep
        recall@10 at 1.0 from 300 to 3 000 entries (M 8 gives 0.988 at 3 000) and
        insert p99 under 1 ms at 30 000 (bench/memory.py: M 16 / ef 100 cost 1.38 ms
        there, most of it hnswlib's replace_deleted relinking a denser graph; M 12 /
        ef 60 0.67 ms).  Above ``coarse_min_span`` recall rests on the coarse pass
        below, so a lighter graph loses nothing there.  Raising them does not fix large
        windows of smooth video-like streams (ef_construction 200, ef_search 256:
        recall@10 0.92 at 30 000 on a 384-d walk): the coarse pass below does.
    ef_search: hnswlib query breadth (raised to ``k`` when ``k`` is larger).
    space: ``'cosine'`` or ``'ip'``; identical here because every vector is
        normalised on the way in, so hnswlib always runs its cheaper ``'ip'`` space.
    coarse_rows, coarse_top, coarse_min_span: the time-strided coarse scan (see
        "Query engines"; ``coarse_rows=0`` turns it off).
    exact_threshold: a time-restricted query whose qualifying entries span at most
        this many consecutive window entries is answered by an exact numpy scan.
    random_seed: hnswlib level generator seed (reproducible graphs).
    storage: element type of the ring's vector copy, one of ``STORAGE_CHOICES``
        (see "Compact storage" above; hnswlib keeps float32 regardless).
    logger: anything with ``.warning(str)`` (a ``logging.Logger`` or an rclpy
        logger); messages are pre-formatted strings so both work.
    """

    def __init__(
        self,
        dim: int,
        capacity: int = 300,
        ttl_s: float = 30.0,
        max_future_s: float = 5.0,
        ef_construction: int = 60,
        M: int = 12,
        ef_search: int = 64,
        space: str = "cosine",
        exact_threshold: int = 4096,
        coarse_rows: int = 1024,
        coarse_top: int = 4,
        coarse_min_span: int = 8192,
        random_seed: int = 100,
        storage: str = "float32",
        logger=None,
    ) -> None:
        self._dim = _positive_int("dim", dim)
        self._capacity = _positive_int("capacity", capacity)
        self._ttl_s = _positive_float("ttl_s", ttl_s)
        self._max_future_s = _nonnegative_float("max_future_s", max_future_s)
        self._ef_construction = _positive_int("ef_construction", ef_construction)
        self._M = _positive_int("M", M)
        if self._M < 2:
            raise ValueError(f"M must be >= 2 (hnswlib graph degree), got {M!r}")
        self._ef_search = _positive_int("ef_search", ef_search)
        if space not in ("cosine", "ip"):
            raise ValueError(f"space must be 'cosine' or 'ip' (vectors are L2-normalised), got {space!r}")
        self._space = space
        self._exact_threshold = operator.index(exact_threshold)
        if self._exact_threshold < 0:
            raise ValueError(f"exact_threshold must be >= 0, got {exact_threshold!r}")
        self._coarse_rows = operator.index(coarse_rows)
        if self._coarse_rows < 0:
            raise ValueError(f"coarse_rows must be >= 0 (0 = off), got {coarse_rows!r}")
        self._coarse_top = _positive_int("coarse_top", coarse_top)
        self._coarse_min_span = operator.index(coarse_min_span)
        if self._coarse_min_span < 0:
            raise ValueError(f"coarse_min_span must be >= 0, got {coarse_min_span!r}")
        self._random_seed = operator.index(random_seed)
        if storage not in STORAGE_CHOICES:
            raise ValueError(f"storage must be one of {STORAGE_CHOICES}, got {storage!r}")
        self._storage = storage
        self._log = logger if logger is not None else logging.getLogger(__name__)

        # One lock for everything: hnswlib releases the GIL inside add_items and
        # knn_query, and an add running concurrently with a query is not safe in
        # hnswlib; the ring arrays must also change atomically with the graph.
        self._lock = threading.Lock()

        # Ring storage keyed by slot = label % capacity.
        self._vecs = np.zeros((self._capacity, self._dim), dtype=np.dtype(storage))
        # int8: v ~= scale * q with q in [-127, 127] (symmetric, one scale per vector).
        self._scales = np.ones(self._capacity, dtype=np.float32) if storage == "int8" else None
        self._stamps = np.full(self._capacity, np.nan, dtype=np.float64)
        self._seqs = np.zeros(self._capacity, dtype=np.int64)
        self._first = 0  # label of the oldest stored entry
        self._next = 0  # label the next insert gets; window = [first, next)
        self._newest: float | None = None  # running max stamp since the window was last empty
        self._seq_to_label: dict[int, int] = {}
        self._index = self._new_index()
        self._ef = -1

        self._n_inserts = 0
        self._n_evicted_ttl = 0
        self._n_evicted_capacity = 0
        self._n_evicted_reset = 0
        self._n_resets = 0
        self._n_rejected = 0
        self._n_rejected_queries = 0
        self._n_queries_hnsw = 0
        self._n_queries_exact = 0
        self._n_hnsw_fallbacks = 0
        self._n_queries_coarse = 0

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def vector_bytes(self) -> int:
        """Bytes of the ring's vector copy (excluding hnswlib's own float32 copy)."""
        return self._vecs.nbytes + (0 if self._scales is None else self._scales.nbytes)

    @property
    def size(self) -> int:
        with self._lock:
            return self._next - self._first

    def __len__(self) -> int:
        return self.size

    @property
    def newest_stamp_s(self) -> float | None:
        """Largest stamp inserted since the window was last empty (None when empty).

        This is the reference for ages and TTL.  It equals the largest stored stamp
        except in one corner: a capacity eviction removed the max-stamp entry and the
        remaining ones are up to ``BACKWARDS_TOLERANCE_S`` earlier.
        """
        with self._lock:
            return self._newest if self._next > self._first else None

    @property
    def oldest_stamp_s(self) -> float | None:
        """Smallest stored stamp (None when empty)."""
        with self._lock:
            if self._next == self._first:
                return None
            return float(self._ordered_stamps().min())

    # ------------------------------------------------------------------ writes

    def insert(self, sequence: int, stamp_s: float, vector, now_s: float | None = None) -> InsertResult:
        """Store one frame vector; evict by TTL and capacity first.

        Raises :class:`MemoryInputError` (window unchanged, ``rejected`` counted) for
        a wrong shape, NaN/Inf, a zero vector, a non-finite stamp or a stamp more than
        ``max_future_s`` ahead of ``now_s``.
        """
        with self._lock:
            try:
                seq = _as_int("sequence", sequence)
                stamp = _finite_float("stamp_s", stamp_s)
                if now_s is not None:
                    now = _finite_float("now_s", now_s)
                    # A stamp far in the future (bad clock, wrong units) would become
                    # "newest" and TTL-evict the whole real window; refuse it instead.
                    if stamp > now + self._max_future_s:
                        raise MemoryInputError(
                            f"stamp_s={stamp!r} is {stamp - now:.6g} s ahead of now_s={now!r}; "
                            f"at most max_future_s={self._max_future_s!r} s ahead is accepted"
                        )
                vec = self._normalised(vector, "vector")
            except MemoryInputError:
                self._n_rejected += 1
                raise

            evicted = 0
            reset = False
            size = self._next - self._first
            if size and stamp < self._newest - BACKWARDS_TOLERANCE_S:
                # Time went backwards (bag looped, sim clock restarted, clock jump):
                # the stored frames are from a different "future" and their ages
                # would be negative, so nothing in the window is comparable any more.
                self._log.warning(
                    f"temporal memory: stamp {stamp:.6f} s is {self._newest - stamp:.6f} s older than "
                    f"the newest stored stamp {self._newest:.6f} s (time went backwards); "
                    f"clearing {size} entries"
                )
                self._clear_locked()
                self._n_resets += 1
                self._n_evicted_reset += size
                evicted += size
                reset = True

            # TTL by message time (the stamp being inserted), not wall time, so bag
            # replay at any rate and paused streams behave exactly like live ones.
            if self._next > self._first:
                n = self._evict_older_than(max(self._newest, stamp) - self._ttl_s)
                self._n_evicted_ttl += n
                evicted += n

            # Capacity: the oldest entry is marked deleted and its graph slot is reused
            # below (replace_deleted=True), so the graph never grows beyond capacity
            # and insert/query latency stays flat in steady state.
            if self._next - self._first >= self._capacity:
                self._evict_through(self._first + 1)
                self._n_evicted_capacity += 1
                evicted += 1

            label = self._next
            self._index.add_items(vec[None, :], np.array([label], dtype=np.uint64),
                                  num_threads=1, replace_deleted=True)
            slot = label % self._capacity
            self._store(slot, vec)
            self._stamps[slot] = stamp
            self._seqs[slot] = seq
            self._seq_to_label[seq] = label
            self._next = label + 1
            self._newest = stamp if self._newest is None else max(self._newest, stamp)
            self._n_inserts += 1
            return InsertResult(window_size=self._next - self._first, evicted=evicted, reset=reset)

    def evict_expired(self, now_stamp_s: float) -> int:
        """Evict entries with stamp < ``now_stamp_s - ttl_s``; returns how many.

        For a stream that stalls (no inserts): call it from a timer with the current
        message-time clock so stale scenes stop matching.  A ``now_stamp_s`` older than
        the window evicts nothing (it never resets).
        """
        now = _finite_float("now_stamp_s", now_stamp_s)
        with self._lock:
            if self._next == self._first:
                return 0
            n = self._evict_older_than(now - self._ttl_s)
            self._n_evicted_ttl += n
            return n

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._clear_locked()

    # ------------------------------------------------------------------ queries

    def knn(self, vector, k: int = 5, min_age_s: float = 0.0, max_age_s: float | None = None,
            exclude_sequence: int | None = None, at_stamp_s: float | None = None) -> list[MemoryEntry]:
        """Up to ``k`` stored entries most similar to ``vector``, best first.

        Ages are ``at_stamp_s - stamp`` (default: ``newest_stamp_s``); only entries
        with ``min_age_s <= age <= max_age_s`` (bounds inclusive) and a sequence
        other than ``exclude_sequence`` qualify.  So with ``at_stamp_s`` earlier than
        the newest frame, entries after it (negative age) never qualify.  Returns
        ``[]`` on an empty window.
        """
        with self._lock:
            try:
                q = self._normalised(vector, "query vector")
                k = _positive_int("k", k, MemoryInputError)
                min_age = _finite_float("min_age_s", min_age_s)
                max_age = None if max_age_s is None else _finite_float("max_age_s", max_age_s)
                if max_age is not None and max_age < min_age:
                    raise MemoryInputError(f"max_age_s={max_age!r} is below min_age_s={min_age!r}")
                excl = None if exclude_sequence is None else _as_int("exclude_sequence", exclude_sequence)
                at = None if at_stamp_s is None else _finite_float("at_stamp_s", at_stamp_s)
            except MemoryInputError:
                self._n_rejected_queries += 1
                raise
            size = self._next - self._first
            if size == 0:
                return []
            ref = self._newest if at is None else at
            restricted = min_age > 0.0 or max_age is not None or excl is not None or ref < self._newest
            if not restricted:
                if size <= k:
                    return self._exact_locked(q, k, 0, size, None)
                return self._hnsw_locked(q, min(k, size), None, 0, size, None)

            stamps = self._ordered_stamps()
            age = ref - stamps
            mask = age >= min_age
            if max_age is not None:
                mask &= age <= max_age
            if excl is not None:
                mask &= self._ordered(self._seqs) != excl
            nz = np.flatnonzero(mask)
            if nz.size == 0:
                return []
            lo, hi = int(nz[0]), int(nz[-1]) + 1  # window positions spanning every match
            sub = mask[lo:hi]
            dense = bool(sub.all())
            # HNSW with a selective filter degrades (it walks many rejected nodes; far
            # from the query it is worse than brute force), while an exact scan of a
            # contiguous time slice costs ~0.1 ms per 4k x 384 floats: scan small spans.
            if hi - lo <= self._exact_threshold or nz.size <= k:
                return self._exact_locked(q, k, lo, hi, None if dense else sub)
            return self._hnsw_locked(q, min(k, int(nz.size)), None if dense else sub.tolist(), lo, hi,
                                     None if dense else sub)

    def nearest_in_time(self, stamp_s: float, vector=None) -> MemoryEntry | None:
        """The stored entry whose stamp is nearest to ``stamp_s`` (ties: the most recently
        inserted).  ``similarity`` is the cosine to ``vector`` when given, else nan."""
        target = _finite_float("stamp_s", stamp_s)
        with self._lock:
            q = None if vector is None else self._normalised(vector, "vector")
            pos = self._nearest_pos(target)
            return None if pos is None else self._entry_at(pos, q)

    def lookback(self, vector, lookback_s: float, tolerance_s: float | None = None,
                 at_stamp_s: float | None = None) -> MemoryEntry | None:
        """The scene ``lookback_s`` seconds before ``at_stamp_s`` (default: the newest stamp).

        Returns the entry nearest in time to ``at_stamp_s - lookback_s`` with its cosine
        similarity to ``vector``, or None when no stored entry lies within
        ``tolerance_s`` (default ``lookback_s / 2``) of that time, e.g. right after
        start-up, so a frame 0.1 s ago is never passed off as "the scene 2 s ago".
        """
        lb = _positive_float("lookback_s", lookback_s, MemoryInputError)
        tol = lb / 2.0 if tolerance_s is None else _nonnegative_float("tolerance_s", tolerance_s, MemoryInputError)
        at = None if at_stamp_s is None else _finite_float("at_stamp_s", at_stamp_s)
        with self._lock:
            q = self._normalised(vector, "vector")
            if self._next == self._first:
                return None
            target = (self._newest if at is None else at) - lb
            pos = self._nearest_pos(target)
            if abs(self._stamps[(self._first + pos) % self._capacity] - target) > tol:
                return None
            return self._entry_at(pos, q)

    def vector_of(self, sequence: int) -> np.ndarray | None:
        """A copy of the stored (normalised, float32) vector of ``sequence``, or None.

        With duplicate sequence numbers in the window the most recent one wins."""
        seq = _as_int("sequence", sequence)
        with self._lock:
            label = self._seq_to_label.get(seq)
            if label is None or not (self._first <= label < self._next):
                return None
            return self._vector_at(label % self._capacity)

    def entries(self) -> list[MemoryEntry]:
        """Every stored entry, oldest first (similarity nan)."""
        with self._lock:
            stamps = self._ordered_stamps()
            seqs = self._ordered(self._seqs)
            return [MemoryEntry(int(s), float(t), math.nan) for s, t in zip(seqs.tolist(), stamps.tolist())]

    def stats(self) -> dict:
        with self._lock:
            return {
                "size": self._next - self._first,
                "capacity": self._capacity,
                "ttl_s": self._ttl_s,
                "inserts": self._n_inserts,
                "evicted_ttl": self._n_evicted_ttl,
                "evicted_capacity": self._n_evicted_capacity,
                "evicted_reset": self._n_evicted_reset,
                "resets": self._n_resets,
                "rejected": self._n_rejected,
                "rejected_queries": self._n_rejected_queries,
                "queries_hnsw": self._n_queries_hnsw,
                "queries_exact": self._n_queries_exact,
                "hnsw_fallbacks": self._n_hnsw_fallbacks,
                "queries_coarse": self._n_queries_coarse,
                "storage": self._storage,
                "vector_bytes": self.vector_bytes,
            }

    # ------------------------------------------------------------------ internals (lock held)

    def _new_index(self) -> hnswlib.Index:
        # 'ip' even for space='cosine': vectors are normalised on the way in, and
        # hnswlib's 'cosine' would normalise every vector a second time.
        index = hnswlib.Index(space="ip", dim=self._dim)
        index.init_index(max_elements=self._capacity, ef_construction=self._ef_construction, M=self._M,
                         random_seed=self._random_seed, allow_replace_deleted=True)
        return index

    def _clear_locked(self) -> None:
        # A fresh graph rather than marking every node deleted: a reset is rare, and
        # this also drops any quality drift from long replace-deleted churn.
        self._index = self._new_index()
        self._ef = -1
        self._stamps.fill(np.nan)
        self._first = self._next  # labels stay monotonic across resets
        self._newest = None
        self._seq_to_label.clear()

    def _normalised(self, vector, what: str) -> np.ndarray:
        try:
            arr = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise MemoryInputError(f"{what}: expected a numeric array of shape ({self._dim},), "
                                   f"got {type(vector).__name__} ({exc})") from None
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != (self._dim,):
            raise MemoryInputError(f"{what}: wrong dimension, expected shape ({self._dim},), got shape {arr.shape}")
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise MemoryInputError(
                f"{what}: expected finite values, got {int((~finite).sum())} non-finite (NaN/Inf), "
                f"first at index {bad} = {float(arr[bad])!r}")
        norm = float(np.linalg.norm(arr))
        if not norm > _MIN_NORM:
            raise MemoryInputError(f"{what}: zero-norm vector (norm {norm!r}); expected a non-zero embedding")
        # Re-normalise defensively: upstream promises unit vectors, but inner
        # product == cosine only holds if they really are.
        return (arr / norm).astype(np.float32)

    def _store(self, slot: int, vec: np.ndarray) -> None:
        if self._scales is None:
            self._vecs[slot] = vec  # float32, or float16 rounded to nearest by numpy
            return
        # Symmetric per-vector scale: the largest component maps to +-127, so a unit
        # vector's rounding error is at most scale/2 per component.
        peak = float(np.max(np.abs(vec)))
        scale = peak / 127.0 if peak > 0.0 else 1.0
        self._vecs[slot] = np.clip(np.rint(vec / scale), -127, 127).astype(np.int8)
        self._scales[slot] = scale

    def _vector_at(self, slot: int) -> np.ndarray:
        """A float32 copy of the stored vector (dequantised for compact storage)."""
        v = self._vecs[slot].astype(np.float32)
        return v if self._scales is None else v * self._scales[slot]

    def _dot(self, a: int, b: int, q: np.ndarray) -> np.ndarray:
        """Similarities of ring slots [a, b) to ``q`` (float32)."""
        if self._storage == "float32":
            return self._vecs[a:b] @ q
        # Compact copies are widened to float32 block by block for BLAS (numpy has no
        # half or int8 GEMV); the block keeps the temporary small and in cache.
        out = np.empty(b - a, dtype=np.float32)
        for c in range(a, b, 2048):
            d = min(b, c + 2048)
            out[c - a:d - a] = self._vecs[c:d].astype(np.float32) @ q
        if self._scales is not None:
            out *= self._scales[a:b]
        return out

    def _dot_slots(self, slots: np.ndarray, q: np.ndarray) -> np.ndarray:
        s = self._vecs[slots].astype(np.float32, copy=False) @ q
        return s if self._scales is None else s * self._scales[slots]

    def _ordered(self, ring: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Window positions [lo, hi) of a ring array, oldest first (a view when no wrap)."""
        if hi is None:
            hi = self._next - self._first
        a = (self._first + lo) % self._capacity
        b = a + (hi - lo)
        if b <= self._capacity:
            return ring[a:b]
        return np.concatenate((ring[a:], ring[: b - self._capacity]))

    def _ordered_stamps(self) -> np.ndarray:
        return self._ordered(self._stamps)

    def _evict_through(self, new_first: int) -> None:
        for label in range(self._first, new_first):
            self._index.mark_deleted(label)
            slot = label % self._capacity
            seq = int(self._seqs[slot])
            if self._seq_to_label.get(seq) == label:
                del self._seq_to_label[seq]
            self._stamps[slot] = np.nan
        self._first = new_first
        if self._first == self._next:
            self._newest = None

    def _evict_older_than(self, cutoff: float) -> int:
        """Evict the oldest entries up to and including the last one with stamp < cutoff."""
        # Every stored stamp is >= (oldest stamp - tolerance): later inserts were at
        # most BACKWARDS_TOLERANCE_S below the running max.  So this is O(1) when
        # nothing can have expired, the common case.
        if self._stamps[self._first % self._capacity] - BACKWARDS_TOLERANCE_S >= cutoff:
            return 0
        expired = np.flatnonzero(self._ordered_stamps() < cutoff)
        if expired.size == 0:
            return 0
        # Evicting through the *last* expired position keeps the window contiguous
        # (an entry jittered < 1 us later than an expired neighbour goes with it), so
        # no stored entry is ever older than the cutoff.
        n = int(expired[-1]) + 1
        self._evict_through(self._first + n)
        return n

    def _nearest_pos(self, target: float) -> int | None:
        size = self._next - self._first
        if size == 0:
            return None
        diff = np.abs(self._ordered_stamps() - target)
        # Ties go to the most recently inserted entry (argmin over the reversed array).
        return size - 1 - int(np.argmin(diff[::-1]))

    def _entry_at(self, pos: int, q: np.ndarray | None) -> MemoryEntry:
        slot = (self._first + pos) % self._capacity
        sim = math.nan if q is None else float(self._dot(slot, slot + 1, q)[0])
        return MemoryEntry(int(self._seqs[slot]), float(self._stamps[slot]), sim)

    def _scan(self, lo: int, hi: int, q: np.ndarray) -> np.ndarray:
        """Similarities of window positions [lo, hi) to ``q``: contiguous ring slices, no gather copy."""
        a = (self._first + lo) % self._capacity
        b = a + (hi - lo)
        if b <= self._capacity:
            return self._dot(a, b, q)
        return np.concatenate((self._dot(a, self._capacity, q), self._dot(0, b - self._capacity, q)))

    def _exact_locked(self, q: np.ndarray, k: int, lo: int, hi: int, sub: np.ndarray | None) -> list[MemoryEntry]:
        """Exact top-k over window positions [lo, hi); ``sub`` masks positions within it."""
        self._n_queries_exact += 1
        scores = self._scan(lo, hi, q)
        if sub is not None:
            cand = np.flatnonzero(sub)
            scores = scores[cand]
        else:
            cand = None
        if scores.size > k:
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(scores.size)
        pos = top if cand is None else cand[top]
        # Best first; equal scores: newer first (deterministic).
        order = np.lexsort((-pos, -scores[top]))
        slots = ((self._first + lo + pos[order]) % self._capacity).astype(np.int64)
        seqs = self._seqs[slots].tolist()
        stamps = self._stamps[slots].tolist()
        sims = scores[top[order]].astype(np.float64).tolist()
        return [MemoryEntry(a, b, c) for a, b, c in zip(seqs, stamps, sims)]

    def _hnsw_locked(self, q: np.ndarray, kk: int, allowed: list | None, lo: int, hi: int,
                     sub: np.ndarray | None) -> list[MemoryEntry]:
        """HNSW top-kk over window positions [lo, hi) (``allowed`` masks within it)."""
        first = self._first
        lab_lo, lab_hi = first + lo, first + hi
        if lo == 0 and hi == self._next - first and allowed is None:
            flt = None  # whole window: hnswlib already skips deleted (evicted) nodes
        elif allowed is None:
            def flt(label, _lo=lab_lo, _hi=lab_hi):
                return _lo <= label < _hi
        else:
            def flt(label, _lo=lab_lo, _hi=lab_hi, _ok=allowed):
                return _lo <= label < _hi and _ok[label - _lo]
        ef = max(self._ef_search, kk)
        if ef != self._ef:
            self._index.set_ef(ef)
            self._ef = ef
        try:
            labels, _ = self._index.knn_query(q[None, :], k=kk, num_threads=1, filter=flt)
        except RuntimeError:
            # hnswlib raises when it cannot collect kk results (graph walk blocked by
            # deleted nodes or a very selective filter): answer exactly instead.
            self._n_hnsw_fallbacks += 1
            return self._exact_locked(q, kk, lo, hi, sub)
        self._n_queries_hnsw += 1
        # Defensive: never report anything outside the live window / the filter.
        labs = labels[0].astype(np.int64)
        labs = labs[(labs >= lab_lo) & (labs < lab_hi)]
        if allowed is not None:
            labs = labs[sub[labs - lab_lo]]
        # Exact similarity from the stored vectors (hnswlib's 1 - distance loses a
        # few ulps), so exact and HNSW paths report identical numbers.
        sims = self._dot_slots(labs % self._capacity, q)
        if self._coarse_rows and hi - lo > max(self._coarse_rows, self._coarse_min_span):
            pos, psims = self._coarse_candidates(q, kk, lo, hi, sub)
            labs, keep = np.unique(np.concatenate((labs, pos + first)), return_index=True)
            sims = np.concatenate((sims, psims))[keep]
        if labs.size == 0:
            return []
        if labs.size > kk:  # coarse candidates: keep the best kk before building entries
            top = np.argpartition(-sims, kk - 1)[:kk]
            labs, sims = labs[top], sims[top]
        slots = labs % self._capacity
        order = np.lexsort((-labs, -sims))  # best first; ties: newer first
        slots = slots[order]
        seqs = self._seqs[slots].tolist()
        stamps = self._stamps[slots].tolist()
        return [MemoryEntry(a, b, c) for a, b, c in zip(seqs, stamps, sims[order].astype(np.float64).tolist())]

    def _coarse_candidates(self, q: np.ndarray, kk: int, lo: int, hi: int,
                           sub: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(window positions, similarities) of up to ``kk`` best entries per neighbourhood found by the
        time-strided coarse scan over [lo, hi) (``sub`` masks within it)."""
        self._n_queries_coarse += 1
        span = hi - lo
        stride = -(-span // self._coarse_rows)  # ceil: at most coarse_rows samples
        # Samples are aligned to the newest end of the span (its last entry is always one): "what does
        # now look like" queries are the most common, and on a long window the nearest sample to the
        # present could otherwise sit a whole stride back, with its similarity down in the noise.
        off = (span - 1) % stride
        # Sample the ring in place with strided views (numpy hands a fixed row stride to BLAS: no
        # gather copy); the window is one contiguous ring range, or two when it wraps.
        a = (self._first + lo) % self._capacity
        b = a + span
        if b <= self._capacity:
            scores = self._strided_dot(a + off, b, stride, q)
            pos = lo + off + stride * np.arange(scores.size)
        else:
            p0 = lo + self._capacity - a  # window position of ring slot 0
            off2 = (lo + off - p0) % stride  # first sample in the wrapped part, same phase
            s1 = self._strided_dot(a + off, self._capacity, stride, q)
            s2 = self._strided_dot(off2, b - self._capacity, stride, q)
            scores = np.concatenate((s1, s2))
            pos = np.concatenate((lo + off + stride * np.arange(s1.size), p0 + off2 + stride * np.arange(s2.size)))
        if sub is not None:
            scores = np.where(sub[pos - lo], scores, -np.inf)
        m = min(self._coarse_top, scores.size)
        top = np.argpartition(-scores, m - 1)[:m]
        best = np.sort(pos[top[np.isfinite(scores[top])]])  # a fully masked sample seeds nothing
        # Scan the full neighbourhood of each best sample (everything short of the next sample either
        # side) as contiguous ring slices, overlapping neighbourhoods merged.
        pos_out, sim_out = [], []
        i = 0
        while i < best.size:
            r0, r1 = max(lo, int(best[i]) - stride + 1), min(hi, int(best[i]) + stride)
            while i + 1 < best.size and int(best[i + 1]) - stride + 1 <= r1:
                i += 1
                r1 = min(hi, int(best[i]) + stride)
            i += 1
            sc = self._scan(r0, r1, q)
            if sub is not None:
                sc = np.where(sub[r0 - lo:r1 - lo], sc, -np.inf)
            if sc.size > kk:
                t = np.argpartition(-sc, kk - 1)[:kk]
            else:
                t = np.arange(sc.size)
            t = t[np.isfinite(sc[t])]
            pos_out.append(r0 + t)
            sim_out.append(sc[t])
        if not pos_out:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.concatenate(pos_out).astype(np.int64), np.concatenate(sim_out).astype(np.float32)

    def _strided_dot(self, a: int, b: int, stride: int, q: np.ndarray) -> np.ndarray:
        rows = self._vecs[a:b:stride]
        if self._scales is None:
            return rows @ q if rows.dtype == np.float32 else rows.astype(np.float32) @ q
        return (rows.astype(np.float32) @ q) * self._scales[a:b:stride]


# ---------------------------------------------------------------------- validation helpers

def _as_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise MemoryInputError(f"{name}: expected an integer, got bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise MemoryInputError(f"{name}: expected an integer, got {type(value).__name__} {value!r}") from None
    if not (-(2**63) <= out < 2**63):
        raise MemoryInputError(f"{name}: expected a 64-bit integer, got {out!r}")
    return out


def _finite_float(name: str, value, exc=MemoryInputError) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise exc(f"{name}: expected a finite number, got {type(value).__name__} {value!r}") from None
    if not math.isfinite(out):
        raise exc(f"{name}: expected a finite number, got {out!r}")
    return out


def _positive_float(name: str, value, exc=ValueError) -> float:
    out = _finite_float(name, value, exc)
    if out <= 0.0:
        raise exc(f"{name}: expected a positive number, got {out!r}")
    return out


def _nonnegative_float(name: str, value, exc=ValueError) -> float:
    out = _finite_float(name, value, exc)
    if out < 0.0:
        raise exc(f"{name}: expected a number >= 0, got {out!r}")
    return out


def _positive_int(name: str, value, exc=ValueError) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise exc(f"{name}: expected a positive integer, got bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise exc(f"{name}: expected a positive integer, got {type(value).__name__} {value!r}") from None
    if out < 1:
        raise exc(f"{name}: expected a positive integer, got {out!r}")
    return out
