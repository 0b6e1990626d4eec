"""Reading a FrameRef's pixels, whatever its transport: resolve (a frame to keep), borrow (in place for a
with-block), host_array (a GPU frame brought to the host)."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..conversions import image_to_bgr
from ..msg import FrameRef
from . import iox_refs
from .frame_store import FrameLost, find_store

MODES = ('inproc', 'iox', 'image', 'cuda')


def resolve(msg: FrameRef):
    """The bgr8 pixels a FrameRef points to. Raises FrameLost or ImageFormatError with the reason.
    inproc: the camera's very array (read-only by convention); iox: a private copy; image: decoded;
    cuda: a private copy on the GPU (a torch tensor; never through the host)."""
    if msg.transport == FrameRef.TRANSPORT_INPROC:
        return find_store(msg.store).get(msg.slot, msg.generation)
    if msg.transport in (FrameRef.TRANSPORT_IOX, FrameRef.TRANSPORT_CUDA):
        return iox_refs.resolve(msg)
    if msg.transport == FrameRef.TRANSPORT_IMAGE:
        return image_to_bgr(msg.image)
    if msg.transport == FrameRef.TRANSPORT_SHM:
        raise FrameLost('FrameRef of transport shm (the shared-memory ring of an older vidaction_ros build, '
                        'replaced by iceoryx2): run the camera from this build (transport iox)')
    raise FrameLost(f'unsupported transport {msg.transport!r} in FrameRef (this build supports {MODES})')


def host_array(frame) -> np.ndarray:
    """A frame as a host numpy array: a cuda-transport torch tensor is copied down (for consumers that run on
    the CPU); numpy arrays are returned as they are."""
    if isinstance(frame, np.ndarray):
        return frame
    return frame.detach().cpu().numpy()


@contextmanager
def borrow(msg: FrameRef):
    """Zero-copy access for the duration of a with-block:

        with transport.borrow(ref) as image:
            vector = embed(image)

    iox: the sample in place (read-only), held by this process's subscription until its callback returns;
    cuda: the device buffer in place (a torch tensor; the block's GPU work is waited for at its end, before
    the sample can be released); inproc and image: as resolve(). Never keep the array past the block."""
    if msg.transport != FrameRef.TRANSPORT_CUDA:
        yield iox_refs.view(msg) if msg.transport == FrameRef.TRANSPORT_IOX else resolve(msg)
        return
    frame = iox_refs.view(msg)
    try:
        yield frame
    finally:
        iox_refs.synchronize(frame)        # the block's GPU work is done before the sample can be released
