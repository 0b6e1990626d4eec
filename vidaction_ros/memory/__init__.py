"""Memory: the temporal window of recent frame embeddings (pure cores, no rclpy).

Owns the hnswlib window with TTL eviction by message time (`window`) and the long-horizon keyframe tier
(`tiers`). May import: numpy, hnswlib and the shared helpers; no other stage. The package exports its API,
so callers write `from vidaction_ros.memory import TemporalMemory`.
"""

from .window import (
    BACKWARDS_TOLERANCE_S, STORAGE_CHOICES, MemoryInputError, MemoryEntry, InsertResult, TemporalMemory,
)
from .tiers import (
    TIERS, is_keyframe, TieredMemory,
)

__all__ = [
    'BACKWARDS_TOLERANCE_S', 'STORAGE_CHOICES', 'MemoryInputError', 'MemoryEntry', 'InsertResult',
    'TemporalMemory', 'TIERS', 'is_keyframe', 'TieredMemory',
]
