"""Frame transport between nodes. Nodes call FrameSender.send / FrameReceiver and never learn the mode.

Modes (FrameRef.transport):
  inproc - composed in one process: pixels by reference through frame_store (zero copies); the topic
           carries only the small FrameRef.
  image  - across processes until the shared-memory ring lands: the downscaled pixels travel inline in
           FrameRef.image (a sensor_msgs/Image).
The optional interop topic publishes a plain sensor_msgs/Image for rviz, rqt and `ros2 bag record`.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
from sensor_msgs.msg import Image

from . import qos
from .conversions import bgr_to_image, image_to_bgr
from .frame_store import FrameLost, find_store, open_store
from .msg import FrameRef

MODES = ('inproc', 'image')
_store_ids = itertools.count()


class FrameSender:
    def __init__(self, node, mode: str, topic: str = 'camera/frame', lockstep: bool = False,
                 interop_topic: str = '', slots: int = 8):
        if mode not in MODES:
            raise ValueError(f'unknown transport {mode!r}; choose one of {MODES}')
        self.mode = mode
        self.publisher = node.create_publisher(FrameRef, topic, qos.frame_qos(lockstep))
        self.interop = node.create_publisher(Image, interop_topic, qos.IMAGE) if interop_topic else None
        self.store = None
        if mode == 'inproc':
            # Unique per sender: two cameras in one process never share slots.
            self.store = open_store(f'{node.get_fully_qualified_name()}#{os.getpid()}#{next(_store_ids)}', slots)

    def send(self, msg: FrameRef, image: np.ndarray) -> FrameRef:
        """Fill the pixel part of msg for this mode and publish it. msg carries header, sequence, times."""
        msg.transport = self.mode
        msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
        msg.encoding = 'bgr8'
        if self.mode == 'inproc':
            msg.store = self.store.name
            msg.slot, msg.generation = self.store.put(image)
        else:
            msg.image = bgr_to_image(image, msg.header.stamp, msg.header.frame_id)
        self.publisher.publish(msg)
        if self.interop is not None and self.interop.get_subscription_count() > 0:
            self.interop.publish(msg.image if self.mode == 'image' else
                                 bgr_to_image(image, msg.header.stamp, msg.header.frame_id))
        return msg


def resolve(msg: FrameRef) -> np.ndarray:
    """The bgr8 pixels a FrameRef points to. Raises FrameLost or ImageFormatError with the reason."""
    if msg.transport == FrameRef.TRANSPORT_INPROC:
        frame = find_store(msg.store).get(msg.slot, msg.generation)
        return frame
    if msg.transport == FrameRef.TRANSPORT_IMAGE:
        return image_to_bgr(msg.image)
    raise FrameLost(f'unsupported transport {msg.transport!r} in FrameRef (this build supports {MODES})')
