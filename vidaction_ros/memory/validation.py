"""Argument checks for the temporal memory: integers, finite / positive numbers, embedding vectors.

Each helper returns the checked value or raises (:class:`~.entries.MemoryInputError` for rejected inputs,
``ValueError`` for bad constructor arguments; ``exc`` picks which).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from .entries import MemoryInputError

# Smallest vector norm we are willing to normalise: below it the direction is
# numerical noise (and an all-zero vector has no direction at all).
_MIN_NORM = float(np.finfo(np.float32).tiny)


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


def _normalised(vector, dim: int, what: str) -> np.ndarray:
    """``vector`` as a unit-length float32 array of shape ``(dim,)`` (a ``(1, dim)`` row is accepted)."""
    try:
        arr = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MemoryInputError(f"{what}: expected a numeric array of shape ({dim},), "
                               f"got {type(vector).__name__} ({exc})") from None
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != (dim,):
        raise MemoryInputError(f"{what}: wrong dimension, expected shape ({dim},), got shape {arr.shape}")
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
