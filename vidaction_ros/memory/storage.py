"""The window's own copy of its vectors: one row per ring slot, float32, float16 or int8 with a scale.

Owns quantising on the way in, dequantising on the way out, and the dot products the query engines rank
on (:mod:`.search`). :class:`~.window.TemporalMemory` owns one and guards it with its lock.

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

import numpy as np

__all__ = ["QuantisedVectors"]


class QuantisedVectors:
    """``capacity`` vectors of ``dim`` floats in ``storage`` element type, addressed by ring slot.

    Not thread-safe on its own: the owning window's lock guards every call.
    """

    __slots__ = ("storage", "vecs", "scales")

    def __init__(self, capacity: int, dim: int, storage: str) -> None:
        self.storage = storage
        self.vecs = np.zeros((capacity, dim), dtype=np.dtype(storage))
        # int8: v ~= scale * q with q in [-127, 127] (symmetric, one scale per vector).
        self.scales = np.ones(capacity, dtype=np.float32) if storage == "int8" else None

    @property
    def nbytes(self) -> int:
        """Bytes of the vector copy, scales included."""
        return self.vecs.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def store(self, slot: int, vec: np.ndarray) -> None:
        if self.scales is None:
            self.vecs[slot] = vec  # float32, or float16 rounded to nearest by numpy
            return
        # Symmetric per-vector scale: the largest component maps to +-127, so a unit
        # vector's rounding error is at most scale/2 per component.
        peak = float(np.max(np.abs(vec)))
        scale = peak / 127.0 if peak > 0.0 else 1.0
        self.vecs[slot] = np.clip(np.rint(vec / scale), -127, 127).astype(np.int8)
        self.scales[slot] = scale

    def vector_at(self, slot: int) -> np.ndarray:
        """A float32 copy of the stored vector (dequantised for compact storage)."""
        v = self.vecs[slot].astype(np.float32)
        return v if self.scales is None else v * self.scales[slot]

    def dot(self, a: int, b: int, q: np.ndarray) -> np.ndarray:
        """Similarities of ring slots [a, b) to ``q`` (float32)."""
        if self.storage == "float32":
            return self.vecs[a:b] @ q
        # Compact copies are widened to float32 block by block for BLAS (numpy has no
        # half or int8 GEMV); the block keeps the temporary small and in cache.
        out = np.empty(b - a, dtype=np.float32)
        for c in range(a, b, 2048):
            d = min(b, c + 2048)
            out[c - a:d - a] = self.vecs[c:d].astype(np.float32) @ q
        if self.scales is not None:
            out *= self.scales[a:b]
        return out

    def dot_slots(self, slots: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Similarities of the given ring slots to ``q`` (a gather)."""
        s = self.vecs[slots].astype(np.float32, copy=False) @ q
        return s if self.scales is None else s * self.scales[slots]

    def strided_dot(self, a: int, b: int, stride: int, q: np.ndarray) -> np.ndarray:
        """Similarities of every ``stride``-th ring slot in [a, b) to ``q`` (a strided view: no gather copy)."""
        rows = self.vecs[a:b:stride]
        if self.scales is None:
            return rows @ q if rows.dtype == np.float32 else rows.astype(np.float32) @ q
        return (rows.astype(np.float32) @ q) * self.scales[a:b:stride]
