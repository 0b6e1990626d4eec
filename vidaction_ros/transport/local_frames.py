"""In-process frame hand-over, shared by FrameSender and FrameSubscription: whether it is on
(VIDACTION_DIRECT), private FrameRef copies without CDR, and the registry of this process's subscriptions
by (context, topic) that a sender hands its frames to."""
from __future__ import annotations

import operator
import os
import threading
import weakref

from rclpy.serialization import deserialize_message, serialize_message

from ..msg import FrameRef


def direct_enabled() -> bool:
    """False when VIDACTION_DIRECT is off/0/false/no: DDS only (for comparisons)."""
    return os.environ.get('VIDACTION_DIRECT', 'on').strip().lower() not in ('0', 'off', 'false', 'no')


class FrameRefCopier:
    """Private copies of FrameRefs, cheaper than a CDR round trip: every scalar and string leaf of the message
    read with one attrgetter call (snapshot) and applied to a FrameRef built ahead of time, straight-line code
    generated once from the message definition (only leaves that differ from a fresh message are set).
    Measured at 30 Hz on 2 cores (cold caches): ~40 + ~60 us against ~230 + ~400 us for serialize +
    deserialize. A message with pixels inline (a non-empty sequence) is copied through CDR."""

    def __init__(self, cls):
        self.cls = cls
        leaves, sequences = [], []
        self.ok = self._walk(cls(), '', leaves, sequences)
        if not self.ok:
            return
        self._leaves = len(leaves)
        self.get_all = operator.attrgetter(*(leaves + sequences))
        self._apply = self._compile_apply(leaves, self.get_all(cls())[:self._leaves])

    def _walk(self, msg, prefix, leaves, sequences) -> bool:
        for name, kind in msg.get_fields_and_field_types().items():
            # rosidl keeps each field in the slot '_<name>' behind a validating property: the copier reads and
            # writes the slots (C-level descriptors), its values being those of a valid message of the type.
            slot = '_' + name
            path = prefix + (slot if slot in getattr(type(msg), '__slots__', ()) else name)
            value = getattr(msg, name)
            if hasattr(value, 'get_fields_and_field_types'):
                if not self._walk(value, path + '.', leaves, sequences):
                    return False
            elif kind.startswith('sequence<'):
                sequences.append(path)
            elif '[' in kind or kind.startswith('wstring'):
                return False                     # fixed arrays, wstrings: CDR
            else:
                leaves.append(path)
        return True

    @staticmethod
    def _compile_apply(paths, defaults):
        """apply(values, msg): set every leaf whose value differs from a fresh message's, straight-line."""
        lines = ['def apply(values, msg):']
        parents = {'': 'msg'}
        for index, path in enumerate(paths):
            parent, _, leaf = path.rpartition('.')
            if not all(part.isidentifier() for part in path.split('.')):
                raise ValueError(f'unexpected field path {path!r}')
            if parent not in parents:
                for prefix in [parent[:i] for i, c in enumerate(parent) if c == '.'] + [parent]:
                    if prefix not in parents:
                        above, _, attr = prefix.rpartition('.')
                        parents[prefix] = f'p{len(parents)}'
                        lines.append(f'    {parents[prefix]} = {parents[above]}.{attr}')
            lines.append(f'    if values[{index}] != DEFAULTS[{index}]: {parents[parent]}.{leaf} = values[{index}]')
        lines.append('    return msg')
        namespace = {'DEFAULTS': tuple(defaults)}
        exec(compile('\n'.join(lines), '<FrameRefCopier.apply>', 'exec'), namespace)   # noqa: S102 - own code
        return namespace['apply']

    def snapshot(self, msg):
        """The values of msg's leaves: all a private copy needs; None when msg has pixels inline."""
        if not self.ok:
            return None
        values = self.get_all(msg)
        if any(values[self._leaves:]):
            return None
        return values[:self._leaves]

    def copy(self, msg, snapshot=None, fresh=None):
        """A private copy of msg (into `fresh` when given): an in-process subscriber's own FrameRef."""
        snap = snapshot or self.snapshot(msg)
        if snap is None:
            return deserialize_message(serialize_message(msg), self.cls)
        return self._apply(snap, fresh if fresh is not None else self.cls())


COPIER = FrameRefCopier(FrameRef)


class LocalFrame:
    """A frame from a sender in this process, waiting for its private copy."""
    __slots__ = ('msg', 'snapshot')

    def __init__(self, msg, snapshot):
        self.msg, self.snapshot = msg, snapshot


# In-process FrameSubscriptions by (context, resolved topic): an inproc FrameSender hands them each frame directly.
_LOCAL: dict[tuple[int, str], list] = {}
_LOCAL_LOCK = threading.Lock()
_LOCAL_VERSION = [0]          # bumped on every (un)registration: senders cache their lookup until it moves


def register(key: tuple[int, str], subscription) -> None:
    """key: (id(context), resolved topic)."""
    with _LOCAL_LOCK:
        _LOCAL.setdefault(key, []).append(weakref.ref(subscription))
        _LOCAL_VERSION[0] += 1


def unregister(key: tuple[int, str], subscription) -> None:
    with _LOCAL_LOCK:
        refs = _LOCAL.get(key)
        if refs is not None:
            refs[:] = [ref for ref in refs if ref() not in (None, subscription)]
            if not refs:
                del _LOCAL[key]
        _LOCAL_VERSION[0] += 1


def version() -> int:
    """Changes whenever a subscription comes or goes: a sender's cached local_subscribers() is stale then."""
    return _LOCAL_VERSION[0]


def local_subscribers(context, topic: str) -> list:
    """The live FrameSubscriptions of `topic` in this process (this context) that take frames directly."""
    with _LOCAL_LOCK:
        refs = _LOCAL.get((id(context), topic))
        if not refs:
            return []
        subs = [ref() for ref in refs]
        live = [sub for sub in subs if sub is not None and not sub.closed]
        if len(live) != len(refs):
            refs[:] = [weakref.ref(sub) for sub in live]
        return live
