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

Query engines (exact scan, HNSW, the time-strided coarse pass) live in :mod:`.search`,
the compact vector copy (``storage='float16'`` or ``'int8'``) in :mod:`.storage`, the
result types and constants in :mod:`.entries` and the argument checks in
:mod:`.validation`.  This module keeps the window itself: inserts, eviction and
time lookups.
"""

from __future__ import annotations

import logging
import math
import operator
import threading

import hnswlib
import numpy as np

from .entries import BACKWARDS_TOLERANCE_S, STORAGE_CHOICES, InsertResult, MemoryEntry, MemoryInputError
from .search import WindowSearch
from .storage import QuantisedVectors
from .validation import _as_int, _finite_float, _nonnegative_float, _normalised, _positive_float, _positive_int

__all__ = [
    "MemoryInputError",
    "MemoryEntry",
    "InsertResult",
    "TemporalMemory",
    "BACKWARDS_TOLERANCE_S",
    "STORAGE_CHOICES",
]


class TemporalMemory(WindowSearch):
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
        "Query engines" in :mod:`.search`; ``coarse_rows=0`` turns it off).
    exact_threshold: a time-restricted query whose qualifying entries span at most
        this many consecutive window entries is answered by an exact numpy scan.
    random_seed: hnswlib level generator seed (reproducible graphs).
    storage: element type of the ring's vector copy, one of ``STORAGE_CHOICES``
        (see "Compact storage" in :mod:`.storage`; hnswlib keeps float32 regardless).
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
        self._vectors = QuantisedVectors(self._capacity, self._dim, storage)
        self._stamps = np.full(self._capacity, np.nan, dtype=np.float64)
        self._seqs = np.zeros(self._capacity, dtype=np.int64)
        self._first = 0  # label of the oldest stored entry
        self._next = 0  # label the next insert gets; window = [first, next)
        self._newest: float | None = None  # running max stamp since the window was last empty
        self._seq_to_label: dict[int, int] = {}
        self._index = self._new_index()
        self._unindexed: list[tuple[int, np.ndarray]] = []   # (label, vector) stored, not yet in the graph
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
        return self._vectors.nbytes

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

    def insert(self, sequence: int, stamp_s: float, vector, now_s: float | None = None,
               defer_index: bool = False) -> InsertResult:
        """Store one frame vector; evict by TTL and capacity first.

        Raises :class:`MemoryInputError` (window unchanged, ``rejected`` counted) for
        a wrong shape, NaN/Inf, a zero vector, a non-finite stamp or a stamp more than
        ``max_future_s`` ahead of ``now_s``.

        ``defer_index``: the frame is stored and found at once (exact search, lookback), but
        its hnswlib insert (most of an insert's time) waits for :meth:`flush_index`, which
        every graph query and eviction also does first: the memory node answers the frame's
        queries and publishes before paying for it.
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
                vec = _normalised(vector, self._dim, "vector")
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
            self._unindexed.append((label, vec))
            if not defer_index:
                self._flush_index_locked()
            slot = label % self._capacity
            self._vectors.store(slot, vec)
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
                q = _normalised(vector, self._dim, "query vector")
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
            q = None if vector is None else _normalised(vector, self._dim, "vector")
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
            q = _normalised(vector, self._dim, "vector")
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
            return self._vectors.vector_at(label % self._capacity)

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

    def flush_index(self) -> None:
        """Add the frames stored with ``defer_index`` to the hnswlib graph (no-op when none)."""
        with self._lock:
            self._flush_index_locked()

    def _flush_index_locked(self) -> None:
        if not self._unindexed:
            return
        labels = np.array([label for label, _ in self._unindexed], dtype=np.uint64)
        vectors = np.stack([vec for _, vec in self._unindexed])
        self._unindexed.clear()
        self._index.add_items(vectors, labels, num_threads=1, replace_deleted=True)

    def _clear_locked(self) -> None:
        # A fresh graph rather than marking every node deleted: a reset is rare, and
        # this also drops any quality drift from long replace-deleted churn.
        self._unindexed.clear()
        self._index = self._new_index()
        self._ef = -1
        self._stamps.fill(np.nan)
        self._first = self._next  # labels stay monotonic across resets
        self._newest = None
        self._seq_to_label.clear()

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
        self._flush_index_locked()       # hnswlib knows only the labels it was given
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
        sim = math.nan if q is None else float(self._vectors.dot(slot, slot + 1, q)[0])
        return MemoryEntry(int(self._seqs[slot]), float(self._stamps[slot]), sim)
