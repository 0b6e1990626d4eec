"""The window's query engines: exact scan, HNSW query and the time-strided coarse pass.

A mixin of :class:`~.window.TemporalMemory` (every method runs with its lock held), so the engines read the
window's state directly: the ring layout (``_first``, ``_next``, ``_capacity``, ``_seqs``, ``_stamps``), the
vector copy (``_vectors``, :mod:`.storage`), the hnswlib graph (``_index``, ``_ef``), the query settings and
the query counters.  Positions are window positions (0 = oldest entry); see :mod:`.window` for the layout.

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
"""

from __future__ import annotations

import numpy as np

from .entries import MemoryEntry

__all__ = ["WindowSearch"]


class WindowSearch:
    """Exact, HNSW and coarse top-k over window positions (mixed into ``TemporalMemory``)."""

    def _scan(self, lo: int, hi: int, q: np.ndarray) -> np.ndarray:
        """Similarities of window positions [lo, hi) to ``q``: contiguous ring slices, no gather copy."""
        a = (self._first + lo) % self._capacity
        b = a + (hi - lo)
        if b <= self._capacity:
            return self._vectors.dot(a, b, q)
        return np.concatenate((self._vectors.dot(a, self._capacity, q), self._vectors.dot(0, b - self._capacity, q)))

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
        self._flush_index_locked()       # frames stored with defer_index join the graph first
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
        sims = self._vectors.dot_slots(labs % self._capacity, q)
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
            scores = self._vectors.strided_dot(a + off, b, stride, q)
            pos = lo + off + stride * np.arange(scores.size)
        else:
            p0 = lo + self._capacity - a  # window position of ring slot 0
            off2 = (lo + off - p0) % stride  # first sample in the wrapped part, same phase
            s1 = self._vectors.strided_dot(a + off, self._capacity, stride, q)
            s2 = self._vectors.strided_dot(off2, b - self._capacity, stride, q)
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
