"""Conversions between ROS messages and the pure cores' types (time, images, vectors, stage times)."""
from __future__ import annotations

import array
import math

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from .ingest.image_codec import ImageFormatError, decode_raw


def to_time(seconds: float) -> Time:
    if not math.isfinite(seconds) or seconds < 0:
        return Time()
    sec = int(seconds)
    nanosec = int(round((seconds - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=sec, nanosec=nanosec)


def to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def ms_between(earlier: Time, later: Time) -> float:
    """Milliseconds from earlier to later; NaN when either stage time is unset."""
    if (earlier.sec == 0 and earlier.nanosec == 0) or (later.sec == 0 and later.nanosec == 0):
        return float('nan')
    return (to_seconds(later) - to_seconds(earlier)) * 1000.0


def float32_field(vector: np.ndarray) -> array.array:
    """A float32[] message field's value from a vector in one C copy (a list would make the setter convert
    every element from a Python float: ~3x the time at 384 dims, on the embedder's hot path)."""
    return array.array('f', np.ascontiguousarray(vector, dtype=np.float32).tobytes())


def image_to_bgr(msg: Image) -> np.ndarray:
    if msg.is_bigendian and msg.encoding not in ('bgr8', 'rgb8', 'mono8', 'bgra8', 'rgba8'):
        raise ImageFormatError('big-endian multi-byte encodings are not supported')
    return decode_raw(msg.height, msg.width, msg.encoding, msg.step, msg.data)


def bgr_to_image(image: np.ndarray, stamp: Time | None = None, frame_id: str = '') -> Image:
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(image.shape[0]), int(image.shape[1])
    msg.encoding = 'bgr8'
    msg.is_bigendian = 0
    msg.step = int(image.shape[1] * 3)
    msg.data = np.ascontiguousarray(image).tobytes()
    return msg


def vector_from_msg(values, dim: int | None = None, what: str = 'vector') -> np.ndarray:
    """A float32 array from a message field, refusing wrong lengths and non-finite values."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f'{what} is empty')
    if dim is not None and vector.size != dim:
        raise ValueError(f'{what} has dimension {vector.size}, expected {dim}')
    finite = np.isfinite(vector)
    if not finite.all():
        # Name how many and where: "contains NaN or Inf" alone does not tell a model that overflows in one
        # channel from a producer that sends garbage (bad-input table, docs/faults.md).
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(f'{what} contains NaN or Inf: {int((~finite).sum())} non-finite value(s), first at '
                         f'index {bad} = {float(vector[bad])!r}')
    return vector
