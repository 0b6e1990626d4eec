"""Temporal memory's small types: the input error, the query and insert results, and the window constants.

No logic here: :mod:`.window` (and :mod:`.tiers`) build and return these.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MemoryInputError",
    "MemoryEntry",
    "InsertResult",
    "BACKWARDS_TOLERANCE_S",
    "STORAGE_CHOICES",
]

#: An insert whose stamp is older than the newest stored stamp by more than this
#: is "time going backwards" (bag loop, clock jump) and resets the window.  Equal
#: stamps and sub-microsecond jitter (float round-off of sec+nanosec stamps) are
#: accepted as the normal case.
BACKWARDS_TOLERANCE_S = 1e-6

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
