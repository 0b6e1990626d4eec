"""Frame transport between nodes. Nodes call FrameSender.send and resolve / borrow and never learn the mode.

Modes (FrameRef.transport):
  inproc - composed in one process: pixels by reference through frame_store (zero copies); the topic
           carries only the small FrameRef.
  shm    - across processes on one machine: the camera writes the pixels once into a POSIX shared-memory
           ring (shm_ring), the topic carries only the FrameRef (ring name, slot, generation), and the
           consumer copies the frame out with one memcpy (resolve), or reads it in place for the length of a
           with-block (borrow), or is told it was lost (FrameLost) — never handed a torn frame.
  image  - portable fallback (another machine, another container): the downscaled pixels travel inline in
           FrameRef.image (a sensor_msgs/Image).
The optional interop topic publishes a plain sensor_msgs/Image for rviz, rqt and `ros2 bag record`.
"""
from __future__ import annotations

import itertools
import os
import threading
from contextlib import contextmanager

import numpy as np
from sensor_msgs.msg import Image

from . import qos
from .conversions import bgr_to_image, image_to_bgr
from .frame_store import FrameLost, find_store, open_store
from .msg import FrameRef
from .shm_ring import ShmRingReader, ShmRingWriter, reclaim_stale, ring_name, segment_path

MODES = ('inproc', 'shm', 'image')
DEFAULT_MAX_FRAME = (1920, 1080)   # (width, height) a shm slot holds when the caller does not say
_store_ids = itertools.count()


class FrameSender:
    def __init__(self, node, mode: str, topic: str = 'camera/frame', lockstep: bool = False,
                 interop_topic: str = '', slots: int = 8, max_frame: tuple[int, int] = DEFAULT_MAX_FRAME,
                 qos_profile=None):
        """max_frame: (width, height) of the largest bgr8 frame send() will get (shm mode sizes its slots
        from it; pass the camera's max_width/max_height). tmpfs is sparse, so unused capacity costs nothing.
        qos_profile: overrides qos.frame_qos(lockstep) (benches compare transports under one profile)."""
        if mode not in MODES:
            raise ValueError(f'unknown transport {mode!r}; choose one of {MODES}')
        self.mode = mode
        self.publisher = node.create_publisher(FrameRef, topic, qos_profile or qos.frame_qos(lockstep))
        self.interop = node.create_publisher(Image, interop_topic, qos.IMAGE) if interop_topic else None
        self.store = None
        self.ring = None
        if mode == 'inproc':
            # Unique per sender: two cameras in one process never share slots.
            self.store = open_store(f'{node.get_fully_qualified_name()}#{os.getpid()}#{next(_store_ids)}', slots)
        elif mode == 'shm':
            # Node name + pid + counter: unique per sender on this machine; the pid also lets the next
            # start of a crashed camera reclaim its segment (shm_ring checks the recorded writer is dead).
            # A crashed predecessor (another pid, so another name) is swept by prefix first.
            width, height = max_frame
            prefix = ring_name('vidaction', node.get_fully_qualified_name()) + '_'
            for name, owner in reclaim_stale(prefix):
                node.get_logger().info(f'removed stale shared-memory ring {name} of dead writer PID '
                                       f'{owner.pid if owner else "?"}')
            self.ring = ShmRingWriter(f'{prefix}{os.getpid()}_{next(_store_ids)}', slots=slots,
                                      slot_bytes=width * height * 3)

    def send(self, msg: FrameRef, image: np.ndarray) -> FrameRef:
        """Fill the pixel part of msg for this mode and publish it. msg carries header, sequence, times."""
        msg.transport = self.mode
        msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
        msg.encoding = 'bgr8'
        if self.mode == 'inproc':
            msg.store = self.store.name
            msg.slot, msg.generation = self.store.put(image)
        elif self.mode == 'shm':
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f'shm transport sends bgr8 HxWx3 frames, got shape {image.shape}')
            msg.store = self.ring.name
            msg.slot, msg.generation = self.ring.write(image)
        else:
            msg.image = bgr_to_image(image, msg.header.stamp, msg.header.frame_id)
        self.publisher.publish(msg)
        if self.interop is not None and self.interop.get_subscription_count() > 0:
            self.interop.publish(msg.image if self.mode == 'image' else
                                 bgr_to_image(image, msg.header.stamp, msg.header.frame_id))
        return msg

    def close(self) -> None:
        """Release what the mode holds: the shm ring is unlinked (it also is at interpreter exit)."""
        if self.ring is not None:
            self.ring.close()


