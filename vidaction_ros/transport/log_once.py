"""One warning per process and kind (a transport problem that would otherwise repeat on every frame)."""
from __future__ import annotations

import threading

_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


def warn_once(node, key: str, message: str) -> None:
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    node.get_logger().warning(message)
