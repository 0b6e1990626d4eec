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
* similarities are always recomputed exactly from the stored vectors, so both
  engines report the same numbers for the same entry.
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
]

#: An insert whose stamp is older than the newest stored stamp by more than this
#: is "time going backwards" (bag loop, clock jump) and resets the window.  Equal
#: stamps and sub-microsecond jitter (float round-off of sec+nanosec stamps) are
#: accepted as the normal case.
BACKWARDS_TOLERANCE_S = 1e-6

# Smallest vector norm we are willing to normalise: below it the direction is
# numerical noise (and an all-zero vector has no direction at all).
_MIN_NORM = float(np.finfo(np.float32).tiny)


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


class TemporalMemory:
    """Sliding window of recent L2-normalised frame embeddings (thread-safe).

    Parameters
    ----------
    dim: vector dimension.
    capacity: maximum number of stored frames (the hnswlib graph size).
    ttl_s: entries older than ``newest_stamp - ttl_s`` (message time) are evicted.
    max_future_s: with ``now_s`` given to :meth:`insert`, stamps further than this
        ahead of ``now_s`` are refused.
    ef_construction, M: hnswlib graph parameters.  The defaults suit the design
        window (~300 frames: recall@10 1.0).  For windows of tens of thousands of
        frames raise ef_construction to 200: measured on a 384-d random walk at
        30000 frames, recall@10 0.81 -> 1.0 for steady-state insert p50 0.27 -> 1.0 ms
        (``bench/memory.py``).
    ef_search: hnswlib query breadth (raised to ``k`` when ``k`` is larger).
    space: ``'cosine'`` or ``'ip'``; identical here because every vector is
        normalised on the way in, so hnswlib always runs its cheaper ``'ip'`` space.
    exact_threshold: a time-restricted query whose qualifying entries span at most
        this many consecutive window entries is answered by an exact numpy scan.
    random_seed: hnswlib level generator seed (reproducible graphs).
    logger: anything with ``.warning(str)`` (a ``logging.Logger`` or an rclpy
        logger); messages are pre-formatted strings so both work.
    """

    def __init__(
        self,
        dim: int,
        capacity: int = 300,
        ttl_s: float = 30.0,
        max_future_s: float = 5.0,
        ef_construction: int = 100,
        M: int = 16,
        ef_search: int = 64,
        space: str = "cosine",
        exact_threshold: int = 4096,
        random_seed: int = 100,
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
        self._random_seed = operator.index(random_seed)
        self._log = logger if logger is not None else logging.getLogger(__name__)

        # One lock for everything: hnswlib releases the GIL inside add_items and
        # knn_query, and an add running concurrently with a query is not safe in
        # hnswlib; the ring arrays must also change atomically with the graph.
        self._lock = threading.Lock()

        # Ring storage keyed by slot = label % capacity.
        self._vecs = np.zeros((self._capacity, self._dim), dtype=np.float32)
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
            self._vecs[slot] = vec
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
            exclude_sequence: int | None = None) -> list[MemoryEntry]:
        """Up to ``k`` stored entries most similar to ``vector``, best first.

        Ages are ``newest_stamp_s - stamp``; only entries with
        ``min_age_s <= age <= max_age_s`` (bounds inclusive) and a sequence other
        than ``exclude_sequence`` qualify.  Returns ``[]`` on an empty window.
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
            except MemoryInputError:
                self._n_rejected_queries += 1
                raise
            size = self._next - self._first
            if size == 0:
                return []
            restricted = min_age > 0.0 or max_age is not None or excl is not None
            if not restricted:
                if size <= k:
                    return self._exact_locked(q, k, 0, size, None)
                return self._hnsw_locked(q, min(k, size), None, 0, size, None)

            stamps = self._ordered_stamps()
            age = self._newest - stamps
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
            return self._hnsw_locked(q, min(k, int(nz.size)), None if dense else sub.tolist(), lo, hi, sub)

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
            return self._vecs[label % self._capacity].copy()

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
            raise MemoryInputError(f"{what}: expected a numeric array of shape ({self._dim},), got {type(vector).__name__} ({exc})") from None
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
        sim = math.nan if q is None else float(self._vecs[slot] @ q)
        return MemoryEntry(int(self._seqs[slot]), float(self._stamps[slot]), sim)

    def _exact_locked(self, q: np.ndarray, k: int, lo: int, hi: int, sub: np.ndarray | None) -> list[MemoryEntry]:
        """Exact top-k over window positions [lo, hi); ``sub`` masks positions within it."""
        self._n_queries_exact += 1
        a = (self._first + lo) % self._capacity
        b = a + (hi - lo)
        if b <= self._capacity:
            scores = self._vecs[a:b] @ q
        else:
            scores = np.concatenate((self._vecs[a:] @ q, self._vecs[: b - self._capacity] @ q))
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
        live = [lab for lab in labels[0].tolist()
                if lab_lo <= lab < lab_hi and (allowed is None or allowed[lab - lab_lo])]
        if not live:
            return []
        slots = np.asarray(live, dtype=np.int64) % self._capacity
        # Exact similarity from the stored vectors (hnswlib's 1 - distance loses a
        # few ulps), so exact and HNSW paths report identical numbers.
        sims = self._vecs[slots] @ q
        order = np.lexsort((-np.asarray(live, dtype=np.int64), -sims))  # best first; ties: newer first
        seqs = self._seqs[slots].tolist()
        stamps = self._stamps[slots].tolist()
        sims_l = sims.tolist()
        return [MemoryEntry(seqs[i], stamps[i], sims_l[i]) for i in order.tolist()]


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