# Readers of shm rings, opened on first use and cached per process (attaching maps the segment: ~50 us).
_READERS: dict[str, ShmRingReader] = {}
_READERS_LOCK = threading.Lock()


def _ring_reader(name: str) -> ShmRingReader:
    """The cached reader of a ring, reopened when the name now denotes a new segment (camera restarted and
    reclaimed it): comparing inodes costs one stat() and keeps us from reading a dead ring's old frames."""
    try:
        inode = os.stat(segment_path(name)).st_ino
    except FileNotFoundError:
        inode = None
    with _READERS_LOCK:
        reader = _READERS.get(name)
        if reader is not None and reader.inode == inode:
            return reader
        if reader is not None:
            del _READERS[name]
            reader.close()
        try:
            reader = ShmRingReader(name)     # WriterGone (a FrameLost) when the ring is gone
        except PermissionError as err:       # 0600: another user's camera
            raise FrameLost(f'shared-memory ring {name!r} is not readable by this user ({err}); run the camera '
                            f'and its consumers as the same user') from None
        except OSError as err:
            raise FrameLost(f'shared-memory ring {name!r} cannot be opened: {err}') from None
        _READERS[name] = reader
        return reader


def _resolve_shm(msg: FrameRef) -> np.ndarray:
    if msg.encoding != 'bgr8':
        raise FrameLost(f'shm FrameRef with encoding {msg.encoding!r}; this build writes bgr8 only')
    reader = _ring_reader(msg.store)
    frame = reader.read(msg.slot, msg.generation)
    if frame.shape != (msg.height, msg.width, 3):
        raise FrameLost(f'shared-memory ring {msg.store!r}: slot {msg.slot} holds a {frame.shape} frame but the '
                        f'FrameRef says {msg.height}x{msg.width}x3 (ring replaced under the reference?)')
    return frame


def resolve(msg: FrameRef) -> np.ndarray:
    """The bgr8 pixels a FrameRef points to. Raises FrameLost or ImageFormatError with the reason.
    inproc: the camera's very array (read-only by convention); shm: a private copy; image: decoded."""
    if msg.transport == FrameRef.TRANSPORT_INPROC:
        frame = find_store(msg.store).get(msg.slot, msg.generation)
        return frame
    if msg.transport == FrameRef.TRANSPORT_SHM:
        return _resolve_shm(msg)
    if msg.transport == FrameRef.TRANSPORT_IMAGE:
        return image_to_bgr(msg.image)
    raise FrameLost(f'unsupported transport {msg.transport!r} in FrameRef (this build supports {MODES})')


@contextmanager
def borrow(msg: FrameRef):
    """Zero-copy access for the duration of a with-block:

        with transport.borrow(ref) as image:   # read-only for shm
            vector = embed(image)
        # reaching here means image was intact all along; FrameLost from the with-statement means the
        # camera overwrote the slot meanwhile, and whatever was computed from it must be discarded.

    shm: a read-only view of the ring slot, validated when the block ends; inproc and image: as resolve().
    Never keep the array past the block."""
    if msg.transport != FrameRef.TRANSPORT_SHM:
        yield resolve(msg)
        return
    if msg.encoding != 'bgr8':
        raise FrameLost(f'shm FrameRef with encoding {msg.encoding!r}; this build writes bgr8 only')
    with _ring_reader(msg.store).view(msg.slot, msg.generation) as view:
        if view.shape != (msg.height, msg.width, 3):
            raise FrameLost(f'shared-memory ring {msg.store!r}: slot {msg.slot} holds a {view.shape} frame but '
                            f'the FrameRef says {msg.height}x{msg.width}x3 (ring replaced under the reference?)')
        yield view
