"""FrameRefs of frames carried by iceoryx2 (transports "iox" and "cuda"), and the frames this process holds.

A FrameRef with transport "iox" or "cuda" names the camera's frame service (`store`) and the frame's sequence
(`generation`; `slot` is 0). The pixels ("cuda": the device buffer the sample names) are found

- in a frame a FrameSubscription of this process holds while its callback runs (`HELD`): resolve copies it,
  borrow views it in place; or
- for an observer that only hears the DDS FrameRef (overlay, escalation, a test): in a per-process reader of
  the service that keeps the last iox_frames.OBSERVER_KEEP frames (opened on first use, so the frames sent
  before it are FrameLost, as are frames older than what it keeps).
"""
from __future__ import annotations

import atexit
import threading

from ..msg import FrameRef
from . import iox_frames
from .frame_store import FrameLost


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def header_fields(msg: FrameRef) -> dict:
    """What travels in the sample's header, from the FrameRef the camera built."""
    return {'sequence': msg.sequence, 'stamp_ns': _ns(msg.header.stamp), 'captured_ns': _ns(msg.times.captured),
            'published_ns': _ns(msg.times.published), 'source_width': msg.source_width,
            'source_height': msg.source_height, 'scene_change': msg.scene_change, 'keyframe': int(msg.keyframe),
            'frame_id': msg.header.frame_id}


def frame_ref(frame: iox_frames.Received, store: str, msg: FrameRef | None = None) -> FrameRef:
    """The FrameRef a consumer's callback gets for a frame that came through iceoryx2 (no DDS message), filled
    into msg: a fresh FrameRef built ahead of time (construction costs ~120 us cold, measured)."""
    msg = FrameRef() if msg is None else msg
    # rosidl keeps each field in the slot '_<name>' behind a type-checking property; the header's values
    # already have the field types, so they go into the slots (16 checked setters cost ~100 us cold).
    header, times = msg._header, msg._times
    header._stamp._sec, header._stamp._nanosec = divmod(frame.stamp_ns, 1_000_000_000)
    header._frame_id = frame.frame_id
    msg._sequence = msg._generation = frame.sequence
    cuda = frame.memory == iox_frames.MEMORY_CUDA
    msg._transport = FrameRef.TRANSPORT_CUDA if cuda else FrameRef.TRANSPORT_IOX
    msg._store, msg._slot = store, 0
    msg._width, msg._height, msg._encoding = frame.width, frame.height, frame.encoding
    msg._source_width, msg._source_height = frame.source_width, frame.source_height
    msg._scene_change, msg._keyframe = frame.scene_change, bool(frame.keyframe)
    times._captured._sec, times._captured._nanosec = divmod(frame.captured_ns, 1_000_000_000)
    times._published._sec, times._published._nanosec = divmod(frame.published_ns, 1_000_000_000)
    return msg


class HeldFrames:
    """Frames FrameSubscriptions of this process hold, by (store, sequence), while their callbacks run."""

    def __init__(self):
        self._lock = threading.Lock()
        self._frames: dict = {}

    def hold(self, store: str, frame: iox_frames.Received) -> None:
        with self._lock:
            self._frames[(store, frame.sequence)] = frame

    def get(self, store: str, sequence: int):
        with self._lock:
            return self._frames.get((store, sequence))

    def release(self, store: str, sequence: int) -> None:
        with self._lock:
            frame = self._frames.pop((store, sequence), None)
        if frame is not None:
            frame.release()


HELD = HeldFrames()
_OBSERVERS: dict[str, iox_frames.IoxFrameReader] = {}
_OBSERVERS_LOCK = threading.Lock()


def _check(msg: FrameRef) -> None:
    if msg.encoding not in iox_frames.CHANNELS:
        raise FrameLost(f'{msg.transport} FrameRef with encoding {msg.encoding!r}; frame samples carry '
                        f'{sorted(iox_frames.CHANNELS)}')


def _device_frames():
    from . import cuda_frames
    try:
        return cuda_frames.device_frames()
    except RuntimeError as err:            # no torch / no CUDA in this process
        raise FrameLost(f'CUDA frame: {err}') from None


def synchronize(tensor) -> None:
    """Wait for this process's GPU work on a cuda frame (before its sample is released)."""
    _device_frames().synchronize(tensor)


def _copy(msg: FrameRef, frame: iox_frames.Received):
    if frame.control is None:
        return frame.array.copy()
    frames = _device_frames()
    tensor = frames.view(frame.control, msg.store)
    out = tensor.clone()                   # device to device
    frames.synchronize(out)                # done before the sample can be released
    return out


def resolve(msg: FrameRef):
    """A private copy of the frame's pixels (cuda: a device tensor); FrameLost with the reason when this process
    cannot reach them."""
    _check(msg)
    if msg.transport == FrameRef.TRANSPORT_CUDA:
        _device_frames()                   # FrameLost at once, naming CUDA, in a process without it
    held = HELD.get(msg.store, msg.generation)
    if held is not None:
        return _copy(msg, held)
    with _OBSERVERS_LOCK:
        reader = _OBSERVERS.get(msg.store)
        if reader is None:
            try:
                reader = _OBSERVERS[msg.store] = iox_frames.IoxFrameReader(msg.store, keep=iox_frames.OBSERVER_KEEP)
            except iox_frames.IoxUnavailable as err:
                raise FrameLost(str(err)) from None
            raise FrameLost(f'frame {msg.generation} of {msg.store!r}: sent before this process started '
                            f'reading the frame service (the next ones will be found)')
        frame = reader.find(msg.generation)
        if frame is None:
            newest = reader.last_sequence
            raise FrameLost(f'frame {msg.generation} of {msg.store!r} is no longer held (the last '
                            f'{reader.keep} are; newest {newest})')
        return _copy(msg, frame)           # under the lock: the reader cannot release it meanwhile


def view(msg: FrameRef):
    """In place when a subscription of this process holds the frame (valid during its callback; cuda: the device
    buffer, whose stream is synchronised by the caller, frame_transport.borrow); a copy otherwise."""
    _check(msg)
    held = HELD.get(msg.store, msg.generation)
    if held is None:
        return resolve(msg)
    if held.control is None:
        return held.array
    return _device_frames().view(held.control, msg.store)


@atexit.register
def close_observers() -> None:
    """Close the observers' readers (at exit too, before iox_frames drops the node: atexit runs in reverse)."""
    with _OBSERVERS_LOCK:
        for reader in _OBSERVERS.values():
            reader.close()
        _OBSERVERS.clear()
