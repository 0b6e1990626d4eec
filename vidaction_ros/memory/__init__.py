"""Memory: the temporal window of recent frame embeddings (pure cores, no rclpy).

Owns the hnswlib window with TTL eviction by message time (`window`, with its query engines in `search`, its
vector copy in `storage`, its types in `entries` and its argument checks in `validation`) and the long-horizon
keyframe tier (`tiers`). May import: numpy, hnswlib and the shared helpers; no other stage. The package exports
its API, so callers write `from vidaction_ros.memory import TemporalMemory`.
"""

from .entries import (
    BACKWARDS_TOLERANCE_S, STORAGE_CHOICES, MemoryInputError, MemoryEntry, InsertResult,
)
from .window import TemporalMemory
from .tiers import (
    TIERS, is_keyframe, TieredMemory,
)

__all__ = [
    'BACKWARDS_TOLERANCE_S', 'STORAGE_CHOICES', 'MemoryInputError', 'MemoryEntry', 'InsertResult',
    'TemporalMemory', 'TIERS', 'is_keyframe', 'TieredMemory',
]
